// Training data for the shapes model: seeded renders of the shapes world as float pixels,
// captions drawn afresh for every use (with 10 % empty captions for classifier-free
// guidance), and token ids from the real CLIP tokenizer.
import { CLIPTokenizer } from '../models/clip-tokenizer.ts';
import { type Attrs, captionFor, IMAGE_SIZE, randomAttributes, render, Rng, type RgbImage } from '../shapes/index.ts';

/** Probability that a training caption is empty (the unconditional branch of CFG). */
export const EMPTY_CAPTION_PROB = 0.1;

export interface RenderedSet {
  attrs: Attrs[];
  /** [n, 3, size, size] in [-1, 1]. */
  pixels: Float32Array;
  size: number;
}

/** RGB bytes (HWC) → CHW floats in [-1, 1], box-downsampled to `size` when smaller. */
export function toPixels(img: RgbImage, size: number, out: Float32Array, offset = 0): void {
  const f = img.width / size;
  if (!Number.isInteger(f) || f < 1) throw new Error(`toPixels: cannot resample ${img.width} px to ${size} px`);
  const plane = size * size;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let dy = 0; dy < f; dy++) for (let dx = 0; dx < f; dx++) s += img.data[((y * f + dy) * img.width + x * f + dx) * 3 + c];
        out[offset + c * plane + y * size + x] = (s / (f * f)) / 127.5 - 1;
      }
    }
  }
}

/** CHW floats in [-1, 1] → RGB bytes (HWC), clamped. */
export function toImage(pixels: ArrayLike<number>, size: number, offset = 0): RgbImage {
  const data = new Uint8Array(size * size * 3);
  const plane = size * size;
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) {
      const v = Math.round((pixels[offset + c * plane + i] + 1) * 127.5);
      data[i * 3 + c] = v < 0 ? 0 : v > 255 ? 255 : v;
    }
  }
  return { width: size, height: size, data };
}

/** Weight of object pixels (anything not the plain background) in the VAE loss. */
export const OBJECT_WEIGHT = 5;

/**
 * Per-pixel VAE loss weights [n, 1, size, size] for CHW `pixels`: OBJECT_WEIGHT where a
 * pixel differs from its image's background (the border's most common colour), 1 elsewhere,
 * scaled to mean 1 over the batch.
 */
export function objectWeights(pixels: Float32Array, n: number, size: number): Float32Array {
  const plane = size * size;
  const w = new Float32Array(n * plane);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const base = i * 3 * plane;
    const bg = backgroundOf(pixels, base, size);
    for (let k = 0; k < plane; k++) {
      let d = 0;
      for (let c = 0; c < 3; c++) d = Math.max(d, Math.abs(pixels[base + c * plane + k] - bg[c]));
      const v = d > 0.02 ? OBJECT_WEIGHT : 1;
      w[i * plane + k] = v;
      sum += v;
    }
  }
  const scale = (n * plane) / sum;
  for (let k = 0; k < w.length; k++) w[k] *= scale;
  return w;
}

/** Most common colour among the border pixels (the background; objects rarely touch it). */
function backgroundOf(pixels: Float32Array, base: number, size: number): number[] {
  const plane = size * size;
  const counts = new Map<string, { n: number; rgb: number[] }>();
  for (let i = 0; i < size; i++) {
    for (const [x, y] of [[i, 0], [i, size - 1], [0, i], [size - 1, i]]) {
      const k = y * size + x;
      const rgb = [0, 1, 2].map((c) => pixels[base + c * plane + k]);
      const key = rgb.map((v) => v.toFixed(3)).join();
      const e = counts.get(key);
      if (e) e.n++;
      else counts.set(key, { n: 1, rgb });
    }
  }
  let best = { n: 0, rgb: [0, 0, 0] };
  for (const e of counts.values()) if (e.n > best.n) best = e;
  return best.rgb;
}

/**
 * Fraction of object pixels (see objectWeights) in each latent cell: [n, size/f, size/f] for
 * a VAE down factor f, as bytes (0–255).
 */
export function latentObjectFraction(pixels: Float32Array, n: number, size: number, f: number): Uint8Array {
  const s = size / f;
  const out = new Uint8Array(n * s * s);
  for (let i = 0; i < n; i++) {
    const w = objectWeights(pixels.subarray(i * 3 * size * size, (i + 1) * 3 * size * size), 1, size);
    const lo = Math.min(...w);
    for (let y = 0; y < s; y++) {
      for (let x = 0; x < s; x++) {
        let c = 0;
        for (let dy = 0; dy < f; dy++) for (let dx = 0; dx < f; dx++) if (w[(y * f + dy) * size + x * f + dx] > lo) c++;
        out[i * s * s + y * s + x] = Math.round((255 * c) / (f * f));
      }
    }
  }
  return out;
}

/** `n` random renders (random attributes and jitter), reproducible from `seed`. */
export function renderSet(n: number, seed: number, size = IMAGE_SIZE): RenderedSet {
  const rng = new Rng(`shapes-data:${seed}`);
  const attrs: Attrs[] = [];
  const pixels = new Float32Array(n * 3 * size * size);
  for (let i = 0; i < n; i++) {
    const a = randomAttributes(rng);
    attrs.push(a);
    toPixels(render(a, { rng }), size, pixels, i * 3 * size * size);
  }
  return { attrs, pixels, size };
}

/** Token ids [77] per caption, cached (captions repeat a lot). */
export class CaptionTokens {
  private readonly cache = new Map<string, BigInt64Array>();
  constructor(readonly tokenizer: CLIPTokenizer = CLIPTokenizer.bundled()) {}

  ids(caption: string): BigInt64Array {
    let v = this.cache.get(caption);
    if (!v) {
      v = BigInt64Array.from(this.tokenizer.call(caption).inputIds, (x) => BigInt(x));
      this.cache.set(caption, v);
    }
    return v;
  }

  /** Token ids for a batch of captions: [n, 77]. */
  batch(captions: readonly string[]): BigInt64Array {
    const out = new BigInt64Array(captions.length * 77);
    captions.forEach((c, i) => out.set(this.ids(c), i * 77));
    return out;
  }
}

/** Probability that a (non-empty) training caption names the texture by its made-up word. */
export const TEXTURE_WORD_PROB = 0.5;

/** A training caption for `attrs`: empty with EMPTY_CAPTION_PROB, else a random wording. */
export function trainingCaption(attrs: Attrs, rng: Rng, textureWordProb = TEXTURE_WORD_PROB): string {
  if (rng.chance(EMPTY_CAPTION_PROB)) return '';
  return captionFor(attrs, rng, { textureWordProb });
}
