import { test } from 'node:test';
import assert from 'node:assert/strict';
import { deflateRawSync } from 'node:zlib';
import { readFileSync } from 'node:fs';
import { ZipArchive, ZipError, crc32 } from '../../src/io/zip.ts';

const FIX = new URL('../fixtures/embeddings/', import.meta.url).pathname;

interface Spec { name: string; data: Uint8Array; deflate?: boolean; declaredSize?: number; flags?: number; method?: number; crc?: number; localName?: string }

/** A plain zip (classic EOCD, sizes in both headers) with knobs to break it. */
function makeZip(entries: Spec[]): Uint8Array {
  const chunks: Buffer[] = [];
  const central: Buffer[] = [];
  let off = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name);
    const localName = Buffer.from(e.localName ?? e.name);
    const body = e.deflate ? deflateRawSync(e.data) : Buffer.from(e.data);
    const method = e.method ?? (e.deflate ? 8 : 0);
    const usize = e.declaredSize ?? e.data.length;
    const crc = e.crc ?? crc32(e.data);
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0); lh.writeUInt16LE(e.flags ?? 0, 6); lh.writeUInt16LE(method, 8);
    lh.writeUInt32LE(crc, 14); lh.writeUInt32LE(body.length, 18); lh.writeUInt32LE(usize, 22); lh.writeUInt16LE(localName.length, 26);
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0); ch.writeUInt16LE(e.flags ?? 0, 8); ch.writeUInt16LE(method, 10);
    ch.writeUInt32LE(crc, 16); ch.writeUInt32LE(body.length, 20); ch.writeUInt32LE(usize, 24); ch.writeUInt16LE(name.length, 28);
    ch.writeUInt32LE(off, 42);
    chunks.push(lh, localName, body);
    central.push(ch, name);
    off += 30 + localName.length + body.length;
  }
  const cd = Buffer.concat(central);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0); eocd.writeUInt16LE(entries.length, 8); eocd.writeUInt16LE(entries.length, 10);
  eocd.writeUInt32LE(cd.length, 12); eocd.writeUInt32LE(off, 16);
  return Buffer.concat([...chunks, cd, eocd]);
}

const enc = (s: string) => new TextEncoder().encode(s);

test('crc32 matches the standard check value', () => {
  assert.equal(crc32(enc('123456789')), 0xcbf43926);
  assert.equal(crc32(enc('56789'), crc32(enc('1234'))), 0xcbf43926);
});

test('reads a PyTorch-layout archive: prefix folder, 64-byte aligned STORED data, data descriptors, zip64 end record', () => {
  const z = ZipArchive.open(FIX + 'a1111-style.pt');
  try {
    assert.deepEqual(z.names, [
      'a1111-style/data.pkl', 'a1111-style/.format_version', 'a1111-style/.storage_alignment', 'a1111-style/byteorder',
      'a1111-style/data/0', 'a1111-style/version', 'a1111-style/.data/serialization_id',
    ]);
    assert.equal(new TextDecoder().decode(z.read('a1111-style/byteorder')), 'little');
    const data = z.read('a1111-style/data/0');
    assert.equal(data.length, 2 * 16 * 4);
    const f = new Float32Array(data.slice().buffer);
    assert.equal(f[0], Math.fround(-0.3));
    // A STORED range read returns exactly those bytes.
    assert.deepEqual(z.readRange('a1111-style/data/0', 4, 8), data.subarray(4, 12));
  } finally {
    z.close();
  }
});

test('follows a saturated EOCD to the zip64 record and reads zip64 extra fields', () => {
  const z = ZipArchive.open(FIX + 'a1111-fp16.pt');
  try {
    assert.deepEqual(z.names, ['archive/version', 'archive/data.pkl', 'archive/data/0']);
    assert.equal(z.entry('archive/data/0').uncompressedSize, 3 * 8 * 2);
    assert.equal(z.read('archive/data/0').length, 48);
  } finally {
    z.close();
  }
});

test('inflates DEFLATE entries and serves ranges from them', () => {
  const z = ZipArchive.open(FIX + 'learned_embeds-1d.bin');
  try {
    assert.equal(z.entry('learned_embeds-1d/data/0').method, 8);
    const all = z.read('learned_embeds-1d/data/0');
    assert.equal(all.length, 10 * 16 * 4);
    assert.deepEqual(z.readRange('learned_embeds-1d/data/0', 100, 20), all.subarray(100, 120));
  } finally {
    z.close();
  }
});

