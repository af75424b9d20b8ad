// Primitive ops: the only nodes a graph contains. Each has shape/dtype inference here,
// an ONNX lowering in onnx.ts, a float64 interpreter in evaluate.ts and a VJP in autodiff.ts.
import { GraphError, Tensor, isFloat, type DType } from './tensor.ts';

type Operand = Tensor | number;

function fmt(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

/** Numpy broadcasting of two shapes; throws naming the op and both shapes. */
export function broadcastShapes(op: string, a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new GraphError(`${op}: shapes ${fmt(a)} and ${fmt(b)} cannot be broadcast together`);
    }
    out.push(da === 1 ? db : da);
  }
  return out;
}

function lift(x: Operand, like: Tensor): Tensor {
  return typeof x === 'number' ? like.graph.scalar(x, like.dtype) : x;
}

function binary(op: string, a: Operand, b: Operand, outDType?: DType): Tensor {
  if (typeof a === 'number' && typeof b === 'number') throw new GraphError(`${op}: at least one operand must be a tensor`);
  const ta = typeof a === 'number' ? lift(a, b as Tensor) : a;
  const tb = lift(b, ta);
  if (ta.dtype !== tb.dtype) throw new GraphError(`${op}: dtypes ${ta.dtype} and ${tb.dtype} differ (cast one first)`);
  const shape = broadcastShapes(op, ta.shape, tb.shape);
  return ta.graph.node(op, [ta, tb], {}, shape, outDType ?? ta.dtype);
}

function unary(op: string, x: Tensor): Tensor {
  if (!isFloat(x.dtype) && op !== 'neg') throw new GraphError(`${op}: needs a float tensor, got ${x.dtype}`);
  return x.graph.node(op, [x], {}, x.shape, x.dtype);
}

export const add = (a: Operand, b: Operand) => binary('add', a, b);
export const sub = (a: Operand, b: Operand) => binary('sub', a, b);
export const mul = (a: Operand, b: Operand) => binary('mul', a, b);
export const div = (a: Operand, b: Operand) => binary('div', a, b);
export const pow = (a: Operand, b: Operand) => binary('pow', a, b);
/** Elementwise maximum. */
export const maximum = (a: Operand, b: Operand) => binary('max', a, b);
export const equal = (a: Operand, b: Operand) => binary('equal', a, b, 'bool');
export const less = (a: Operand, b: Operand) => binary('less', a, b, 'bool');
export const greater = (a: Operand, b: Operand) => binary('greater', a, b, 'bool');

export const neg = (x: Tensor) => unary('neg', x);
export const exp = (x: Tensor) => unary('exp', x);
export const log = (x: Tensor) => unary('log', x);
export const sqrt = (x: Tensor) => unary('sqrt', x);
export const tanh = (x: Tensor) => unary('tanh', x);
export const sigmoid = (x: Tensor) => unary('sigmoid', x);
export const erf = (x: Tensor) => unary('erf', x);
export const sin = (x: Tensor) => unary('sin', x);
export const cos = (x: Tensor) => unary('cos', x);

export function where(cond: Tensor, a: Operand, b: Operand): Tensor {
  if (cond.dtype !== 'bool') throw new GraphError(`where: condition must be bool, got ${cond.dtype}`);
  const like = typeof a === 'number' ? (b as Tensor) : a;
  if (typeof like === 'number') throw new GraphError('where: at least one branch must be a tensor');
  const ta = lift(a, like);
  const tb = lift(b, like);
  if (ta.dtype !== tb.dtype) throw new GraphError(`where: branch dtypes ${ta.dtype} and ${tb.dtype} differ`);
  const shape = broadcastShapes('where', broadcastShapes('where', cond.shape, ta.shape), tb.shape);
  return cond.graph.node('where', [cond, ta, tb], {}, shape, ta.dtype);
}

export function cast(x: Tensor, dtype: DType): Tensor {
  if (x.dtype === dtype) return x;
  return x.graph.node('cast', [x], { to: dtype }, x.shape, dtype);
}

export interface MatMulOptions {
  /** Use the operand with its last two axes swapped (no Transpose node is emitted). */
  transA?: boolean;
  transB?: boolean;
}

