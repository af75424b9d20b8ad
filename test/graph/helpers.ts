// Shared machinery for graph tests: seeded data, finite differences on the float64
// interpreter, and the same graph run through ONNX Runtime.
import { Graph, Tensor, evaluate, grad, mul, reduceSum, numel } from '../../src/graph/index.ts';
import { compile } from '../../src/runtime/session.ts';

export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randn(n: number, seed: number, scale = 1, offset = 0): Float64Array {
  const r = rng(seed);
  return Float64Array.from({ length: n }, () => offset + scale * (r() * 2 - 1) * 1.7);
}

export interface Case {
  name: string;
  inputs: Record<string, { shape: number[]; data?: Float64Array; positive?: boolean }>;
  build: (x: Record<string, Tensor>, g: Graph) => Tensor;
  /** Inputs to differentiate (default: all). */
  wrt?: string[];
  tol?: number;
}

export function setup(c: Case, dtype: 'float64' | 'float32' = 'float64') {
  const g = new Graph();
  const xs: Record<string, Tensor> = {};
  const feeds: Record<string, Float64Array> = {};
  let seed = 1;
  for (const [name, spec] of Object.entries(c.inputs)) {
    xs[name] = g.input(name, spec.shape, dtype);
    const n = numel(spec.shape);
    feeds[name] = spec.data ?? (spec.positive ? randn(n, seed++, 0.4, 1.2) : randn(n, seed++));
  }
  const y = c.build(xs, g);
  // Contract with a fixed random tensor so every output element reaches the scalar loss.
  const r = g.constant(randn(y.size, 99), y.shape, y.dtype);
  const loss = reduceSum(mul(y, r));
  const wrt = (c.wrt ?? Object.keys(xs)).map((k) => xs[k]);
  const grads = grad(loss, wrt);
  return { g, xs, feeds, y, loss, wrt, grads, wrtNames: c.wrt ?? Object.keys(xs) };
}

/** Max relative error between analytic (interpreted) gradients and central differences. */
export function gradCheck(c: Case): number {
  const s = setup(c);
  const analytic = evaluate(s.grads, s.feeds);
  let worst = 0;
  s.wrtNames.forEach((name, k) => {
    const base = s.feeds[name];
    const num = new Float64Array(base.length);
    for (let i = 0; i < base.length; i++) {
      const h = 1e-5 * Math.max(1, Math.abs(base[i]));
      const plus = Float64Array.from(base);
      plus[i] += h;
      const minus = Float64Array.from(base);
      minus[i] -= h;
      const fp = evaluate([s.loss], { ...s.feeds, [name]: plus })[0][0];
      const fm = evaluate([s.loss], { ...s.feeds, [name]: minus })[0][0];
      num[i] = (fp - fm) / (2 * h);
    }
    const scale = Math.max(1e-3, ...num.map(Math.abs));
    for (let i = 0; i < num.length; i++) worst = Math.max(worst, Math.abs(num[i] - analytic[k][i]) / scale);
  });
  return worst;
}

/** Runs forward and gradients through ORT in float32; returns the max error vs the float64 interpreter. */
export async function ortCheck(c: Case): Promise<number> {
  const s = setup(c, 'float32');
  const outs: Record<string, Tensor> = { y: s.y };
  s.grads.forEach((t, i) => (outs[`g${i}`] = t));
  const f32: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(s.feeds)) f32[k] = Float32Array.from(v);
  const ref = evaluate(Object.values(outs), f32);
  const run = await (await compile(outs, { weights: 'inline', threads: 1 })).run(f32);
  let worst = 0;
  Object.keys(outs).forEach((k, i) => {
    const got = run[k] as Float32Array;
    const scale = Math.max(1, ...ref[i].map(Math.abs));
    for (let j = 0; j < got.length; j++) worst = Math.max(worst, Math.abs(got[j] - ref[i][j]) / scale);
  });
  return worst;
}
