// Textual-inversion embedding files: every common layout in, two layouts out.
//
// In (detected from content, never from the extension):
//   diffusers            safetensors {"<token>": f32 [N, D]}          learned_embeds.safetensors
//   diffusers-1d         {"<token>": [D]}, safetensors or torch.save   (older diffusers)
//   a1111-safetensors    safetensors {"emb_params": [N, D]}           kohya sd-scripts, converters
//   diffusers-bin        torch.save  {"<token>": tensor [N, D] | [D]} learned_embeds.bin
//   a1111-pt             torch.save  {"string_to_param": {<any>: [N, D]}, "name", "step", ...}
//                        (AUTOMATIC1111; the original repo's ParameterDict; kohya's emb_params .pt)
// Out: diffusers `{token: [N, D]}` and A1111/ComfyUI `emb_params` safetensors.
//
// Like A1111, the prompt token defaults to the file name; the name stored inside the
// file (diffusers key, A1111 "name") is reported as `sourceName`.
import { openSync, readSync, closeSync } from 'node:fs';
import { basename, extname } from 'node:path';
import { SafetensorsFile, writeSafetensors, type SafeDType } from './safetensors.ts';
import { loadTorchArchive, PyDict, PyObject, TorchTensor, describe, type PyValue, type TorchArchive } from './pickle.ts';
import { OnewordError, type ErrorDetails } from '../errors.ts';

export type EmbeddingFormat = 'diffusers' | 'diffusers-1d' | 'a1111-safetensors' | 'a1111-pt' | 'diffusers-bin';

/** A word's embedding: N vectors of width D, written in prompts as `token`. */
export interface LearnedEmbedding {
  /** The word to write in prompts. */
  token: string;
  /** Row-major [count, dim] float32. */
  vectors: Float32Array;
  /** N: how many tokens the word expands to in the prompt. */
  count: number;
  /** D: must match the text encoder's hidden size (768 SD1, 1024 SD2). */
  dim: number;
}

/** An embedding read from a file; `token` is opts.token, else the token stored in a diffusers file, else the file name without extension. */
export interface Embedding extends LearnedEmbedding {
  format: EmbeddingFormat;
  /** The name recorded inside the file, if any (diffusers key, A1111 "name"/metadata name). */
  sourceName?: string;
  /** Training info found in the file (A1111: step, sd_checkpoint, sd_checkpoint_name; safetensors metadata). */
  info: Record<string, string>;
}

export class EmbeddingError extends OnewordError {
  override name = 'EmbeddingError';
  constructor(readonly path: string, message: string, options?: ErrorDetails) {
    super(`${path}: ${message}`, options);
  }
}

/** The token a file defines when none is given: its name without the extension (A1111's rule). */
export function defaultTokenName(path: string): string {
  const b = basename(path);
  return b.slice(0, b.length - extname(b).length) || b;
}

type Container = 'safetensors' | 'torch-zip' | 'torch-legacy' | 'png' | 'webp' | 'unknown';

const LEGACY_TORCH_MAGIC = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