/**
 * Batched matmul with numpy semantics: op(a) · op(b), op swapping the last two axes where
 * asked (1-D operands not supported: reshape first).
 */
export function matmul(a: Tensor, b: Tensor, opts: MatMulOptions = {}): Tensor {
  if (a.rank < 2 || b.rank < 2) throw new GraphError(`matmul: operands must have rank ≥ 2, got ${fmt(a.shape)} and ${fmt(b.shape)}`);
  if (a.dtype !== b.dtype) throw new GraphError(`matmul: dtypes ${a.dtype} and ${b.dtype} differ`);
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const [m, k1] = transA ? [a.shape[a.rank - 1], a.shape[a.rank - 2]] : [a.shape[a.rank - 2], a.shape[a.rank - 1]];
  const [k2, n] = transB ? [b.shape[b.rank - 1], b.shape[b.rank - 2]] : [b.shape[b.rank - 2], b.shape[b.rank - 1]];
  const desc = `${fmt(a.shape)}${transA ? 'ᵀ' : ''} × ${fmt(b.shape)}${transB ? 'ᵀ' : ''}`;
  if (k1 !== k2) throw new GraphError(`matmul: inner dimensions differ: ${desc}`);
  const batch = broadcastShapes('matmul', a.shape.slice(0, -2), b.shape.slice(0, -2));
  return a.graph.node('matmul', [a, b], { transA, transB }, [...batch, m, n], a.dtype);
}

/** Softmax along `axis` (one fused op; `softmaxComposed` in composite.ts is its oracle). */
export function softmax(x: Tensor, axis = -1): Tensor {
  if (!isFloat(x.dtype)) throw new GraphError(`softmax: needs a float tensor, got ${x.dtype}`);
  const ax = axis < 0 ? axis + x.rank : axis;
  if (ax < 0 || ax >= x.rank) throw new GraphError(`softmax: axis ${axis} out of range for ${fmt(x.shape)}`);
  return x.graph.node('softmax', [x], { axis: ax }, x.shape, x.dtype);
}

function affineParams(op: string, x: Tensor, n: number, weight: Tensor | null, bias: Tensor | null): [Tensor, Tensor] {
  const check = (t: Tensor, what: string) => {
    if (t.rank !== 1 || t.shape[0] !== n || t.dtype !== x.dtype) {
      throw new GraphError(`${op}: ${what} ${fmt(t.shape)}:${t.dtype} must be [${n}]:${x.dtype}`);
    }
    return t;
  };
  const w = weight ? check(weight, 'weight') : x.graph.constant(new Array<number>(n).fill(1), [n], x.dtype);
  const b = bias ? check(bias, 'bias') : x.graph.constant(new Array<number>(n).fill(0), [n], x.dtype);
  return [w, b];
}

/**
 * LayerNorm over the last axis (biased variance, as PyTorch), with per-feature affine.
 * One fused op; `layerNormComposed` in composite.ts is its oracle.
 */
export function layerNorm(x: Tensor, weight: Tensor | null, bias: Tensor | null, eps = 1e-5): Tensor {
  if (!isFloat(x.dtype) || x.rank < 1) throw new GraphError(`layerNorm: needs a float tensor of rank ≥ 1, got ${fmt(x.shape)}:${x.dtype}`);
  const [w, b] = affineParams('layerNorm', x, x.shape[x.rank - 1], weight, bias);
  return x.graph.node('layerNorm', [x, w, b], { eps }, x.shape, x.dtype);
}

/**
 * GroupNorm over [N, C, ...] (statistics per sample and group of C/groups channels), with
 * per-channel affine. One fused op; `groupNormComposed` in composite.ts is its oracle.
 */
export function groupNorm(x: Tensor, groups: number, weight: Tensor | null, bias: Tensor | null, eps = 1e-5): Tensor {
  if (!isFloat(x.dtype) || x.rank < 2) throw new GraphError(`groupNorm: needs a float tensor of rank ≥ 2, got ${fmt(x.shape)}:${x.dtype}`);
  const c = x.shape[1];
  if (!Number.isInteger(groups) || groups < 1 || c % groups !== 0) throw new GraphError(`groupNorm: ${c} channels are not divisible into ${groups} groups`);
  const [w, b] = affineParams('groupNorm', x, c, weight, bias);
  return x.graph.node('groupNorm', [x, w, b], { groups, eps }, x.shape, x.dtype);
}

