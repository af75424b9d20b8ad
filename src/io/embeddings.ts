// Textual-inversion embedding files: every common layout in, four layouts out.
//
// In (detected from content, never from the extension):
//   diffusers            safetensors {"<token>": f32 [N, D]}          learned_embeds.safetensors
//   diffusers-1d         {"<token>": [D]}, safetensors or torch.save   (older diffusers)
//   a1111-safetensors    safetensors {"emb_params": [N, D]}           kohya sd-scripts, converters
//   diffusers-bin        torch.save  {"<token>": tensor [N, D] | [D]} learned_embeds.bin
//   a1111-pt             torch.save  {"string_to_param": {<any>: [N, D]}, "name", "step", ...}
//                        (AUTOMATIC1111; the original repo's ParameterDict; kohya's emb_params .pt)
// SDXL (one word, vectors for both text encoders: clip_l = CLIP ViT-L, clip_g = OpenCLIP ViT-bigG):
//   sdxl-safetensors     safetensors {"clip_l": [N, D1], "clip_g": [N, D2]}  kohya, A1111, ComfyUI
//   sdxl-pt              torch.save  {"clip_l": ..., "clip_g": ..., [scalar metadata]}  (kohya .pt)
//   diffusers-sdxl-pair  X.safetensors {"<token>": [N, D1]} + X_2.safetensors {"<token>": [N, D2]}
//                        (diffusers' SDXL script: learned_embeds[-steps-S].safetensors and
//                        learned_embeds_2[-steps-S].safetensors; X.bin + X_2.bin likewise)
// Out: diffusers `{token: [N, D]}`, A1111/ComfyUI `emb_params` safetensors, and for SDXL
// clip_l/clip_g safetensors and the diffusers pair.
//
// Like A1111, the prompt token defaults to the file name; the name stored inside the
// file (diffusers key, A1111 "name") is reported as `sourceName`.
import { openSync, readSync, closeSync, existsSync, renameSync, statSync, unlinkSync } from 'node:fs';
import { basename, dirname, extname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { SafetensorsFile, writeSafetensors, type SafeDType } from './safetensors.ts';
import { loadTorchArchive, PyDict, PyObject, TorchTensor, describe, type PyValue, type TorchArchive } from './pickle.ts';
import { OnewordError, type ErrorDetails } from '../errors.ts';

export type EmbeddingFormat =
  | 'diffusers' | 'diffusers-1d' | 'a1111-safetensors' | 'a1111-pt' | 'diffusers-bin'
  | 'sdxl-safetensors' | 'sdxl-pt' | 'diffusers-sdxl-pair';

/**
 * A word's embedding: N vectors of width D, written in prompts as `token`. SDXL words also
 * carry N vectors for the second text encoder (`vectors2`, `dim2`); `vectors`/`dim` are
 * then the first encoder's (clip_l), so SD 1.x/2.x code reads them unchanged.
 */
export interface LearnedEmbedding {
  /** The word to write in prompts. */
  token: string;
  /** Row-major [count, dim] float32 (SDXL: text encoder 1, CLIP ViT-L, "clip_l"). */
  vectors: Float32Array;
  /** N: how many tokens the word expands to in the prompt. */
  count: number;
  /** D: must match the text encoder's hidden size (768 SD1, 1024 SD2, SDXL clip_l 768). */
  dim: number;
  /** SDXL only: row-major [count, dim2] float32 for text encoder 2 (OpenCLIP ViT-bigG, "clip_g"). */
  vectors2?: Float32Array;
  /** SDXL only: text encoder 2's hidden size (1280 in SDXL base). */
  dim2?: number;
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

function checkFinite(path: string, v: Float32Array, what = 'embedding'): void {
  for (let i = 0; i < v.length; i++) {
    if (!Number.isFinite(v[i])) throw new EmbeddingError(path, `${what} contains ${v[i]} at element ${i}; the file is corrupt or training diverged`);
  }
}

/** One tensor of a file, described before its values are read. */
interface TensorSource {
  /** How errors name it: `tensor "emb_params"`, `embedding tensor`, `clip_g`. */
  what: string;
  dtype: string;
  isFloat: boolean;
  shape: readonly number[];
  read(): Float32Array;
}

interface Vectors { vectors: Float32Array; count: number; dim: number; oneD: boolean }

/** Checks dtype and shape from the header, then reads and checks the values. */
function readVectors(path: string, src: TensorSource): Vectors {
  const shape = checkVectorHeader(path, src);
  const vectors = src.read();
  checkFinite(path, vectors);
  return { vectors, ...shape };
}

function checkVectorHeader(path: string, src: TensorSource): Omit<Vectors, 'vectors'> {
  if (!src.isFloat) throw new EmbeddingError(path, `${src.what} has dtype ${src.dtype}; expected a float type`);
  return checkShape(path, src.shape, src.what);
}

const FLOAT_DTYPES = new Set<SafeDType>(['F32', 'F16', 'BF16', 'F64']);
const TORCH_FLOAT_DTYPES = new Set<string>(['float32', 'float16', 'bfloat16', 'float64']);

function safetensorsSource(f: SafetensorsFile, name: string, what = `tensor "${name}"`): TensorSource {
  const info = f.tensors.get(name)!;
  return { what, dtype: info.dtype, isFloat: FLOAT_DTYPES.has(info.dtype), shape: info.shape, read: () => f.readFloat32(name) };
}

/** `noun` names the entry when it is not a tensor at all. */
function torchSource(archive: TorchArchive, path: string, value: PyValue | undefined, what: string, noun = what): TensorSource {
  if (!(value instanceof TorchTensor)) throw new EmbeddingError(path, `${noun} is ${describe(value)}; expected a tensor`);
  return { what, dtype: value.dtype, isFloat: TORCH_FLOAT_DTYPES.has(value.dtype), shape: value.shape, read: () => archive.tensorToFloat32(value) };
}

type FileEmbedding = Omit<Embedding, 'token'>;

const vectorCount = (n: number) => `${n} vector${n === 1 ? '' : 's'}`;

/**
 * The two halves of an SDXL word: both float, same N, widths within bounds. Headers are
 * checked before any value is read, so a bad shape never costs a read.
 */
function readSDXLVectors(path: string, l: TensorSource, g: TensorSource): Pick<Embedding, 'vectors' | 'count' | 'dim' | 'vectors2' | 'dim2'> {
  const hl = checkVectorHeader(path, l);
  const hg = checkVectorHeader(path, g);
  if (hl.count !== hg.count) {
    throw new EmbeddingError(path, `${l.what} has ${vectorCount(hl.count)} but ${g.what} has ${hg.count}; an SDXL word has the same number for both text encoders`);
  }
  const vectors = l.read();
  checkFinite(path, vectors, l.what);
  const vectors2 = g.read();
  checkFinite(path, vectors2, g.what);
  return { vectors, count: hl.count, dim: hl.dim, vectors2, dim2: hg.dim };
}

function missingHalf(path: string, has: string, lacks: string): EmbeddingError {
  return new EmbeddingError(path, `holds "${has}" but no "${lacks}"; an SDXL embedding has vectors for both text encoders (clip_l and clip_g)`);
}

function fromSDXLSafetensors(path: string, f: SafetensorsFile): FileEmbedding {
  const l = f.tensors.has('clip_l');
  const g = f.tensors.has('clip_g');
  if (!l || !g) throw missingHalf(path, l ? 'clip_l' : 'clip_g', l ? 'clip_g' : 'clip_l');
  const meta = f.metadata;
  const v = readSDXLVectors(path, safetensorsSource(f, 'clip_l', 'clip_l'), safetensorsSource(f, 'clip_g', 'clip_g'));
  // kohya titles the file with its output name; oneword and converters write "name".
  return { ...v, format: 'sdxl-safetensors', sourceName: meta.name ?? meta['modelspec.title'], info: { ...meta } };
}

function fromSafetensors(path: string): FileEmbedding {
  const f = SafetensorsFile.open(path);
  const names = [...f.tensors.keys()];
  const meta = f.metadata;
  if (names.includes('clip_l') || names.includes('clip_g')) return fromSDXLSafetensors(path, f);
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
  const { vectors, count, dim, oneD } = readVectors(path, safetensorsSource(f, name));
  if (oneD && format === 'diffusers') format = 'diffusers-1d';
  return { vectors, count, dim, format, sourceName, info: { ...meta } };
}

function str(v: PyValue | undefined): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'bigint') return String(v);
  return undefined;
}

