// A float64 reference interpreter for graphs, written directly from each primitive's
// definition. It is the oracle for gradient checks (ORT runs most ops only in float32)
// and for checking the ONNX lowering. Meant for small tensors: clarity over speed.
import { GraphError, Tensor, numel, type HostArray } from './tensor.ts';

type Vals = Float64Array;

function strides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** For each flat index of `out`, the flat index of the broadcast operand of shape `inp`. */
function broadcastMap(out: readonly number[], inp: readonly number[]): Int32Array {
  const n = numel(out);
  const map = new Int32Array(n);
  const lead = out.length - inp.length;
  const is = strides(inp);
  const os = strides(out);
  for (let f = 0; f < n; f++) {
    let rem = f;
    let src = 0;
    for (let d = 0; d < out.length; d++) {
      const c = Math.floor(rem / os[d]);
      rem -= c * os[d];
      const k = d - lead;
      if (k >= 0 && inp[k] !== 1) src += c * is[k];
    }
    map[f] = src;
  }
  return map;
}

function toF64(a: HostArray): Float64Array {
  if (a instanceof BigInt64Array) return Float64Array.from(a, Number);
  if (a instanceof Uint16Array) throw new GraphError('evaluate: float16 data is not supported by the reference interpreter');
  return Float64Array.from(a as ArrayLike<number>);
}