export interface AttentionOptions {
  heads: number;
  /** Score scale; default 1/√(head size). */
  scale?: number;
  /** Query i sees keys j ≤ i only. */
  causal?: boolean;
}

/**
 * Multi-head scaled dot-product attention on packed heads: q [B, Lq, H·d], k [B, Lk, H·d],
 * v [B, Lk, H·dv] → [B, Lq, H·dv]; head h uses features h·d … (h+1)·d − 1 (PyTorch's
 * split of the projection). One fused op; `attentionComposed` in composite.ts is its oracle.
 */
export function multiHeadAttention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Tensor {
  const { heads } = opts;
  const desc = `q ${fmt(q.shape)}, k ${fmt(k.shape)}, v ${fmt(v.shape)}`;
  if (q.rank !== 3 || k.rank !== 3 || v.rank !== 3) throw new GraphError(`multiHeadAttention: operands must be [B, L, features], got ${desc}`);
  if (q.dtype !== k.dtype || q.dtype !== v.dtype || !isFloat(q.dtype)) throw new GraphError(`multiHeadAttention: operands must share one float dtype (${desc})`);
  const [b, lq, dq] = q.shape;
  const [bk, lk, dk] = k.shape;
  const [bv, lv, dv] = v.shape;
  if (bk !== b || bv !== b || lv !== lk || dk !== dq) throw new GraphError(`multiHeadAttention: shapes do not match: ${desc}`);
  if (!Number.isInteger(heads) || heads < 1 || dq % heads !== 0 || dv % heads !== 0) {
    throw new GraphError(`multiHeadAttention: ${heads} heads do not divide the features of ${desc}`);
  }
  const causal = opts.causal ?? false;
  if (causal && lq !== lk) throw new GraphError(`multiHeadAttention: causal attention needs as many queries as keys (${desc})`);
  const scale = opts.scale ?? 1 / Math.sqrt(dq / heads);
  return q.graph.node('mha', [q, k, v], { heads, scale, causal }, [b, lq, dv], q.dtype);
}

export interface ConvOptions {
  stride?: number;
  padding?: number;
  groups?: number;
  dilation?: number;
}

/** 2-D convolution, NCHW, weight [Cout, Cin/groups, kH, kW], optional bias [Cout]. */
export function conv2d(x: Tensor, w: Tensor, bias?: Tensor | null, opts: ConvOptions = {}): Tensor {
  const stride = opts.stride ?? 1;
  const pad = opts.padding ?? 0;
  const groups = opts.groups ?? 1;
  const dilation = opts.dilation ?? 1;
  if (x.rank !== 4 || w.rank !== 4) throw new GraphError(`conv2d: input ${fmt(x.shape)} and weight ${fmt(w.shape)} must be rank 4`);
  const [n, c, h, wd] = x.shape;
  const [co, ci, kh, kw] = w.shape;
  if (c !== ci * groups || co % groups !== 0) {
    throw new GraphError(`conv2d: input ${fmt(x.shape)} does not match weight ${fmt(w.shape)} with groups=${groups}`);
  }
  if (bias && (bias.rank !== 1 || bias.shape[0] !== co)) throw new GraphError(`conv2d: bias ${fmt(bias.shape)} must be [${co}]`);
  const ho = Math.floor((h + 2 * pad - dilation * (kh - 1) - 1) / stride) + 1;
  const wo = Math.floor((wd + 2 * pad - dilation * (kw - 1) - 1) / stride) + 1;
  if (ho <= 0 || wo <= 0) throw new GraphError(`conv2d: input ${fmt(x.shape)} too small for kernel ${kh}×${kw}`);
  const inputs = bias ? [x, w, bias] : [x, w];
  return x.graph.node('conv', inputs, { stride, pad, groups, dilation }, [n, co, ho, wo], x.dtype);
}

/**
 * Transposed convolution (the input-gradient of conv2d), weight [Cin, Cout/groups, kH, kW].
 * `outputPadding` adds rows/cols at the end so the output matches a given size.
 */
