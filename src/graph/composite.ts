// Composite ops, written only from primitives so their gradients come for free.
// ORT's optimiser fuses some of these patterns back (SiLU, Gelu) in forward-only graphs.
//
// Softmax, LayerNorm, GroupNorm and multi-head attention are primitives (ops.ts): as
// single ONNX ops they measured several times faster than the composed forms, above all in
// the backward pass. The composed forms stay here as their oracles (tests check both agree).
import * as o from './ops.ts';
import { GraphError, Tensor } from './tensor.ts';

/** Numerically stable softmax along `axis`, from primitives (oracle for `o.softmax`). */
export function softmaxComposed(x: Tensor, axis = -1): Tensor {
  const ax = axis < 0 ? axis + x.rank : axis;
  const shifted = o.sub(x, o.reduceMax(x, [ax], true));
  const e = o.exp(shifted);
  return o.div(e, o.reduceSum(e, [ax], true));
}

/** LayerNorm over the last axis (biased variance, as PyTorch), from primitives (oracle for `o.layerNorm`). */
export function layerNormComposed(x: Tensor, weight: Tensor | null, bias: Tensor | null, eps = 1e-5): Tensor {
  const ax = x.rank - 1;
  const mean = o.reduceMean(x, [ax], true);
  const d = o.sub(x, mean);
  const variance = o.reduceMean(o.mul(d, d), [ax], true);
  let y = o.div(d, o.sqrt(o.add(variance, eps)));
  if (weight) y = o.mul(y, weight);
  if (bias) y = o.add(y, bias);
  return y;
}

/** GroupNorm over NCHW (or NC...) input, per-channel affine, from primitives (oracle for `o.groupNorm`). */
export function groupNormComposed(x: Tensor, groups: number, weight: Tensor | null, bias: Tensor | null, eps = 1e-5): Tensor {
  const [n, c, ...rest] = x.shape;
  if (c % groups !== 0) throw new GraphError(`groupNorm: ${c} channels are not divisible into ${groups} groups`);
  const g = o.reshape(x, [n, groups, -1]);
  const mean = o.reduceMean(g, [2], true);
  const d = o.sub(g, mean);
  const variance = o.reduceMean(o.mul(d, d), [2], true);
  let y = o.reshape(o.div(d, o.sqrt(o.add(variance, eps))), x.shape);
  const affine = [c, ...rest.map(() => 1)];
  if (weight) y = o.mul(y, o.reshape(weight, affine));
  if (bias) y = o.add(y, o.reshape(bias, affine));
  return y;
}

export const silu = (x: Tensor) => o.mul(x, o.sigmoid(x));

/** Exact (erf) GELU, written in the order ORT fuses into one Gelu op: (x·(1 + erf(x/√2)))·0.5. */
export const gelu = (x: Tensor) => o.mul(o.mul(x, o.add(o.erf(o.div(x, Math.SQRT2)), 1)), 0.5);

/** CLIP's quick GELU: x·σ(1.702x). */
export const quickGelu = (x: Tensor) => o.mul(x, o.sigmoid(o.mul(x, 1.702)));

/** y = x Wᵀ + b with a PyTorch-layout weight [out, in] (Wᵀ is never materialised). */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  const y = o.matmul(x, weight, { transB: true });
  return bias ? o.add(y, bias) : y;
}

function causalMask(q: Tensor, lq: number, lk: number): Tensor {
  const mask = new Array<number>(lq * lk);
  for (let i = 0; i < lq; i++) for (let j = 0; j < lk; j++) mask[i * lk + j] = j > i ? -1e9 : 0;
  return q.graph.constant(mask, [lq, lk], q.dtype);
}

/**
 * Scaled dot-product attention on [..., L, d] tensors from primitives (oracle for
 * `o.multiHeadAttention`). `causal` masks future keys with a large negative bias (as CLIP's
 * text model does).
 */
export function attentionComposed(q: Tensor, k: Tensor, v: Tensor, opts: { causal?: boolean; scale?: number } = {}): Tensor {
  const d = q.shape[q.rank - 1];
  const scale = opts.scale ?? 1 / Math.sqrt(d);
  const perm = k.shape.map((_, i) => i);
  perm[k.rank - 1] = k.rank - 2;
  perm[k.rank - 2] = k.rank - 1;
  let scores = o.matmul(o.mul(q, scale), o.transpose(k, perm));
  if (opts.causal) scores = o.add(scores, causalMask(q, q.shape[q.rank - 2], k.shape[k.rank - 2]));
  return o.matmul(softmaxComposed(scores, -1), v);
}

/**
 * Scaled dot-product attention on [..., L, d] tensors (one head per leading index).
 * Rank-3 operands use the fused primitive with a single head.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: { causal?: boolean; scale?: number } = {}): Tensor {
  if (q.rank === 3 && k.rank === 3 && v.rank === 3) return o.multiHeadAttention(q, k, v, { heads: 1, ...opts });
  const d = q.shape[q.rank - 1];
  const scale = opts.scale ?? 1 / Math.sqrt(d);
  let scores = o.matmul(o.mul(q, scale), k, { transB: true });
  if (opts.causal) scores = o.add(scores, causalMask(q, q.shape[q.rank - 2], k.shape[k.rank - 2]));
  return o.matmul(o.softmax(scores, -1), v);
}

/** Mean squared error over all elements. */
export function mse(a: Tensor, b: Tensor): Tensor {
  const d = o.sub(a, b);
  return o.reduceMean(o.mul(d, d));
}
