// Every primitive and composite: analytic gradients (autodiff, evaluated in float64)
// against central finite differences, and the same graphs run by ONNX Runtime.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as o from '../../src/graph/index.ts';
import { gradCheck, ortCheck, randn, type Case } from './helpers.ts';

const pos = (shape: number[]) => ({ shape, positive: true });
/** A frozen weight (an initializer in ONNX), in the graph's dtype. */
function frozen(g: o.Graph, name: string, shape: number[], dtype: o.DType): o.Tensor {
  const v = randn(shape.reduce((a, b) => a * b, 1), 77, 0.5);
  return g.weight(name, shape, { kind: 'memory', data: dtype === 'float64' ? v : Float32Array.from(v) }, dtype);
}
const sh = (shape: number[]) => ({ shape });

const cases: Case[] = [
  { name: 'add (broadcast)', inputs: { a: sh([2, 3, 4]), b: sh([3, 1]) }, build: (x) => o.add(x.a, x.b) },
  { name: 'sub (broadcast)', inputs: { a: sh([4]), b: sh([2, 4]) }, build: (x) => o.sub(x.a, x.b) },
  { name: 'mul (broadcast both)', inputs: { a: sh([2, 1, 3]), b: sh([1, 4, 3]) }, build: (x) => o.mul(x.a, x.b) },
  { name: 'div (broadcast)', inputs: { a: sh([2, 3]), b: pos([3]) }, build: (x) => o.div(x.a, x.b) },
  { name: 'pow', inputs: { a: pos([2, 3]), b: sh([2, 3]) }, build: (x) => o.pow(x.a, x.b) },
  { name: 'pow (scalar exponent)', inputs: { a: pos([5]) }, build: (x) => o.pow(x.a, 3) },
  { name: 'max (broadcast)', inputs: { a: sh([3, 4]), b: sh([4]) }, build: (x) => o.maximum(x.a, x.b) },
  { name: 'neg', inputs: { a: sh([2, 5]) }, build: (x) => o.neg(x.a) },
  { name: 'exp', inputs: { a: sh([2, 5]) }, build: (x) => o.exp(x.a) },
  { name: 'log', inputs: { a: pos([2, 5]) }, build: (x) => o.log(x.a) },
  { name: 'sqrt', inputs: { a: pos([2, 5]) }, build: (x) => o.sqrt(x.a) },
  { name: 'tanh', inputs: { a: sh([2, 5]) }, build: (x) => o.tanh(x.a) },
  { name: 'sigmoid', inputs: { a: sh([2, 5]) }, build: (x) => o.sigmoid(x.a) },
  { name: 'erf', inputs: { a: sh([2, 5]) }, build: (x) => o.erf(x.a) },
  { name: 'sin', inputs: { a: sh([2, 5]) }, build: (x) => o.sin(x.a) },
  { name: 'cos', inputs: { a: sh([2, 5]) }, build: (x) => o.cos(x.a) },
  {
    name: 'where (broadcast) and comparisons',
    inputs: { c: sh([3, 1]), a: sh([3, 4]), b: sh([4]) },
    wrt: ['a', 'b'],
    build: (x) => o.where(o.greater(x.c, 0), x.a, o.where(o.less(x.b, 0.2), x.b, o.mul(x.b, 2))),
  },
  { name: 'matmul', inputs: { a: sh([2, 3, 4]), b: sh([4, 5]) }, build: (x) => o.matmul(x.a, x.b) },
  { name: 'matmul (batch broadcast)', inputs: { a: sh([2, 1, 3, 4]), b: sh([3, 4, 2]) }, build: (x) => o.matmul(x.a, x.b) },
  { name: 'matmul transB (linear layout)', inputs: { a: sh([2, 3, 4]), b: sh([5, 4]) }, build: (x) => o.matmul(x.a, x.b, { transB: true }) },
  { name: 'matmul transA', inputs: { a: sh([2, 4, 3]), b: sh([2, 4, 5]) }, build: (x) => o.matmul(x.a, x.b, { transA: true }) },
  {
    name: 'matmul transA and transB (batch broadcast)',
    inputs: { a: sh([2, 1, 4, 3]), b: sh([3, 5, 4]) },
    build: (x) => o.matmul(x.a, x.b, { transA: true, transB: true }),
  },
  {
    name: 'conv2d input gradient with a frozen weight (lowered as a flipped Conv)',
    inputs: { x: sh([1, 3, 5, 4]) },
    build: (x, g) => o.conv2d(x.x, frozen(g, 'w', [4, 3, 3, 3], x.x.dtype), null, { padding: 1 }),
  },
  {
    name: 'conv2d 1×1 input gradient with a frozen weight',
    inputs: { x: sh([1, 3, 4, 3]) },
    build: (x, g) => o.conv2d(x.x, frozen(g, 'w', [5, 3, 1, 1], x.x.dtype), frozen(g, 'b', [5], x.x.dtype)),
  },
  {
    name: 'conv2d input gradient with a frozen weight, dilation 2, pad 0',
    inputs: { x: sh([1, 2, 7, 6]) },
    build: (x, g) => o.conv2d(x.x, frozen(g, 'w', [3, 2, 3, 3], x.x.dtype), null, { dilation: 2 }),
  },
  {
    name: 'conv2d 3×3 pad 1 + bias',
    inputs: { x: sh([2, 3, 5, 4]), w: sh([4, 3, 3, 3]), b: sh([4]) },
    build: (x) => o.conv2d(x.x, x.w, x.b, { padding: 1 }),
  },
  {
    name: 'conv2d stride 2 pad 1 (odd size)',
    inputs: { x: sh([1, 2, 7, 6]), w: sh([3, 2, 3, 3]) },
    build: (x) => o.conv2d(x.x, x.w, null, { stride: 2, padding: 1 }),
  },
  {
    name: 'conv2d groups 2, dilation 2',
    inputs: { x: sh([1, 4, 6, 6]), w: sh([6, 2, 3, 3]) },
    build: (x) => o.conv2d(x.x, x.w, null, { groups: 2, dilation: 2, padding: 2 }),
  },
  { name: 'conv2d 1×1', inputs: { x: sh([1, 3, 3, 2]), w: sh([2, 3, 1, 1]) }, build: (x) => o.conv2d(x.x, x.w) },
  {
    name: 'convTranspose2d stride 2 (input gradient)',
    inputs: { x: sh([1, 3, 3, 4]), w: sh([3, 2, 3, 3]) },
    wrt: ['x'],
    build: (x) => o.convTranspose2d(x.x, x.w, { stride: 2, padding: 1, outputPadding: [1, 0] }),
  },
  { name: 'upsample nearest ×2', inputs: { x: sh([1, 2, 3, 2]) }, build: (x) => o.upsampleNearest2x(x.x) },
  { name: 'resize nearest to 7×5', inputs: { x: sh([1, 2, 3, 2]) }, build: (x) => o.resizeNearest(x.x, [7, 5]) },
  { name: 'reduceSum (keepdims)', inputs: { x: sh([2, 3, 4]) }, build: (x) => o.reduceSum(x.x, [1], true) },
  { name: 'reduceMean (two axes)', inputs: { x: sh([2, 3, 4]) }, build: (x) => o.reduceMean(x.x, [0, 2]) },
  { name: 'reduceMax', inputs: { x: sh([2, 3, 4]) }, build: (x) => o.reduceMax(x.x, [1]) },
  { name: 'reshape', inputs: { x: sh([2, 6]) }, build: (x) => o.mul(o.reshape(x.x, [3, -1]), o.reshape(x.x, [3, 4])) },
  { name: 'transpose', inputs: { x: sh([2, 3, 4]) }, build: (x) => o.transpose(x.x, [2, 0, 1]) },
  { name: 'expand', inputs: { x: sh([3, 1]) }, build: (x) => o.expand(x.x, [2, 3, 4]) },
  {
    name: 'concat',
    inputs: { a: sh([2, 1, 3]), b: sh([2, 2, 3]), c: sh([2, 1, 3]) },
    build: (x) => o.concat([x.a, x.b, x.c, x.a], 1),
  },
  { name: 'slice', inputs: { x: sh([3, 5, 4]) }, build: (x) => o.slice(x.x, [1, 2], [1, 1], [4, -1]) },
  { name: 'pad', inputs: { x: sh([2, 3]) }, build: (x) => o.pad(x.x, [[1, 0], [2, 1]]) },
  {
    name: 'gather (repeated rows)',
    inputs: { t: sh([5, 3]) },
    build: (x, g) => o.gather(x.t, g.constant([0, 2, 2, 4, 1, 2], [2, 3], 'int64')),
  },
  {
    name: 'scatterAddRows (duplicates)',
    inputs: { u: sh([4, 3]) },
    build: (x, g) => o.scatterAddRows(5, g.constant([3, 0, 3, 1], [4], 'int64'), x.u),
  },
  // Fused primitives (and their composed oracles).
  { name: 'softmax', inputs: { x: sh([3, 5]) }, build: (x) => o.softmax(x.x, -1) },
  { name: 'softmax (middle axis)', inputs: { x: sh([2, 4, 3]) }, build: (x) => o.softmax(x.x, 1) },
  { name: 'softmaxComposed', inputs: { x: sh([3, 5]) }, build: (x) => o.softmaxComposed(x.x, -1) },
  {
    name: 'layerNormComposed',
    inputs: { x: sh([2, 3, 6]), w: sh([6]), b: sh([6]) },
    build: (x) => o.layerNormComposed(x.x, x.w, x.b, 1e-5),
  },
  { name: 'layerNorm (no affine)', inputs: { x: sh([3, 5]) }, build: (x) => o.layerNorm(x.x, null, null, 1e-5) },
  {
    name: 'groupNormComposed',
    inputs: { x: sh([2, 4, 3, 2]), w: sh([4]), b: sh([4]) },
    build: (x) => o.groupNormComposed(x.x, 2, x.w, x.b, 1e-6),
  },
  {
    name: 'groupNorm (rank 3)',
    inputs: { x: sh([2, 6, 4]), w: sh([6]), b: sh([6]) },
    build: (x) => o.groupNorm(x.x, 3, x.w, x.b, 1e-5),
  },
  {
    name: 'multiHeadAttention (2 heads, self)',
    inputs: { q: sh([2, 4, 6]), k: sh([2, 4, 6]), v: sh([2, 4, 6]) },
    build: (x) => o.multiHeadAttention(x.q, x.k, x.v, { heads: 2 }),
  },
  {
    name: 'multiHeadAttention (2 heads, cross, longer keys)',
    inputs: { q: sh([1, 3, 4]), k: sh([1, 5, 4]), v: sh([1, 5, 4]) },
    build: (x) => o.multiHeadAttention(x.q, x.k, x.v, { heads: 2 }),
  },
  {
    name: 'multiHeadAttention (3 heads, causal, custom scale)',
    inputs: { q: sh([1, 4, 6]), k: sh([1, 4, 6]), v: sh([1, 4, 6]) },
    build: (x) => o.multiHeadAttention(x.q, x.k, x.v, { heads: 3, causal: true, scale: 0.3 }),
  },
  {
    name: 'multiHeadAttention (value width ≠ key width)',
    inputs: { q: sh([1, 3, 4]), k: sh([1, 2, 4]), v: sh([1, 2, 6]) },
    build: (x) => o.multiHeadAttention(x.q, x.k, x.v, { heads: 2 }),
  },
  {
    name: 'multiHeadAttention (gradient to q only)',
    inputs: { q: sh([1, 3, 4]), k: sh([1, 2, 4]), v: sh([1, 2, 4]) },
    wrt: ['q'],
    build: (x) => o.multiHeadAttention(x.q, x.k, x.v, { heads: 2 }),
  },
  {
    name: 'slices tiling a tensor (cotangents joined by one concat)',
    inputs: { x: sh([2, 6]) },
    build: (x) => o.mul(o.slice(x.x, [1], [0], [3]), o.tanh(o.slice(x.x, [1], [3], [6]))),
  },
  {
    name: 'slices not tiling a tensor (cotangents summed)',
    inputs: { x: sh([2, 6]) },
    build: (x) => o.mul(o.slice(x.x, [1], [0], [3]), o.tanh(o.slice(x.x, [1], [2], [5]))),
  },
  {
    name: 'attentionComposed (causal)',
    inputs: { q: sh([1, 2, 4, 3]), k: sh([1, 2, 4, 3]), v: sh([1, 2, 4, 3]) },
    build: (x) => o.attentionComposed(x.q, x.k, x.v, { causal: true }),
  },
  // Composites.
  {
    name: 'layerNorm',
    inputs: { x: sh([2, 3, 6]), w: sh([6]), b: sh([6]) },
    build: (x) => o.layerNorm(x.x, x.w, x.b, 1e-5),
  },
  {
    name: 'groupNorm',
    inputs: { x: sh([2, 4, 3, 2]), w: sh([4]), b: sh([4]) },
    build: (x) => o.groupNorm(x.x, 2, x.w, x.b, 1e-6),
  },
  { name: 'silu', inputs: { x: sh([2, 5]) }, build: (x) => o.silu(x.x) },
  { name: 'gelu', inputs: { x: sh([2, 5]) }, build: (x) => o.gelu(x.x) },
  { name: 'quickGelu', inputs: { x: sh([2, 5]) }, build: (x) => o.quickGelu(x.x) },
  { name: 'linear', inputs: { x: sh([2, 3, 4]), w: sh([5, 4]), b: sh([5]) }, build: (x) => o.linear(x.x, x.w, x.b) },
  {
    name: 'attention',
    inputs: { q: sh([2, 4, 3]), k: sh([2, 5, 3]), v: sh([2, 5, 2]) },
    build: (x) => o.attention(x.q, x.k, x.v),
  },
  {
    name: 'attention (causal)',
    inputs: { q: sh([1, 2, 4, 3]), k: sh([1, 2, 4, 3]), v: sh([1, 2, 4, 3]) },
    build: (x) => o.attention(x.q, x.k, x.v, { causal: true }),
  },
  { name: 'mse', inputs: { a: sh([2, 3]), b: sh([2, 3]) }, build: (x) => o.mse(x.a, x.b) },
];

