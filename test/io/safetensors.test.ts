import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  SafetensorsFile, SafetensorsError, encodeSafetensors, writeSafetensors, f16ToF32, f32ToF16, bf16ToF32, f32ToBf16,
  MAX_HEADER_BYTES, type TensorToWrite, type SafetensorsErrorCode,
} from '../../src/io/safetensors.ts';

const FIXTURE = new URL('../fixtures/sd1-tiny/text_encoder/model.safetensors', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'oneword-st-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
let fileNo = 0;
function tmpFile(bytes: Uint8Array): string {
  const p = join(dir, `f${fileNo++}.safetensors`);
  writeFileSync(p, bytes);
  return p;
}

function sample(): Record<string, TensorToWrite> {
  return {
    w: { dtype: 'F32', shape: [2, 3], data: Float32Array.from([1, -2, 3.5, 0, 1e-8, -0]) },
    h: { dtype: 'F16', shape: [3], data: f32ToF16(Float32Array.from([1, 0.5, -65504])) },
    b: { dtype: 'BF16', shape: [2], data: f32ToBf16(Float32Array.from([3, -0.25])) },
    ids: { dtype: 'I64', shape: [2], data: BigInt64Array.from([49406n, -1n]) },
    d: { dtype: 'F64', shape: [1], data: Float64Array.from([Math.PI]) },
    i32: { dtype: 'I32', shape: [1], data: Int32Array.from([-7]) },
    i16: { dtype: 'I16', shape: [1], data: Int16Array.from([-300]) },
    i8: { dtype: 'I8', shape: [1], data: Int8Array.from([-3]) },
    mask: { dtype: 'BOOL', shape: [3], data: Uint8Array.from([1, 0, 1]) },
    u8: { dtype: 'U8', shape: [2, 2], data: Uint8Array.from([0, 255, 7, 9]) },
    scalar: { dtype: 'F32', shape: [], data: Float32Array.from([7]) },
    empty: { dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
  };
}

/** A header + data built by hand, for files the writer would refuse to produce. */
function raw(header: unknown, dataBytes: number, headerLen?: bigint): Uint8Array {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const out = Buffer.alloc(8 + json.length + dataBytes);
  out.writeBigUInt64LE(headerLen ?? BigInt(json.length), 0);
  json.copy(out, 8);
  return out;
}

function expectError(path: string, code: SafetensorsErrorCode, re: RegExp): void {
  assert.throws(() => SafetensorsFile.open(path), (e: unknown) => {
    assert.ok(e instanceof SafetensorsError, `expected SafetensorsError, got ${e}`);
    assert.equal(e.code, code, e.message);
    assert.ok(e.message.startsWith(path + ': '), `message should name the file: ${e.message}`);
    assert.match(e.message, re);
    return true;
  });
}

test('round trip through the writer: every dtype, scalar and empty tensors, metadata', () => {
  const t = sample();
  const p = join(dir, 'rt.safetensors');
  writeSafetensors(p, t, { format: 'pt', note: 'héllo' });
  const bytes = readFileSync(p);
  assert.deepEqual(bytes, encodeSafetensors(t, { format: 'pt', note: 'héllo' }));
  const n = Number(bytes.readBigUInt64LE(0));
  assert.equal(n % 8, 0, 'header padded to a multiple of 8');
  assert.match(bytes.subarray(8, 8 + n).toString(), /} *$/, 'padding is spaces');

  const f = SafetensorsFile.open(p);
  assert.deepEqual(f.metadata, { format: 'pt', note: 'héllo' });
  assert.deepEqual([...f.tensors.keys()].sort(), Object.keys(t).sort());
  for (const [name, want] of Object.entries(t)) {
    const info = f.info(name);
    assert.equal(info.dtype, want.dtype);
    assert.deepEqual(info.shape, want.shape);
    assert.equal(info.offset % 8 === 0 || info.offset % (info.byteLength / Math.max(1, want.data.length)) === 0, true, `${name} aligned`);
    assert.deepEqual(f.read(name), want.data, name);
  }
  assert.deepEqual(f.readFloat32('h'), Float32Array.from([1, 0.5, -65504]));
  assert.deepEqual(f.readFloat32('b'), Float32Array.from([3, -0.25]));
  assert.deepEqual(f.readFloat32('ids'), Float32Array.from([49406, -1]));
  assert.deepEqual(f.readFloat32('d'), Float32Array.from([Math.PI]));
  assert.deepEqual(f.readFloat32('i16'), Float32Array.from([-300]));
  assert.deepEqual(f.read('w', { start: 3, count: 3 }), Float32Array.from([0, 1e-8, -0]));
  assert.throws(() => f.read('w', { start: 4, count: 3 }), /outside tensor "w"/);
  assert.throws(() => f.info('nope'), (e: unknown) => e instanceof SafetensorsError && e.code === 'NOT_FOUND' && /"nope"/.test(e.message));
  // No temp file is left behind by the atomic write, and rewriting replaces the file.
  writeSafetensors(p, { x: { dtype: 'U8', shape: [1], data: Uint8Array.from([5]) } });
  assert.deepEqual(readdirSync(dir).filter((x) => x.includes('rt.safetensors')), ['rt.safetensors']);
  assert.deepEqual(SafetensorsFile.open(p).read('x'), Uint8Array.from([5]));
});

test('writer rejects data that does not match dtype or shape, and writes nothing', () => {
  const p = join(dir, 'bad-write.safetensors');
  assert.throws(() => writeSafetensors(p, { a: { dtype: 'F16', shape: [2], data: new Float32Array(2) } }), /needs a Uint16Array, got Float32Array/);
  assert.throws(() => writeSafetensors(p, { a: { dtype: 'F32', shape: [3], data: new Float32Array(2) } }), /holds 3 elements but data has 2/);
  assert.throws(() => writeSafetensors(p, { __metadata__: { dtype: 'F32', shape: [0], data: new Float32Array(0) } }), /reserved/);
  assert.ok(!readdirSync(dir).some((x) => x.includes('bad-write')));
});

test('reads a real diffusers file lazily, including element ranges', () => {
  const f = SafetensorsFile.open(FIXTURE);
  assert.equal(f.metadata.format, 'pt');
  const name = 'text_model.encoder.layers.0.self_attn.q_proj.weight';
  assert.deepEqual(f.info(name).shape, [32, 32]);
  const all = f.readFloat32(name);
  assert.equal(all.length, 1024);
  assert.deepEqual(f.readFloat32(name, { start: 32 * 5, count: 64 }), all.subarray(160, 224));
});

test('specific errors for broken and hostile files', () => {
  const ok = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F16', shape: [2], data_offsets: [8, 12] } };
  expectError(tmpFile(new Uint8Array(5)), 'TOO_SMALL', /5 bytes/);
  expectError(tmpFile(raw(ok, 12, BigInt(MAX_HEADER_BYTES) + 1n)), 'HEADER_TOO_LARGE', /exceeds/);
  expectError(tmpFile(raw(ok, 12, 0xffffffffffffffffn)), 'HEADER_TOO_LARGE', /18446744073709551615/);
  expectError(tmpFile(raw(ok, 0, 5000n)), 'HEADER_LENGTH', /runs past the end/);
  expectError(tmpFile(raw('{"a": \xff}', 0)), 'HEADER_JSON', /JSON/);
  expectError(tmpFile(Buffer.concat([raw('', 0, 2n), Buffer.from([0xc3, 0x28])])), 'HEADER_JSON', /UTF-8/);
  expectError(tmpFile(raw('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}', 4)), 'HEADER_JSON', /not valid JSON/);
  expectError(tmpFile(raw('[1, 2]', 0)), 'HEADER_JSON', /not an object/);
  expectError(tmpFile(raw({ a: { dtype: 'Q7', shape: [1], data_offsets: [0, 4] } }, 4)), 'DTYPE', /"a" has unknown dtype "Q7"/);
  expectError(tmpFile(raw({ a: { dtype: 'F8_E4M3', shape: [1], data_offsets: [0, 1] } }, 1)), 'DTYPE', /unsupported dtype/);
  expectError(tmpFile(raw({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, 4)), 'HEADER_SCHEMA', /shape/);
  expectError(tmpFile(raw({ a: { dtype: 'F32', shape: [1.5], data_offsets: [0, 4] } }, 4)), 'HEADER_SCHEMA', /shape/);
  expectError(tmpFile(raw({ a: { dtype: 'F32', shape: [1], data_offsets: [0] } }, 4)), 'HEADER_SCHEMA', /data_offsets/);
  expectError(tmpFile(raw({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 0] } }, 4)), 'OFFSETS', /end before begin/);
  expectError(tmpFile(raw({ a: 'x' }, 0)), 'HEADER_SCHEMA', /"a" is not an object/);
  expectError(tmpFile(raw({ __metadata__: { k: 1 } }, 0)), 'HEADER_SCHEMA', /metadata value "k"/);
  expectError(tmpFile(raw({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8)), 'SIZE_MISMATCH', /12 bytes but its data_offsets span 8/);
  expectError(tmpFile(raw({ a: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 8] } }, 8)), 'SIZE_MISMATCH', /overflows/);
  expectError(tmpFile(raw({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, 8)), 'OFFSETS', /"b".*overlaps/);
  expectError(tmpFile(raw({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, 8)), 'OFFSETS', /gap.*\[0, 4\)/);
  expectError(tmpFile(raw({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } }, 12)), 'OFFSETS', /gap/);
  expectError(tmpFile(raw(ok, 11)), 'TRUNCATED', /should be 12 bytes but the file holds only 11/);
  expectError(tmpFile(raw(ok, 20)), 'TRAILING_DATA', /8 bytes after the last tensor/);
  expectError(join(dir, 'missing.safetensors'), 'IO', /no such file/);
  expectError(dir, 'IO', /directory/);
  // Entries listed out of order in the JSON are fine: only the byte ranges must tile.
  const swapped = SafetensorsFile.open(tmpFile(raw({ b: ok.b, a: ok.a }, 12)));
  assert.deepEqual(swapped.info('b').shape, [2]);
});