/** kohya's SDXL .pt: {"clip_l", "clip_g"}; other tools add scalar entries (name, step, ...), kept as info. */
function fromSDXLTorch(path: string, archive: TorchArchive, root: PyDict): FileEmbedding {
  const l = root.has('clip_l');
  const g = root.has('clip_g');
  if (!l || !g) throw missingHalf(path, l ? 'clip_l' : 'clip_g', l ? 'clip_g' : 'clip_l');
  const v = readSDXLVectors(path, torchSource(archive, path, root.get('clip_l'), 'clip_l'), torchSource(archive, path, root.get('clip_g'), 'clip_g'));
  const info: Record<string, string> = {};
  for (const [k, val] of root.map) {
    const s = str(val);
    if (typeof k === 'string' && k !== 'clip_l' && k !== 'clip_g' && s !== undefined) info[k] = s;
  }
  return { ...v, format: 'sdxl-pt', sourceName: info.name, info };
}

function fromTorch(path: string): FileEmbedding {
  // PickleError/PickleSecurityError propagate unchanged: their messages already name the file.
  const archive: TorchArchive = loadTorchArchive(path, { limits: EMBEDDING_ARCHIVE_LIMITS });
  try {
    const root = archive.root;
    if (!(root instanceof PyDict)) throw new EmbeddingError(path, `top-level object is ${describe(root)}; expected a dict`);
    if (root.has('clip_l') || root.has('clip_g')) return fromSDXLTorch(path, archive, root);
    const info: Record<string, string> = {};
    let tensor: PyValue | undefined;
    let format: EmbeddingFormat;
    let sourceName: string | undefined;
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
      throw new EmbeddingError(path, `not an embedding: expected string_to_param, emb_params, clip_l + clip_g or a single {token: tensor} entry, found keys ${keys}`);
    }
    const { vectors, count, dim, oneD } = readVectors(path, torchSource(archive, path, tensor, 'embedding tensor', 'embedding value'));
    if (oneD && format === 'diffusers-bin') format = 'diffusers-1d';
    return { vectors, count, dim, format, sourceName, info };
  } finally {
    archive.close();
  }
}

