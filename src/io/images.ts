// Training images in, generated images out.
//
// loadTrainingImage reproduces diffusers' examples/textual_inversion.py dataset:
//   PIL open → convert("RGB") → optional center crop to the short side →
//   resize(size, size, BICUBIC) → [flip] → uint8 / 127.5 − 1 → CHW float32.
// sharp decodes; the crop and resize are ours and follow Pillow's Resample.c
// exactly (same kernels, same 22-bit fixed-point rounding, horizontal pass
// first), so the pixels match PIL bit for bit for the same decoded input.
// Deliberate differences from diffusers/PIL:
//   * EXIF orientation is applied (PIL's Image.open ignores it, so diffusers trains
//     on sideways phone photos).
//   * 16-bit images are scaled to 8 bits (PIL clips 16-bit grayscale at 255).
//   * CMYK JPEGs are converted by libvips, not PIL's naive formula.
// Like PIL, embedded ICC profiles are ignored and alpha is dropped, not composited.
import { readdirSync, statSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, extname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import sharp from 'sharp';
import { encodePng } from './png.ts';
import { OnewordError, type ErrorDetails } from '../errors.ts';

export { formatA1111Parameters, parseA1111Parameters, readPngParameters, readPngTextChunks, a1111ShortHash, type A1111Parameters } from './png.ts';

export class ImageError extends OnewordError {
  override name = 'ImageError';
  constructor(readonly file: string, message: string, options?: ErrorDetails) {
    super(`${file}: ${message}`, options);
  }
}

/** Interleaved 8-bit RGB, row-major (HWC). */
export interface RgbImage {
  data: Uint8Array;
  width: number;
  height: number;
}

/** diffusers' --interpolation choices ("linear" is PIL's BILINEAR, as in diffusers). */
export type Interpolation = 'bicubic' | 'bilinear' | 'linear' | 'lanczos' | 'nearest';

export interface TrainingImageOptions {
  size: number;
  centerCrop: boolean;
  interpolation?: Interpolation;
}

export const IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.webp'] as const;

/**
 * Most pixels a decoded image may have: 100 megapixels (300 MB as RGB) is above any camera
 * photo a concept is trained from, far below the gigabytes a small crafted file can claim.
 */
export const MAX_IMAGE_PIXELS = 100_000_000;

/** Decodes any file sharp reads to 8-bit RGB, EXIF-oriented, alpha dropped; the size is checked from the header first. */
export async function decodeRgb(path: string, opts: { maxPixels?: number } = {}): Promise<RgbImage> {
  const maxPixels = opts.maxPixels ?? MAX_IMAGE_PIXELS;
  let width: number, height: number;
  try {
    ({ width, height } = await sharp(path).metadata());
  } catch (e) {
    throw new ImageError(path, `cannot decode image: ${(e as Error).message}`, { cause: e });
  }
  if (width * height > maxPixels) {
    throw new ImageError(path, `image is ${width}×${height} (${((width * height) / 1e6).toFixed(0)} megapixels); at most ${maxPixels / 1e6} megapixels are decoded`);
  }
  try {
    const { data, info } = await sharp(path, { autoOrient: true, ignoreIcc: true, failOn: 'error', limitInputPixels: maxPixels })
      .removeAlpha()
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels, expected 3`);
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: info.width, height: info.height };
  } catch (e) {
    throw new ImageError(path, `cannot decode image: ${(e as Error).message}`, { cause: e });
  }
}

/** diffusers' crop: img[(h-c)//2 : (h+c)//2, (w-c)//2 : (w+c)//2] with c = min(h, w). */
export function centerCrop(img: RgbImage): RgbImage {
  const c = Math.min(img.width, img.height);
  const top = (img.height - c) >> 1;
  const left = (img.width - c) >> 1;
  const out = new Uint8Array(c * c * 3);
  for (let y = 0; y < c; y++) {
    const src = ((top + y) * img.width + left) * 3;
    out.set(img.data.subarray(src, src + c * 3), y * c * 3);
  }
  return { data: out, width: c, height: c };
}

// ---------------------------------------------------------------- Pillow-exact resampling

interface Filter { support: number; fn: (x: number) => number }

const FILTERS: Record<Exclude<Interpolation, 'nearest'>, Filter> = {
  bilinear: { support: 1, fn: (x) => { if (x < 0) x = -x; return x < 1 ? 1 - x : 0; } },
  linear: { support: 1, fn: (x) => { if (x < 0) x = -x; return x < 1 ? 1 - x : 0; } },
  bicubic: {
    support: 2,
    fn: (x) => {
      const a = -0.5; // Keys' cubic convolution (Catmull-Rom), Pillow's BICUBIC
      if (x < 0) x = -x;
      if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
      if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
      return 0;
    },
  },
  lanczos: {
    support: 3,
    fn: (x) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0),
  },
};

function sinc(x: number): number {
  if (x === 0) return 1;
  x *= Math.PI;
  return Math.sin(x) / x;
}

const PRECISION_BITS = 22; // 32 - 8 - 2, as in Pillow

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for a [0, inSize) → outSize axis. */
function coefficients(inSize: number, outSize: number, f: Filter): { ksize: number; bounds: Int32Array; kk: Int32Array } {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = f.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = f.fn((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0 ? k[x] / ww : k[x];
      // C's (int) cast truncates toward zero.
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(ss: number): number {
  const v = Math.floor(ss / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Pillow's NEAREST resize (ImagingScaleAffine): source = floor((x + 0.5) · in/out), accumulated like Pillow. */
function resizeNearest(img: RgbImage, outW: number, outH: number): RgbImage {
  const out = new Uint8Array(outW * outH * 3);
  const ax = img.width / outW;
  const ay = img.height / outH;
  const xin = new Int32Array(outW);
  let xo = ax * 0.5;
  for (let x = 0; x < outW; x++) { xin[x] = Math.min(Math.trunc(xo), img.width - 1); xo += ax; }
  let yo = ay * 0.5;
  for (let y = 0; y < outH; y++) {
    const yi = Math.min(Math.trunc(yo), img.height - 1);
    yo += ay;
    for (let x = 0; x < outW; x++) {
      const s = (yi * img.width + xin[x]) * 3;
      const d = (y * outW + x) * 3;
      out[d] = img.data[s]; out[d + 1] = img.data[s + 1]; out[d + 2] = img.data[s + 2];
    }
  }
  return { data: out, width: outW, height: outH };
}

/** Resizes 8-bit RGB exactly as PIL's `Image.resize((outW, outH), resample)` does. */
export function resizeRgb(img: RgbImage, outW: number, outH: number, interpolation: Interpolation = 'bicubic'): RgbImage {
  if (!Number.isInteger(outW) || !Number.isInteger(outH) || outW < 1 || outH < 1) throw new RangeError(`bad target size ${outW}x${outH}`);
  if (outW === img.width && outH === img.height) return { data: img.data.slice(), width: outW, height: outH };
  if (interpolation === 'nearest') return resizeNearest(img, outW, outH);
  const f = FILTERS[interpolation];
  if (!f) throw new RangeError(`unknown interpolation "${interpolation}"`);
  const { width: w, height: h } = img;
  const vert = coefficients(h, outH, f);
  const needH = outW !== w;
  const needV = outH !== h;
  let src = img.data;
  let srcW = w;
  const vb = vert.bounds;
  if (needH) {
    // Only the rows the vertical pass will read.
    const first = vb[0];
    const last = vb[(outH - 1) * 2] + vb[(outH - 1) * 2 + 1];
    const rows = needV ? last - first : h;
    const y0 = needV ? first : 0;
    const { ksize, bounds, kk } = coefficients(w, outW, f);
    const tmp = new Uint8Array(outW * rows * 3);
    const half = 1 << (PRECISION_BITS - 1);
    for (let y = 0; y < rows; y++) {
      const rowBase = (y + y0) * w * 3;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = bounds[xx * 2], xmax = bounds[xx * 2 + 1];
        const kb = xx * ksize;
        let s0 = half, s1 = half, s2 = half;
        for (let x = 0; x < xmax; x++) {
          const k = kk[kb + x];
          const p = rowBase + (x + xmin) * 3;
          s0 += src[p] * k; s1 += src[p + 1] * k; s2 += src[p + 2] * k;
        }
        const d = (y * outW + xx) * 3;
        tmp[d] = clip8(s0); tmp[d + 1] = clip8(s1); tmp[d + 2] = clip8(s2);
      }
    }
    if (needV) for (let i = 0; i < outH; i++) vb[i * 2] -= y0;
    src = tmp;
    srcW = outW;
  }
  if (!needV) return { data: src, width: outW, height: outH };
  const out = new Uint8Array(outW * outH * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = vb[yy * 2], ymax = vb[yy * 2 + 1];
    const kb = yy * vert.ksize;
    for (let xx = 0; xx < outW; xx++) {
      let s0 = half, s1 = half, s2 = half;
      for (let y = 0; y < ymax; y++) {
        const k = vert.kk[kb + y];
        const p = ((y + ymin) * srcW + xx) * 3;
        s0 += src[p] * k; s1 += src[p + 1] * k; s2 += src[p + 2] * k;
      }
      const d = (yy * outW + xx) * 3;
      out[d] = clip8(s0); out[d + 1] = clip8(s1); out[d + 2] = clip8(s2);
    }
  }
  return { data: out, width: outW, height: outH };
}

/** HWC uint8 → CHW float32 in [-1, 1], computed as numpy does (float64, then cast). */
export function toChwFloat(img: RgbImage): Float32Array {
  const n = img.width * img.height;
  const out = new Float32Array(3 * n);
  for (let i = 0; i < n; i++) {
    out[i] = img.data[i * 3] / 127.5 - 1;
    out[n + i] = img.data[i * 3 + 1] / 127.5 - 1;
    out[2 * n + i] = img.data[i * 3 + 2] / 127.5 - 1;
  }
  return out;
}

/** One training example as diffusers prepares it: CHW float32 [3, size, size] in [-1, 1]. */
export async function loadTrainingImage(path: string, opts: TrainingImageOptions): Promise<Float32Array> {
  return trainingPixels(await decodeRgb(path), opts);
}

/** The same preparation for an image already in memory (crop, resize, scale to [-1, 1]). */
export function trainingPixels(img: RgbImage, opts: TrainingImageOptions): Float32Array {
  const { size, centerCrop: crop, interpolation = 'bicubic' } = opts;
  if (!Number.isInteger(size) || size < 1) throw new RangeError(`bad training image size ${size}`);
  const problem = rgbImageProblem(img);
  if (problem) throw new OnewordError(`image: ${problem}`, { usage: true });
  return toChwFloat(resizeRgb(crop ? centerCrop(img) : img, size, size, interpolation));
}

/** Why `img` is not a usable RgbImage, or null when it is. */
export function rgbImageProblem(img: RgbImage): string | null {
  if (!img || !(img.data instanceof Uint8Array)) return 'an in-memory image needs data as a Uint8Array of RGB bytes';
  if (!Number.isInteger(img.width) || !Number.isInteger(img.height) || img.width < 1 || img.height < 1) {
    return `bad size ${img.width}×${img.height}`;
  }
  if (img.data.length !== img.width * img.height * 3) {
    return `${img.width}×${img.height} RGB needs ${img.width * img.height * 3} bytes, got ${img.data.length}`;
  }
  return null;
}

/** Mirror left↔right of a CHW tensor (any channel count); returns a new array. */
export function flipHorizontal(chw: Float32Array, H: number, W: number): Float32Array {
  if (H * W === 0 || chw.length % (H * W) !== 0) throw new RangeError(`array of ${chw.length} values is not C×${H}×${W}`);
  const out = new Float32Array(chw.length);
  for (let r = 0; r < chw.length; r += W) {
    for (let x = 0; x < W; x++) out[r + x] = chw[r + W - 1 - x];
  }
  return out;
}

/**
 * Image files (jpg, jpeg, png, webp; any case) directly inside `dir`, as full paths,
 * sorted by name so runs are reproducible. Hidden files (e.g. macOS "._x.jpg") are skipped.
 */
export function listImages(dir: string): string[] {
  let names: string[];
  try {
    if (!statSync(dir).isDirectory()) throw new ImageError(dir, 'is not a directory');
    names = readdirSync(dir);
  } catch (e) {
    if (e instanceof ImageError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new ImageError(dir, code === 'ENOENT' ? 'image directory does not exist' : `cannot read directory: ${(e as Error).message}`, { cause: e });
  }
  const files = names
    .filter((n) => !n.startsWith('.') && (IMAGE_EXTENSIONS as readonly string[]).includes(extname(n).toLowerCase()))
    .map((n) => join(dir, n))
    .filter(isFile)
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  if (files.length === 0) throw new ImageError(dir, `no images found (looked for ${IMAGE_EXTENSIONS.join(', ')})`);
  return files;
}

function isFile(p: string): boolean {
  try { return statSync(p).isFile(); } catch { return false; } // dangling symlink: skip, as if absent
}

/** numpy's round(): half to even. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * Float CHW RGB in [0, 1] → HWC uint8, as diffusers' numpy_to_pil does:
 * (x * 255) in float32, rounded half-to-even, after clamping to [0, 1].
 */
export function chwToRgb8(chw: Float32Array, width: number, height: number): Uint8Array {
  const n = width * height;
  if (chw.length !== 3 * n) throw new RangeError(`expected 3×${height}×${width} = ${3 * n} values, got ${chw.length}`);
  const out = new Uint8Array(3 * n);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < n; i++) {
      const v = chw[c * n + i];
      const x = v > 0 ? (v < 1 ? v : 1) : 0; // NaN → 0
      out[i * 3 + c] = roundHalfEven(Math.fround(x * 255));
    }
  }
  return out;
}

/**
 * Writes an RGB PNG, atomically (temp file + rename). `pixels` is either float32 CHW
 * in [0, 1] or uint8 HWC. With `parameters`, the A1111 infotext is stored in a
 * `parameters` text chunk. Same input → same bytes.
 */
export function savePng(path: string, pixels: Float32Array | Uint8Array, width: number, height: number, opts: { parameters?: string } = {}): void {
  const rgb = pixels instanceof Float32Array ? chwToRgb8(pixels, width, height) : pixels;
  const png = encodePng(rgb, width, height, { text: opts.parameters !== undefined ? [['parameters', opts.parameters]] : [] });
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    writeFileSync(tmp, png, { flag: 'wx' });
    renameSync(tmp, path);
  } catch (e) {
    try { unlinkSync(tmp); } catch { /* not created, or already renamed */ }
    throw new ImageError(path, `cannot write PNG: ${(e as Error).message}`, { cause: e });
  }
}
