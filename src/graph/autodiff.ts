// Reverse-mode autodiff: appends the backward pass to the same graph as ordinary ops.
// One VJP rule per primitive; composites get gradients by composition.
import * as o from './ops.ts';
import { GraphError, Tensor, isFloat } from './tensor.ts';

/** Sums a broadcast cotangent back down to the operand's shape. */
export function unbroadcast(g: Tensor, shape: readonly number[]): Tensor {
  if (g.rank === shape.length && g.shape.every((d, i) => d === shape[i])) return g;
  const lead = g.rank - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.rank; i++) {
    if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
  }
  const summed = axes.length ? o.reduceSum(g, axes, false) : g;
  return o.reshape(summed, shape);
}

function keepDimsShape(x: Tensor, axes: readonly number[]): number[] {
  return x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
}

/** Nearest resize cotangent: block sums for integer factors, one-hot contractions otherwise. */
function resizeGrad(x: Tensor, g: Tensor): Tensor {
  const [n, c, h, w] = x.shape;
  const [, , h2, w2] = g.shape;
  if (h2 % h === 0 && w2 % w === 0) {
    const fh = h2 / h;
    const fw = w2 / w;
    return o.reduceSum(o.reshape(g, [n, c, h, fh, w, fw]), [3, 5]);
  }
  // PyTorch nearest: source index = floor(dst * in / out).
  const oneHot = (outN: number, inN: number) => {
    const m = new Array<number>(outN * inN).fill(0);
    for (let d = 0; d < outN; d++) m[d * inN + Math.min(Math.floor((d * inN) / outN), inN - 1)] = 1;
    return x.graph.constant(m, [outN, inN], x.dtype);
  };
  const mh = oneHot(h2, h); // [h2, h]
  const mw = oneHot(w2, w); // [w2, w]
  const alongW = o.matmul(g, mw); // [n, c, h2, w]
  return o.matmul(mh, alongW, { transA: true }); // [h, h2] @ [n, c, h2, w]
}

function convWeightGrad(x: Tensor, g: Tensor, w: Tensor, a: { stride: number; pad: number; groups: number; dilation: number }): Tensor {
  const [co, cig, kh, kw] = w.shape;
  const groups = a.groups;
  const parts: Tensor[] = [];
  for (let gi = 0; gi < groups; gi++) {
    const xs = groups === 1 ? x : o.slice(x, [1], [gi * cig], [(gi + 1) * cig]);
    const gs = groups === 1 ? g : o.slice(g, [1], [(gi * co) / groups], [((gi + 1) * co) / groups]);
    // Treat channels as the batch and the batch as channels: dW = conv(xᵀ, gᵀ) with
    // the forward's stride as dilation and its dilation as stride.
    const xt = o.transpose(xs, [1, 0, 2, 3]);
    const gt = o.transpose(gs, [1, 0, 2, 3]);
    let dw = o.conv2d(xt, gt, null, { stride: a.dilation, padding: a.pad, dilation: a.stride });
    dw = o.slice(dw, [2, 3], [0, 0], [kh, kw]);
    parts.push(o.transpose(dw, [1, 0, 2, 3]));
  }
  return o.concat(parts, 0);
}

/** Softmax cotangent: y·(g − Σ g·y) along the axis. */
function softmaxVjp(y: Tensor, g: Tensor, axis: number): Tensor {
  return o.mul(y, o.sub(g, o.reduceSum(o.mul(g, y), [axis], true)));
}

/**
 * Cotangents of y = x̂·w + b with x̂ = (x − mean)/√(var + eps) over `axes` (statistics are
 * recomputed from x: the fused forward keeps none). `wb` is w shaped to broadcast against
 * x; `sumToParam` reduces a cotangent of x's shape to the parameters' shape.
 */
function normVjp(
  x: Tensor, g: Tensor, eps: number, nd: readonly boolean[], axes: number[], wb: Tensor, sumToParam: (t: Tensor) => Tensor,
): Array<Tensor | null> {
  const d = o.sub(x, o.reduceMean(x, axes, true));
  const rstd = o.div(1, o.sqrt(o.add(o.reduceMean(o.mul(d, d), axes, true), eps)));
  const xhat = o.mul(d, rstd);
  let dx: Tensor | null = null;
  if (nd[0]) {
    const gh = o.mul(g, wb);
    const inner = o.sub(o.sub(gh, o.reduceMean(gh, axes, true)), o.mul(xhat, o.reduceMean(o.mul(gh, xhat), axes, true)));
    dx = o.mul(inner, rstd);
  }
  return [dx, nd[1] ? sumToParam(o.mul(g, xhat)) : null, nd[2] ? sumToParam(g) : null];
}

