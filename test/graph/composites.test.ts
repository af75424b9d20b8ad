// Composite ops against direct formulas, a small conv net's input gradient against
// finite differences (float64 interpreter and ORT float32), and error messages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as o from '../../src/graph/index.ts';
import { compile } from '../../src/runtime/session.ts';
import { randn } from './helpers.ts';

function close(got: ArrayLike<number>, want: ArrayLike<number>, tol: number) {
  assert.equal(got.length, want.length);
  for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i] - want[i]) <= tol, `index ${i}: ${got[i]} vs ${want[i]}`);
}

function run1(build: (g: o.Graph, x: o.Tensor) => o.Tensor, shape: number[], data: Float64Array): Float64Array {
  const g = new o.Graph();
  const x = g.input('x', shape, 'float64');
  return o.evaluate([build(g, x)], { x: data })[0];
}

test('softmax equals exp(x)/Σexp(x) and is stable for large inputs', () => {
  const x = Float64Array.from([1, 2, 3, 1000, 1001, 1002]);
  const y = run1((_, t) => o.softmax(t, 1), [2, 3], x);
  const e = [Math.exp(-2), Math.exp(-1), 1];
  const s = e[0] + e[1] + e[2];
  close(y, [...e.map((v) => v / s), ...e.map((v) => v / s)], 1e-12);
});

test('layerNorm and groupNorm follow their definitions', () => {
  const x = randn(24, 5);
  const ln = run1((g, t) => o.layerNorm(t, g.constant([1, 2, 3, 4, 5, 6], [6], 'float64'), g.constant([0, 0, 0, 0, 0, 1], [6], 'float64'), 1e-5), [4, 6], x);
  for (let r = 0; r < 4; r++) {
    const row = x.slice(r * 6, r * 6 + 6);
    const m = row.reduce((a, b) => a + b) / 6;
    const v = row.reduce((a, b) => a + (b - m) ** 2, 0) / 6;
    for (let i = 0; i < 6; i++) assert.ok(Math.abs(ln[r * 6 + i] - ((row[i] - m) / Math.sqrt(v + 1e-5)) * (i + 1) - (i === 5 ? 1 : 0)) < 1e-12);
  }
  // groupNorm: [1, 4, 3, 2] in 2 groups of 2 channels × 6 pixels.
  const gn = run1((g, t) => o.groupNorm(t, 2, g.constant([2, 2, 3, 3], [4], 'float64'), g.constant([0, 1, 0, 1], [4], 'float64'), 1e-6), [1, 4, 3, 2], x);
  for (let grp = 0; grp < 2; grp++) {
    const vals = x.slice(grp * 12, grp * 12 + 12);
    const m = vals.reduce((a, b) => a + b) / 12;
    const v = vals.reduce((a, b) => a + (b - m) ** 2, 0) / 12;
    for (let i = 0; i < 12; i++) {
      const c = grp * 2 + Math.floor(i / 6);
      const want = ((vals[i] - m) / Math.sqrt(v + 1e-6)) * [2, 2, 3, 3][c] + [0, 1, 0, 1][c];
      assert.ok(Math.abs(gn[grp * 12 + i] - want) < 1e-12);
    }
  }
});

test('gelu, quickGelu and silu match reference values', () => {
  const x = Float64Array.from([1, -1, 2, 0.5, 0]);
  // x·Φ(x), Φ from standard normal tables.
  close(run1((_, t) => o.gelu(t), [5], x), [0.8413447460685429, -0.15865525393145707, 1.9544997361036416, 0.34573123063700656, 0], 1e-12);
  close(run1((_, t) => o.quickGelu(t), [5], x), [...x].map((v) => v / (1 + Math.exp(-1.702 * v))), 1e-14);
  close(run1((_, t) => o.silu(t), [5], x), [...x].map((v) => v / (1 + Math.exp(-v))), 1e-14);
});

test('attention equals softmax(QKᵀ/√d)V, with the causal mask hiding future keys', () => {
  const L = 3, d = 2;
  const q = randn(L * d, 1), k = randn(L * d, 2), v = randn(L * d, 3);
  const g = new o.Graph();
  const [tq, tk, tv] = ['q', 'k', 'v'].map((n) => g.input(n, [L, d], 'float64'));
  const [plain, causal] = o.evaluate([o.attention(tq, tk, tv), o.attention(tq, tk, tv, { causal: true })], { q, k, v });
  for (let i = 0; i < L; i++) {
    for (const [out, lim] of [[plain, L], [causal, i + 1]] as const) {
      const s = Array.from({ length: lim }, (_, j) => (q[i * d] * k[j * d] + q[i * d + 1] * k[j * d + 1]) / Math.sqrt(d));
      const m = Math.max(...s);
      const e = s.map((x) => Math.exp(x - m));
      const z = e.reduce((a, b) => a + b);
      for (let c = 0; c < d; c++) {
        const want = e.reduce((acc, w, j) => acc + (w / z) * v[j * d + c], 0);
        assert.ok(Math.abs(out[i * d + c] - want) < 1e-12);
      }
    }
  }
});