function sniff(path: string): Container {
  let head: Buffer;
  const fd = openSync(path, 'r');
  try {
    head = Buffer.alloc(16);
    head = head.subarray(0, readSync(fd, head, 0, 16, 0));
  } finally {
    closeSync(fd);
  }
  if (head.length >= 4 && head.readUInt32LE(0) === 0x04034b50) return 'torch-zip';
  if (head.length >= LEGACY_TORCH_MAGIC.length && LEGACY_TORCH_MAGIC.every((b, i) => head[i] === b)) return 'torch-legacy';
  if (head.length >= 8 && head.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return 'png';
  if (head.length >= 12 && head.toString('latin1', 0, 4) === 'RIFF' && head.toString('latin1', 8, 12) === 'WEBP') return 'webp';
  // safetensors: u64 header length, then a JSON object.
  if (head.length >= 9 && head.readUInt32LE(4) === 0 && head.readUInt32LE(0) >= 2 && head[8] === 0x7b) return 'safetensors';
  return 'unknown';
}

/** Largest embedding read: more vectors than a prompt holds, wider than any text encoder. */
export const MAX_EMBEDDING_VECTORS = 1024;
export const MAX_EMBEDDING_WIDTH = 8192;

/** Checked from the declared shape, before any value is read or inflated. */
function checkShape(path: string, shape: readonly number[], what: string): { count: number; dim: number; oneD: boolean } {
  let r: { count: number; dim: number; oneD: boolean } | undefined;
  if (shape.length === 1 && shape[0] > 0) r = { count: 1, dim: shape[0], oneD: true };
  if (shape.length === 2 && shape[0] > 0 && shape[1] > 0) r = { count: shape[0], dim: shape[1], oneD: false };
  if (!r) throw new EmbeddingError(path, `${what} has shape [${shape.join(', ')}]; an embedding is [N, D] or [D]`);
  if (r.count > MAX_EMBEDDING_VECTORS || r.dim > MAX_EMBEDDING_WIDTH) {
    throw new EmbeddingError(path, `${what} has shape [${shape.join(', ')}]; an embedding has at most ${MAX_EMBEDDING_VECTORS} vectors of width ${MAX_EMBEDDING_WIDTH} or less`);
  }
  return r;
}

/** Storage records of embedding archives are refused above this, unread (an embedding needs at most 32 MiB). */
const EMBEDDING_ARCHIVE_LIMITS = { maxStorageBytes: MAX_EMBEDDING_VECTORS * MAX_EMBEDDING_WIDTH * 8 };

function checkFinite(path: string, v: Float32Array): void {
  for (let i = 0; i < v.length; i++) {
    if (!Number.isFinite(v[i])) throw new EmbeddingError(path, `embedding contains ${v[i]} at element ${i}; the file is corrupt or training diverged`);
  }
}

const SDXL_ERROR = 'SDXL embeddings (clip_l + clip_g) are not supported; this program runs SD 1.x/2.x models';
const FLOAT_DTYPES = new Set<SafeDType>(['F32', 'F16', 'BF16', 'F64']);

function fromSafetensors(path: string): Omit<Embedding, 'token'> {
  const f = SafetensorsFile.open(path);
  const names = [...f.tensors.keys()];
  const meta = f.metadata;
  if (names.includes('clip_l') || names.includes('clip_g')) throw new EmbeddingError(path, SDXL_ERROR);
  let name: string;
  let format: EmbeddingFormat;
  let sourceName: string | undefined;
  if (names.includes('emb_params')) {
    name = 'emb_params';
    format = 'a1111-safetensors';
    sourceName = meta.name ?? meta.ss_output_name;
  } else if (names.length === 1) {
    name = names[0];
    format = 'diffusers';
    sourceName = name;
  } else {
    const params = names.filter((n) => n.startsWith('string_to_param.'));
    if (params.length !== 1) {
      throw new EmbeddingError(path, names.length === 0
        ? 'holds no tensors'
        : `holds ${names.length} tensors (${names.slice(0, 5).map((n) => JSON.stringify(n)).join(', ')}${names.length > 5 ? ', …' : ''}); expected one embedding`);
    }
    name = params[0];
    format = 'a1111-safetensors';
    sourceName = meta.name;
  }
  const info = f.tensors.get(name)!;
  if (!FLOAT_DTYPES.has(info.dtype)) throw new EmbeddingError(path, `tensor "${name}" has dtype ${info.dtype}; expected a float type`);
  const { count, dim, oneD } = checkShape(path, info.shape, `tensor "${name}"`);
  if (oneD && format === 'diffusers') format = 'diffusers-1d';
  const vectors = f.readFloat32(name);
  checkFinite(path, vectors);
  return { vectors, count, dim, format, sourceName, info: { ...meta } };
}

function str(v: PyValue | undefined): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'bigint') return String(v);
  return undefined;
}

function fromTorch(path: string): Omit<Embedding, 'token'> {
  // PickleError/PickleSecurityError propagate unchanged: their messages already name the file.
  const archive: TorchArchive = loadTorchArchive(path, { limits: EMBEDDING_ARCHIVE_LIMITS });
  try {
    const root = archive.root;
    if (!(root instanceof PyDict)) throw new EmbeddingError(path, `top-level object is ${describe(root)}; expected a dict`);
    const info: Record<string, string> = {};
    let tensor: PyValue | undefined;
    let format: EmbeddingFormat;
    let sourceName: string | undefined;
    if (root.has('clip_l') || root.has('clip_g')) throw new EmbeddingError(path, SDXL_ERROR);
    if (root.has('string_to_param')) {
      // A1111 stores a dict; the original repo pickles a ParameterDict module whose
      // parameters sit in its state's `_parameters` (A1111 reads it the same way).
      let params = root.get('string_to_param');
      if (params instanceof PyObject && params.state instanceof PyDict && params.state.has('_parameters')) params = params.state.get('_parameters');
      if (!(params instanceof PyDict)) throw new EmbeddingError(path, `string_to_param is ${describe(params)}; expected a dict of tensors`);
      if (params.size !== 1) throw new EmbeddingError(path, `string_to_param holds ${params.size} entries; expected exactly one`);
      tensor = params.map.values().next().value;
      format = 'a1111-pt';
      sourceName = str(root.get('name'));
      for (const k of ['step', 'sd_checkpoint', 'sd_checkpoint_name']) {
        const v = str(root.get(k));
        if (v !== undefined) info[k] = v;
      }
    } else if (root.has('emb_params')) {
      tensor = root.get('emb_params');
      format = 'a1111-pt';
    } else if (root.size === 1) {
      const [k, v] = root.map.entries().next().value as [unknown, PyValue];
      tensor = v;
      format = 'diffusers-bin';
      sourceName = typeof k === 'string' ? k : undefined;
    } else {
      const keys = [...root.map.keys()].slice(0, 5).map((k) => (typeof k === 'string' ? JSON.stringify(k) : String(k))).join(', ');
      throw new EmbeddingError(path, `not an embedding: expected string_to_param, emb_params or a single {token: tensor} entry, found keys ${keys}`);
    }
    if (!(tensor instanceof TorchTensor)) throw new EmbeddingError(path, `embedding value is ${describe(tensor)}; expected a tensor`);
    if (!['float32', 'float16', 'bfloat16', 'float64'].includes(tensor.dtype)) throw new EmbeddingError(path, `embedding tensor has dtype ${tensor.dtype}; expected a float type`);
    const { count, dim, oneD } = checkShape(path, tensor.shape, 'embedding tensor');
    if (oneD && format === 'diffusers-bin') format = 'diffusers-1d';
    const vectors = archive.tensorToFloat32(tensor);
    checkFinite(path, vectors);
    return { vectors, count, dim, format, sourceName, info };
  } finally {
    archive.close();
  }
}

