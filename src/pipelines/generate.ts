// High-level generation: prompts → images, one seed per image (seed, seed+1, … as A1111),
// initial latents drawn exactly as torch.randn with a CPU generator seeded with that seed.
import { createSampler, SAMPLERS, TorchGenerator, type SamplerName } from '../schedulers/index.ts';
import { decodeLatents, denoise, encodePrompt, matchChunks, sdxlTimeIds, zeroPrompt } from './text-to-image.ts';
import type { StableDiffusion } from './stable-diffusion.ts';
import { OnewordError } from '../errors.ts';

/** Options of generate: the `oneword generate` flags, with the same defaults. */
export interface GenerateOptions {
  /** A1111 prompt syntax: (word:1.2), (word), [word], BREAK; any length. */
  prompt: string;
  /**
   * Default "" (empty). SDXL: an empty negative prompt gives all-zero negative conditioning when
   * the model sets force_zeros_for_empty_prompt (SDXL base does), as diffusers without a
   * negative prompt and A1111 with an empty one.
   */
  negativePrompt?: string;
  /** Sampling steps. Default 30. */
  steps?: number;
  /** Classifier-free guidance scale (1 = no guidance). Default 7.5 (SDXL: 5.0, as StableDiffusionXLPipeline). */
  guidance?: number;
  /** One of ddim, pndm, euler, euler-karras, euler-a, dpmpp2m, dpmpp2m-karras. Default "dpmpp2m-karras" (dpmpp2m for zero-terminal-SNR models, euler for SDXL as its pipeline). */
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
  /** SDXL size conditioning, (height, width) as StableDiffusionXLPipeline's original_size. Default: the image size. */
  originalSize?: [number, number];
  /** SDXL: (top, left) as crops_coords_top_left. Default [0, 0]. */
  cropsCoordsTopLeft?: [number, number];
  /** SDXL: (height, width) as target_size. Default: the image size. */
  targetSize?: [number, number];
  onStep?: (image: number, step: number, steps: number) => void;
}

const KNOWN_OPTIONS = new Set([
  'prompt', 'negativePrompt', 'steps', 'guidance', 'sampler', 'seed', 'width', 'height', 'count', 'eta',
  'originalSize', 'cropsCoordsTopLeft', 'targetSize', 'onStep',
]);

/** The SDXL-only options: size conditioning. */
const XL_OPTIONS = ['originalSize', 'cropsCoordsTopLeft', 'targetSize'] as const;

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
  // SDXL: its own Euler scheduler ("leading" spacing, steps_offset 1), as StableDiffusionXLPipeline.
  if (sd.isXL) return 'euler';
  return sd.ckpt.schedulerConfig?.rescale_betas_zero_snr === true ? 'dpmpp2m' : 'dpmpp2m-karras';
}

/** The model's native size: UNet sample_size × VAE factor (512 for SD 1.5). */
export function defaultSize(sd: StableDiffusion): number {
  return (sd.ckpt.unetConfig.sample_size ?? 64) * sd.vaeFactor;
}

/** Upper bounds: a typo (--width 100000) fails here instead of as a 40 GB allocation. */
export const GENERATE_LIMITS = { steps: 10_000, count: 10_000, size: 8192 } as const;

/**
 * Checks every option that does not need the model (the CLI runs it before loading one);
 * checkGenerateOptions adds the model's own checks.
 */
export function checkGenerateValues(o: GenerateOptions): void {
  // A misspelt option must not silently fall back to its default.
  for (const k of Object.keys(o)) if (!KNOWN_OPTIONS.has(k)) throw new GenerateError(`unknown option "${k}"`, { usage: true });
  const bad = (option: string, problem: string) => GenerateError.badOption(option, problem);
  if (typeof o.prompt !== 'string') throw bad('prompt', 'is required (a string)');
  if (o.negativePrompt !== undefined && typeof o.negativePrompt !== 'string') throw bad('negativePrompt', 'must be a string');
  const whole = (k: 'steps' | 'count', v: unknown) => {
    if (v !== undefined && (!Number.isInteger(v) || (v as number) < 1 || (v as number) > GENERATE_LIMITS[k])) throw bad(k, `must be a whole number from 1 to ${GENERATE_LIMITS[k]}, got ${v}`);
  };
  whole('steps', o.steps);
  whole('count', o.count);
  if (o.guidance !== undefined && !(o.guidance >= 0 && o.guidance < Infinity)) throw bad('guidance', `must be ≥ 0, got ${o.guidance}`);
  const lastSeed = Number.MAX_SAFE_INTEGER - ((o.count ?? 1) - 1);
  if (o.seed !== undefined && (!Number.isSafeInteger(o.seed) || o.seed < 0 || o.seed > lastSeed)) {
    throw bad('seed', `must be a whole number from 0 to ${lastSeed}, got ${o.seed}`);
  }
  for (const k of ['width', 'height'] as const) {
    const v = o[k];
    if (v !== undefined && (!Number.isInteger(v) || v < 1 || v > GENERATE_LIMITS.size)) throw bad(k, `must be a whole number from 1 to ${GENERATE_LIMITS.size}, got ${v}`);
  }
  if (o.sampler !== undefined && !(o.sampler in SAMPLERS)) throw bad('sampler', `must be one of ${Object.keys(SAMPLERS).join(', ')}, got "${o.sampler}"`);
  if (o.eta !== undefined) {
    if (!(o.eta >= 0 && o.eta < Infinity)) throw bad('eta', `must be a number ≥ 0, got ${o.eta}`);
    if (o.sampler === undefined || SAMPLERS[o.sampler as SamplerName].kind !== 'ddim') throw bad('eta', 'applies to the ddim sampler only');
  }
  for (const k of XL_OPTIONS) {
    const v = o[k];
    const min = k === 'cropsCoordsTopLeft' ? 0 : 1;
    if (v !== undefined && (!Array.isArray(v) || v.length !== 2 || !v.every((x) => Number.isInteger(x) && x >= min && x <= GENERATE_LIMITS.size))) {
      throw bad(k, `must be two whole numbers from ${min} to ${GENERATE_LIMITS.size} (${k === 'cropsCoordsTopLeft' ? 'top, left' : 'height, width'}), got ${JSON.stringify(v)}`);
    }
  }
}