export function convTranspose2d(
  x: Tensor,
  w: Tensor,
  opts: { stride?: number; padding?: number; groups?: number; dilation?: number; outputPadding?: [number, number] } = {},
): Tensor {
  const stride = opts.stride ?? 1;
  const dilation = opts.dilation ?? 1;
  const pad = opts.padding ?? 0;
  const groups = opts.groups ?? 1;
  const op = opts.outputPadding ?? [0, 0];
  const [n, c, h, wd] = x.shape;
  const [ci, cog, kh, kw] = w.shape;
  if (x.rank !== 4 || w.rank !== 4 || c !== ci) {
    throw new GraphError(`convTranspose2d: input ${fmt(x.shape)} does not match weight ${fmt(w.shape)}`);
  }
  const ho = (h - 1) * stride - 2 * pad + dilation * (kh - 1) + 1 + op[0];
  const wo = (wd - 1) * stride - 2 * pad + dilation * (kw - 1) + 1 + op[1];
  return x.graph.node('convT', [x, w], { stride, pad, groups, dilation, outputPadding: op }, [n, cog * groups, ho, wo], x.dtype);
}

/** Nearest-neighbour resize of the last two axes to `size` (PyTorch's `mode="nearest"`). */
export function resizeNearest(x: Tensor, size: [number, number]): Tensor {
  if (x.rank !== 4) throw new GraphError(`resizeNearest: input ${fmt(x.shape)} must be rank 4`);
  return x.graph.node('resize', [x], { size }, [x.shape[0], x.shape[1], size[0], size[1]], x.dtype);
}

export function upsampleNearest2x(x: Tensor): Tensor {
  return resizeNearest(x, [x.shape[2] * 2, x.shape[3] * 2]);
}

function normAxes(op: string, x: Tensor, axes: readonly number[]): number[] {
  const out = axes.map((a) => (a < 0 ? a + x.rank : a));
  for (const a of out) if (a < 0 || a >= x.rank) throw new GraphError(`${op}: axis out of range for shape ${fmt(x.shape)}`);
  return [...new Set(out)].sort((p, q) => p - q);
}

function reduce(op: string, x: Tensor, axes: readonly number[] | undefined, keepDims: boolean): Tensor {
  const ax = normAxes(op, x, axes ?? x.shape.map((_, i) => i));
  const shape: number[] = [];
  x.shape.forEach((d, i) => {
    if (!ax.includes(i)) shape.push(d);
    else if (keepDims) shape.push(1);
  });
  return x.graph.node(op, [x], { axes: ax, keepDims }, shape, x.dtype);
}

export const reduceSum = (x: Tensor, axes?: readonly number[], keepDims = false) => reduce('reduceSum', x, axes, keepDims);
export const reduceMean = (x: Tensor, axes?: readonly number[], keepDims = false) => reduce('reduceMean', x, axes, keepDims);
export const reduceMax = (x: Tensor, axes?: readonly number[], keepDims = false) => reduce('reduceMax', x, axes, keepDims);