/**
 * Multi-head attention cotangents. The fused forward keeps no probabilities, so they are
 * recomputed per head: S = (s·Q)Kᵀ (+ mask), P = softmax(S); then dV = Pᵀg, dP = gVᵀ,
 * dS = P·(dP − Σ dP·P), dQ = s·dS·K, dK = s·dSᵀ·Q (FlashAttention's backward, unfused).
 */
/**
 * The backward pass of attention rebuilds the [B, heads, Lq, Lk] scores; above this many bytes
 * it runs a group of heads at a time, so only one group's scores, probabilities and their
 * gradients are alive at once (SD 1.5 at 512²: 512 MiB per tensor for all 8 heads). Exported
 * so tests can force the grouped form on small shapes.
 */
export const mhaBackward = { maxScoreBytes: 64 * 2 ** 20 };

function mhaVjp(y: Tensor, g: Tensor, nd: readonly boolean[]): Array<Tensor | null> {
  const [q, k, v] = y.inputs;
  const { heads, scale, causal } = y.attrs as { heads: number; scale: number; causal: boolean };
  const [bsz, lq] = q.shape;
  const perHead = bsz * lq * k.shape[1] * 4;
  let group = Math.max(1, Math.min(heads, Math.floor(mhaBackward.maxScoreBytes / perHead)));
  while (heads % group) group--;
  if (group === heads) return mhaHeadsVjp(q, k, v, y, g, nd, heads, scale, causal);
  // Head h owns features [h·f, (h+1)·f) of q, k (width f) and of v, y, g (width fv).
  const [fq, fv] = [q.shape[2] / heads, v.shape[2] / heads];
  const parts: Array<Array<Tensor | null>> = [];
  for (let h = 0; h < heads; h += group) {
    const cut = (t: Tensor, f: number) => o.slice(t, [2], [h * f], [(h + group) * f]);
    parts.push(mhaHeadsVjp(cut(q, fq), cut(k, fq), cut(v, fv), cut(y, fv), cut(g, fv), nd, group, scale, causal));
  }
  return [0, 1, 2].map((i) => (nd[i] ? o.concat(parts.map((p) => p[i]!), 2) : null));
}

/** Attention's VJP for `heads` heads laid out along the features of q, k, v, y and g. */
function mhaHeadsVjp(
  q: Tensor, k: Tensor, v: Tensor, y: Tensor, g: Tensor, nd: readonly boolean[], heads: number, scale: number, causal: boolean,
): Array<Tensor | null> {
  const [bsz, lq] = q.shape;
  const lk = k.shape[1];
  const split = (t: Tensor) => {
    const [, l, f] = t.shape;
    return heads === 1 ? o.reshape(t, [bsz, 1, l, f]) : o.transpose(o.reshape(t, [bsz, l, heads, f / heads]), [0, 2, 1, 3]);
  };
  const merge = (t: Tensor) => {
    const [, , l, f] = t.shape;
    return heads === 1 ? o.reshape(t, [bsz, l, f]) : o.reshape(o.transpose(t, [0, 2, 1, 3]), [bsz, l, heads * f]);
  };
  const qh = split(q), kh = split(k), vh = split(v), gh = split(g);
  let s = o.matmul(o.mul(qh, scale), kh, { transB: true });
  if (causal) {
    const mask = new Array<number>(lq * lk);
    for (let i = 0; i < lq; i++) for (let j = 0; j < lk; j++) mask[i * lk + j] = j > i ? -1e9 : 0;
    s = o.add(s, y.graph.constant(mask, [lq, lk], q.dtype));
  }
  const p = o.softmax(s, 3);
  const dv = nd[2] ? merge(o.matmul(p, gh, { transA: true })) : null;
  if (!nd[0] && !nd[1]) return [null, null, dv];
  // Σⱼ P·dP = Σⱼ Pᵢⱼ (gᵢ·vⱼ) = gᵢ·yᵢ: from the small output rather than the [Lq, Lk] scores.
  const rowDot = o.reduceSum(o.mul(gh, split(y)), [3], true);
  const ds = o.mul(p, o.sub(o.matmul(gh, vh, { transB: true }), rowDot));
  const dq = nd[0] ? o.mul(merge(o.matmul(ds, kh)), scale) : null;
  const dk = nd[1] ? o.mul(merge(o.matmul(ds, qh, { transA: true })), scale) : null;
  return [dq, dk, dv];
}

