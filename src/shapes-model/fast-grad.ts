// Rewrites a graph that holds a backward pass (from graph/autodiff.ts) into an equivalent
// one that ORT runs much faster on the CPU when *weights* are differentiated — which plain
// textual inversion never does, but training a model from scratch does on every step.
// The graph is replayed node by node into a new Graph; three patterns are replaced:
//  1. conv weight gradient written as a Conv whose kernel is the whole feature map
//     (transpose → conv → slice → transpose; ORT runs it at ~1 GFLOP/s) → an explicit
//     im2col (slices + concat) and one GEMM over batch × pixels;
//  2. stride-1 conv input gradient as ConvTranspose → a Conv with the flipped, transposed
//     kernel (ORT's Conv is several times faster than its ConvTranspose here);
//  3. linear-layer weight gradient as a batched matmul followed by a ReduceSum over the
//     batch → one GEMM over the flattened batch.
// Anything else is copied as is, so the result is correct whatever autodiff emits; a
// pattern that no longer matches only costs speed. Candidates for graph/autodiff.ts itself.
import * as o from '../graph/ops.ts';
import { Graph, GraphError, Tensor } from '../graph/tensor.ts';

const isPerm = (t: Tensor, perm: readonly number[]) =>
  t.op === 'transpose' && (t.attrs.perm as number[]).length === perm.length && (t.attrs.perm as number[]).every((p, i) => p === perm[i]);

function swapLastPerm(rank: number): number[] {
  const p = Array.from({ length: rank }, (_, i) => i);
  p[rank - 1] = rank - 2;
  p[rank - 2] = rank - 1;
  return p;
}

/** dW [Cout, Cin, kh, kw] of a groups-1, dilation-1 conv = gᵀ [Cout, N·Ho·Wo] × im2col(x). */
export function im2colWeightGrad(x: Tensor, g: Tensor, kh: number, kw: number, s: number, p: number): Tensor {
  const [n, ci, h, wd] = x.shape;
  const [, co, ho, wo] = g.shape;
  const m = n * ho * wo;
  const gt = o.reshape(o.transpose(g, [1, 0, 2, 3]), [co, m]);
  const xt = o.transpose(x, [1, 0, 2, 3]); // [Cin, N, H, W]
  let cols: Tensor;
  if (kh === 1 && kw === 1 && s === 1 && p === 0) {
    cols = o.reshape(xt, [ci, m]);
  } else {
    // Pad so that every shifted window of s·Ho rows (s·Wo columns) fits.
    const needH = kh - 1 + s * ho;
    const needW = kw - 1 + s * wo;
    const xp = o.pad(xt, [[0, 0], [0, 0], [p, Math.max(0, needH - h - p)], [p, Math.max(0, needW - wd - p)]]);
    const pieces: Tensor[] = [];
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        let piece = o.slice(xp, [2, 3], [i, j], [i + s * ho, j + s * wo]);
        if (s > 1) piece = o.slice(o.reshape(piece, [ci, n, ho, s, wo, s]), [3, 5], [0, 0], [1, 1]);
        pieces.push(o.reshape(piece, [ci, 1, m]));
      }
    }
    cols = o.reshape(o.concat(pieces, 1), [ci * kh * kw, m]);
  }
  return o.reshape(o.matmul(gt, o.transpose(cols, [1, 0])), [co, ci, kh, kw]);
}

/** w [Cout, Cin, kh, kw] → the input-gradient kernel [Cin, Cout, kh, kw], flipped in space. */
export function flippedKernel(w: Tensor): Tensor {
  const [co, ci, kh, kw] = w.shape;
  if (kh === 1 && kw === 1) return o.transpose(w, [1, 0, 2, 3]);
  const rows = o.reshape(o.transpose(w, [2, 3, 0, 1]), [kh * kw, co, ci]);
  const rev = w.graph.constant(Array.from({ length: kh * kw }, (_, i) => kh * kw - 1 - i), [kh * kw], 'int64');
  return o.transpose(o.reshape(o.gather(rows, rev), [kh, kw, co, ci]), [3, 2, 0, 1]);
}

type Map_ = (t: Tensor) => Tensor;

