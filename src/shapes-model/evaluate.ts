// Does the model draw what the prompt says? Seeded random prompts (texture never named)
// are generated and read back by the shapes analyzer; we count per-attribute agreement and
// which textures appear.
import { analyze, type Attrs, IMAGE_SIZE, ATTRIBUTE_NAMES, describe, randomAttributes, render, Rng, type RgbImage, TEXTURES, type Texture } from '../shapes/index.ts';
import { sampleImages, type SampleOptions, type SamplerModel } from './sample.ts';

export interface EvalOptions extends SampleOptions {
  /** Number of random prompts (one image each, seed = prompt index). */
  prompts?: number;
  /** Prompts × seeds for the texture-variety check. */
  varietyPrompts?: number;
  varietySeeds?: number;
  batch?: number;
  /** Called with every generated image (e.g. to save a contact sheet). */
  onImage?: (img: RgbImage, prompt: string, attrs: Attrs, index: number) => void | Promise<void>;
}

export interface EvalResult {
  case: 'shapes';
  color: number;
  position: number;
  background: number;
  shape: number;
  size: number;
  images: number;
  /** Distinct textures among all the random-prompt images. */
  textures: number;
  textureCounts: Record<Texture, number>;
  /** Mean number of distinct textures per prompt over `varietySeeds` seeds. */
  texturesPerPrompt: number;
  varietySeeds: number;
}

/** Nearest-neighbour upscale to the analyzer's 64×64 (only the tiny test model is smaller). */
function toAnalyzerSize(img: RgbImage): RgbImage {
  if (img.width === IMAGE_SIZE) return img;
  const f = IMAGE_SIZE / img.width;
  const data = new Uint8Array(IMAGE_SIZE * IMAGE_SIZE * 3);
  for (let y = 0; y < IMAGE_SIZE; y++)
    for (let x = 0; x < IMAGE_SIZE; x++)
      for (let c = 0; c < 3; c++) data[(y * IMAGE_SIZE + x) * 3 + c] = img.data[(Math.floor(y / f) * img.width + Math.floor(x / f)) * 3 + c];
  return { width: IMAGE_SIZE, height: IMAGE_SIZE, data };
}

export function evalPrompt(i: number): { attrs: Attrs; prompt: string } {
  const attrs = randomAttributes(new Rng(`shapes-eval:${i}`));
  return { attrs, prompt: describe(attrs) };
}

export async function evaluateModel(m: SamplerModel, opts: EvalOptions = {}): Promise<EvalResult> {
  const n = opts.prompts ?? 200;
  const batch = opts.batch ?? 8;
  const hits: Record<string, number> = { color: 0, position: 0, background: 0, shape: 0, size: 0 };
  const textureCounts = Object.fromEntries(TEXTURES.map((t) => [t, 0])) as Record<Texture, number>;
  const items = Array.from({ length: n }, (_, i) => ({ ...evalPrompt(i), seed: i }));
  for (let i = 0; i < n; i += batch) {
    const chunk = items.slice(i, i + batch);
    while (chunk.length < batch) chunk.push(chunk[chunk.length - 1]); // static batch: pad, ignore
    const imgs = await sampleImages(m, chunk.map((c) => c.prompt), chunk.map((c) => c.seed), opts);
    for (let k = 0; k < batch && i + k < n; k++) {
      const a = analyze(toAnalyzerSize(imgs[k])).attrs;
      const want = chunk[k].attrs;
      for (const key of Object.keys(hits)) if (a[key as keyof Attrs] === want[key as keyof Attrs]) hits[key]++;
      textureCounts[a.texture]++;
      await opts.onImage?.(imgs[k], chunk[k].prompt, a, i + k);
    }
  }
  // Texture variety: the same texture-less prompt over several seeds.
  const vp = opts.varietyPrompts ?? 4;
  const vs = opts.varietySeeds ?? 8;
  let distinct = 0;
  for (let p = 0; p < vp; p++) {
    const { prompt } = evalPrompt(10_000 + p);
    const seen = new Set<Texture>();
    for (let s = 0; s < vs; s += batch) {
      const seeds = Array.from({ length: batch }, (_, k) => 1000 + Math.min(s + k, vs - 1));
      const imgs = await sampleImages(m, seeds.map(() => prompt), seeds, opts);
      for (let k = 0; k < batch && s + k < vs; k++) seen.add(analyze(toAnalyzerSize(imgs[k])).attrs.texture);
    }
    distinct += seen.size;
  }
  const r = (k: string) => Number((hits[k] / n).toFixed(3));
  return {
    case: 'shapes',
    color: r('color'),
    position: r('position'),
    background: r('background'),
    shape: r('shape'),
    size: r('size'),
    images: n,
    textures: TEXTURES.filter((t) => textureCounts[t] > 0).length,
    textureCounts,
    texturesPerPrompt: vp ? Number((distinct / vp).toFixed(2)) : 0,
    varietySeeds: vs,
  };
}

/**
 * The analyzer's own accuracy per attribute on fresh renders of the first `n` evaluation
 * prompts' attributes: the ceiling the model's scores are read against.
 */
export function analyzerAccuracy(n = 200): Record<keyof Attrs, number> {
  const hits = Object.fromEntries(ATTRIBUTE_NAMES.map((k) => [k, 0])) as Record<keyof Attrs, number>;
  for (let i = 0; i < n; i++) {
    const { attrs } = evalPrompt(i);
    const read = analyze(render(attrs, new Rng(`shapes-eval-render:${i}`))).attrs;
    for (const k of ATTRIBUTE_NAMES) if (read[k] === attrs[k]) hits[k]++;
  }
  for (const k of ATTRIBUTE_NAMES) hits[k] = Number((hits[k] / n).toFixed(3));
  return hits;
}

export { ATTRIBUTE_NAMES };