/**
 * Cotangents from slices that tile a tensor along one axis (e.g. GEGLU's value and gate
 * halves) arrive as zero-padded pieces; one concat of the pieces replaces pads and adds.
 */
function joinSlices(ps: readonly Tensor[]): Tensor | null {
  let axis = -1;
  const pieces: Array<{ start: number; t: Tensor }> = [];
  for (const p of ps) {
    if (p.op !== 'pad') return null;
    const pads = p.attrs.pads as number[][];
    const along = pads.flatMap(([a, b], i) => (a || b ? [i] : []));
    if (along.length !== 1 || (axis >= 0 && along[0] !== axis)) return null;
    axis = along[0];
    pieces.push({ start: pads[axis][0], t: p.inputs[0] });
  }
  pieces.sort((a, b) => a.start - b.start);
  let at = 0;
  for (const { start, t } of pieces) {
    if (start !== at) return null;
    at += t.shape[axis];
  }
  return at === ps[0].shape[axis] ? o.concat(pieces.map((p) => p.t), axis) : null;
}

type Rule = (y: Tensor, g: Tensor, needs: readonly boolean[]) => Array<Tensor | null>;

const rules: Record<string, Rule> = {
  add: (y, g) => [unbroadcast(g, y.inputs[0].shape), unbroadcast(g, y.inputs[1].shape)],
  sub: (y, g, nd) => [unbroadcast(g, y.inputs[0].shape), nd[1] ? unbroadcast(o.neg(g), y.inputs[1].shape) : null],
  mul: (y, g, nd) => {
    const [a, b] = y.inputs;
    return [nd[0] ? unbroadcast(o.mul(g, b), a.shape) : null, nd[1] ? unbroadcast(o.mul(g, a), b.shape) : null];
  },
  div: (y, g, nd) => {
    const [a, b] = y.inputs;
    return [
      nd[0] ? unbroadcast(o.div(g, b), a.shape) : null,
      nd[1] ? unbroadcast(o.neg(o.div(o.mul(g, y), b)), b.shape) : null,
    ];
  },
  pow: (y, g, nd) => {
    const [a, b] = y.inputs;
    return [
      nd[0] ? unbroadcast(o.mul(g, o.mul(b, o.pow(a, o.sub(b, 1)))), a.shape) : null,
      nd[1] ? unbroadcast(o.mul(g, o.mul(y, o.log(a))), b.shape) : null,
    ];
  },
  max: (y, g, nd) => {
    // Ties split the cotangent evenly, as PyTorch's maximum does.
    const [a, b] = y.inputs;
    const tie = o.mul(o.cast(o.equal(a, b), g.dtype), 0.5);
    const share = (win: Tensor) => o.mul(g, o.add(o.cast(win, g.dtype), tie));
    return [
      nd[0] ? unbroadcast(share(o.greater(a, b)), a.shape) : null,
      nd[1] ? unbroadcast(share(o.greater(b, a)), b.shape) : null,
    ];
  },
  neg: (_y, g) => [o.neg(g)],
  exp: (y, g) => [o.mul(g, y)],
  log: (y, g) => [o.div(g, y.inputs[0])],
  sqrt: (y, g) => [o.div(o.mul(g, 0.5), y)],
  tanh: (y, g) => [o.mul(g, o.sub(1, o.mul(y, y)))],
  sigmoid: (y, g) => [o.mul(g, o.mul(y, o.sub(1, y)))],
  erf: (y, g) => {
    const x = y.inputs[0];
    return [o.mul(g, o.mul(o.exp(o.neg(o.mul(x, x))), 2 / Math.sqrt(Math.PI)))];
  },
  sin: (y, g) => [o.mul(g, o.cos(y.inputs[0]))],
  cos: (y, g) => [o.neg(o.mul(g, o.sin(y.inputs[0])))],
  where: (y, g, nd) => {
    const [c, a, b] = y.inputs;
    return [
      null,
      nd[1] ? unbroadcast(o.where(c, g, 0), a.shape) : null,
      nd[2] ? unbroadcast(o.where(c, 0, g), b.shape) : null,
    ];
  },
  cast: (y, g) => [isFloat(y.inputs[0].dtype) ? o.cast(g, y.inputs[0].dtype) : null],
  matmul: (y, g, nd) => {
    // y = A·B with A = op(a), B = op(b): dA = g·Bᵀ and dB = Aᵀ·g, transposed back where
    // an operand was used transposed — all as flags, so no Transpose node is emitted.
    const [a, b] = y.inputs;
    const { transA, transB } = y.attrs as { transA: boolean; transB: boolean };
    const da = () => (transA ? o.matmul(b, g, { transA: transB, transB: true }) : o.matmul(g, b, { transB: !transB }));
    const db = () => (transB ? o.matmul(g, a, { transA: true, transB: transA }) : o.matmul(a, g, { transA: !transA }));
    return [nd[0] ? unbroadcast(da(), a.shape) : null, nd[1] ? unbroadcast(db(), b.shape) : null];
  },
  softmax: (y, g) => [softmaxVjp(y, g, y.attrs.axis as number)],
  layerNorm: (y, g, nd) => {
    const [x, w] = y.inputs;
    return normVjp(x, g, y.attrs.eps as number, nd, [x.rank - 1], w, (t) => unbroadcast(t, w.shape));
  },
  groupNorm: (y, g, nd) => {
    // Viewed as [N, G, C/G, S]: statistics over axes 2 and 3, affine per (group, channel).
    const [x, w] = y.inputs;
    const [n, c] = x.shape;
    const groups = y.attrs.groups as number;
    const view = [n, groups, c / groups, x.size / (n * c)];
    const wv = o.reshape(w, [1, groups, c / groups, 1]);
    const perChannel = (t: Tensor) => o.reshape(o.reduceSum(t, [0, 3]), [c]);
    const [dx, dw, db] = normVjp(o.reshape(x, view), o.reshape(g, view), y.attrs.eps as number, nd, [2, 3], wv, perChannel);
    return [dx && o.reshape(dx, x.shape), dw, db];
  },
  mha: (y, g, nd) => mhaVjp(y, g, nd),
  conv: (y, g, nd) => {
    const [x, w] = y.inputs;
    const a = y.attrs as { stride: number; pad: number; groups: number; dilation: number };
    const out: Array<Tensor | null> = [null, null, null];
    if (nd[0]) {
      const [, , kh, kw] = w.shape;
      const fullH = (g.shape[2] - 1) * a.stride - 2 * a.pad + a.dilation * (kh - 1) + 1;
      const fullW = (g.shape[3] - 1) * a.stride - 2 * a.pad + a.dilation * (kw - 1) + 1;
      out[0] = o.convTranspose2d(g, w, {
        stride: a.stride,
        padding: a.pad,
        groups: a.groups,
        dilation: a.dilation,
        outputPadding: [x.shape[2] - fullH, x.shape[3] - fullW],
      });
    }
    if (nd[1]) out[1] = convWeightGrad(x, g, w, a);
    if (nd[2]) out[2] = o.reduceSum(g, [0, 2, 3]);
    return out;
  },
  convT: (y, g, nd) => {
    const [, w] = y.inputs;
    if (nd[1]) throw new GraphError('convTranspose2d: gradient with respect to the weight is not supported');
    const a = y.attrs as { stride: number; pad: number; groups: number; dilation: number };
    return [o.conv2d(g, w, null, { stride: a.stride, padding: a.pad, groups: a.groups, dilation: a.dilation }), null];
  },
  resize: (y, g) => [resizeGrad(y.inputs[0], g)],
  reduceSum: (y, g) => {
    const x = y.inputs[0];
    const axes = y.attrs.axes as number[];
    return [o.expand(o.reshape(g, keepDimsShape(x, axes)), x.shape)];
  },
  reduceMean: (y, g) => {
    const x = y.inputs[0];
    const axes = y.attrs.axes as number[];
    const count = axes.reduce((p, a) => p * x.shape[a], 1);
    return [o.expand(o.reshape(o.div(g, count), keepDimsShape(x, axes)), x.shape)];
  },
  reduceMax: (y, g) => {
    const x = y.inputs[0];
    const axes = y.attrs.axes as number[];
    const ks = keepDimsShape(x, axes);
    const mask = o.cast(o.equal(x, o.reshape(y, ks)), x.dtype);
    const count = o.reduceSum(mask, axes, true);
    return [o.mul(mask, o.div(o.reshape(g, ks), count))];
  },
  reshape: (y, g) => [o.reshape(g, y.inputs[0].shape)],
  transpose: (y, g) => {
    const perm = y.attrs.perm as number[];
    const inv = new Array<number>(perm.length);
    perm.forEach((p, i) => (inv[p] = i));
    return [o.transpose(g, inv)];
  },
  expand: (y, g) => [unbroadcast(g, y.inputs[0].shape)],
  concat: (y, g, nd) => {
    const axis = y.attrs.axis as number;
    let at = 0;
    return y.inputs.map((x, i) => {
      const s = at;
      at += x.shape[axis];
      return nd[i] ? o.slice(g, [axis], [s], [s + x.shape[axis]]) : null;
    });
  },
  slice: (y, g) => {
    const x = y.inputs[0];
    const { axes, starts, ends } = y.attrs as { axes: number[]; starts: number[]; ends: number[] };
    const pads = x.shape.map(() => [0, 0] as [number, number]);
    axes.forEach((a, i) => (pads[a] = [starts[i], x.shape[a] - ends[i]]));
    return [o.pad(g, pads)];
  },
  pad: (y, g) => {
    const x = y.inputs[0];
    const pads = y.attrs.pads as number[][];
    const axes = x.shape.map((_, i) => i);
    return [o.slice(g, axes, pads.map((p) => p[0]), pads.map((p, i) => p[0] + x.shape[i]))];
  },
  gather: (y, g) => {
    const [table, idx] = y.inputs;
    return [o.scatterAddRows(table.shape[0], idx, g), null];
  },
  scatterAdd: (y, g) => [null, o.gather(g, y.inputs[0])],
};