test('in-memory archives round-trip stored and deflated entries', () => {
  const payload = enc('hello '.repeat(100));
  const z = ZipArchive.fromBuffer(makeZip([{ name: 'a/x', data: payload }, { name: 'a/y', data: payload, deflate: true }]));
  assert.deepEqual(z.read('a/x'), payload);
  assert.deepEqual(z.read('a/y'), payload);
  assert.throws(() => z.read('a/z'), /no entry "a\/z"/);
});

function rejects(bytes: Uint8Array, re: RegExp, read?: string) {
  assert.throws(() => {
    const z = ZipArchive.fromBuffer(bytes, 'hostile.zip');
    if (read) z.read(read);
  }, (e: unknown) => e instanceof ZipError && re.test((e as Error).message));
}

test('hostile archives fail with ZipError, never out-of-bounds reads', () => {
  const good = makeZip([{ name: 'a/x', data: enc('0123456789') }]);
  rejects(new Uint8Array(0), /too small/);
  rejects(enc('PK\x03\x04 not really a zip at all, no end record here'), /no end-of-central-directory/);
  // Truncated: the end record is gone.
  rejects(good.subarray(0, good.length - 5), /no end-of-central-directory/);
  // Central directory offset pointing past the end of the file.
  const badOff = Buffer.from(good); badOff.writeUInt32LE(0xfffff0, badOff.length - 6);
  rejects(badOff, /central directory lies outside/);
  // Entry count larger than the directory holds.
  const badCount = Buffer.from(good); badCount.writeUInt16LE(5, badCount.length - 14); badCount.writeUInt16LE(5, badCount.length - 12);
  rejects(badCount, /truncated at entry 1|bad signature/);
  // Multi-disk.
  const disk = Buffer.from(good); disk.writeUInt16LE(1, disk.length - 18);
  rejects(disk, /multi-disk/);
  // zip64 markers without a zip64 record.
  const z64 = Buffer.from(good); z64.writeUInt32LE(0xffffffff, z64.length - 6);
  rejects(z64, /zip64 end-of-central-directory locator missing/);
});

test('hostile entries fail when read', () => {
  rejects(makeZip([{ name: 'a/x', data: enc('0123456789'), crc: 1234 }]), /CRC/, 'a/x');
  rejects(makeZip([{ name: 'a/x', data: enc('0123456789'), method: 12 }]), /compression method 12/, 'a/x');
  rejects(makeZip([{ name: 'a/x', data: enc('0123456789'), flags: 1 }]), /encrypted/, 'a/x');
  rejects(makeZip([{ name: 'a/x', data: enc('0123456789'), localName: 'a/y' }]), /local header names a different file/, 'a/x');
  rejects(makeZip([{ name: 'a/x', data: enc('x') }, { name: 'a/x', data: enc('y') }]), /duplicate entry/);
  // A deflate bomb: 1 MiB of zeros declared as 100 bytes stops at the declared size.
  rejects(makeZip([{ name: 'a/x', data: new Uint8Array(1 << 20), deflate: true, declaredSize: 100 }]), /does not inflate|inflates to/, 'a/x');
  // Corrupt deflate stream.
  const zz = makeZip([{ name: 'a/x', data: enc('hello hello hello hello'), deflate: true }]);
  const broken = Buffer.from(zz); broken[30 + 3] ^= 0xff; broken[30 + 4] ^= 0xff;
  rejects(broken, /does not inflate|inflates to|CRC/, 'a/x');
  // A STORED entry whose size runs into the central directory.
  const long = Buffer.from(makeZip([{ name: 'a/x', data: enc('0123456789') }]));
  const cdStart = 30 + 3 + 10;
  long.writeUInt32LE(1000, cdStart + 20); long.writeUInt32LE(1000, cdStart + 24);
  rejects(long, /runs past the end of the data area/, 'a/x');
});

test('range reads outside an entry are refused', () => {
  const z = ZipArchive.fromBuffer(makeZip([{ name: 'a/x', data: enc('0123456789') }]));
  assert.deepEqual(z.readRange('a/x', 2, 3), enc('234'));
  assert.throws(() => z.readRange('a/x', 8, 3), ZipError);
  assert.throws(() => z.readRange('a/x', -1, 1), ZipError);
});

test('a real file that is not a zip is refused cleanly', () => {
  assert.ok(readFileSync(FIX + 'learned_embeds.safetensors').length > 0);
  assert.throws(() => ZipArchive.open(FIX + 'learned_embeds.safetensors'), ZipError);
});
