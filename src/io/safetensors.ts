// safetensors: 8-byte little-endian header length, JSON header, raw little-endian data.
// The reader parses only the header up front; tensor bytes are read on demand.
import { openSync, readSync, closeSync, fstatSync } from 'node:fs';

export type SafeDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export interface TensorInfo {
  name: string;
  dtype: SafeDType;
  shape: number[];
  /** Absolute byte offset of the tensor's data in the file. */
  offset: number;
  byteLength: number;
}

export type TypedArray = Float32Array | Float64Array | BigInt64Array | Int32Array | Int16Array | Int8Array | Uint8Array | Uint16Array;

export class SafetensorsFile {
  readonly tensors = new Map<string, TensorInfo>();
  metadata: Record<string, string> = {};
  private constructor(readonly path: string, readonly dataStart: number) {}

  static open(path: string): SafetensorsFile {
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      const lenBuf = Buffer.alloc(8);
      readSync(fd, lenBuf, 0, 8, 0);
      const n = Number(lenBuf.readBigUInt64LE(0));
      const hdr = Buffer.alloc(n);
      readSync(fd, hdr, 0, n, 8);
      const json = JSON.parse(hdr.toString('utf8')) as Record<string, any>;
      const f = new SafetensorsFile(path, 8 + n);
      void size;
      for (const [name, v] of Object.entries(json)) {
        if (name === '__metadata__') { f.metadata = v; continue; }
        const [b, e] = v.data_offsets as [number, number];
        f.tensors.set(name, { name, dtype: v.dtype, shape: v.shape, offset: 8 + n + b, byteLength: e - b });
      }
      return f;
    } finally {
      closeSync(fd);
    }
  }

  has(name: string): boolean { return this.tensors.has(name); }
  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`${this.path}: no tensor named "${name}"`);
    return t;
  }

  /** Raw bytes of one tensor. */
  readBytes(name: string): Uint8Array {
    const t = this.info(name);
    const buf = new Uint8Array(t.byteLength);
    const fd = openSync(this.path, 'r');
    try { readSync(fd, buf, 0, t.byteLength, t.offset); } finally { closeSync(fd); }
    return buf;
  }

  /** Tensor data as a typed array of its own dtype (F16/BF16 come back as Uint16Array). */
  read(name: string): TypedArray {
    const t = this.info(name);
    const b = this.readBytes(name);
    const ab = b.buffer;
    switch (t.dtype) {
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

  /** Tensor data converted to float32 (from F32, F16, BF16, F64 or integer types). */
  readFloat32(name: string): Float32Array {
    const t = this.info(name);
    const a = this.read(name);
    if (a instanceof Float32Array) return a;
    if (t.dtype === 'F16') return f16ToF32(a as Uint16Array);
    if (t.dtype === 'BF16') { const u = a as Uint16Array; const o = new Float32Array(u.length); const v = new Uint32Array(o.buffer); for (let i = 0; i < u.length; i++) v[i] = u[i] << 16; return o; }
    if (a instanceof BigInt64Array) return Float32Array.from(a, (x) => Number(x));
    return Float32Array.from(a as ArrayLike<number>);
  }
}

export function f16ToF32(u: Uint16Array): Float32Array {
  const out = new Float32Array(u.length);
  for (let i = 0; i < u.length; i++) {
    const h = u[i];
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    out[i] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
  }
  return out;
}