/** Pattern 1: transpose(slice(conv(transpose(x), transpose(g))))) → im2col GEMM. */
function convWeightGrad(t: Tensor, map: Map_): Tensor | null {
  if (!isPerm(t, [1, 0, 2, 3])) return null;
  const s = t.inputs[0];
  if (s.op !== 'slice') return null;
  const sa = s.attrs as { axes: number[]; starts: number[]; ends: number[] };
  if (sa.axes.join() !== '2,3' || sa.starts.join() !== '0,0') return null;
  const c = s.inputs[0];
  if (c.op !== 'conv' || c.inputs.length !== 2) return null;
  const ca = c.attrs as { stride: number; pad: number; groups: number; dilation: number };
  if (ca.stride !== 1 || ca.groups !== 1) return null;
  const [xt, gt] = c.inputs;
  if (!isPerm(xt, [1, 0, 2, 3]) || !isPerm(gt, [1, 0, 2, 3])) return null;
  const x = xt.inputs[0];
  const g = gt.inputs[0];
  const [kh, kw] = sa.ends;
  if (t.shape.join() !== [g.shape[1], x.shape[1], kh, kw].join()) return null;
  // The forward conv's output size must be what the stride implies.
  const s2 = ca.dilation;
  const p = ca.pad;
  if (Math.floor((x.shape[2] + 2 * p - kh) / s2) + 1 !== g.shape[2] || Math.floor((x.shape[3] + 2 * p - kw) / s2) + 1 !== g.shape[3]) return null;
  return im2colWeightGrad(map(x), map(g), kh, kw, s2, p);
}

/** Pattern 2: stride-1 ConvTranspose (a conv's input gradient) → Conv with the flipped kernel. */
function convInputGrad(t: Tensor, map: Map_): Tensor | null {
  if (t.op !== 'convT' || t.inputs.length !== 2) return null;
  const a = t.attrs as { stride: number; pad: number; groups: number; dilation: number; outputPadding: number[] };
  const [g, w] = t.inputs;
  const [, , kh, kw] = w.shape;
  if (a.stride !== 1 || a.groups !== 1 || a.dilation !== 1 || a.outputPadding.some((v) => v !== 0)) return null;
  if (kh !== kw || a.pad > kh - 1) return null;
  const y = o.conv2d(map(g), flippedKernel(map(w)), null, { padding: kh - 1 - a.pad });
  return y.shape.join() === t.shape.join() ? y : null;
}

/** Pattern 3: reduceSum over the batch of op(A)ᵀ·B (batched) → one GEMM over the flattened batch. */
function batchedWeightGrad(t: Tensor, map: Map_): Tensor | null {
  if (t.op !== 'reduceSum' || t.attrs.keepDims) return null;
  const m = t.inputs[0];
  if (m.op !== 'matmul' || m.rank < 3) return null;
  const axes = t.attrs.axes as number[];
  const nb = m.rank - 2;
  if (axes.length !== nb || axes.some((ax, i) => ax !== i)) return null;
  const ma = m.attrs as { transA?: boolean; transB?: boolean };
  if (ma.transB) return null;
  let [a, b] = m.inputs;
  if (!ma.transA) {
    // The older autodiff writes Aᵀ as an explicit Transpose of the last two axes.
    if (!isPerm(a, swapLastPerm(a.rank))) return null;
    a = a.inputs[0];
  }
  if (a.rank !== m.rank || b.rank !== m.rank) return null;
  for (let i = 0; i < nb; i++) if (a.shape[i] !== b.shape[i]) return null;
  const k = a.shape[a.rank - 1];
  const n = b.shape[b.rank - 1];
  const flatA = o.reshape(map(a), [-1, k]);
  const flatB = o.reshape(map(b), [-1, n]);
  const y = o.matmul(o.transpose(flatA, [1, 0]), flatB);
  return y.shape.join() === t.shape.join() ? y : null;
}

const PATTERNS = [convWeightGrad, convInputGrad, batchedWeightGrad];

/** The same computation in a new graph, with the slow gradient patterns replaced. */
export function fastGradients(outputs: Record<string, Tensor>): Record<string, Tensor> {
  const entries = Object.entries(outputs);
  if (!entries.length) throw new GraphError('fastGradients: no outputs');
  const src = entries[0][1].graph;
  const live = new Uint8Array(src.tensors.length);
  const stack = entries.map(([, t]) => t);
  while (stack.length) {
    const t = stack.pop()!;
    if (live[t.id]) continue;
    live[t.id] = 1;
    stack.push(...t.inputs);
  }
  const g = new Graph();
  const made = new Map<number, Tensor>();
  const map: Map_ = (t) => {
    const v = made.get(t.id);
    if (!v) throw new GraphError(`fastGradients: ${t} used before it was made`);
    return v;
  };
  for (const t of src.tensors) {
    if (!live[t.id]) continue;
    const a = t.attrs as Record<string, any>;
    let out: Tensor | null = null;
    if (t.op === 'input') out = g.input(a.name, t.shape, t.dtype);
    else if (t.op === 'weight') out = g.weight(a.name, t.shape, a.data, t.dtype);
    else if (t.op === 'const') out = g.constant(a.values, t.shape, t.dtype);
    else {
      for (const p of PATTERNS) if ((out = p(t, map))) break;
      out ??= g.node(t.op, t.inputs.map(map), t.attrs, t.shape, t.dtype);
    }
    made.set(t.id, out);
  }
  return Object.fromEntries(entries.map(([k, t]) => [k, map(t)]));
}
