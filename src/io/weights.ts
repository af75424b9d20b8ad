// A component's weights under diffusers' names, read lazily from safetensors files: the
// one WeightSet interface model code reads, the file-backed implementation, and checking
// a file's tensors against a weight spec (names → shapes) with one error listing every problem.
import type { SafetensorsFile, SafeDType } from './safetensors.ts';
import { OnewordError } from '../errors.ts';

export class CheckpointError extends OnewordError {
  constructor(readonly path: string, problem: string) {
    super(`${path}: ${problem}`);
    this.name = 'CheckpointError';
  }
}

/** The exact weights (diffusers names → shapes) an architecture needs for a config. */
export type WeightSpec = Map<string, number[]>;

/** One component's weights under diffusers names (no component prefix). */
export interface WeightSet {
  /** Every weight name, sorted. */
  names(): string[];
  has(name: string): boolean;
  shape(name: string): number[];
  /** Reads (and casts to float32) on demand; file-backed sets cache nothing, so read each weight once. */
  float32(name: string): Float32Array;
  /** Where the raw little-endian float32 bytes live in a file (for ONNX external data); null when not in a file as float32. */
  fileLocation(name: string): { path: string; offset: number; length: number } | null;
}

export type Transform =
  | { kind: 'none' }
  /** same bytes, trailing size-1 dims dropped (LDM VAE attention convs → linears) */
  | { kind: 'reshape' }
  /** part `index` of `count` equal parts along dim 0 (OpenCLIP's fused in_proj → q/k/v) */
  | { kind: 'chunk'; index: number; count: number }
  /** a 2-D tensor stored transposed (OpenCLIP's text_projection [D, Dp] → [Dp, D]) */
  | { kind: 'transpose' };

/** Where one weight's bytes come from. */
export interface WeightSource { file: SafetensorsFile; tensor: string; transform: Transform }
interface Entry { shape: number[]; src: WeightSource }

/** Weights mapped onto tensors of safetensors files (possibly renamed, reshaped or sliced). */
export class FileWeights implements WeightSet {
  constructor(private readonly label: string, private readonly entries: Map<string, Entry>) {}

  names(): string[] { return [...this.entries.keys()].sort(); }
  has(name: string): boolean { return this.entries.has(name); }
  shape(name: string): number[] { return this.get(name).shape.slice(); }
  /** dtype as stored on disk (float32() casts F16/BF16/F64). */
  dtype(name: string): SafeDType { const s = this.get(name).src; return s.file.info(s.tensor).dtype; }

  float32(name: string): Float32Array {
    const { shape, src } = this.get(name);
    if (src.transform.kind === 'transpose') return transposed(src.file.readFloat32(src.tensor), shape[1], shape[0]);
    if (src.transform.kind !== 'chunk') return src.file.readFloat32(src.tensor);
    const n = product(shape);
    return src.file.readFloat32(src.tensor, { start: src.transform.index * n, count: n });
  }

  fileLocation(name: string): { path: string; offset: number; length: number } | null {
    const { shape, src } = this.get(name);
    const info = src.file.info(src.tensor);
    if (info.dtype !== 'F32' || src.transform.kind === 'transpose') return null;
    const length = product(shape) * 4;
    const offset = info.offset + (src.transform.kind === 'chunk' ? src.transform.index * length : 0);
    return { path: src.file.path, offset, length };
  }

  /** The weights under `prefix.` with that prefix removed (e.g. scope('text_model')). */
  scope(prefix: string): FileWeights {
    const p = prefix.endsWith('.') ? prefix : `${prefix}.`;
    const sub = new Map<string, Entry>();
    for (const [k, v] of this.entries) if (k.startsWith(p)) sub.set(k.slice(p.length), v);
    return new FileWeights(`${this.label} (${p.slice(0, -1)})`, sub);
  }

  private get(name: string): Entry {
    const e = this.entries.get(name);
    if (!e) throw new CheckpointError(this.label, `no weight named "${name}"`);
    return e;
  }
}

export const NO_TRANSFORM: Transform = { kind: 'none' };
export const RESHAPE: Transform = { kind: 'reshape' };

const FLOAT_DTYPES = new Set<SafeDType>(['F32', 'F16', 'BF16', 'F64']);

function shapeFits(src: number[], want: number[], t: Transform): boolean {
  if (t.kind === 'transpose') return src.length === 2 && want.length === 2 && src[0] === want[1] && src[1] === want[0];
  if (t.kind === 'chunk') return src.length === want.length && src[0] === want[0] * t.count && src.slice(1).every((d, i) => d === want[i + 1]);
  if (t.kind === 'reshape') return src.length >= want.length && want.every((d, i) => d === src[i]) && src.slice(want.length).every((d) => d === 1);
  return src.length === want.length && src.every((d, i) => d === want[i]);
}

export function listSome(xs: string[], max = 8): string {
  return xs.slice(0, max).join('; ') + (xs.length > max ? `; … and ${xs.length - max} more` : '');
}

/** Finds every weight of `expected` through `lookup`, or throws one error naming every missing or misfit tensor. */
export function resolveComponent(
  where: string, label: string, expected: WeightSpec,
  lookup: (name: string) => { src: WeightSource; srcLabel: string } | { missing: string },
): FileWeights {
  const entries = new Map<string, Entry>();
  const missing: string[] = [];
  const wrong: string[] = [];
  for (const [name, shape] of expected) {
    const r = lookup(name);
    if ('missing' in r) { missing.push(r.missing); continue; }
    const info = r.src.file.info(r.src.tensor);
    if (!FLOAT_DTYPES.has(info.dtype)) { wrong.push(`${r.srcLabel} has dtype ${info.dtype}, expected a float type`); continue; }
    if (!shapeFits(info.shape, shape, r.src.transform)) {
      const t = r.src.transform;
      const want = t.kind === 'chunk' ? [shape[0] * t.count, ...shape.slice(1)] : t.kind === 'transpose' ? [...shape].reverse() : shape;
      wrong.push(`${r.srcLabel} has shape [${info.shape.join(', ')}], expected [${want.join(', ')}]`);
      continue;
    }
    entries.set(name, { shape, src: r.src });
  }
  const problems: string[] = [];
  if (missing.length) problems.push(`${missing.length} of ${expected.size} ${label} tensors are missing: ${listSome(missing)}`);
  if (wrong.length) problems.push(`${wrong.length} ${label} tensors do not fit the configuration: ${listSome(wrong)}`);
  if (problems.length) throw new CheckpointError(where, problems.join('. '));
  return new FileWeights(`${where} [${label}]`, entries);
}

function product(s: number[]): number { return s.reduce((a, b) => a * b, 1); }

/** A row-major [rows, cols] matrix as [cols, rows]. */
function transposed(a: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = a[i * cols + j];
  return out;
}
