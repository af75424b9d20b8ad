// safetensors: 8-byte little-endian header length N, N bytes of JSON header, then raw
// little-endian tensor data. The reader parses and validates only the header up front;
// tensor bytes are read on demand, one tensor (or a slice of one) at a time, so multi-GB
// files are never read whole. Validation follows the reference implementation
// (huggingface/safetensors `Metadata::validate`): sorted by offset, the tensors must tile
// the data section exactly, and each byte range must equal shape × dtype size.
import { openSync, readSync, writeSync, closeSync, fstatSync, fsyncSync, renameSync, unlinkSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { endianness } from 'node:os';
import { OnewordError } from '../errors.ts';

export type SafeDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export const DTYPE_BYTES: Readonly<Record<SafeDType, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};

/** Valid in the format but not readable here; named so the error can say "unsupported" rather than "unknown". */
const KNOWN_UNSUPPORTED_DTYPES = new Set(['U16', 'U32', 'U64', 'F8_E4M3', 'F8_E5M2', 'F8_E8M0', 'F6_E2M3', 'F6_E3M2', 'F4', 'C64']);

/** The reference implementation's limit: anything larger is a hostile or broken file. */
export const MAX_HEADER_BYTES = 100_000_000;

export interface TensorInfo {
  name: string;
  dtype: SafeDType;
  shape: number[];
  /** Absolute byte offset of the tensor's data in the file. */
  offset: number;
  byteLength: number;
}

export type TypedArray = Float32Array | Float64Array | BigInt64Array | Int32Array | Int16Array | Int8Array | Uint8Array | Uint16Array;

export type SafetensorsErrorCode =
  | 'IO'              // the file cannot be opened/read/written
  | 'TOO_SMALL'       // shorter than the 8-byte length prefix
  | 'HEADER_TOO_LARGE'
  | 'HEADER_LENGTH'   // header length runs past the end of the file
  | 'HEADER_JSON'     // not UTF-8 / not JSON / not an object
  | 'HEADER_SCHEMA'   // a field has the wrong type
  | 'DTYPE'
  | 'OFFSETS'         // begin > end, gaps, overlaps, not starting at 0
  | 'SIZE_MISMATCH'   // byte range ≠ shape × dtype size
  | 'TRAILING_DATA'   // bytes after the last tensor
  | 'TRUNCATED'       // data section shorter than the header says
  | 'NOT_FOUND'       // no tensor of that name
  | 'BAD_RANGE'       // a slice request outside the tensor
  | 'INVALID_TENSOR'; // writer input does not match its dtype/shape

export class SafetensorsError extends OnewordError {
  constructor(readonly path: string, readonly code: SafetensorsErrorCode, problem: string, options?: { cause?: unknown }) {
    super(`${path}: ${problem}`, { cause: options?.cause });
    this.name = 'SafetensorsError';
  }
}

const LITTLE_ENDIAN_HOST = endianness() === 'LE';

export class SafetensorsFile {
  readonly tensors = new Map<string, TensorInfo>();
  metadata: Record<string, string> = {};
  private constructor(readonly path: string, readonly dataStart: number, readonly fileSize: number) {}

  /** Opens and validates the header; throws SafetensorsError for anything malformed. */
  static open(path: string): SafetensorsFile {
    if (!LITTLE_ENDIAN_HOST) throw new SafetensorsError(path, 'IO', 'big-endian hosts are not supported (safetensors data is little-endian)');
    const fd = openOrThrow(path, 'r');
    try {
      const size = fstatSync(fd).size;
      if (size < 8) throw new SafetensorsError(path, 'TOO_SMALL', `file is ${size} bytes; a safetensors file starts with an 8-byte header length`);
      const lenBuf = Buffer.alloc(8);
      readFully(fd, path, lenBuf, 0);
      const n64 = lenBuf.readBigUInt64LE(0);
      if (n64 > BigInt(MAX_HEADER_BYTES)) {
        throw new SafetensorsError(path, 'HEADER_TOO_LARGE', `header length ${n64} exceeds the ${MAX_HEADER_BYTES}-byte limit (corrupt file, or not a safetensors file)`);
      }
      const n = Number(n64);
      if (8 + n > size) {
        throw new SafetensorsError(path, 'HEADER_LENGTH', `header length ${n} runs past the end of the ${size}-byte file (truncated, or not a safetensors file)`);
      }
      const hdr = Buffer.alloc(n);
      readFully(fd, path, hdr, 8);
      const f = new SafetensorsFile(path, 8 + n, size);
      f.parseHeader(hdr);
      return f;
    } finally {
      closeSync(fd);
    }
  }