for (const c of cases) {
  test(`gradient: ${c.name} matches central differences (float64)`, () => {
    const err = gradCheck(c);
    assert.ok(err < (c.tol ?? 1e-6), `relative error ${err}`);
  });
  test(`onnx: ${c.name} forward and gradient in ORT match the interpreter`, async () => {
    // ORT runs these in float32: 1e-5 relative to the tensor's scale is float32 round-off.
    const err = await ortCheck(c);
    assert.ok(err < 2e-5, `relative error ${err}`);
  });
}

test('gradient: cast passes the cotangent through unchanged', () => {
  const g = new o.Graph();
  const x = g.input('x', [3], 'float64');
  const r = g.constant([0.5, -2, 3], [3], 'float32');
  const loss = o.reduceSum(o.mul(o.cast(x, 'float32'), r));
  const [gx] = o.grad(loss, [x]);
  assert.equal(gx.dtype, 'float64');
  assert.deepEqual([...o.evaluate([gx], { x: [1, 2, 3] })[0]], [0.5, -2, 3]);
});

test('gradient: only paths from wrt to the loss are differentiated', () => {
  const build = () => {
    const g = new o.Graph();
    const x = g.input('x', [2, 3]);
    const w = g.input('w', [3, 3]);
    const y = o.matmul(x, w);
    return { g, x, w, loss: o.reduceSum(o.mul(y, y)) };
  };
  /** The [3, 3] matmuls (weight gradients aᵀ·g) that grad() adds. */
  const weightGradNodes = (m: ReturnType<typeof build>, wrt: o.Tensor[]) => {
    const mark = m.g.tensors.length;
    const grads = o.grad(m.loss, wrt);
    return { grads, nodes: m.g.tensors.slice(mark).filter((t) => t.op === 'matmul' && t.shape.join() === '3,3') };
  };
  // Control: asked for ∂loss/∂w, the backward pass does compute it.
  const both = build();
  assert.ok(weightGradNodes(both, [both.x, both.w]).nodes.length > 0);
  // Asked for ∂loss/∂x only, it must not.
  const m = build();
  const { grads: [gx], nodes } = weightGradNodes(m, [m.x]);
  assert.equal(nodes.length, 0);
  // And ∂loss/∂x is still right: 2·(x·w)·wᵀ.
  const xv = [1, 2, 3, -1, 0, 2];
  const wv = [1, 0, 2, 0, 1, -1, 3, 1, 0];
  const want = [0, 0, 0, 0, 0, 0];
  for (let i = 0; i < 2; i++) for (let j = 0; j < 3; j++) {
    let yij = 0;
    for (let k = 0; k < 3; k++) yij += xv[i * 3 + k] * wv[k * 3 + j];
    for (let k = 0; k < 3; k++) want[i * 3 + k] += 2 * yij * wv[k * 3 + j];
  }
  assert.deepEqual([...o.evaluate([gx], { x: xv, w: wv })[0]], want);
});

test('gradient: a tensor the loss does not depend on gets zeros', () => {
  const g = new o.Graph();
  const x = g.input('x', [2]);
  const z = g.input('z', [3]);
  const loss = o.reduceSum(o.mul(x, x));
  const [gz] = o.grad(loss, [z]);
  assert.deepEqual([...o.evaluate([gz], { x: [1, 2], z: [1, 1, 1] })[0]], [0, 0, 0]);
});
