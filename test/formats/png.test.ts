import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import sharp from 'sharp';
import {
  encodePng, readPngTextChunks, readPngParameters, formatA1111Parameters, parseA1111Parameters, a1111ShortHash, PngError, type A1111Parameters,
} from '../../src/io/png.ts';
import { savePng } from '../../src/io/images.ts';
import { crc32 } from '../../src/io/zip.ts';

const IMG = new URL('../fixtures/images/', import.meta.url).pathname;

/** Gradients, flat areas and noise, so every PNG row filter gets picked somewhere. */
function testImage(w: number, h: number, ch: 3 | 4): Uint8Array {
  let seed = 1;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 24);
  const px = new Uint8Array(w * h * ch);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * ch;
      px[i] = (x * 7) & 0xff;
      px[i + 1] = y < h / 2 ? 200 : (y * 5) & 0xff;
      px[i + 2] = x > w / 2 ? rnd() : 17;
      if (ch === 4) px[i + 3] = (x + y) & 0xff;
    }
  }
  return px;
}

function chunkTypes(png: Uint8Array): string[] {
  const b = Buffer.from(png);
  const types: string[] = [];
  for (let p = 8; p < b.length; p += 12 + b.readUInt32BE(p)) types.push(b.toString('latin1', p + 4, p + 8));
  return types;
}

const EXAMPLE: A1111Parameters = {
  prompt: 'a photo of <cat-toy> on a beach',
  negativePrompt: 'blurry, lowres',
  steps: 30,
  sampler: 'DPM++ 2M Karras',
  cfgScale: 7.5,
  seed: 42,
  width: 512,
  height: 512,
  modelHash: 'cc6cb27103',
  model: 'v1-5-pruned-emaonly',
  tiHashes: { 'cat-toy': '1a2b3c4d5e6f' },
};

test('formatA1111Parameters writes A1111 infotext', () => {
  assert.equal(formatA1111Parameters(EXAMPLE),
    'a photo of <cat-toy> on a beach\n'
    + 'Negative prompt: blurry, lowres\n'
    + 'Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x512, Model hash: cc6cb27103, Model: v1-5-pruned-emaonly, TI hashes: "cat-toy: 1a2b3c4d5e6f"');
  // No negative prompt line when empty; undefined values are left out; values with , : or newline are JSON-quoted.
  assert.equal(formatA1111Parameters({ prompt: 'x', steps: 20, sampler: 'Euler a', cfgScale: 7, seed: 1, width: 768, height: 512, extra: { 'Clip skip': 2, Note: 'a, b', Skip: undefined } }),
    'x\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 768x512, Clip skip: 2, Note: "a, b"');
  // Names lose ":" and "," so the TI list stays parseable.
  assert.match(formatA1111Parameters({ ...EXAMPLE, tiHashes: { 'a:b,c': '123', d: '456' } }), /TI hashes: "abc: 123, d: 456"$/);
});

test('parseA1111Parameters inverts the format, as A1111 parses it', () => {
  const text = formatA1111Parameters({ ...EXAMPLE, prompt: 'line one\nline two', extra: { Version: 'oneword 0.1', Quote: 'say "hi", ok' } });
  const p = parseA1111Parameters(text);
  assert.equal(p.prompt, 'line one\nline two');
  assert.equal(p.negativePrompt, 'blurry, lowres');
  assert.deepEqual({ ...p.params }, {
    Steps: '30', Sampler: 'DPM++ 2M Karras', 'CFG scale': '7.5', Seed: '42', Size: '512x512', 'Model hash': 'cc6cb27103',
    Model: 'v1-5-pruned-emaonly', Version: 'oneword 0.1', Quote: 'say "hi", ok', 'TI hashes': 'cat-toy: 1a2b3c4d5e6f',
  });
  // A prompt-only text has no parameter line.
  const q = parseA1111Parameters('just a prompt');
  assert.deepEqual([q.prompt, q.negativePrompt, { ...q.params }], ['just a prompt', '', {}]);
});

test('encodePng is deterministic and decodes to the same pixels (RGB and RGBA)', async () => {
  for (const ch of [3, 4] as const) {
    const px = testImage(61, 37, ch);
    const a = encodePng(px, 61, 37, { channels: ch, text: [['parameters', 'p']] });
    const b = encodePng(px, 61, 37, { channels: ch, text: [['parameters', 'p']] });
    assert.ok(a.equals(b));
    const { data, info } = await sharp(a).raw().toBuffer({ resolveWithObject: true });
    assert.deepEqual([info.width, info.height, info.channels], [61, 37, ch]);
    assert.ok(Buffer.from(px).equals(data));
    assert.deepEqual(chunkTypes(a), ['IHDR', 'tEXt', 'IDAT', 'IEND']);
  }
  assert.throws(() => encodePng(new Uint8Array(5), 2, 1), PngError);
  assert.throws(() => encodePng(new Uint8Array(6), 2, 1, { text: [['', 'x']] }), /invalid PNG text keyword/);
});