  private parseHeader(hdr: Buffer): void {
    const path = this.path;
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(hdr);
    } catch {
      throw new SafetensorsError(path, 'HEADER_JSON', 'header is not valid UTF-8');
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new SafetensorsError(path, 'HEADER_JSON', `header is not valid JSON (${(e as Error).message})`);
    }
    if (!isPlainObject(json)) throw new SafetensorsError(path, 'HEADER_JSON', 'header JSON is not an object');

    const list: TensorInfo[] = [];
    const rel = new Map<TensorInfo, [number, number]>();
    for (const [name, v] of Object.entries(json)) {
      if (name === '__metadata__') {
        if (!isPlainObject(v)) throw new SafetensorsError(path, 'HEADER_SCHEMA', '"__metadata__" must be an object of strings');
        for (const [k, s] of Object.entries(v)) {
          if (typeof s !== 'string') throw new SafetensorsError(path, 'HEADER_SCHEMA', `metadata value "${k}" is not a string`);
        }
        this.metadata = Object.fromEntries(Object.entries(v as Record<string, string>));
        continue;
      }
      if (!isPlainObject(v)) throw new SafetensorsError(path, 'HEADER_SCHEMA', `entry "${name}" is not an object`);
      const e = v as Record<string, unknown>;
      const dtype = e.dtype;
      if (typeof dtype !== 'string') throw new SafetensorsError(path, 'HEADER_SCHEMA', `tensor "${name}" has no dtype string`);
      if (!(dtype in DTYPE_BYTES)) {
        const why = KNOWN_UNSUPPORTED_DTYPES.has(dtype) ? 'unsupported' : 'unknown';
        throw new SafetensorsError(path, 'DTYPE', `tensor "${name}" has ${why} dtype "${truncate(dtype)}"`);
      }
      const shape = e.shape;
      if (!Array.isArray(shape) || !shape.every(isSafeNonNegInt)) {
        throw new SafetensorsError(path, 'HEADER_SCHEMA', `tensor "${name}" shape must be a list of non-negative integers`);
      }
      const offs = e.data_offsets;
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isSafeNonNegInt)) {
        throw new SafetensorsError(path, 'HEADER_SCHEMA', `tensor "${name}" data_offsets must be [begin, end] non-negative integers`);
      }
      const [b, en] = offs as [number, number];
      if (en < b) throw new SafetensorsError(path, 'OFFSETS', `tensor "${name}" has data_offsets [${b}, ${en}] with end before begin`);
      let elems = 1;
      for (const d of shape as number[]) {
        elems *= d;
        if (!Number.isSafeInteger(elems)) throw new SafetensorsError(path, 'SIZE_MISMATCH', `tensor "${name}" shape [${shape.join(', ')}] overflows`);
      }
      const nbytes = elems * DTYPE_BYTES[dtype as SafeDType];
      if (nbytes !== en - b) {
        throw new SafetensorsError(path, 'SIZE_MISMATCH', `tensor "${name}" is ${dtype} [${shape.join(', ')}] = ${nbytes} bytes but its data_offsets span ${en - b} bytes`);
      }
      const info: TensorInfo = { name, dtype: dtype as SafeDType, shape: (shape as number[]).slice(), offset: this.dataStart + b, byteLength: en - b };
      list.push(info);
      rel.set(info, [b, en]);
    }

    // The spec requires the tensors to tile the data section: no gaps, no overlaps.
    list.sort((x, y) => rel.get(x)![0] - rel.get(y)![0] || rel.get(x)![1] - rel.get(y)![1]);
    let pos = 0;
    for (const t of list) {
      const [b, en] = rel.get(t)!;
      if (b < pos) throw new SafetensorsError(path, 'OFFSETS', `tensor "${t.name}" data [${b}, ${en}] overlaps the previous tensor (which ends at ${pos})`);
      if (b > pos) throw new SafetensorsError(path, 'OFFSETS', `gap in the data section: bytes [${pos}, ${b}) belong to no tensor (before "${t.name}")`);
      pos = en;
    }
    const dataBytes = this.fileSize - this.dataStart;
    if (pos > dataBytes) {
      throw new SafetensorsError(path, 'TRUNCATED', `data section should be ${pos} bytes but the file holds only ${dataBytes} after the header (truncated download?)`);
    }
    if (pos < dataBytes) {
      throw new SafetensorsError(path, 'TRAILING_DATA', `${dataBytes - pos} bytes after the last tensor belong to no tensor`);
    }
    for (const t of list) this.tensors.set(t.name, t);
  }

  has(name: string): boolean { return this.tensors.has(name); }
  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new SafetensorsError(this.path, 'NOT_FOUND', `no tensor named "${name}"`);
    return t;
  }

  /**
   * Raw bytes of one tensor, or of `count` elements starting at element `start`
   * (a contiguous slice in row-major order, e.g. one third of a fused qkv weight).
   */
  readBytes(name: string, range?: { start: number; count: number }): Uint8Array {
    const t = this.info(name);
    const es = DTYPE_BYTES[t.dtype];
    let pos = t.offset;
    let len = t.byteLength;
    if (range) {
      const { start, count } = range;
      if (!isSafeNonNegInt(start) || !isSafeNonNegInt(count) || (start + count) * es > t.byteLength) {
        throw new SafetensorsError(this.path, 'BAD_RANGE', `elements [${start}, ${start + count}) are outside tensor "${name}" (${t.byteLength / es} elements)`);
      }
      pos += start * es;
      len = count * es;
    }
    const buf = new Uint8Array(len);
    const fd = openOrThrow(this.path, 'r');
    try { readFully(fd, this.path, buf, pos); } finally { closeSync(fd); }
    return buf;
  }

  /** Tensor data as a typed array of its own dtype (F16/BF16 come back as raw Uint16Array bits). */
  read(name: string, range?: { start: number; count: number }): TypedArray {
    const t = this.info(name);
    return viewAs(t.dtype, this.readBytes(name, range));
  }

  /** Tensor data converted to float32 (from F32, F16, BF16, F64, or integer/bool types). */
  readFloat32(name: string, range?: { start: number; count: number }): Float32Array {
    const t = this.info(name);
    const a = this.read(name, range);
    switch (t.dtype) {
      case 'F32': return a as Float32Array;
      case 'F16': return f16ToF32(a as Uint16Array);
      case 'BF16': return bf16ToF32(a as Uint16Array);
      case 'I64': return Float32Array.from(a as BigInt64Array, (x) => Number(x));
      default: return Float32Array.from(a as ArrayLike<number>);
    }
  }
}