/** One file, any single-file layout. */
function readEmbeddingFile(path: string): FileEmbedding {
  let container: Container;
  try {
    container = sniff(path);
  } catch (e) {
    throw new EmbeddingError(path, `cannot read: ${(e as Error).message}`, { cause: e });
  }
  switch (container) {
    case 'safetensors': return fromSafetensors(path);
    case 'torch-zip': return fromTorch(path);
    case 'torch-legacy':
      throw new EmbeddingError(path, 'is in the legacy (pre-1.6) PyTorch format; re-save it with a recent torch.save');
    case 'png': case 'webp':
      throw new EmbeddingError(path, 'is an image; embeddings stored inside images (A1111 "embedding previews") are not supported');
    default:
      throw new EmbeddingError(path, 'is not a safetensors file or a PyTorch archive');
  }
}

const isDiffusersLayout = (f: EmbeddingFormat) => f === 'diffusers' || f === 'diffusers-bin' || f === 'diffusers-1d';

/** diffusers' SDXL script names a step's files learned_embeds-steps-S and learned_embeds_2-steps-S. */
const STEPS_SUFFIX = /^(.*)(-steps-\d+)$/;
const SECOND_OF_PAIR = /^(.*)_2(-steps-\d+)?$/;

/**
 * The text_encoder_2 file that goes with a diffusers SDXL file:
 * learned_embeds.safetensors → learned_embeds_2.safetensors,
 * learned_embeds-steps-500.safetensors → learned_embeds_2-steps-500.safetensors.
 */
export function diffusersSecondFile(path: string): string {
  const ext = extname(path);
  const stem = basename(path).slice(0, basename(path).length - ext.length);
  const m = STEPS_SUFFIX.exec(stem);
  return join(dirname(path), m ? `${m[1]}_2${m[2]}${ext}` : `${stem}_2${ext}`);
}

/**
 * For a name like X_2(-steps-S).ext, the first file of the pair it would belong to, and
 * whether X is the name diffusers' script writes (then the file is a second half even alone).
 */
function diffusersFirstFile(path: string): { first: string; scriptName: boolean } | undefined {
  const ext = extname(path);
  const m = SECOND_OF_PAIR.exec(basename(path).slice(0, basename(path).length - ext.length));
  if (!m || !m[1]) return undefined;
  return { first: join(dirname(path), `${m[1]}${m[2] ?? ''}${ext}`), scriptName: m[1] === 'learned_embeds' };
}

const isFile = (p: string) => existsSync(p) && statSync(p).isFile();

/**
 * A diffusers file with a `<stem>_2` sibling is read as the SDXL pair; a second file on its
 * own is refused, since half an SDXL word would silently lose text encoder 1's vectors.
 */
function withDiffusersPartner(path: string, first: FileEmbedding): FileEmbedding {
  const second = diffusersSecondFile(path);
  if (isFile(second)) {
    const e2 = readEmbeddingFile(second);
    // A partner of another kind (an emb_params file that happens to be named X_2) is a separate embedding.
    if (isDiffusersLayout(e2.format)) return joinPair(path, first, second, e2);
  }
  const pair = diffusersFirstFile(path);
  if (pair && (pair.scriptName || isFile(pair.first))) {
    throw new EmbeddingError(path, `is the text_encoder_2 half of a diffusers SDXL pair; pass the first file, ${basename(pair.first)} (${basename(path)} is read with it)`, { usage: true });
  }
  return first;
}