test('savePng writes CHW floats and HWC bytes with an A1111 parameters chunk; same input, same bytes', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-png-'));
  try {
    const W = 8, H = 4;
    const chw = Float32Array.from({ length: 3 * W * H }, (_, i) => (i % 17) / 16);
    const text = formatA1111Parameters(EXAMPLE);
    savePng(join(dir, 'a.png'), chw, W, H, { parameters: text });
    savePng(join(dir, 'b.png'), chw, W, H, { parameters: text });
    const a = readFileSync(join(dir, 'a.png'));
    assert.ok(a.equals(readFileSync(join(dir, 'b.png'))));
    assert.equal(readPngParameters(join(dir, 'a.png')), text);
    const { data } = await sharp(a).raw().toBuffer({ resolveWithObject: true });
    for (let c = 0; c < 3; c++) {
      for (let i = 0; i < W * H; i++) assert.equal(data[i * 3 + c], Math.round(Math.fround(chw[c * W * H + i] * 255)));
    }
    const hwc = testImage(W, H, 3);
    savePng(join(dir, 'c.png'), hwc, W, H);
    assert.equal(readPngParameters(join(dir, 'c.png')), null);
    assert.ok(Buffer.from(hwc).equals((await sharp(join(dir, 'c.png')).raw().toBuffer())));
    assert.deepEqual(readdirSync(dir).sort(), ['a.png', 'b.png', 'c.png']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('non-Latin-1 prompts go to an iTXt chunk (as PIL does) and read back intact', () => {
  const text = formatA1111Parameters({ ...EXAMPLE, prompt: '猫のおもちゃ <cat-toy> 🐱' });
  const png = encodePng(testImage(4, 4, 3), 4, 4, { text: [['parameters', text]] });
  assert.deepEqual(chunkTypes(png), ['IHDR', 'iTXt', 'IDAT', 'IEND']);
  assert.equal(readPngParameters(png), text);
  // Latin-1 text (é) stays tEXt.
  assert.deepEqual(chunkTypes(encodePng(testImage(4, 4, 3), 4, 4, { text: [['parameters', 'café']] })), ['IHDR', 'tEXt', 'IDAT', 'IEND']);
  assert.equal(readPngParameters(encodePng(testImage(4, 4, 3), 4, 4, { text: [['parameters', 'café']] })), 'café');
});

function withChunk(png: Buffer, type: string, data: Buffer): Buffer {
  const c = Buffer.alloc(12 + data.length);
  c.writeUInt32BE(data.length, 0);
  c.write(type, 4, 'latin1');
  data.copy(c, 8);
  c.writeUInt32BE(crc32(c.subarray(4, 8 + data.length)), 8 + data.length);
  const ihdrEnd = 8 + 25;
  return Buffer.concat([png.subarray(0, ihdrEnd), c, png.subarray(ihdrEnd)]);
}

test('reads zTXt and compressed iTXt chunks written by other tools; later chunks win', () => {
  const base = encodePng(testImage(4, 4, 3), 4, 4);
  let png = withChunk(base, 'zTXt', Buffer.concat([Buffer.from('parameters\0\0'), deflateSync(Buffer.from('first'))]));
  png = withChunk(png, 'iTXt', Buffer.concat([Buffer.from('Comment\0\x01\0en\0\0'), deflateSync(Buffer.from('ünïcode', 'utf8'))]));
  const t = readPngTextChunks(png);
  assert.equal(t.get('Comment'), 'ünïcode');
  assert.equal(t.get('parameters'), 'first');
  // Chunks are inserted right after IHDR, so this one comes first in the file and loses.
  const twice = withChunk(png, 'tEXt', Buffer.from('parameters\0earlier'));
  assert.equal(readPngParameters(twice), 'first');
});

test('corrupt PNGs fail with PngError', () => {
  const png = encodePng(testImage(4, 4, 3), 4, 4, { text: [['parameters', 'x']] });
  const badCrc = Buffer.from(png); badCrc[8 + 25 + 12] ^= 1; // a byte inside the tEXt chunk
  assert.throws(() => readPngTextChunks(badCrc), /fails its CRC check/);
  assert.throws(() => readPngTextChunks(png.subarray(0, png.length - 12)), /no IEND/);
  const huge = Buffer.from(png); huge.writeUInt32BE(0x7ffffff0, 8 + 25);
  assert.throws(() => readPngTextChunks(huge), /runs past the end/);
  assert.throws(() => readPngTextChunks(Buffer.from('GIF89a')), /not a PNG/);
  const bomb = withChunk(encodePng(testImage(4, 4, 3), 4, 4), 'zTXt', Buffer.concat([Buffer.from('k\0\0'), deflateSync(Buffer.alloc(64 << 20))]));
  assert.throws(() => readPngTextChunks(bomb), /does not inflate/);
  // PNGs written by others (sharp/libspng here) read fine and simply have no parameters.
  assert.equal(readPngParameters(IMG + 'src-rgb.png'), null);
});

test('a1111ShortHash is the sha256 prefix A1111 shows', () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-png-'));
  try {
    writeFileSync(join(dir, 'x'), 'hello');
    assert.equal(a1111ShortHash(join(dir, 'x')), '2cf24dba5f');
    assert.equal(a1111ShortHash(join(dir, 'x'), 12), '2cf24dba5fb0');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