function viewAs(dtype: SafeDType, b: Uint8Array): TypedArray {
  const ab = b.buffer as ArrayBuffer; // freshly allocated, offset 0, so every view is aligned
  switch (dtype) {
    case 'F32': return new Float32Array(ab);
    case 'F64': return new Float64Array(ab);
    case 'I64': return new BigInt64Array(ab);
    case 'I32': return new Int32Array(ab);
    case 'I16': return new Int16Array(ab);
    case 'I8': return new Int8Array(ab);
    case 'U8': case 'BOOL': return b;
    case 'F16': case 'BF16': return new Uint16Array(ab);
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
function isSafeNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}
function truncate(s: string): string { return s.length > 40 ? `${s.slice(0, 40)}…` : s; }

function openOrThrow(path: string, flags: string): number {
  try {
    return openSync(path, flags);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory, not a file' : code === 'EACCES' ? 'permission denied' : (e as Error).message;
    throw new SafetensorsError(path, 'IO', `cannot open: ${why}`, { cause: e });
  }
}

/** readSync may return short counts (and caps single reads near 2 GiB); loop until done. */
function readFully(fd: number, path: string, buf: Uint8Array, position: number): void {
  let done = 0;
  while (done < buf.length) {
    let n: number;
    try {
      n = readSync(fd, buf, done, Math.min(buf.length - done, 0x40000000), position + done);
    } catch (e) {
      throw new SafetensorsError(path, 'IO', `read failed: ${(e as Error).message}`, { cause: e });
    }
    if (n === 0) throw new SafetensorsError(path, 'TRUNCATED', `unexpected end of file at byte ${position + done} (file changed or truncated?)`);
    done += n;
  }
}

// ---------------------------------------------------------------------------------------
// Writing

export interface TensorToWrite {
  dtype: SafeDType;
  shape: number[];
  data: TypedArray;
}

const ARRAY_FOR_DTYPE: Record<SafeDType, { name: string }> = {
  F64: Float64Array, F32: Float32Array, F16: Uint16Array, BF16: Uint16Array, I64: BigInt64Array,
  I32: Int32Array, I16: Int16Array, I8: Int8Array, U8: Uint8Array, BOOL: Uint8Array,
};

interface Layout { header: Buffer; parts: Uint8Array[]; total: number }

function layout(path: string, tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): Layout {
  const names = Object.keys(tensors);
  for (const name of names) {
    if (name === '__metadata__') throw new SafetensorsError(path, 'INVALID_TENSOR', '"__metadata__" is reserved and cannot name a tensor');
    const t = tensors[name];
    if (!(t.dtype in DTYPE_BYTES)) throw new SafetensorsError(path, 'INVALID_TENSOR', `tensor "${name}": unknown dtype "${t.dtype}"`);
    if (!Array.isArray(t.shape) || !t.shape.every(isSafeNonNegInt)) {
      throw new SafetensorsError(path, 'INVALID_TENSOR', `tensor "${name}": shape must be a list of non-negative integers`);
    }
    const want = ARRAY_FOR_DTYPE[t.dtype];
    if (!(t.data instanceof (want as unknown as typeof Uint8Array))) {
      throw new SafetensorsError(path, 'INVALID_TENSOR', `tensor "${name}": dtype ${t.dtype} needs a ${want.name}, got ${t.data?.constructor?.name ?? typeof t.data}`);
    }
    const elems = t.shape.reduce((a, b) => a * b, 1);
    if (elems !== t.data.length) {
      throw new SafetensorsError(path, 'INVALID_TENSOR', `tensor "${name}": shape [${t.shape.join(', ')}] holds ${elems} elements but data has ${t.data.length}`);
    }
  }
  if (metadata) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new SafetensorsError(path, 'INVALID_TENSOR', `metadata "${k}" must be a string`);
    }
  }
  // Widest dtype first (then by name): every tensor then starts at a multiple of its element
  // size, and the data section itself starts 8-aligned, so readers can map it in place.
  names.sort((a, b) => DTYPE_BYTES[tensors[b].dtype] - DTYPE_BYTES[tensors[a].dtype] || (a < b ? -1 : a > b ? 1 : 0));
  const hdr: Record<string, unknown> = {};
  if (metadata) hdr.__metadata__ = metadata;
  const parts: Uint8Array[] = [];
  let pos = 0;
  for (const name of names) {
    const t = tensors[name];
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    hdr[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [pos, pos + bytes.length] };
    parts.push(bytes);
    pos += bytes.length;
  }
  const json = Buffer.from(JSON.stringify(hdr), 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  const header = Buffer.alloc(8 + padded, 0x20);
  header.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(header, 8);
  return { header, parts, total: header.length + pos };
}