function joinPair(path: string, e1: FileEmbedding, second: string, e2: FileEmbedding): FileEmbedding {
  const both = `${basename(path)} and ${basename(second)}`;
  if (e1.sourceName !== e2.sourceName) {
    throw new EmbeddingError(path, `${both} are a diffusers SDXL pair by name but define different tokens (${JSON.stringify(e1.sourceName)} and ${JSON.stringify(e2.sourceName)}); if they are separate embeddings, rename ${basename(second)}`);
  }
  if (e1.count !== e2.count) {
    throw new EmbeddingError(path, `${both} are a diffusers SDXL pair but hold ${e1.count} and ${e2.count} vectors; both text encoders need the same number`);
  }
  return { vectors: e1.vectors, count: e1.count, dim: e1.dim, vectors2: e2.vectors, dim2: e2.dim, format: 'diffusers-sdxl-pair', sourceName: e1.sourceName, info: e1.info };
}

/**
 * Reads an embedding file of any supported layout. Errors name the file and say what
 * was found; hostile pickles raise PickleSecurityError without running anything.
 * For a diffusers SDXL pair pass the first file (learned_embeds.safetensors); its
 * learned_embeds_2.safetensors is read with it.
 */
export function loadEmbedding(path: string, opts: { token?: string } = {}): Embedding {
  let e = readEmbeddingFile(path);
  if (isDiffusersLayout(e.format)) e = withDiffusersPartner(path, e);
  // diffusers files name their token inside (load_textual_inversion uses that key);
  // A1111/kohya files are named by their file name, as A1111 and ComfyUI do.
  const token = opts.token ?? ((isDiffusersLayout(e.format) || e.format === 'diffusers-sdxl-pair') && e.sourceName ? e.sourceName : defaultTokenName(path));
  if (!token.trim()) throw new EmbeddingError(path, 'embedding token must not be empty');
  return { token, ...e };
}

/** Names a text encoder by its width, for messages. */
function sdFamily(dim: number): string {
  return dim === 768 ? 'SD 1.x' : dim === 1024 ? 'SD 2.x' : 'SD 1.x/2.x';
}

/**
 * Why an embedding cannot teach a model its word, in one line naming both sides' widths;
 * null when it fits. `model.dim2` is set for SDXL (text encoder 2's width).
 */