test('fused primitives equal their composed oracles (softmax, layerNorm, groupNorm, multi-head attention)', () => {
  const g = new o.Graph();
  const x = g.input('x', [2, 6, 5], 'float64');
  const w = g.input('w', [6], 'float64');
  const b = g.input('b', [6], 'float64');
  const w5 = g.input('w5', [5], 'float64');
  const b5 = g.input('b5', [5], 'float64');
  const feeds = { x: randn(60, 31), w: randn(6, 32), b: randn(6, 33), w5: randn(5, 34), b5: randn(5, 35) };
  const pairs: Array<[string, o.Tensor, o.Tensor]> = [
    ['softmax', o.softmax(x, 1), o.softmaxComposed(x, 1)],
    ['layerNorm', o.layerNorm(x, w5, b5, 1e-5), o.layerNormComposed(x, w5, b5, 1e-5)],
    ['layerNorm (no affine)', o.layerNorm(x, null, null, 1e-3), o.layerNormComposed(x, null, null, 1e-3)],
    ['groupNorm', o.groupNorm(x, 3, w, b, 1e-6), o.groupNormComposed(x, 3, w, b, 1e-6)],
  ];
  // Multi-head attention on packed heads against the per-head composed form.
  const [bq, lq, lk, heads, hd] = [2, 3, 4, 2, 3];
  const q = g.input('q', [bq, lq, heads * hd], 'float64');
  const k = g.input('k', [bq, lk, heads * hd], 'float64');
  const v = g.input('v', [bq, lk, heads * hd], 'float64');
  Object.assign(feeds, { q: randn(bq * lq * heads * hd, 36), k: randn(bq * lk * heads * hd, 37), v: randn(bq * lk * heads * hd, 38) });
  const split = (t: o.Tensor, l: number) => o.transpose(o.reshape(t, [bq, l, heads, hd]), [0, 2, 1, 3]);
  const merge = (t: o.Tensor) => o.reshape(o.transpose(t, [0, 2, 1, 3]), [bq, lq, heads * hd]);
  pairs.push(['multiHeadAttention', o.multiHeadAttention(q, k, v, { heads }), merge(o.attentionComposed(split(q, lq), split(k, lk), split(v, lk)))]);
  const qs = o.slice(k, [1], [0], [lq]);
  pairs.push([
    'multiHeadAttention (causal)',
    o.multiHeadAttention(qs, qs, qs, { heads, causal: true }),
    merge(o.attentionComposed(split(qs, lq), split(qs, lq), split(qs, lq), { causal: true })),
  ]);
  const outs = o.evaluate(pairs.flatMap(([, a, c]) => [a, c]), feeds);
  pairs.forEach(([name], i) => {
    const [got, want] = [outs[2 * i], outs[2 * i + 1]];
    for (let j = 0; j < want.length; j++) assert.ok(Math.abs(got[j] - want[j]) < 1e-12, `${name} [${j}]: ${got[j]} vs ${want[j]}`);
  });
});

test('linear is x·Wᵀ + b with PyTorch weight layout', () => {
  const g = new o.Graph();
  const x = g.input('x', [1, 2], 'float64');
  const w = g.constant([1, 2, 3, 4, 5, 6], [3, 2], 'float64');
  const b = g.constant([0.5, 0, -1], [3], 'float64');
  close(o.evaluate([o.linear(x, w, b)], { x: [1, -1] })[0], [-0.5, -1, -2], 1e-15);
});