/** The whole file in memory (for small files and tests; use writeSafetensors for big ones). */
export function encodeSafetensors(tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): Buffer {
  const { header, parts, total } = layout('<memory>', tensors, metadata);
  const out = Buffer.alloc(total);
  header.copy(out, 0);
  let pos = header.length;
  for (const p of parts) { out.set(p, pos); pos += p.length; }
  return out;
}

/**
 * Writes atomically: streams into a temporary file in the same directory, fsyncs, then
 * renames over `path`, so a crash never leaves a half-written file under the real name.
 */
export function writeSafetensors(path: string, tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): void {
  const { header, parts } = layout(path, tensors, metadata);
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = openOrThrow(tmp, 'wx');
  try {
    writeFully(fd, tmp, header);
    for (const p of parts) writeFully(fd, tmp, p);
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, path);
  } catch (e) {
    try { closeSync(fd); } catch { /* already closed */ }
    try { unlinkSync(tmp); } catch { /* never created or already renamed */ }
    if (e instanceof SafetensorsError) throw e;
    throw new SafetensorsError(path, 'IO', `write failed: ${(e as Error).message}`, { cause: e });
  }
}

function writeFully(fd: number, path: string, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    const n = writeSync(fd, bytes, done, Math.min(bytes.length - done, 0x40000000));
    if (n <= 0) throw new SafetensorsError(path, 'IO', 'write made no progress');
    done += n;
  }
}