/**
 * Reads an embedding file of any supported layout. Errors name the file and say what
 * was found; hostile pickles raise PickleSecurityError without running anything.
 */
export function loadEmbedding(path: string, opts: { token?: string } = {}): Embedding {
  let container: Container;
  try {
    container = sniff(path);
  } catch (e) {
    throw new EmbeddingError(path, `cannot read: ${(e as Error).message}`, { cause: e });
  }
  let e: Omit<Embedding, 'token'>;
  switch (container) {
    case 'safetensors': e = fromSafetensors(path); break;
    case 'torch-zip': e = fromTorch(path); break;
    case 'torch-legacy':
      throw new EmbeddingError(path, 'is in the legacy (pre-1.6) PyTorch format; re-save it with a recent torch.save');
    case 'png': case 'webp':
      throw new EmbeddingError(path, 'is an image; embeddings stored inside images (A1111 "embedding previews") are not supported');
    default:
      throw new EmbeddingError(path, 'is not a safetensors file or a PyTorch archive');
  }
  // diffusers files name their token inside (load_textual_inversion uses that key);
  // A1111/kohya files are named by their file name, as A1111 and ComfyUI do.
  const token = opts.token ?? ((e.format === 'diffusers' || e.format === 'diffusers-bin' || e.format === 'diffusers-1d') && e.sourceName ? e.sourceName : defaultTokenName(path));
  if (!token.trim()) throw new EmbeddingError(path, 'embedding token must not be empty');
  return { token, ...e };
}

/**
 * The prompt words an N-vector embedding occupies, named as diffusers'
 * load_textual_inversion names them: "<tok>", "<tok>_1", …, "<tok>_{N-1}". A prompt's
 * "<tok>" expands to all of them in order (A1111 splices the same N rows unnamed).
 */
export function multiVectorTokens(token: string, count: number): string[] {
  if (!Number.isInteger(count) || count < 1) throw new RangeError(`bad vector count ${count}`);
  return Array.from({ length: count }, (_, i) => (i === 0 ? token : `${token}_${i}`));
}

function checkVectors(path: string, vectors: Float32Array, n: number, d: number): void {
  if (!Number.isInteger(n) || !Number.isInteger(d) || n < 1 || d < 1) throw new EmbeddingError(path, `bad embedding shape [${n}, ${d}]`);
  if (vectors.length !== n * d) throw new EmbeddingError(path, `expected ${n}×${d} = ${n * d} values, got ${vectors.length}`);
  checkFinite(path, vectors);
}

/** diffusers `learned_embeds.safetensors`: `{token: f32 [N, D]}` (loadable by load_textual_inversion). */
export function saveDiffusersEmbedding(path: string, token: string, vectors: Float32Array, n: number, d: number, extraMeta: Record<string, string> = {}): void {
  checkVectors(path, vectors, n, d);
  if (!token || token === '__metadata__') throw new EmbeddingError(path, `cannot save under token ${JSON.stringify(token)}`);
  // diffusers writes metadata {"format": "pt"} and ignores other keys; writeSafetensors renames into place atomically.
  writeSafetensors(path, { [token]: { dtype: 'F32', shape: [n, d], data: vectors } }, { ...extraMeta, format: 'pt' });
}

export interface A1111Meta {
  step?: number;
  /** Short hash of the model trained against (A1111: first 10 hex digits of its sha256). */
  sdCheckpoint?: string;
  sdCheckpointName?: string;
  /** Anything else worth recording; values are stored as strings. */
  [key: string]: string | number | undefined;
}

/** AUTOMATIC1111 / ComfyUI `<name>.safetensors`: `{emb_params: f32 [N, D]}` plus the name in the metadata. */
export function saveA1111Embedding(path: string, name: string, vectors: Float32Array, n: number, d: number, extraMeta: A1111Meta = {}): void {
  checkVectors(path, vectors, n, d);
  const meta: Record<string, string> = { format: 'pt', name };
  for (const [k, v] of Object.entries(extraMeta)) {
    if (v === undefined) continue;
    // Same keys as A1111's .pt dict, so the information survives a round trip.
    const key = k === 'sdCheckpoint' ? 'sd_checkpoint' : k === 'sdCheckpointName' ? 'sd_checkpoint_name' : k;
    if (key === 'name' || key === 'format') continue;
    meta[key] = String(v);
  }
  writeSafetensors(path, { emb_params: { dtype: 'F32', shape: [n, d], data: vectors } }, meta);
}
