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

function swapLast(x: Tensor): Tensor {
  const perm = x.shape.map((_, i) => i);
  perm[x.rank - 1] = x.rank - 2;
  perm[x.rank - 2] = x.rank - 1;
  return o.transpose(x, perm);
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
  return o.matmul(swapLast(mh), alongW); // [h, h2] @ [n, c, h2, w]
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
    const [a, b] = y.inputs;
    return [
      nd[0] ? unbroadcast(o.matmul(g, swapLast(b)), a.shape) : null,
      nd[1] ? unbroadcast(o.matmul(swapLast(a), g), b.shape) : null,
    ];
  },
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
  const cot = new Map<number, Tensor>();
  cot.set(loss.id, o.expand(graph.scalar(1, loss.dtype), loss.shape));
  for (let i = loss.id; i >= 0; i--) {
    const y = graph.tensors[i];
    const g = cot.get(i);
    if (!g || !fromWrt[i] || !toLoss[i] || NO_GRAD.has(y.op)) continue;
    const rule = rules[y.op];
    if (!rule) throw new GraphError(`grad: no gradient rule for op "${y.op}"`);
    const needs = y.inputs.map((x) => fromWrt[x.id] === 1 && isFloat(x.dtype));
    const gs = rule(y, g, needs);
    y.inputs.forEach((x, k) => {
      const gx = gs[k];
      if (!needs[k] || !gx) return;
      const prev = cot.get(x.id);
      cot.set(x.id, prev ? o.add(prev, gx) : gx);
    });
  }
  return wrt.map((t) => cot.get(t.id) ?? o.expand(graph.scalar(0, t.dtype), t.shape));
}

/** JAX-style transform: returns the loss and its gradients with respect to `wrt`. */
export function valueAndGrad(loss: Tensor, wrt: readonly Tensor[]): { value: Tensor; grads: Tensor[] } {
  return { value: loss, grads: grad(loss, wrt) };
}
