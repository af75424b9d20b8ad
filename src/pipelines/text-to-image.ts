// Text-to-image: prompt encoding (A1111 emphasis and 75-token chunks), the denoising
// loop with classifier-free guidance, and VAE decoding — step for step as diffusers'
// StableDiffusionPipeline (SDXL: StableDiffusionXLPipeline) when the prompt has no emphasis
// and fits one chunk.
import type { NoiseSource, Scheduler } from '../schedulers/index.ts';
import { applyEmphasis, tokenizeWeighted } from './prompt.ts';
import type { StableDiffusion, XLConditioning } from './stable-diffusion.ts';

/** Encoder output for a prompt: [1, 77·chunks, D] (SDXL: D1 + D2, and the pooled text embeds). */
export interface EncodedPrompt {
  hidden: Float32Array;
  chunks: number;
  tokenCount: number;
  /** SDXL: the pooled text embeds [Dp] (of the first chunk). */
  pooled?: Float32Array;
}

/** SDXL's size conditioning, as StableDiffusionXLPipeline names it: (height, width) pairs. */
export interface SizeConditioning {
  originalSize: readonly [number, number];
  cropsCoordsTopLeft: readonly [number, number];
  targetSize: readonly [number, number];
}

/** SDXL's six time ids: original size, crop top-left, target size (each height first), as the pipeline's _get_add_time_ids. */
export function sdxlTimeIds(s: SizeConditioning): Float32Array {
  return Float32Array.of(...s.originalSize, ...s.cropsCoordsTopLeft, ...s.targetSize);
}

export async function encodePrompt(sd: StableDiffusion, text: string, opts: { emphasis?: boolean } = {}): Promise<EncodedPrompt> {
  const embeddings = new Map([...sd.learned.values()].map((t) => [t.token, t.count]));
  const wp = tokenizeWeighted(sd.tokenizer, text, { embeddings, emphasis: opts.emphasis });
  const d = sd.hiddenSize;
  const n = wp.chunks.length;
  const hidden = await sd.encodeIds(wp.chunks.flatMap((c) => c.ids), n);
  wp.chunks.forEach((c, i) => applyEmphasis(hidden.subarray(i * 77 * d, (i + 1) * 77 * d), [77, d], c.weights));
  return { hidden, chunks: n, tokenCount: wp.tokenCount };
}

/**
 * Makes cond and uncond the same length (as A1111 does): the shorter is extended with
 * chunks of the empty prompt.
 */
export async function matchChunks(sd: StableDiffusion, a: EncodedPrompt, b: EncodedPrompt): Promise<[EncodedPrompt, EncodedPrompt]> {
  if (a.chunks === b.chunks) return [a, b];
  const empty = await encodePrompt(sd, '');
  const d = sd.hiddenSize;
  const pad = (p: EncodedPrompt, to: number): EncodedPrompt => {
    const hidden = new Float32Array(to * 77 * d);
    hidden.set(p.hidden);
    for (let i = p.chunks; i < to; i++) hidden.set(empty.hidden, i * 77 * d);
    return { hidden, chunks: to, tokenCount: p.tokenCount };
  };
  const to = Math.max(a.chunks, b.chunks);
  return [pad(a, to), pad(b, to)];
}

export interface StepInfo {
  step: number;
  steps: number;
  t: number;
  /** Raw UNet output of this step ([uncond, cond] when guided). */
  unetOut: Float32Array;
  latents: Float32Array;
}

export interface DenoiseOptions {
  scheduler: Scheduler;
  steps: number;
  guidance: number;
  /** Standard-normal initial latents [1, C, h, w]; multiplied by the scheduler's init sigma. */
  initLatents: Float32Array;
  latentShape: readonly [number, number, number];
  cond: EncodedPrompt;
  uncond: EncodedPrompt;
  noise?: NoiseSource;
  /** SDXL: the six time ids (sdxlTimeIds), the same for the guided and unguided halves. */
  timeIds?: ArrayLike<number>;
  onStep?: (info: StepInfo) => void;
}