const NO_GRAD = new Set(['input', 'weight', 'const', 'equal', 'less', 'greater']);

/**
 * Gradients of a scalar `loss` with respect to each tensor in `wrt`, appended to the graph.
 * Only nodes on a path from some `wrt` to `loss` are differentiated.
 */
export function grad(loss: Tensor, wrt: readonly Tensor[]): Tensor[] {
  if (loss.size !== 1) {
    throw new GraphError(`grad: loss must be a scalar (one element), got shape [${loss.shape.join(', ')}]`);
  }
  if (!isFloat(loss.dtype)) throw new GraphError(`grad: loss must be a float tensor, got ${loss.dtype}`);
  const graph = loss.graph;
  const n = loss.id + 1;
  // Forward reachability from wrt.
  const fromWrt = new Uint8Array(n);
  const wrtIds = new Set(wrt.map((t) => t.id));
  for (const t of wrt) if (t.graph !== graph) throw new GraphError('grad: wrt tensor belongs to another graph');
  for (let i = 0; i < n; i++) {
    const t = graph.tensors[i];
    if (wrtIds.has(i) || t.inputs.some((x) => fromWrt[x.id])) fromWrt[i] = 1;
  }
  // Backward reachability from loss.
  const toLoss = new Uint8Array(n);
  toLoss[loss.id] = 1;
  for (let i = n - 1; i >= 0; i--) {
    if (!toLoss[i]) continue;
    for (const x of graph.tensors[i].inputs) toLoss[x.id] = 1;
  }
  // Cotangent contributions per tensor, summed (or joined) when the tensor is reached.
  const parts = new Map<number, Tensor[]>();
  parts.set(loss.id, [o.expand(graph.scalar(1, loss.dtype), loss.shape)]);
  const totals = new Map<number, Tensor>();
  const total = (id: number): Tensor | undefined => {
    const ps = parts.get(id);
    if (!ps) return undefined;
    let t = totals.get(id);
    if (!t) totals.set(id, (t = ps.length === 1 ? ps[0] : joinSlices(ps) ?? ps.reduce((acc, p) => o.add(acc, p))));
    return t;
  };
  for (let i = loss.id; i >= 0; i--) {
    const y = graph.tensors[i];
    if (!fromWrt[i] || !toLoss[i] || NO_GRAD.has(y.op)) continue;
    const g = total(i);
    if (!g) continue;
    const rule = rules[y.op];
    if (!rule) throw new GraphError(`grad: no gradient rule for op "${y.op}"`);
    const needs = y.inputs.map((x) => fromWrt[x.id] === 1 && isFloat(x.dtype));
    const gs = rule(y, g, needs);
    y.inputs.forEach((x, k) => {
      const gx = gs[k];
      if (!needs[k] || !gx) return;
      const prev = parts.get(x.id);
      if (prev) prev.push(gx);
      else parts.set(x.id, [gx]);
    });
  }
  return wrt.map((t) => total(t.id) ?? o.expand(graph.scalar(0, t.dtype), t.shape));
}

/** JAX-style transform: returns the loss and its gradients with respect to `wrt`. */
export function valueAndGrad(loss: Tensor, wrt: readonly Tensor[]): { value: Tensor; grads: Tensor[] } {
  return { value: loss, grads: grad(loss, wrt) };
}
