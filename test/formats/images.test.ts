import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import {
  decodeRgb, resizeRgb, centerCrop, loadTrainingImage, flipHorizontal, listImages, toChwFloat, chwToRgb8, ImageError, type Interpolation,
} from '../../src/io/images.ts';

const IMG = new URL('../fixtures/images/', import.meta.url).pathname;

function tmp(): string { return mkdtempSync(join(tmpdir(), 'oneword-img-')); }

test('resizeRgb matches Pillow Image.resize byte for byte (bicubic, bilinear, lanczos, nearest; up and down)', async () => {
  const ref = JSON.parse(readFileSync(IMG + 'resize.json', 'utf8')) as { source: string; cases: Array<{ filter: Interpolation; width: number; height: number; rgb: string }> };
  const src = await decodeRgb(IMG + ref.source);
  assert.deepEqual([src.width, src.height], [37, 23]);
  assert.equal(ref.cases.length, 20);
  for (const c of ref.cases) {
    const out = resizeRgb(src, c.width, c.height, c.filter);
    assert.deepEqual([out.width, out.height], [c.width, c.height]);
    assert.ok(Buffer.from(out.data).equals(Buffer.from(c.rgb, 'base64')), `${c.filter} → ${c.width}x${c.height}`);
  }
});

test('loadTrainingImage reproduces diffusers pixel_values exactly for RGB, RGBA, LA, palette, JPEG and WebP inputs', async () => {
  const index = JSON.parse(readFileSync(IMG + 'pipeline/index.json', 'utf8')) as Array<{ image: string; size: number; centerCrop: boolean; interpolation: Interpolation; expected: string }>;
  assert.equal(index.length, 10);
  for (const c of index) {
    const got = await loadTrainingImage(IMG + c.image, { size: c.size, centerCrop: c.centerCrop, interpolation: c.interpolation });
    const b = readFileSync(IMG + 'pipeline/' + c.expected);
    const want = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
    assert.equal(got.length, 3 * c.size * c.size);
    assert.deepEqual(got, want, c.expected);
  }
});

test('EXIF orientation is applied (a landscape JPEG tagged "rotate 90°" loads as portrait)', async () => {
  const img = await decodeRgb(IMG + 'exif-rotated.jpg');
  assert.deepEqual([img.width, img.height], [20, 32]);
});

test('center crop takes the middle square, as diffusers slices it', () => {
  const data = new Uint8Array(5 * 2 * 3).map((_, i) => i);
  const c = centerCrop({ data, width: 5, height: 2 });
  assert.deepEqual([c.width, c.height], [2, 2]);
  // (5-2)//2 = 1: columns 1..2 of both rows.
  assert.deepEqual([...c.data], [3, 4, 5, 6, 7, 8, 18, 19, 20, 21, 22, 23]);
  const tall = centerCrop({ data: new Uint8Array(1 * 4 * 3).map((_, i) => i), width: 1, height: 4 });
  assert.deepEqual([...tall.data], [3 * 1, 3 * 1 + 1, 3 * 1 + 2]);
});

test('resizing to the same size is a copy; bad sizes are rejected', () => {
  const img = { data: Uint8Array.from([1, 2, 3, 4, 5, 6]), width: 2, height: 1 };
  const same = resizeRgb(img, 2, 1);
  assert.deepEqual(same.data, img.data);
  assert.notEqual(same.data, img.data);
  assert.throws(() => resizeRgb(img, 0, 1), RangeError);
  assert.throws(() => resizeRgb(img, 2, 1.5), RangeError);
});

test('pixels map to [-1, 1] as uint8 / 127.5 - 1 in CHW order', () => {
  const chw = toChwFloat({ data: Uint8Array.from([0, 255, 128, 64, 1, 2]), width: 2, height: 1 });
  assert.deepEqual([...chw], [-1, Math.fround(64 / 127.5 - 1), 1, Math.fround(1 / 127.5 - 1), Math.fround(128 / 127.5 - 1), Math.fround(2 / 127.5 - 1)]);
});