export function embeddingWidthProblem(e: LearnedEmbedding, model: { dim: number; dim2?: number }): string | null {
  const dim2 = e.vectors2 ? (e.dim2 ?? e.vectors2.length / e.count) : undefined;
  if (dim2 === undefined && model.dim2 === undefined) {
    return e.dim === model.dim ? null : `the embedding has ${e.dim}-dimensional vectors but this model's text encoder uses ${model.dim} (SD 1.x: 768, SD 2.x: 1024)`;
  }
  if (dim2 === undefined) {
    return `this is an SD 1.x/2.x embedding (${e.dim} wide) but the model is SDXL (clip_l ${model.dim}, clip_g ${model.dim2}): SDXL needs an embedding with vectors for both text encoders (clip_l and clip_g)`;
  }
  if (model.dim2 === undefined) {
    return `an SDXL embedding (clip_l ${e.dim}, clip_g ${dim2}) cannot be used with an ${sdFamily(model.dim)} model (${model.dim})`;
  }
  if (e.dim === model.dim && dim2 === model.dim2) return null;
  return `this SDXL embedding (clip_l ${e.dim}, clip_g ${dim2}) does not fit the model (clip_l ${model.dim}, clip_g ${model.dim2})`;
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

function checkVectors(path: string, vectors: Float32Array, n: number, d: number, what = ''): void {
  const w = what ? `${what}: ` : '';
  if (!Number.isInteger(n) || !Number.isInteger(d) || n < 1 || d < 1) throw new EmbeddingError(path, `${w}bad embedding shape [${n}, ${d}]`);
  if (vectors.length !== n * d) throw new EmbeddingError(path, `${w}expected ${n}×${d} = ${n * d} values, got ${vectors.length}`);
  checkFinite(path, vectors, what || 'embedding');
}

function checkDiffusersToken(path: string, token: string): void {
  if (!token || token === '__metadata__') throw new EmbeddingError(path, `cannot save under token ${JSON.stringify(token)}`);
}

/** diffusers `learned_embeds.safetensors`: `{token: f32 [N, D]}` (loadable by load_textual_inversion). */
export function saveDiffusersEmbedding(path: string, token: string, vectors: Float32Array, n: number, d: number, extraMeta: Record<string, string> = {}): void {
  checkVectors(path, vectors, n, d);
  checkDiffusersToken(path, token);
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

/** safetensors metadata for A1111-style files: format, name, then the training info under A1111's .pt keys. */
function a1111Metadata(name: string, extraMeta: A1111Meta): Record<string, string> {
  const meta: Record<string, string> = { format: 'pt', name };
  for (const [k, v] of Object.entries(extraMeta)) {
    if (v === undefined) continue;
    // Same keys as A1111's .pt dict, so the information survives a round trip.
    const key = k === 'sdCheckpoint' ? 'sd_checkpoint' : k === 'sdCheckpointName' ? 'sd_checkpoint_name' : k;
    if (key === 'name' || key === 'format') continue;
    meta[key] = String(v);
  }
  return meta;
}

/** AUTOMATIC1111 / ComfyUI `<name>.safetensors`: `{emb_params: f32 [N, D]}` plus the name in the metadata. */
export function saveA1111Embedding(path: string, name: string, vectors: Float32Array, n: number, d: number, extraMeta: A1111Meta = {}): void {
  checkVectors(path, vectors, n, d);
  writeSafetensors(path, { emb_params: { dtype: 'F32', shape: [n, d], data: vectors } }, a1111Metadata(name, extraMeta));
}

/**
 * SDXL `<name>.safetensors` as kohya's sdxl_train_textual_inversion writes it and A1111 and
 * ComfyUI read it: `{clip_l: f32 [N, D1], clip_g: f32 [N, D2]}`. The metadata (which those
 * tools do not need) carries the name, the training info, and kohya's model-spec keys so
 * model browsers file it as an SDXL textual inversion.
 */
export function saveSDXLEmbedding(
  path: string, name: string, vectors1: Float32Array, vectors2: Float32Array,
  n: number, d1: number, d2: number, extraMeta: A1111Meta = {},
): void {
  checkVectors(path, vectors1, n, d1, 'clip_l');
  checkVectors(path, vectors2, n, d2, 'clip_g');
  const meta = {
    'modelspec.sai_model_spec': '1.0.0',
    'modelspec.architecture': 'stable-diffusion-xl-v1-base/textual-inversion',
    'modelspec.implementation': 'https://github.com/Stability-AI/generative-models',
    'modelspec.title': name,
    ...a1111Metadata(name, extraMeta),
  };
  writeSafetensors(path, {
    clip_l: { dtype: 'F32', shape: [n, d1], data: vectors1 },
    clip_g: { dtype: 'F32', shape: [n, d2], data: vectors2 },
  }, meta);
}

/**
 * diffusers' SDXL pair: `path` (e.g. learned_embeds.safetensors) holds `{token: [N, D1]}` for
 * text_encoder, its `_2` sibling (learned_embeds_2.safetensors) `{token: [N, D2]}` for
 * text_encoder_2 — each loadable by load_textual_inversion. Both files are written in full
 * to temporary names before either is renamed into place, so a failed write leaves the old
 * pair (or nothing) rather than one new half.
 */
export function saveDiffusersSDXLEmbedding(
  path: string, token: string, vectors1: Float32Array, vectors2: Float32Array,
  n: number, d1: number, d2: number, extraMeta: Record<string, string> = {},
): void {
  checkVectors(path, vectors1, n, d1, 'text_encoder');
  checkVectors(path, vectors2, n, d2, 'text_encoder_2');
  checkDiffusersToken(path, token);
  const second = diffusersSecondFile(path);
  const meta = { ...extraMeta, format: 'pt' };
  const tmp = (p: string) => join(dirname(p), `.${basename(p)}.${process.pid}.${randomBytes(4).toString('hex')}.pair.tmp`);
  const staged: [string, string][] = [[tmp(second), second], [tmp(path), path]];
  try {
    writeSafetensors(staged[0][0], { [token]: { dtype: 'F32', shape: [n, d2], data: vectors2 } }, meta);
    writeSafetensors(staged[1][0], { [token]: { dtype: 'F32', shape: [n, d1], data: vectors1 } }, meta);
    for (const [from, to] of staged) renameSync(from, to);
  } catch (e) {
    for (const [from] of staged) {
      try { unlinkSync(from); } catch { /* never written or already renamed */ }
    }
    if (e instanceof OnewordError) throw e;
    throw new EmbeddingError(path, `write failed: ${(e as Error).message}`, { cause: e });
  }
}