test('f16 conversion is exact and rounds to nearest even', () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const f = f16ToF32(all);
  assert.equal(f[0x3c00], 1);
  assert.equal(f[0x7bff], 65504);
  assert.equal(f[0x0001], 2 ** -24);
  assert.ok(Object.is(f[0x8000], -0));
  assert.equal(f[0x7c00], Infinity);
  assert.equal(f[0xfc00], -Infinity);
  assert.ok(Number.isNaN(f[0x7e00]));
  const back = f32ToF16(f);
  for (let i = 0; i < 65536; i++) {
    if (Number.isNaN(f[i])) assert.ok(Number.isNaN(f16ToF32(back.subarray(i, i + 1))[0]));
    else if (back[i] !== i) assert.fail(`half 0x${i.toString(16)} does not round-trip`);
  }
  const cases: [number, number][] = [
    [65519, 0x7bff], [65520, 0x7c00], [1e6, 0x7c00], [-1e6, 0xfc00], [2 ** -25, 0], [1.5 * 2 ** -25, 1], [3 * 2 ** -25, 2],
    [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [2 ** -14, 0x0400], [2 ** -14 - 2 ** -25, 0x0400], [1e-30, 0],
  ];
  for (const [x, h] of cases) assert.equal(f32ToF16(Float32Array.from([x]))[0], h, `f32ToF16(${x})`);
  // Random values: the chosen half is at least as close as either neighbour.
  let s = 12345;
  const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const xs = Float32Array.from({ length: 5000 }, () => (rnd() - 0.5) * 2 ** (rnd() * 40 - 28));
  const hs = f32ToF16(xs);
  for (let i = 0; i < xs.length; i++) {
    const h = hs[i];
    const v = f[h];
    for (const nb of [h - 1, h + 1]) {
      if ((nb & 0x7fff) >= 0x7c00 || nb < 0 || nb > 0xffff || (nb ^ h) & 0x8000) continue;
      assert.ok(Math.abs(xs[i] - v) <= Math.abs(xs[i] - f[nb]), `x=${xs[i]} -> ${v}, neighbour ${f[nb]} closer`);
    }
  }
});