test('flipHorizontal mirrors every row of every channel and is its own inverse', () => {
  const chw = Float32Array.from({ length: 2 * 2 * 3 }, (_, i) => i); // C=2, H=2, W=3
  const f = flipHorizontal(chw, 2, 3);
  assert.deepEqual([...f], [2, 1, 0, 5, 4, 3, 8, 7, 6, 11, 10, 9]);
  assert.deepEqual(flipHorizontal(f, 2, 3), chw);
  assert.throws(() => flipHorizontal(new Float32Array(7), 2, 3), RangeError);
});

test('16-bit RGB PNGs reduce to their high byte, as PIL does', async () => {
  const dir = tmp();
  try {
    const u16 = Uint16Array.from([0, 2770, 65535, 32896, 1000, 60000]);
    await sharp(u16, { raw: { width: 2, height: 1, channels: 3 } }).toColourspace('rgb16').png().toFile(join(dir, 'deep.png'));
    const img = await decodeRgb(join(dir, 'deep.png'));
    assert.deepEqual([...img.data], [...u16].map((v) => v >> 8));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('decode errors are ImageErrors naming the file', async () => {
  const dir = tmp();
  try {
    const bad = join(dir, 'broken.jpg');
    writeFileSync(bad, 'this is not a jpeg');
    await assert.rejects(decodeRgb(bad), (e: unknown) => e instanceof ImageError && e.file === bad && e.message.includes(bad));
    const truncated = join(dir, 'truncated.png');
    const png = readFileSync(IMG + 'src-rgb.png');
    writeFileSync(truncated, png.subarray(0, png.length >> 1));
    await assert.rejects(loadTrainingImage(truncated, { size: 8, centerCrop: true }), ImageError);
    await assert.rejects(decodeRgb(join(dir, 'missing.png')), ImageError);
    await assert.rejects(loadTrainingImage(IMG + 'src-rgb.png', { size: 0, centerCrop: true }), RangeError);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('listImages: supported extensions in any case, sorted, hidden files and folders skipped', () => {
  const dir = tmp();
  try {
    for (const n of ['b.PNG', 'a.jpg', 'c.jpeg', 'd.webp', 'notes.txt', '._a.jpg', '.hidden.png', 'e.gif']) writeFileSync(join(dir, n), '');
    mkdirSync(join(dir, 'sub.png'));
    symlinkSync(join(dir, 'gone.jpg'), join(dir, 'dangling.jpg'));
    assert.deepEqual(listImages(dir), ['a.jpg', 'b.PNG', 'c.jpeg', 'd.webp'].map((n) => join(dir, n)));
    const empty = join(dir, 'empty');
    mkdirSync(empty);
    assert.throws(() => listImages(empty), (e: unknown) => e instanceof ImageError && /no images found/.test((e as Error).message));
    assert.throws(() => listImages(join(dir, 'nope')), /image directory does not exist/);
    assert.throws(() => listImages(join(dir, 'a.jpg')), /is not a directory/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('chwToRgb8 clamps and rounds half to even like diffusers numpy_to_pil', () => {
  // f32((k + 0.5) / 255) * 255 is exactly k + 0.5 in float32: numpy rounds 0.5 → 0, 1.5 → 2, 2.5 → 2.
  const half = (k: number) => (k + 0.5) / 255;
  // CHW, H=1, W=2: R = [0.5, 1.5], G = [2.5, -0.2], B = [1.7, NaN] (in units of 1/255 where fractional)
  const v = Float32Array.from([half(0), half(1), half(2), -0.2, 1.7, NaN]);
  assert.deepEqual([...chwToRgb8(v, 2, 1)], [0, 2, 255, 2, 0, 0]);
  assert.throws(() => chwToRgb8(new Float32Array(5), 2, 1), RangeError);
});
