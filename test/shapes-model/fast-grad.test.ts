// The trainer's gradient rewrite (src/shapes-model/fast-grad.ts) must compute exactly what
// the autodiff emitted, and must actually replace the slow patterns.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph, conv2d, evaluate, grad, linear, mul, reduceSum, type Tensor } from '../../src/graph/index.ts';
import { fastGradients } from '../../src/shapes-model/fast-grad.ts';

function values(n: number, seed: number): Float64Array {
  let x = seed;
  return Float64Array.from({ length: n }, () => {
    x = (x * 16807) % 2147483647;
    return x / 2147483647 - 0.5;
  });
}

function liveOps(outs: Tensor[]): string[] {
  const seen = new Set<number>();
  const ops: string[] = [];
  const stack = [...outs];
  while (stack.length) {
    const t = stack.pop()!;
    if (seen.has(t.id)) continue;
    seen.add(t.id);
    ops.push(t.op);
    stack.push(...t.inputs);
  }
  return ops;
}

function check(build: (g: Graph) => { y: Tensor; wrt: Tensor[] }, feeds: Record<string, Float64Array>) {
  const g = new Graph();
  const { y, wrt } = build(g);
  const loss = reduceSum(mul(y, g.constant(values(y.size, 7), y.shape, 'float64')));
  const outs = Object.fromEntries(grad(loss, wrt).map((t, i) => [`g${i}`, t]));
  const fast = fastGradients(outs);
  const a = evaluate(Object.values(outs), feeds);
  const b = evaluate(Object.values(fast), feeds);
  let worst = 0;
  a.forEach((t, k) => t.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - b[k][i])))));
  return { worst, before: liveOps(Object.values(outs)), after: liveOps(Object.values(fast)) };
}

const convCases = [
  { x: [2, 3, 7, 6], w: [4, 3, 3, 3], stride: 1, pad: 1 },
  { x: [2, 3, 7, 6], w: [4, 3, 3, 3], stride: 2, pad: 1 },
  { x: [2, 3, 9, 9], w: [4, 3, 3, 3], stride: 2, pad: 0 },
  { x: [2, 3, 5, 5], w: [4, 3, 1, 1], stride: 1, pad: 0 },
  { x: [1, 2, 6, 5], w: [3, 2, 3, 3], stride: 1, pad: 0 },
];

for (const c of convCases) {
  test(`conv gradients are unchanged by the rewrite: x ${c.x} w ${c.w} stride ${c.stride} pad ${c.pad}`, () => {
    const n = (s: number[]) => s.reduce((p, q) => p * q, 1);
    const r = check((g) => {
      const x = g.input('x', c.x, 'float64');
      const w = g.input('w', c.w, 'float64');
      const b = g.input('b', [c.w[0]], 'float64');
      return { y: conv2d(x, w, b, { stride: c.stride, padding: c.pad }), wrt: [x, w, b] };
    }, { x: values(n(c.x), 1), w: values(n(c.w), 2), b: values(c.w[0], 3) });
    assert.ok(r.worst < 1e-12, `max difference ${r.worst}`);
    // The weight gradient is now a matmul, not a conv over the whole feature map.
    const convs = (ops: string[]) => ops.filter((op) => op === 'conv').length;
    assert.ok(convs(r.after) < convs(r.before) || c.stride === 1, `conv ops ${convs(r.before)} → ${convs(r.after)}`);
    assert.ok(r.after.includes('matmul'));
    if (c.stride === 1) assert.ok(!r.after.includes('convT'), 'stride-1 input gradient should not use ConvTranspose');
  });
}

test('linear-layer weight gradient over a batch is one GEMM and unchanged', () => {
  const r = check((g) => {
    const x = g.input('x', [2, 5, 3], 'float64');
    const w = g.input('w', [4, 3], 'float64');
    const b = g.input('b', [4], 'float64');
    return { y: linear(x, w, b), wrt: [x, w, b] };
  }, { x: values(30, 1), w: values(12, 2), b: values(4, 3) });
  assert.ok(r.worst < 1e-12, `max difference ${r.worst}`);
  const sums = (ops: string[]) => ops.filter((op) => op === 'reduceSum').length;
  assert.ok(sums(r.after) < sums(r.before), `reduceSum ops ${sums(r.before)} → ${sums(r.after)}`);
});
