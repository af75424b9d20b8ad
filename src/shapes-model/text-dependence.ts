// What does the UNet take from the text? The denoising loss on a fixed held-out batch with
// the true captions, against the same batch with one attribute's words swapped for another
// value (same wording otherwise) and with captions shuffled across the batch. Where a gap is
// zero the UNet ignores that part of the prompt, however good its images otherwise look —
// seen long before the attribute shows in sampled images.
import { Graph } from '../graph/index.ts';
import * as o from '../graph/index.ts';
import { clipTextEncoder } from '../models/clip-text.ts';
import { Params, type WeightSet } from '../models/params.ts';
import { unet2DCondition } from '../models/unet.ts';
import { compile } from '../runtime/session.ts';
import { DDPMScheduler } from '../schedulers/index.ts';
import { ATTRIBUTE_VALUES, type Attrs, captionFor, Rng } from '../shapes/index.ts';
import { type DiffusionSpec, type ParsedArch, schedulerConfigJson } from './config.ts';
import { CaptionTokens } from './data.ts';
import { SEQ_LEN } from './graphs.ts';

export const SWAPPED_ATTRIBUTES = ['position', 'color', 'shape', 'size', 'background', 'texture'] as const;
export type SwappedAttribute = (typeof SWAPPED_ATTRIBUTES)[number];

export interface TextDependence {
  /** Mean loss with the true captions. */
  loss: number;
  /** Relative loss increase (swapped − true) / true, per swapped attribute and for shuffled captions. */
  gap: Record<SwappedAttribute | 'shuffled', number>;
}

export interface ProbeData {
  attrs: Attrs[];
  /** Clean scaled latents [N,4,s,s]. */
  latents: Float32Array;
}

let probeId = 0;

/**
 * Losses at timesteps in [tMin, 1000) (where the layout is decided) for `data` under every
 * caption variant; `batch` must divide the number of samples.
 */
export async function textDependence(
  a: ParsedArch, text: WeightSet, unet: WeightSet, diffusion: DiffusionSpec, data: ProbeData,
  opts: { batch?: number; tMin?: number; seed?: number; threads?: number } = {},
): Promise<TextDependence> {
  const B = opts.batch ?? 16;
  const N = data.attrs.length;
  if (N % B !== 0) throw new Error(`textDependence: ${N} samples do not split into batches of ${B}`);
  const s = a.latentSize;
  const per = 4 * s * s;
  // Fed weights: a per-call tag keeps the session cache from reusing another call's weights.
  const tag = `probe${probeId++}/`;
  const g = new Graph();
  const noisy = g.input('noisy', [B, 4, s, s]);
  const target = g.input('target', [B, 4, s, s]);
  const t = g.input('t', [B]);
  const ids = g.input('ids', [B, SEQ_LEN], 'int64');
  const ctx = clipTextEncoder(new Params(g, text, `${tag}te/`).scope('text_model'), a.text, ids);
  const pred = unet2DCondition(new Params(g, unet, `${tag}unet/`), a.unet, noisy, t, ctx);
  const d = o.sub(pred, target);
  const perSample = o.reduceMean(o.mul(d, d), [1, 2, 3]);
  const run = await compile({ perSample }, { weights: 'feed', threads: opts.threads });

  const ac = new DDPMScheduler(schedulerConfigJson(diffusion)).alphasCumprod;
  const vPred = diffusion.prediction === 'v_prediction';
  const rng = new Rng(`text-dependence:${opts.seed ?? 0}`);
  const tMin = opts.tMin ?? 500;
  const noisyAll = new Float32Array(N * per);
  const targetAll = new Float32Array(N * per);
  const tAll = new Float32Array(N);
  for (let i = 0; i < N; i++) {
    const ti = tMin + rng.int(ac.length - tMin);
    tAll[i] = ti;
    const sa = Math.sqrt(ac[ti]);
    const sb = Math.sqrt(1 - ac[ti]);
    for (let k = 0; k < per; k++) {
      const z = data.latents[i * per + k];
      const e = rng.normal();
      noisyAll[i * per + k] = sa * z + sb * e;
      targetAll[i * per + k] = vPred ? sa * e - sb * z : e;
    }
  }
  // Full captions (every attribute named, texture by its made-up word), one wording per sample.
  const caption = (attrs: Attrs, i: number) => captionFor(attrs, new Rng(`text-dependence-caption:${i}`), { dropProb: 0, shapeDropProb: 0, textureWordProb: 1 });
  const swapped = (attrs: Attrs, key: SwappedAttribute, i: number): Attrs => {
    const values = ATTRIBUTE_VALUES[key] as readonly string[];
    const others = values.filter((v) => v !== attrs[key]);
    return { ...attrs, [key]: others[new Rng(`text-dependence-swap:${key}:${i}`).int(others.length)] };
  };
  const tokens = new CaptionTokens();
  const lossOf = async (captions: string[]): Promise<number> => {
    let sum = 0;
    for (let i = 0; i < N; i += B) {
      const r = await run.run({
        noisy: noisyAll.subarray(i * per, (i + B) * per),
        target: targetAll.subarray(i * per, (i + B) * per),
        t: tAll.subarray(i, i + B),
        ids: tokens.batch(captions.slice(i, i + B)),
      });
      for (const v of r.perSample as Float32Array) sum += v;
    }
    return sum / N;
  };
  const truth = data.attrs.map((x, i) => caption(x, i));
  const base = await lossOf(truth);
  const gap = {} as TextDependence['gap'];
  for (const key of SWAPPED_ATTRIBUTES) {
    const l = await lossOf(data.attrs.map((x, i) => caption(swapped(x, key, i), i)));
    gap[key] = Number(((l - base) / base).toFixed(4));
  }
  const shuffled = await lossOf(truth.map((_, i) => truth[(i + 1 + (i % 7)) % N]));
  gap.shuffled = Number(((shuffled - base) / base).toFixed(4));
  return { loss: Number(base.toPrecision(5)), gap };
}