/** The model's default classifier-free guidance scale: SDXL 5.0 (StableDiffusionXLPipeline's), else 7.5. */
export function defaultGuidance(sd: StableDiffusion): number {
  return sd.isXL ? 5 : 7.5;
}

export type CheckedGenerateOptions = Required<Omit<GenerateOptions, 'onStep' | 'eta' | typeof XL_OPTIONS[number]>> & Pick<GenerateOptions, 'eta' | typeof XL_OPTIONS[number]>;

export function checkGenerateOptions(sd: StableDiffusion, o: GenerateOptions): CheckedGenerateOptions {
  checkGenerateValues(o);
  const given = XL_OPTIONS.find((k) => o[k] !== undefined);
  if (given && !sd.isXL) throw GenerateError.badOption(given, 'applies to SDXL models only (size conditioning)');
  const size = defaultSize(sd);
  const r = {
    prompt: o.prompt,
    negativePrompt: o.negativePrompt ?? '',
    steps: o.steps ?? 30,
    guidance: o.guidance ?? defaultGuidance(sd),
    sampler: o.sampler ?? defaultSampler(sd),
    seed: o.seed ?? 42,
    width: o.width ?? size,
    height: o.height ?? size,
    count: o.count ?? 1,
    eta: o.eta,
    ...(sd.isXL ? { originalSize: o.originalSize, cropsCoordsTopLeft: o.cropsCoordsTopLeft, targetSize: o.targetSize } : {}),
  };
  const f = sd.vaeFactor;
  const bad = (option: string, problem: string) => GenerateError.badOption(option, problem);
  for (const [k, v] of [['width', r.width], ['height', r.height]] as const) {
    if (v % f !== 0) throw bad(k, `must be a positive multiple of ${f} (this model's VAE downscales by ${f}), got ${v}`);
  }
  // Samplers on the training grid (ddim, pndm) cannot take more steps than the model has timesteps.
  try {
    createSampler(r.sampler as SamplerName, sd.ckpt.schedulerConfig).setTimesteps(r.steps);
  } catch (e) {
    if (/num_inference_steps/.test((e as Error).message)) {
      throw bad('steps', `must be at most ${sd.ckpt.schedulerConfig.num_train_timesteps ?? 1000} for the ${r.sampler} sampler (this model's training timesteps), got ${r.steps}`);
    }
    throw e;
  }
  return r;
}

export async function generate(sd: StableDiffusion, opts: GenerateOptions): Promise<GeneratedImage[]> {
  const o = checkGenerateOptions(sd, opts);
  const f = sd.vaeFactor;
  const latentShape: [number, number, number] = [sd.latentChannels, o.height / f, o.width / f];
  const prompt = await encodePrompt(sd, o.prompt);
  const zeros = sd.isXL && o.negativePrompt === '' && sd.ckpt.forceZerosForEmptyPrompt === true;
  const [cond, uncond] = await matchChunks(sd, prompt, zeros ? zeroPrompt(sd, prompt) : await encodePrompt(sd, o.negativePrompt));
  const imageSize: [number, number] = [o.height, o.width];
  const timeIds = sd.isXL
    ? sdxlTimeIds({ originalSize: o.originalSize ?? imageSize, cropsCoordsTopLeft: o.cropsCoordsTopLeft ?? [0, 0], targetSize: o.targetSize ?? imageSize })
    : undefined;
  const images: GeneratedImage[] = [];
  for (let i = 0; i < o.count; i++) {
    const seed = o.seed + i;
    const gen = new TorchGenerator(seed);
    const initLatents = gen.randn([1, ...latentShape]);
    const scheduler = createSampler(o.sampler, sd.ckpt.schedulerConfig, o.eta !== undefined ? { eta: o.eta } : {});
    const latents = await denoise(sd, {
      scheduler, steps: o.steps, guidance: o.guidance, initLatents, latentShape, cond, uncond, noise: gen, timeIds,
      onStep: (s) => opts.onStep?.(i, s.step + 1, s.steps),
    });
    const { image } = await decodeLatents(sd, latents, latentShape);
    images.push({ pixels: image, width: o.width, height: o.height, seed });
  }
  return images;
}