// ---------------------------------------------------------------------------------------
// Half-precision conversions (bit-exact; f32 → f16/bf16 round to nearest, ties to even)

let F16_TABLE: Float32Array | null = null;

/** Lookup table over all 65536 half values: one indexed load per element beats bit fiddling. */
function f16Table(): Float32Array {
  if (F16_TABLE) return F16_TABLE;
  const t = new Float32Array(65536);
  const bits = new Uint32Array(t.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0x1f) bits[h] = sign | 0x7f800000 | (m << 13);
    else if (e !== 0) bits[h] = sign | ((e + 112) << 23) | (m << 13);
    else t[h] = (sign ? -1 : 1) * m * 2 ** -24; // zero or subnormal: exact in f32
  }
  return (F16_TABLE = t);
}

export function f16ToF32(u: Uint16Array): Float32Array {
  const table = f16Table();
  const out = new Float32Array(u.length);
  for (let i = 0; i < u.length; i++) out[i] = table[u[i]];
  return out;
}

export function f32ToF16(f: Float32Array): Uint16Array {
  const x = new Uint32Array(f.buffer, f.byteOffset, f.length);
  const out = new Uint16Array(f.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    const sign = (v >>> 16) & 0x8000;
    const e = (v >>> 23) & 0xff;
    const m = v & 0x7fffff;
    if (e === 0xff) { out[i] = sign | 0x7c00 | (m ? 0x200 | (m >>> 13) : 0); continue; } // inf / NaN (kept quiet)
    const E = e - 112; // rebias 127 → 15
    if (E >= 0x1f) { out[i] = sign | 0x7c00; continue; } // overflow → inf
    if (E <= 0) {
      if (E < -10) { out[i] = sign; continue; } // below half the smallest subnormal → ±0
      const mm = m | 0x800000;
      const shift = 14 - E;
      let h = mm >>> shift;
      const rem = mm & ((1 << shift) - 1);
      const half = 1 << (shift - 1);
      if (rem > half || (rem === half && (h & 1))) h++; // may carry into the smallest normal: still correct
      out[i] = sign | h;
      continue;
    }
    let h = (E << 10) | (m >>> 13);
    const rem = m & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++; // a carry may round up to inf: correct
    out[i] = sign | h;
  }
  return out;
}

export function bf16ToF32(u: Uint16Array): Float32Array {
  const out = new Float32Array(u.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < u.length; i++) bits[i] = u[i] << 16;
  return out;
}

export function f32ToBf16(f: Float32Array): Uint16Array {
  const x = new Uint32Array(f.buffer, f.byteOffset, f.length);
  const out = new Uint16Array(f.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    if ((v & 0x7f800000) === 0x7f800000 && (v & 0x7fffff)) { out[i] = (v >>> 16) | 0x40; continue; } // NaN stays NaN
    out[i] = (v + 0x7fff + ((v >>> 16) & 1)) >>> 16;
  }
  return out;
}