// A conv net with every structural ingredient of a UNet block.
function convNet(g: o.Graph, x: o.Tensor, dtype: 'float32' | 'float64') {
  const c = (vals: Float64Array, shape: number[]) => g.constant(vals, shape, dtype);
  let h = o.conv2d(x, c(randn(8 * 3 * 9, 11, 0.4), [8, 3, 3, 3]), c(randn(8, 12, 0.1), [8]), { stride: 2, padding: 1 });
  h = o.silu(o.groupNorm(h, 4, c(randn(8, 13, 0.2, 1), [8]), c(randn(8, 14, 0.1), [8]), 1e-5));
  const [n, ch, hh, ww] = h.shape;
  const tokens = o.reshape(o.transpose(o.reshape(h, [n, ch, hh * ww]), [0, 2, 1]), [n, hh * ww, ch]);
  const wq = c(randn(64, 15, 0.3), [8, 8]);
  const att = o.attention(o.linear(tokens, wq), o.linear(tokens, wq), tokens);
  h = o.add(h, o.reshape(o.transpose(att, [0, 2, 1]), [n, ch, hh, ww]));
  h = o.conv2d(o.upsampleNearest2x(h), c(randn(2 * 8 * 9, 16, 0.3), [2, 8, 3, 3]), null, { padding: 1 });
  return o.reduceMean(o.mul(h, h));
}

test('a small conv net (stride-2 conv, groupNorm, silu, attention, upsample): input gradient matches finite differences', async () => {
  const shape = [1, 3, 6, 5];
  const xv = randn(90, 21);
  const g = new o.Graph();
  const x = g.input('x', shape, 'float64');
  const loss = convNet(g, x, 'float64');
  const [gx] = o.grad(loss, [x]);
  const analytic = o.evaluate([gx], { x: xv })[0];
  const numeric = new Float64Array(90);
  for (let i = 0; i < 90; i++) {
    const h = 1e-5;
    const p = Float64Array.from(xv); p[i] += h;
    const m = Float64Array.from(xv); m[i] -= h;
    numeric[i] = (o.evaluate([loss], { x: p })[0][0] - o.evaluate([loss], { x: m })[0][0]) / (2 * h);
  }
  const scale = Math.max(...numeric.map(Math.abs));
  let err = 0;
  for (let i = 0; i < 90; i++) err = Math.max(err, Math.abs(analytic[i] - numeric[i]) / scale);
  assert.ok(err < 1e-6, `float64 relative error ${err}`);

  // The same net compiled for ORT in float32: within float32 round-off of the float64 truth.
  const g32 = new o.Graph();
  const x32 = g32.input('x', shape, 'float32');
  const loss32 = convNet(g32, x32, 'float32');
  const [gx32] = o.grad(loss32, [x32]);
  const out = await (await compile({ loss: loss32, gx: gx32 })).run({ x: Float32Array.from(xv) });
  let err32 = 0;
  for (let i = 0; i < 90; i++) err32 = Math.max(err32, Math.abs((out.gx as Float32Array)[i] - numeric[i]) / scale);
  assert.ok(err32 < 1e-4, `ORT float32 relative error ${err32}`);
});

test('errors: shape mismatch names the op and both shapes', () => {
  const g = new o.Graph();
  const a = g.input('a', [2, 3]);
  const b = g.input('b', [4, 3]);
  assert.throws(() => o.add(a, b), /add: shapes \[2, 3\] and \[4, 3\] cannot be broadcast together/);
  assert.throws(() => o.matmul(a, b), /matmul: inner dimensions differ: \[2, 3\] × \[4, 3\]/);
  assert.throws(() => o.conv2d(g.input('x', [1, 3, 4, 4]), g.input('w', [2, 4, 3, 3])), /conv2d: input \[1, 3, 4, 4\] does not match weight \[2, 4, 3, 3\]/);
  assert.throws(() => o.reshape(a, [4, 2]), /reshape: cannot reshape \[2, 3\] to \[4, 2\]/);
});

test('errors: unknown dtype, grad of a non-scalar, missing input', async () => {
  const g = new o.Graph();
  assert.throws(() => g.input('x', [2], 'bfloat7' as never), /unknown dtype "bfloat7"/);
  const x = g.input('y', [2]);
  assert.throws(() => o.grad(o.mul(x, x), [x]), /grad: loss must be a scalar \(one element\), got shape \[2\]/);
  assert.throws(() => g.input('y', [3]), /name "y" is already used/);
  const c = await compile({ z: o.mul(x, 2) });
  await assert.rejects(() => c.run({}), /missing input "y"/);
  await assert.rejects(() => c.run({ y: [1, 2, 3] }), /needs 2 values/);
});

test('max splits the gradient evenly on ties, as PyTorch does', () => {
  const g = new o.Graph();
  const a = g.input('a', [2], 'float64');
  const b = g.input('b', [2], 'float64');
  const [ga, gb] = o.grad(o.reduceSum(o.maximum(a, b)), [a, b]);
  const [va, vb] = o.evaluate([ga, gb], { a: [1, 3], b: [1, 2] });
  assert.deepEqual([...va], [0.5, 1]);
  assert.deepEqual([...vb], [0.5, 0]);
});
