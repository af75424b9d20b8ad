// Sizes that a small input file can claim are checked from its headers before anything is
// inflated or decoded: a zip-bomb .pt, an oversized embedding, a 256-megapixel PNG.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { constants, deflateRawSync, deflateSync } from 'node:zlib';
import { ZipArchive, crc32 } from '../../src/io/zip.ts';
import { loadEmbedding, EmbeddingError } from '../../src/io/embeddings.ts';
import { writeSafetensors } from '../../src/io/safetensors.ts';
import { decodeRgb, ImageError } from '../../src/io/images.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'oneword-input-bounds-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

const u16 = (n: number) => [n & 0xff, (n >>> 8) & 0xff];
const u32 = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];

interface Entry { name: string; data: Uint8Array; method: 0 | 8; size: number; crc: number }

/** A plain zip archive; each entry's declared size and CRC are given, not computed. */
function zip(entries: Entry[]): Buffer {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name);
    const common = [...u16(20), ...u16(0), ...u16(e.method), ...u16(0), ...u16(0x21), ...u32(e.crc), ...u32(e.data.length), ...u32(e.size), ...u16(name.length), ...u16(0)];
    const local = Buffer.from([...u32(0x04034b50), ...common]);
    parts.push(local, name, Buffer.from(e.data));
    central.push(Buffer.from([...u32(0x02014b50), ...u16(20), ...common, ...u16(0), ...u16(0), ...u16(0), ...u32(0), ...u32(offset)]), name);
    offset += local.length + name.length + e.data.length;
  }
  const cd = Buffer.concat(central);
  const end = Buffer.from([...u32(0x06054b50), ...u16(0), ...u16(0), ...u16(entries.length), ...u16(entries.length), ...u32(cd.length), ...u32(offset), ...u16(0)]);
  return Buffer.concat([...parts, cd, end]);
}

/** A raw deflate stream of `mib` MiB of zeros, about 1 KB per MiB (sync-flushed blocks repeated). */
function zerosDeflated(mib: number): Buffer {
  const block = deflateRawSync(Buffer.alloc(1 << 20), { finishFlush: constants.Z_SYNC_FLUSH });
  return Buffer.concat([...new Array<Buffer>(mib).fill(block), deflateRawSync(Buffer.alloc(0))]);
}

test('a 1 MB .pt whose storage inflates to 1 GiB is refused from its declared size, unread', () => {
  // The A1111 fixture with its 32-float storage re-declared as 2^28 floats (1 GiB), deflated.
  const src = ZipArchive.open(join(FIX, 'embeddings', 'a1111-style.pt'));
  const entries: Entry[] = src.names.map((name) => {
    let data = src.read(name);
    if (name.endsWith('data.pkl')) {
      const pkl = Buffer.from(data);
      const numel = Buffer.from('X\x03\x00\x00\x00cpuq\nK\x20t', 'latin1');
      const at = pkl.indexOf(numel);
      assert.ok(at > 0, 'fixture layout changed');
      data = Buffer.concat([pkl.subarray(0, at + numel.length - 3), Buffer.from([0x4a, ...u32(1 << 28)]), pkl.subarray(at + numel.length - 1)]);
    }
    if (name.endsWith('data/0')) return { name, data: zerosDeflated(1024), method: 8, size: 1 << 30, crc: 0 };
    return { name, data, method: 0, size: data.length, crc: crc32(data) };
  });
  src.close();
  const bomb = join(dir, 'bomb.pt');
  writeFileSync(bomb, zip(entries));
  const rss = process.memoryUsage().rss;
  assert.throws(() => loadEmbedding(bomb), /bomb\.pt: storage "0" declares 1073741824 bytes; at most 67108864 are read/);
  assert.ok(process.memoryUsage().rss - rss < 256 << 20, 'memory grew as if the storage was inflated');
});

test('an embedding wider or longer than any text encoder is refused from its shape, unread', () => {
  const path = join(dir, 'huge.safetensors');
  writeSafetensors(path, { emb_params: { dtype: 'F32', shape: [2, 65536], data: new Float32Array(2 * 65536) } });
  assert.throws(() => loadEmbedding(path), (e: unknown) => e instanceof EmbeddingError && /huge\.safetensors: tensor "emb_params" has shape \[2, 65536\]; an embedding has at most 1024 vectors of width 8192 or less/.test(e.message));
});

/** A PNG chunk with its CRC. */
function chunk(type: string, data: Uint8Array): Buffer {
  const td = Buffer.concat([Buffer.from(type, 'latin1'), Buffer.from(data)]);
  return Buffer.concat([Buffer.from([...u32(data.length)].reverse()), td, Buffer.from([...u32(crc32(td))].reverse())]);
}

test('a 256-megapixel PNG (a 30 kB file) is refused from its header, before decoding', async () => {
  const w = 16000, h = 16000;
  // 1-bit grayscale: 2001 bytes a row, all zero; sharp would decode it to 768 MB of RGB.
  const ihdr = Buffer.from([...u32(w).reverse(), ...u32(h).reverse(), 1, 0, 0, 0, 0]);
  const png = Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(Buffer.alloc(h * (1 + w / 8)), { level: 9 })), chunk('IEND', new Uint8Array(0)),
  ]);
  const path = join(dir, 'huge.png');
  writeFileSync(path, png);
  assert.ok(png.length < 100_000);
  await assert.rejects(decodeRgb(path), (e: unknown) => e instanceof ImageError && /huge\.png: image is 16000×16000 \(256 megapixels\); at most 100 megapixels are decoded/.test(e.message));
});