/** SDXL's added UNet conditioning for a batch of [uncond, cond] (guided) or [cond]; undefined for SD 1.x/2.x. */
export function guidedConditioning(
  sd: StableDiffusion, cond: EncodedPrompt, uncond: EncodedPrompt, timeIds: ArrayLike<number> | undefined, guided: boolean,
): XLConditioning | undefined {
  if (!sd.isXL) return undefined;
  const rows = guided ? [uncond.pooled, cond.pooled] : [cond.pooled];
  if (!timeIds || rows.some((r) => !r)) throw new Error('SDXL sampling needs pooled text embeds and time ids');
  const textEmbeds = new Float32Array(rows.length * sd.pooledSize);
  const ids = new Float32Array(rows.length * 6);
  rows.forEach((r, i) => { textEmbeds.set(r!, i * sd.pooledSize); ids.set(Array.from(timeIds), i * 6); });
  return { textEmbeds, timeIds: ids };
}

/**
 * SDXL's negative conditioning when there is no negative prompt and the model sets
 * force_zeros_for_empty_prompt (SDXL base does): all zeros, the shape of `like`, not the
 * encoding of "".
 */
export function zeroPrompt(sd: StableDiffusion, like: EncodedPrompt): EncodedPrompt {
  return { hidden: new Float32Array(like.hidden.length), chunks: like.chunks, tokenCount: 0, pooled: new Float32Array(sd.pooledSize) };
}

/** The sampling loop; returns the final latents (scaled, as the UNet sees them). */
export async function denoise(sd: StableDiffusion, o: DenoiseOptions): Promise<Float32Array> {
  const { scheduler } = o;
  scheduler.setTimesteps(o.steps);
  const [c, h, w] = o.latentShape;
  const n = c * h * w;
  let x: Float32Array = Float32Array.from(o.initLatents, (v) => v * scheduler.initNoiseSigma);
  const guided = o.guidance > 1;
  const d = sd.contextSize;
  const added = guidedConditioning(sd, o.cond, o.uncond, o.timeIds, guided);
  const ctxLen = o.cond.chunks * 77 * d;
  const context = guided ? new Float32Array(2 * ctxLen) : o.cond.hidden;
  if (guided) {
    context.set(o.uncond.hidden, 0);
    context.set(o.cond.hidden, ctxLen);
  }
  const batch = guided ? 2 : 1;
  const ts = scheduler.timesteps;
  for (let i = 0; i < ts.length; i++) {
    const t = ts[i];
    const xin = scheduler.scaleModelInput(x, t);
    const input = guided ? new Float32Array(2 * n) : xin;
    if (guided) {
      input.set(xin, 0);
      input.set(xin, n);
    }
    const out = await sd.unet(input, [batch, c, h, w], new Array(batch).fill(t), context, added);
    let eps = out;
    if (guided) {
      eps = new Float32Array(n);
      const s = o.guidance;
      // Rounded like torch's float32 ops, so whole runs stay bit-identical to diffusers.
      for (let k = 0; k < n; k++) eps[k] = out[k] + Math.fround(s * Math.fround(out[n + k] - out[k]));
    }
    x = scheduler.step(eps, t, x, o.noise);
    o.onStep?.({ step: i, steps: ts.length, t, unetOut: out, latents: x });
  }
  return x;
}

/** VAE decode of final latents: returns raw decoder output and the image in [0, 1] (CHW). */
export async function decodeLatents(sd: StableDiffusion, latents: Float32Array, latentShape: readonly [number, number, number]): Promise<{ decoded: Float32Array; image: Float32Array }> {
  const sf = sd.scalingFactor;
  const decoded = await sd.vaeDecode(Float32Array.from(latents, (v) => v / sf), [1, ...latentShape]);
  const image = Float32Array.from(decoded, (v) => Math.min(1, Math.max(0, v / 2 + 0.5)));
  return { decoded, image };
}