/** Reshape; one dimension may be -1. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const known = shape.filter((d) => d !== -1).reduce((p, q) => p * q, 1);
  const holes = shape.filter((d) => d === -1).length;
  const out = shape.map((d) => (d === -1 ? x.size / known : d));
  if (holes > 1 || out.some((d) => !Number.isInteger(d) || d < 0) || out.reduce((p, q) => p * q, 1) !== x.size) {
    throw new GraphError(`reshape: cannot reshape ${fmt(x.shape)} to ${fmt(shape)}`);
  }
  if (out.length === x.rank && out.every((d, i) => d === x.shape[i])) return x;
  return x.graph.node('reshape', [x], {}, out, x.dtype);
}

export function transpose(x: Tensor, perm: readonly number[]): Tensor {
  const sorted = [...perm].sort((a, b) => a - b);
  if (perm.length !== x.rank || sorted.some((p, i) => p !== i)) {
    throw new GraphError(`transpose: permutation ${fmt(perm)} is invalid for shape ${fmt(x.shape)}`);
  }
  if (perm.every((p, i) => p === i)) return x;
  return x.graph.node('transpose', [x], { perm: [...perm] }, perm.map((p) => x.shape[p]), x.dtype);
}

export function expand(x: Tensor, shape: readonly number[]): Tensor {
  const out = broadcastShapes('expand', x.shape, shape);
  if (out.length !== shape.length || out.some((d, i) => d !== shape[i])) {
    throw new GraphError(`expand: cannot expand ${fmt(x.shape)} to ${fmt(shape)}`);
  }
  if (out.length === x.rank && out.every((d, i) => d === x.shape[i])) return x;
  return x.graph.node('expand', [x], {}, out, x.dtype);
}

export function concat(xs: readonly Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new GraphError('concat: no inputs');
  const first = xs[0];
  const ax = axis < 0 ? axis + first.rank : axis;
  if (ax < 0 || ax >= first.rank) throw new GraphError(`concat: axis ${axis} out of range for ${fmt(first.shape)}`);
  let total = 0;
  for (const x of xs) {
    if (x.dtype !== first.dtype || x.rank !== first.rank || x.shape.some((d, i) => i !== ax && d !== first.shape[i])) {
      throw new GraphError(`concat: shapes ${fmt(first.shape)} and ${fmt(x.shape)} (${x.dtype}) do not match along axis ${ax}`);
    }
    total += x.shape[ax];
  }
  if (xs.length === 1) return first;
  const shape = [...first.shape];
  shape[ax] = total;
  return first.graph.node('concat', xs, { axis: ax }, shape, first.dtype);
}

/** Slice [start, end) along each given axis, step 1. */
export function slice(x: Tensor, axes: readonly number[], starts: readonly number[], ends: readonly number[]): Tensor {
  const shape = [...x.shape];
  const ax = axes.map((a) => (a < 0 ? a + x.rank : a));
  const st: number[] = [];
  const en: number[] = [];
  ax.forEach((a, i) => {
    const d = x.shape[a];
    if (d === undefined) throw new GraphError(`slice: axis ${axes[i]} out of range for ${fmt(x.shape)}`);
    const s = Math.min(Math.max(starts[i] < 0 ? starts[i] + d : starts[i], 0), d);
    const e = Math.min(Math.max(ends[i] < 0 ? ends[i] + d : ends[i], s), d);
    st.push(s);
    en.push(e);
    shape[a] = e - s;
  });
  return x.graph.node('slice', [x], { axes: ax, starts: st, ends: en }, shape, x.dtype);
}

/** Zero padding: pads[i] = [before, after] for each axis. */
export function pad(x: Tensor, pads: ReadonlyArray<readonly [number, number]>): Tensor {
  if (pads.length !== x.rank) throw new GraphError(`pad: ${pads.length} pad pairs for shape ${fmt(x.shape)}`);
  if (pads.every(([a, b]) => a === 0 && b === 0)) return x;
  const shape = x.shape.map((d, i) => d + pads[i][0] + pads[i][1]);
  return x.graph.node('pad', [x], { pads: pads.map(([a, b]) => [a, b]) }, shape, x.dtype);
}

/** Row lookup: table [V, ...rest], integer indices [...] → [...indices, ...rest]. */
export function gather(table: Tensor, indices: Tensor): Tensor {
  if (indices.dtype !== 'int64') throw new GraphError(`gather: indices must be int64, got ${indices.dtype}`);
  if (table.rank < 1) throw new GraphError('gather: table must have rank ≥ 1');
  return table.graph.node('gather', [table, indices], {}, [...indices.shape, ...table.shape.slice(1)], table.dtype);
}

/** Zeros of `[rows, ...]` with `updates` added at rows `indices` (duplicates accumulate). */
export function scatterAddRows(rows: number, indices: Tensor, updates: Tensor): Tensor {
  const rest = updates.shape.slice(indices.rank);
  if (indices.dtype !== 'int64' || indices.shape.some((d, i) => d !== updates.shape[i])) {
    throw new GraphError(`scatterAddRows: indices ${fmt(indices.shape)} do not prefix updates ${fmt(updates.shape)}`);
  }
  return updates.graph.node('scatterAdd', [indices, updates], { rows }, [rows, ...rest], updates.dtype);
}
