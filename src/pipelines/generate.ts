// High-level generation: prompts → images, one seed per image (seed, seed+1, … as A1111),
// initial latents drawn exactly as torch.randn with a CPU generator seeded with that seed.
import { createSampler, SAMPLERS, TorchGenerator, type SamplerName } from '../schedulers/index.ts';
import { decodeLatents, denoise, encodePrompt, matchChunks } from './text-to-image.ts';
import type { StableDiffusion } from './stable-diffusion.ts';
import { OnewordError } from '../errors.ts';

/** Options of generate: the `oneword generate` flags, with the same defaults. */
export interface GenerateOptions {
  /** A1111 prompt syntax: (word:1.2), (word), [word], BREAK; any length. */
  prompt: string;
  /** Default "" (empty). */
  negativePrompt?: string;
  /** Sampling steps. Default 30. */
  steps?: number;
  /** Classifier-free guidance scale (1 = no guidance). Default 7.5. */
  guidance?: number;
  /** One of ddim, pndm, euler, euler-karras, euler-a, dpmpp2m, dpmpp2m-karras. Default "dpmpp2m-karras" (dpmpp2m for zero-terminal-SNR models). */
  sampler?: string;
  /** Seed of the first image; image i uses seed + i. Default 42. */
  seed?: number;
  /** Image size, a multiple of the VAE factor. Default: the model's native size. */
  width?: number;
  height?: number;
  /** Number of images. Default 1. */
  count?: number;
  /** DDIM noise (ddim only). Default 0. */
  eta?: number;
  onStep?: (image: number, step: number, steps: number) => void;
}

const KNOWN_OPTIONS = new Set(['prompt', 'negativePrompt', 'steps', 'guidance', 'sampler', 'seed', 'width', 'height', 'count', 'eta', 'onStep']);

export interface GeneratedImage {
  /** CHW float32 in [0, 1]. */
  pixels: Float32Array;
  width: number;
  height: number;
  seed: number;
}

export class GenerateError extends OnewordError {
  override name = 'GenerateError';
}

/**
 * DPM++ 2M on Karras sigmas, except for zero-terminal-SNR models (rescale_betas_zero_snr),
 * whose last training sigma is 4096: Karras spacing from there gives black images here, so
 * those get DPM++ 2M on the model's own (trailing) timesteps.
 */
export function defaultSampler(sd: StableDiffusion): SamplerName {
  return sd.ckpt.schedulerConfig?.rescale_betas_zero_snr === true ? 'dpmpp2m' : 'dpmpp2m-karras';
}

/** The model's native size: UNet sample_size × VAE factor (512 for SD 1.5). */
export function defaultSize(sd: StableDiffusion): number {
  return (sd.ckpt.unetConfig.sample_size ?? 64) * sd.vaeFactor;
}

export function checkGenerateOptions(sd: StableDiffusion, o: GenerateOptions): Required<Omit<GenerateOptions, 'onStep' | 'eta'>> & { eta?: number } {
  // A misspelt option must not silently fall back to its default.
  for (const k of Object.keys(o)) if (!KNOWN_OPTIONS.has(k)) throw new GenerateError(`unknown option "${k}"`, { usage: true });
  if (typeof o.prompt !== 'string') throw GenerateError.badOption('prompt', 'is required (a string)');
  const size = defaultSize(sd);
  const r = {
    prompt: o.prompt,
    negativePrompt: o.negativePrompt ?? '',
    steps: o.steps ?? 30,
    guidance: o.guidance ?? 7.5,
    sampler: o.sampler ?? defaultSampler(sd),
    seed: o.seed ?? 42,
    width: o.width ?? size,
    height: o.height ?? size,
    count: o.count ?? 1,
    eta: o.eta,
  };
  const f = sd.vaeFactor;
  const bad = (option: string, problem: string) => GenerateError.badOption(option, problem);
  if (!Number.isInteger(r.steps) || r.steps < 1) throw bad('steps', `must be a positive whole number, got ${r.steps}`);
  if (!Number.isInteger(r.count) || r.count < 1) throw bad('count', `must be a positive whole number, got ${r.count}`);
  if (!(r.guidance >= 0)) throw bad('guidance', `must be ≥ 0, got ${r.guidance}`);
  if (!Number.isInteger(r.seed) || r.seed < 0) throw bad('seed', `must be a whole number ≥ 0, got ${r.seed}`);
  for (const [k, v] of [['width', r.width], ['height', r.height]] as const) {
    if (!Number.isInteger(v) || v <= 0 || v % f !== 0) {
      throw bad(k, `must be a positive multiple of ${f} (this model's VAE downscales by ${f}), got ${v}`);
    }
  }
  if (!(r.sampler in SAMPLERS)) throw bad('sampler', `must be one of ${Object.keys(SAMPLERS).join(', ')}, got "${r.sampler}"`);
  if (r.eta !== undefined && SAMPLERS[r.sampler as SamplerName].kind !== 'ddim') throw bad('eta', 'applies to the ddim sampler only');
  return r;
}

export async function generate(sd: StableDiffusion, opts: GenerateOptions): Promise<GeneratedImage[]> {
  const o = checkGenerateOptions(sd, opts);
  const f = sd.vaeFactor;
  const latentShape: [number, number, number] = [sd.latentChannels, o.height / f, o.width / f];
  const [cond, uncond] = await matchChunks(sd, await encodePrompt(sd, o.prompt), await encodePrompt(sd, o.negativePrompt));
  const images: GeneratedImage[] = [];
  for (let i = 0; i < o.count; i++) {
    const seed = o.seed + i;
    const gen = new TorchGenerator(seed);
    const initLatents = gen.randn([1, ...latentShape]);
    const scheduler = createSampler(o.sampler, sd.ckpt.schedulerConfig, o.eta !== undefined ? { eta: o.eta } : {});
    const latents = await denoise(sd, {
      scheduler, steps: o.steps, guidance: o.guidance, initLatents, latentShape, cond, uncond, noise: gen,
      onStep: (s) => opts.onStep?.(i, s.step + 1, s.steps),
    });
    const { image } = await decodeLatents(sd, latents, latentShape);
    images.push({ pixels: image, width: o.width, height: o.height, seed });
  }
  return images;
}