function erf(x: number): number {
  // Abramowitz–Stegun 7.1.26 is too coarse for 1e-6 checks; use a series / continued fraction.
  const ax = Math.abs(x);
  if (ax < 2.5) {
    let sum = x;
    let term = x;
    for (let n = 1; n < 200; n++) {
      term *= (-x * x) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc continued fraction (Lentz) for large |x|.
  let f = ax;
  let c = ax;
  let d = 0;
  for (let i = 1; i < 300; i++) {
    const an = i / 2;
    d = ax + an * d;
    d = 1 / d;
    c = ax + an / c;
    const delta = c * d;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
  return Math.sign(x) * (1 - erfc);
}

const unaryFns: Record<string, (v: number) => number> = {
  neg: (v) => -v,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  tanh: Math.tanh,
  sigmoid: (v) => 1 / (1 + Math.exp(-v)),
  erf,
  sin: Math.sin,
  cos: Math.cos,
};

const binaryFns: Record<string, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  pow: Math.pow,
  max: Math.max,
  equal: (a, b) => (a === b ? 1 : 0),
  less: (a, b) => (a < b ? 1 : 0),
  greater: (a, b) => (a > b ? 1 : 0),
};

function conv(x: Vals, xs: readonly number[], w: Vals, ws: readonly number[], a: Record<string, any>, outShape: readonly number[]): Vals {
  const [n, c, h, wd] = xs;
  const [co, cig, kh, kw] = ws;
  const [, , ho, wo] = outShape;
  const { stride, pad, groups, dilation } = a as { stride: number; pad: number; groups: number; dilation: number };
  const cog = co / groups;
  const out = new Float64Array(n * co * ho * wo);
  for (let b = 0; b < n; b++)
    for (let oc = 0; oc < co; oc++) {
      const grp = Math.floor(oc / cog);
      for (let y = 0; y < ho; y++)
        for (let xx = 0; xx < wo; xx++) {
          let s = 0;
          for (let ic = 0; ic < cig; ic++) {
            const cin = grp * cig + ic;
            for (let ky = 0; ky < kh; ky++) {
              const iy = y * stride - pad + ky * dilation;
              if (iy < 0 || iy >= h) continue;
              for (let kx = 0; kx < kw; kx++) {
                const ix = xx * stride - pad + kx * dilation;
                if (ix < 0 || ix >= wd) continue;
                s += x[((b * c + cin) * h + iy) * wd + ix] * w[((oc * cig + ic) * kh + ky) * kw + kx];
              }
            }
          }
          out[((b * co + oc) * ho + y) * wo + xx] = s;
        }
    }
  void c;
  return out;
}

function convT(x: Vals, xs: readonly number[], w: Vals, ws: readonly number[], a: Record<string, any>, outShape: readonly number[]): Vals {
  // Scatter form, straight from the definition: each input pixel adds w·x to the outputs it touches.
  const [n, c, h, wd] = xs;
  const [, cog, kh, kw] = ws;
  const [, co, ho, wo] = outShape;
  const { stride, pad, groups, dilation } = a as { stride: number; pad: number; groups: number; dilation: number };
  const cig = c / groups;
  const out = new Float64Array(n * co * ho * wo);
  for (let b = 0; b < n; b++)
    for (let ic = 0; ic < c; ic++) {
      const grp = Math.floor(ic / cig);
      for (let y = 0; y < h; y++)
        for (let xx = 0; xx < wd; xx++) {
          const v = x[((b * c + ic) * h + y) * wd + xx];
          for (let oc = 0; oc < cog; oc++)
            for (let ky = 0; ky < kh; ky++) {
              const oy = y * stride - pad + ky * dilation;
              if (oy < 0 || oy >= ho) continue;
              for (let kx = 0; kx < kw; kx++) {
                const ox = xx * stride - pad + kx * dilation;
                if (ox < 0 || ox >= wo) continue;
                out[((b * co + grp * cog + oc) * ho + oy) * wo + ox] += v * w[((ic * cog + oc) * kh + ky) * kw + kx];
              }
            }
        }
    }
  return out;
}

type Feeds = Record<string, ArrayLike<number> | HostArray>;

/** Computes one tensor from its inputs' values `x` (in input order); `feeds` holds the graph inputs. */
type Interpret = (t: Tensor, x: Vals[], feeds: Feeds) => Vals;

function matmul(t: Tensor, [x, y]: Vals[]): Vals {
  const ins = t.inputs;
  const [as, bs] = [ins[0].shape, ins[1].shape];
  const { transA, transB } = t.attrs as { transA?: boolean; transB?: boolean };
  const [ar, ac] = [as[as.length - 2], as[as.length - 1]];
  const [br, bc] = [bs[bs.length - 2], bs[bs.length - 1]];
  const m = transA ? ac : ar, k = transA ? ar : ac, nn = transB ? br : bc;
  // Element (i, p) of op(a) and (p, j) of op(b), by strides into the stored matrices.
  const [ai, ap] = transA ? [1, ac] : [ac, 1];
  const [bp, bj] = transB ? [1, bc] : [bc, 1];
  const batch = t.shape.slice(0, -2);
  const ma = broadcastMap(batch, as.slice(0, -2));
  const mb = broadcastMap(batch, bs.slice(0, -2));
  const out = new Float64Array(t.size);
  for (let bi = 0; bi < numel(batch); bi++) {
    const oa = ma[bi] * ar * ac, ob = mb[bi] * br * bc, oo = bi * m * nn;
    for (let i = 0; i < m; i++)
      for (let j = 0; j < nn; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) s += x[oa + i * ai + p * ap] * y[ob + p * bp + j * bj];
        out[oo + i * nn + j] = s;
      }
  }
  return out;
}

function softmax(t: Tensor, [x]: Vals[]): Vals {
  const axis = t.attrs.axis as number;
  const len = t.shape[axis];
  const inner = numel(t.shape.slice(axis + 1));
  const out = new Float64Array(t.size);
  for (let o = 0; o < t.size / (len * inner); o++)
    for (let r = 0; r < inner; r++) {
      const at = (i: number) => (o * len + i) * inner + r;
      let mx = -Infinity;
      for (let i = 0; i < len; i++) mx = Math.max(mx, x[at(i)]);
      let z = 0;
      for (let i = 0; i < len; i++) z += out[at(i)] = Math.exp(x[at(i)] - mx);
      for (let i = 0; i < len; i++) out[at(i)] /= z;
    }
  return out;
}

/** layerNorm and groupNorm: each run of `len` consecutive values is one normalisation group; `chan(i)` is the affine index of flat element i. */
function norm(t: Tensor, [x, w, b]: Vals[]): Vals {
  const a = t.attrs as Record<string, any>;
  const eps = a.eps as number;
  let len: number, chan: (i: number) => number;
  if (t.op === 'layerNorm') {
    len = t.shape[t.rank - 1];
    chan = (i) => i % len;
  } else {
    const c = t.shape[1];
    const spatial = numel(t.shape.slice(2));
    len = (c / (a.groups as number)) * spatial;
    chan = (i) => Math.floor(i / spatial) % c;
  }
  const out = new Float64Array(t.size);
  for (let s0 = 0; s0 < t.size; s0 += len) {
    let mean = 0;
    for (let i = 0; i < len; i++) mean += x[s0 + i];
    mean /= len;
    let v = 0;
    for (let i = 0; i < len; i++) v += (x[s0 + i] - mean) ** 2;
    const rstd = 1 / Math.sqrt(v / len + eps);
    for (let i = s0; i < s0 + len; i++) out[i] = (x[i] - mean) * rstd * w[chan(i)] + b[chan(i)];
  }
  return out;
}

function multiHeadAttention(t: Tensor, [q, k, v]: Vals[]): Vals {
  const ins = t.inputs;
  const { heads, scale, causal } = t.attrs as { heads: number; scale: number; causal: boolean };
  const [bsz, lq, dq] = ins[0].shape;
  const lk = ins[1].shape[1];
  const dv = ins[2].shape[2];
  const hd = dq / heads, hv = dv / heads;
  const out = new Float64Array(t.size);
  const p = new Float64Array(lk);
  for (let bi = 0; bi < bsz; bi++)
    for (let h = 0; h < heads; h++)
      for (let i = 0; i < lq; i++) {
        let mx = -Infinity;
        for (let j = 0; j < lk; j++) {
          let s = 0;
          for (let e = 0; e < hd; e++) s += q[(bi * lq + i) * dq + h * hd + e] * k[(bi * lk + j) * dq + h * hd + e];
          p[j] = causal && j > i ? -Infinity : s * scale;
          mx = Math.max(mx, p[j]);
        }
        let z = 0;
        for (let j = 0; j < lk; j++) z += p[j] = Math.exp(p[j] - mx);
        for (let e = 0; e < hv; e++) {
          let s = 0;
          for (let j = 0; j < lk; j++) s += p[j] * v[(bi * lk + j) * dv + h * hv + e];
          out[(bi * lq + i) * dv + h * hv + e] = s / z;
        }
      }
  return out;
}

function resize(t: Tensor, [x]: Vals[]): Vals {
  const [n, c, h, w] = t.inputs[0].shape;
  const [h2, w2] = t.attrs.size as number[];
  const out = new Float64Array(t.size);
  for (let p = 0; p < n * c; p++)
    for (let y = 0; y < h2; y++)
      for (let xx = 0; xx < w2; xx++) {
        const sy = Math.min(Math.floor((y * h) / h2), h - 1);
        const sx = Math.min(Math.floor((xx * w) / w2), w - 1);
        out[(p * h2 + y) * w2 + xx] = x[(p * h + sy) * w + sx];
      }
  return out;
}

function reduce(t: Tensor, [x]: Vals[]): Vals {
  const src = t.inputs[0].shape;
  const axes = t.attrs.axes as number[];
  const keep = src.map((d, i) => (axes.includes(i) ? 1 : d));
  const map = broadcastMap(src, keep);
  const out = new Float64Array(numel(keep)).fill(t.op === 'reduceMax' ? -Infinity : 0);
  for (let i = 0; i < x.length; i++) {
    out[map[i]] = t.op === 'reduceMax' ? Math.max(out[map[i]], x[i]) : out[map[i]] + x[i];
  }
  if (t.op === 'reduceMean') {
    const cnt = x.length / out.length;
    for (let i = 0; i < out.length; i++) out[i] /= cnt;
  }
  return out;
}

function transpose(t: Tensor, [x]: Vals[]): Vals {
  const perm = t.attrs.perm as number[];
  const is = strides(t.inputs[0].shape);
  const os = strides(t.shape);
  const out = new Float64Array(t.size);
  for (let f = 0; f < t.size; f++) {
    let rem = f, src = 0;
    for (let d = 0; d < t.rank; d++) {
      const c = Math.floor(rem / os[d]);
      rem -= c * os[d];
      src += c * is[perm[d]];
    }
    out[f] = x[src];
  }
  return out;
}

function concat(t: Tensor, xs: Vals[]): Vals {
  const axis = t.attrs.axis as number;
  const outer = numel(t.shape.slice(0, axis));
  const inner = numel(t.shape.slice(axis + 1));
  const out = new Float64Array(t.size);
  let off = 0;
  t.inputs.forEach((x, n) => {
    const v = xs[n];
    const len = x.shape[axis] * inner;
    for (let o = 0; o < outer; o++) out.set(v.subarray(o * len, (o + 1) * len), o * t.shape[axis] * inner + off);
    off += len;
  });
  return out;
}

/** slice and pad: every source element moves by a per-axis offset; those outside are dropped. */
function shift(t: Tensor, [x]: Vals[]): Vals {
  const a = t.attrs as Record<string, any>;
  const src = t.inputs[0].shape;
  const offs = new Array<number>(src.length).fill(0);
  if (t.op === 'slice') (a.axes as number[]).forEach((ax, i) => (offs[ax] = -(a.starts as number[])[i]));
  else (a.pads as number[][]).forEach((p, i) => (offs[i] = p[0]));
  const out = new Float64Array(t.size);
  const is = strides(src);
  const os = strides(t.shape);
  for (let f = 0; f < x.length; f++) {
    let rem = f, dst = 0, ok = true;
    for (let d = 0; d < src.length; d++) {
      const c = Math.floor(rem / is[d]);
      rem -= c * is[d];
      const oc = c + offs[d];
      if (oc < 0 || oc >= t.shape[d]) { ok = false; break; }
      dst += oc * os[d];
    }
    if (ok) out[dst] = x[f];
  }
  return out;
}

function gather(t: Tensor, [tab, idx]: Vals[]): Vals {
  const rows = t.inputs[0].shape[0];
  const row = numel(t.inputs[0].shape.slice(1));
  const out = new Float64Array(t.size);
  idx.forEach((r, i) => {
    const rr = r < 0 ? r + rows : r;
    if (rr < 0 || rr >= rows) throw new GraphError(`gather: index ${r} out of range`);
    out.set(tab.subarray(rr * row, (rr + 1) * row), i * row);
  });
  return out;
}

function scatterAdd(t: Tensor, [idx, upd]: Vals[]): Vals {
  const row = numel(t.shape.slice(1));
  const out = new Float64Array(t.size);
  idx.forEach((r, i) => {
    for (let k = 0; k < row; k++) out[r * row + k] += upd[i * row + k];
  });
  return out;
}

/** One interpretation per primitive, beside autodiff's VJP rules and onnx.ts's lowerings. */
const interpreters: Record<string, Interpret> = {
  input: (t, _x, feeds) => {
    const name = t.attrs.name as string;
    const f = feeds[name];
    if (!f) throw new GraphError(`evaluate: no value fed for input "${name}"`);
    if (f.length !== t.size) throw new GraphError(`evaluate: input "${name}" needs ${t.size} values, got ${f.length}`);
    return toF64(f as HostArray);
  },
  weight: (t) => {
    const d = t.attrs.data as { kind: string; data?: HostArray; read?: () => HostArray };
    return toF64(d.kind === 'memory' ? d.data! : d.read!());
  },
  const: (t) => toF64(t.attrs.values as HostArray),
  cast: (t, [x]) => {
    if (t.dtype === 'int64') return x.map(Math.trunc);
    if (t.dtype === 'bool') return x.map((v) => (v ? 1 : 0));
    if (t.dtype === 'float32') return x.map(Math.fround);
    return Float64Array.from(x);
  },
  where: (t, [c, p, q]) => {
    const mc = broadcastMap(t.shape, t.inputs[0].shape);
    const mp = broadcastMap(t.shape, t.inputs[1].shape);
    const mq = broadcastMap(t.shape, t.inputs[2].shape);
    return Float64Array.from({ length: t.size }, (_, i) => (c[mc[i]] ? p[mp[i]] : q[mq[i]]));
  },
  matmul,
  softmax,
  layerNorm: norm,
  groupNorm: norm,
  mha: multiHeadAttention,
  conv: (t, [x, w, b]) => {
    const out = conv(x, t.inputs[0].shape, w, t.inputs[1].shape, t.attrs, t.shape);
    if (b) {
      const [, co, ho, wo] = t.shape;
      for (let i = 0; i < out.length; i++) out[i] += b[Math.floor(i / (ho * wo)) % co];
    }
    return out;
  },
  convT: (t, [x, w]) => convT(x, t.inputs[0].shape, w, t.inputs[1].shape, t.attrs, t.shape),
  resize,
  reduceSum: reduce,
  reduceMean: reduce,
  reduceMax: reduce,
  reshape: (_t, [x]) => x,
  transpose,
  expand: (t, [x]) => Float64Array.from(broadcastMap(t.shape, t.inputs[0].shape), (i) => x[i]),
  concat,
  slice: shift,
  pad: shift,
  gather,
  scatterAdd,
};

function elementwise(t: Tensor, x: Vals[]): Vals {
  if (unaryFns[t.op]) return x[0].map(unaryFns[t.op]);
  const fn = binaryFns[t.op];
  if (!fn) throw new GraphError(`evaluate: op "${t.op}" is not supported`);
  const mx = broadcastMap(t.shape, t.inputs[0].shape);
  const my = broadcastMap(t.shape, t.inputs[1].shape);
  return Float64Array.from({ length: t.size }, (_, i) => fn(x[0][mx[i]], x[1][my[i]]));
}

/** Evaluates `outputs` in float64 given values for the graph's inputs (by name). */
export function evaluate(outputs: readonly Tensor[], feeds: Feeds): Float64Array[] {
  const memo = new Map<number, Vals>();
  const ev = (t: Tensor): Vals => {
    const hit = memo.get(t.id);
    if (hit) return hit;
    const x = t.inputs.map(ev);
    const v = (interpreters[t.op] ?? elementwise)(t, x, feeds);
    memo.set(t.id, v);
    return v;
  };
  return outputs.map(ev);
}
