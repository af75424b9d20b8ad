// The train-step graphs: every trainable weight is a graph input, the outputs are the loss
// and the loss's gradient with respect to each weight.
import * as o from '../graph/index.ts';
import { Graph, type Tensor } from '../graph/index.ts';
import { clipTextEncoder } from '../models/clip-text.ts';
import { unet2DCondition } from '../models/unet.ts';
import { vaeDecode, vaeEncode } from '../models/vae.ts';
import type { ParsedArch } from './config.ts';
import { ParamStore, TrainParams } from './params.ts';
import { fastGradients } from './fast-grad.ts';

export const SEQ_LEN = 77;

export interface StepGraph {
  /** name → tensor: `loss` and any extra scalars, then one `grad:<input>` per weight. */
  outputs: Record<string, Tensor>;
  /** Trainable weights: graph input name, store and name in the store, in gradient order. */
  weights: Array<{ input: string; store: ParamStore; name: string }>;
  /** Data inputs (not weights) with their shapes and dtypes. */
  dataInputs: Array<{ name: string; shape: readonly number[]; dtype: string }>;
}

function withGrads(loss: Tensor, extra: Record<string, Tensor>, parts: Array<{ p: TrainParams; store: ParamStore }>, data: Tensor[]): StepGraph {
  const weights: StepGraph['weights'] = [];
  const tensors: Tensor[] = [];
  for (const { p, store } of parts) {
    for (const u of p.used()) {
      weights.push({ input: u.input, store, name: u.name });
      tensors.push(u.tensor);
    }
  }
  const grads = o.grad(loss, tensors);
  const raw: Record<string, Tensor> = { loss, ...extra };
  weights.forEach((w, i) => (raw[`grad:${w.input}`] = grads[i]));
  const outputs = fastGradients(raw);
  const dataInputs = data.map((t) => ({ name: (t.attrs as { name: string }).name, shape: t.shape, dtype: t.dtype }));
  return { outputs, weights, dataInputs };
}

/**
 * VAE step: pixels [B,3,H,W] in [-1,1], per-pixel loss weights [B,1,H,W] (mean 1; the
 * object counts more than the plain background), eps [B,4,h,w] for the reparameterised
 * sample. loss = mean w·(|x − x̂| + (x − x̂)²) + klWeight · mean KL (per latent element).
 */
export function vaeStepGraph(a: ParsedArch, vae: ParamStore, batch: number, klWeight: number): StepGraph {
  const g = new Graph();
  const S = a.arch.imageSize;
  const s = a.latentSize;
  const pixels = g.input('pixels', [batch, 3, S, S]);
  const weights = g.input('weights', [batch, 1, S, S]);
  const eps = g.input('eps', [batch, 4, s, s]);
  const p = new TrainParams(g, vae, 'vae/');
  const dist = vaeEncode(p, a.vae, pixels);
  const z = o.add(dist.mean, o.mul(dist.std, eps));
  const recon = vaeDecode(p, a.vae, z);
  const d = o.sub(recon, pixels);
  const sq = o.mul(d, d);
  const mse = o.reduceMean(sq);
  const rec = o.reduceMean(o.mul(o.add(o.sqrt(o.add(sq, 1e-6)), sq), weights));
  const varT = o.exp(dist.logvar);
  const kl = o.reduceMean(o.mul(o.sub(o.add(o.mul(dist.mean, dist.mean), varT), o.add(dist.logvar, 1)), 0.5));
  const loss = o.add(rec, o.mul(kl, klWeight));
  return withGrads(loss, { mse, kl }, [{ p, store: vae }], [pixels, weights, eps]);
}

/**
 * UNet + text-encoder step (DDPM objective): noisy latents [B,4,h,w], the target (the noise
 * ε for epsilon prediction, or v = √ᾱ·ε − √(1−ᾱ)·x₀), timesteps [B] (float), token ids
 * [B,77] and loss weights [B,1,h,w] (min-SNR per sample × more weight on the object than on
 * the plain background) → loss = mean w · (pred − target)²; `mse` is the unweighted error.
 */
export function unetStepGraph(a: ParsedArch, text: ParamStore, unet: ParamStore, batch: number): StepGraph {
  const g = new Graph();
  const s = a.latentSize;
  const noisy = g.input('noisy', [batch, 4, s, s]);
  const target = g.input('target', [batch, 4, s, s]);
  const t = g.input('t', [batch]);
  const ids = g.input('ids', [batch, SEQ_LEN], 'int64');
  const w = g.input('w', [batch, 1, s, s]);
  const tp = new TrainParams(g, text, 'text_encoder/');
  const up = new TrainParams(g, unet, 'unet/');
  const ctx = clipTextEncoder(tp.scope('text_model'), a.text, ids);
  const pred = unet2DCondition(up, a.unet, noisy, t, ctx);
  const d = o.sub(pred, target);
  const sq = o.mul(d, d);
  const loss = o.reduceMean(o.mul(sq, w));
  const mse = o.reduceMean(sq);
  return withGrads(loss, { mse }, [{ p: tp, store: text }, { p: up, store: unet }], [noisy, target, t, ids, w]);
}
