// The train-step graphs: every trainable weight is a graph input, the outputs are the loss
// and the loss's gradient with respect to each weight.
import * as o from '../graph/index.ts';
import { Graph, type Tensor } from '../graph/index.ts';
import { clipTextEncoder } from '../models/clip-text.ts';
import { unet2DCondition } from '../models/unet.ts';
import { vaeDecode, vaeEncode } from '../models/vae.ts';
import type { ParsedArch } from './config.ts';
import { ParamStore, TrainParams } from './params.ts';
import { Params } from '../models/params.ts';
import { ATTRIBUTE_NAMES, ATTRIBUTE_VALUES, type Attrs, namedAttributes } from '../shapes/index.ts';
import type { CaptionTokens } from './data.ts';
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
 * Weighted L1 of the error's horizontal and vertical differences: the reconstruction's edges
 * against the render's. Plain pixel losses forgive a blur that turns checks into diagonal
 * stripes or sprinkles marks on a plain object; this term does not.
 */
export function edgeLoss(d: Tensor, weights: Tensor, S: number): Tensor {
  const l1 = (x: Tensor) => o.sqrt(o.add(o.mul(x, x), 1e-6));
  const dx = o.sub(o.slice(d, [3], [1], [S]), o.slice(d, [3], [0], [S - 1]));
  const dy = o.sub(o.slice(d, [2], [1], [S]), o.slice(d, [2], [0], [S - 1]));
  const ex = o.reduceMean(o.mul(l1(dx), o.slice(weights, [3], [1], [S])));
  const ey = o.reduceMean(o.mul(l1(dy), o.slice(weights, [2], [1], [S])));
  return o.add(ex, ey);
}

/**
 * VAE step: pixels [B,3,H,W] in [-1,1], per-pixel loss weights [B,1,H,W] (mean 1; the
 * object counts more than the plain background), eps [B,4,h,w] for the reparameterised
 * sample. loss = mean w·(|x − x̂| + (x − x̂)²) + klWeight · mean KL (per latent element).
 */
export function vaeStepGraph(a: ParsedArch, vae: ParamStore, batch: number, klWeight: number, edgeWeight = 0): StepGraph {
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
  let rec = o.reduceMean(o.mul(o.add(o.sqrt(o.add(sq, 1e-6)), sq), weights));
  if (edgeWeight > 0) rec = o.add(rec, o.mul(edgeLoss(d, weights, S), edgeWeight));
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
export function unetStepGraph(a: ParsedArch, text: ParamStore, unet: ParamStore, batch: number, trainText = true): StepGraph {
  const g = new Graph();
  const s = a.latentSize;
  const noisy = g.input('noisy', [batch, 4, s, s]);
  const target = g.input('target', [batch, 4, s, s]);
  const t = g.input('t', [batch]);
  const ids = g.input('ids', [batch, SEQ_LEN], 'int64');
  const w = g.input('w', [batch, 1, s, s]);
  // A frozen text encoder (Stable Diffusion's design) is fed as weights, not differentiated.
  const tp = trainText ? new TrainParams(g, text, 'text_encoder/') : new Params(g, text, 'text_encoder/');
  const up = new TrainParams(g, unet, 'unet/');
  const ctx = clipTextEncoder(tp.scope('text_model'), a.text, ids);
  const pred = unet2DCondition(up, a.unet, noisy, t, ctx);
  const d = o.sub(pred, target);
  const sq = o.mul(d, d);
  const loss = o.reduceMean(o.mul(sq, w));
  const mse = o.reduceMean(sq);
  const parts = tp instanceof TrainParams ? [{ p: tp, store: text }, { p: up, store: unet }] : [{ p: up, store: unet }];
  return withGrads(loss, { mse }, parts, [noisy, target, t, ids, w]);
}

/** Sizes of the attribute blocks a text-pretraining head predicts (each: its values + "not named"). */
export function attributeBlocks(): Array<{ key: keyof Attrs; values: readonly string[]; offset: number; size: number }> {
  let offset = 0;
  return ATTRIBUTE_NAMES.map((key) => {
    const values = ATTRIBUTE_VALUES[key] as readonly string[];
    const block = { key, values, offset, size: values.length + 1 };
    offset += block.size;
    return block;
  });
}

/**
 * A text-pretraining batch for `captions`: token ids, the one-hot targets of what each caption
 * names (namedAttributes; "not named" otherwise), and the mask of supervised positions — the
 * end-of-text token and the padding after it — normalised to sum 1 over the batch.
 */
export function textPretrainBatch(captions: readonly string[], tokens: CaptionTokens): { ids: BigInt64Array; target: Float32Array; mask: Float32Array } {
  const blocks = attributeBlocks();
  const K = blocks.reduce((n, b) => n + b.size, 0);
  const B = captions.length;
  const eos = BigInt(tokens.tokenizer.tokenToId(tokens.tokenizer.eosToken)!);
  const ids = tokens.batch(captions);
  const target = new Float32Array(B * K);
  const mask = new Float32Array(B * SEQ_LEN);
  let supervised = 0;
  captions.forEach((c, b) => {
    const named = namedAttributes(c);
    for (const bl of blocks) {
      const v = named[bl.key];
      target[b * K + bl.offset + (v === undefined ? bl.size - 1 : bl.values.indexOf(v))] = 1;
    }
    let end = 1;
    while (ids[b * SEQ_LEN + end] !== eos) end++;
    for (let p = end; p < SEQ_LEN; p++, supervised++) mask[b * SEQ_LEN + p] = 1;
  });
  for (let i = 0; i < mask.length; i++) mask[i] /= supervised;
  return { ids, target, mask };
}

/**
 * Text-encoder pretraining step: from every state at and after the end-of-text token (the
 * states that have read the whole caption, and most of what cross-attention attends to), a
 * linear head predicts each attribute the caption names, or "not named". ids [B,77], target
 * [B,K] (one-hot per attribute block), mask [B,77,1] (weights of the supervised positions,
 * summing to 1 over the batch) → loss = Σ mask · cross-entropy.
 */
export function textPretrainGraph(a: ParsedArch, text: ParamStore, head: ParamStore, batch: number): StepGraph {
  const g = new Graph();
  const blocks = attributeBlocks();
  const K = blocks.reduce((n, b) => n + b.size, 0);
  const D = a.text.hidden_size;
  const ids = g.input('ids', [batch, SEQ_LEN], 'int64');
  const target = g.input('target', [batch, K]);
  const mask = g.input('mask', [batch, SEQ_LEN, 1]);
  const tp = new TrainParams(g, text, 'text_encoder/');
  const hp = new TrainParams(g, head, 'head/');
  const states = clipTextEncoder(tp.scope('text_model'), a.text, ids);
  const logits = o.linear(states, hp.get('weight', [K, D]), hp.get('bias', [K]));
  let ce: Tensor | null = null;
  for (const b of blocks) {
    const logp = o.log(o.add(o.softmax(o.slice(logits, [2], [b.offset], [b.offset + b.size]), -1), 1e-7));
    const t = o.reshape(o.slice(target, [1], [b.offset], [b.offset + b.size]), [batch, 1, b.size]);
    const c = o.neg(o.reduceSum(o.mul(logp, t), [2], true));
    ce = ce ? o.add(ce, c) : c;
  }
  const loss = o.reduceSum(o.mul(ce!, mask));
  return withGrads(loss, {}, [{ p: tp, store: text }, { p: hp, store: head }], [ids, target, mask]);
}
