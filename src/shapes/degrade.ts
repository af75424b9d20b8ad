// Mild image degradations (Gaussian blur, additive Gaussian noise) that imitate what a small
// generative model produces; used to check that the analyzer is not tuned to pristine renders.
import type { RgbImage } from './render.ts';
import type { Rng } from './random.ts';

export interface Degradation {
  /** Gaussian blur standard deviation in pixels (0 = none). */
  blur?: number;
  /** Additive per-channel Gaussian noise standard deviation, in 0–255 units (0 = none). */
  noise?: number;
}

/** Separable Gaussian blur with edge clamping. */
export function gaussianBlur(img: RgbImage, sigma: number): RgbImage {
  if (sigma <= 0) return { ...img, data: img.data.slice() };
  const rad = Math.max(1, Math.ceil(3 * sigma));
  const kernel = new Float64Array(2 * rad + 1);
  let sum = 0;
  for (let i = -rad; i <= rad; i++) sum += kernel[i + rad] = Math.exp((-i * i) / (2 * sigma * sigma));
  for (let i = 0; i < kernel.length; i++) kernel[i] /= sum;
  const { width: W, height: H } = img;
  const tmp = new Float64Array(W * H * 3);
  for (let y = 0; y < H; y++)
    for (let x = 0; x < W; x++)
      for (let c = 0; c < 3; c++) {
        let acc = 0;
        for (let i = -rad; i <= rad; i++) acc += kernel[i + rad] * img.data[(y * W + Math.min(W - 1, Math.max(0, x + i))) * 3 + c];
        tmp[(y * W + x) * 3 + c] = acc;
      }
  const out = new Uint8Array(W * H * 3);
  for (let y = 0; y < H; y++)
    for (let x = 0; x < W; x++)
      for (let c = 0; c < 3; c++) {
        let acc = 0;
        for (let i = -rad; i <= rad; i++) acc += kernel[i + rad] * tmp[(Math.min(H - 1, Math.max(0, y + i)) * W + x) * 3 + c];
        out[(y * W + x) * 3 + c] = Math.round(acc);
      }
  return { width: W, height: H, data: out };
}

export function addNoise(img: RgbImage, sigma: number, rng: Rng): RgbImage {
  const out = new Uint8Array(img.data.length);
  for (let i = 0; i < out.length; i++) out[i] = Math.min(255, Math.max(0, Math.round(img.data[i] + sigma * rng.normal())));
  return { ...img, data: out };
}

export function degrade(img: RgbImage, d: Degradation, rng: Rng): RgbImage {
  let out = d.blur ? gaussianBlur(img, d.blur) : img;
  if (d.noise) out = addNoise(out, d.noise, rng);
  return out;
}