test('bf16 conversion', () => {
  assert.deepEqual(bf16ToF32(Uint16Array.from([0x3f80, 0xc000, 0x7f80])), Float32Array.from([1, -2, Infinity]));
  const x = Float32Array.from([1 + 2 ** -8, 1 + 3 * 2 ** -8, NaN, -0.15625]);
  const b = f32ToBf16(x);
  assert.deepEqual(Array.from(b.subarray(0, 2)), [0x3f80, 0x3f82]); // ties to even
  assert.ok(Number.isNaN(bf16ToF32(b)[2]));
  assert.equal(bf16ToF32(b)[3], -0.15625);
});

test('fuzz: random mutations either load or throw SafetensorsError, never crash or hang', () => {
  const base = encodeSafetensors(sample(), { format: 'pt' });
  const hdrLen = Number(base.readBigUInt64LE(0));
  let s = 0x9e3779b9;
  const rnd = (n: number) => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s % n; };
  const start = Date.now();
  let loaded = 0;
  let rejected = 0;
  const N = 600;
  for (let it = 0; it < N; it++) {
    let b = Buffer.from(base);
    const kind = it % 8;
    if (kind === 0) { // random byte flips anywhere
      for (let k = 1 + rnd(4); k > 0; k--) b[rnd(b.length)] ^= 1 << rnd(8);
    } else if (kind === 1) { // truncation
      b = b.subarray(0, rnd(b.length));
    } else if (kind === 2) { // byte flips inside the JSON header
      for (let k = 1 + rnd(3); k > 0; k--) b[8 + rnd(hdrLen)] = rnd(256);
    } else if (kind === 3) { // digit edits: shapes/offsets change but JSON stays valid
      const digits = [...b.subarray(8, 8 + hdrLen)].flatMap((c, i) => (c >= 0x30 && c <= 0x39 ? [8 + i] : []));
      for (let k = 1 + rnd(3); k > 0; k--) b[digits[rnd(digits.length)]] = 0x30 + rnd(10);
    } else if (kind === 4) { // header length field edits
      b.writeBigUInt64LE(BigInt(rnd(2) ? hdrLen + rnd(64) - 32 : rnd(2 ** 31)) * BigInt(1 + rnd(3) * 1000), 0);
    } else if (kind === 5) { // appended garbage
      b = Buffer.concat([b, Buffer.from(Array.from({ length: 1 + rnd(16) }, () => rnd(256)))]);
    } else if (kind === 6) { // structured header edits
      const h = JSON.parse(b.subarray(8, 8 + hdrLen).toString());
      const names = Object.keys(h).filter((k) => k !== '__metadata__');
      const victim = h[names[rnd(names.length)]];
      const edits = [
        () => { victim.dtype = ['F32', 'F16', 'I64', 'U8', 'XX', 7][rnd(6)]; },
        () => { victim.shape = [rnd(5), rnd(5)]; },
        () => { victim.data_offsets = [rnd(200), rnd(200)]; },
        () => { victim.shape = 'abc'; },
        () => { delete victim.data_offsets; },
        () => { h.__metadata__ = [1]; },
      ];
      edits[rnd(edits.length)]();
      const json = Buffer.from(JSON.stringify(h));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(json.length));
      b = Buffer.concat([len, json, b.subarray(8 + hdrLen)]);
    } else { // overwrite one header byte with a space
      b[8 + rnd(hdrLen)] = 0x20;
    }
    const p = join(dir, 'fuzz.safetensors');
    writeFileSync(p, b);
    try {
      const f = SafetensorsFile.open(p);
      for (const name of f.tensors.keys()) { f.read(name); f.readFloat32(name); }
      loaded++;
    } catch (e) {
      if (!(e instanceof SafetensorsError)) assert.fail(`mutation ${it} (kind ${kind}) threw ${(e as Error)?.name}: ${(e as Error)?.message}`);
      assert.ok(e.message.startsWith(p), e.message);
      rejected++;
    }
  }
  assert.equal(loaded + rejected, N);
  assert.ok(rejected > N / 2, `most mutations should be rejected (${rejected})`);
  assert.ok(loaded > 0, 'some mutations (data-only flips, padding edits) still load');
  assert.ok(Date.now() - start < 5000, 'fuzzing finished quickly');
});
