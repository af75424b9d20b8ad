// The ONNX lowerings chosen for speed: which ORT ops each primitive becomes. (Numerics are
// checked op by op in gradients.test.ts; this guards the choices measured in bench/.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fromBinary } from '@bufbuild/protobuf';
import { ModelProtoSchema } from 'onnx-buf';
import * as o from '../../src/graph/index.ts';
import { exportOnnx, type WeightMode } from '../../src/graph/onnx.ts';

function opTypes(outputs: Record<string, o.Tensor>, weights: WeightMode = 'inline'): string[] {
  const m = fromBinary(ModelProtoSchema, exportOnnx(outputs, { weights }).bytes);
  return m.graph!.node.map((n) => n.opType);
}

const w = (g: o.Graph, name: string, shape: number[]) =>
  g.weight(name, shape, { kind: 'memory', data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(0.1) });

test('linear: one Gemm with the bias, the weight used as stored (no Transpose)', () => {
  const g = new o.Graph();
  const x = g.input('x', [1, 7, 4]);
  const ops = opTypes({ y: o.linear(x, w(g, 'w', [5, 4]), w(g, 'b', [5])) });
  assert.deepEqual(ops.filter((t) => t !== 'Reshape'), ['Gemm']);
  // Without a bias (attention projections): still no Transpose.
  const g2 = new o.Graph();
  assert.ok(!opTypes({ y: o.linear(g2.input('x', [1, 7, 4]), w(g2, 'w', [5, 4])) }).includes('Transpose'));
});

test('softmax, layerNorm, groupNorm and multi-head attention become single ORT kernels', () => {
  const g = new o.Graph();
  const x = g.input('x', [1, 4, 6, 6]);
  const t = g.input('t', [1, 9, 8]);
  const ops = opTypes({
    s: o.softmax(x, -1),
    l: o.layerNorm(t, w(g, 'lw', [8]), w(g, 'lb', [8])),
    n: o.groupNorm(x, 2, w(g, 'gw', [4]), w(g, 'gb', [4])),
    a: o.multiHeadAttention(t, t, t, { heads: 2 }),
  });
  for (const op of ['Softmax', 'LayerNormalization', 'InstanceNormalization', 'MultiHeadAttention']) assert.ok(ops.includes(op), `${op} missing from ${ops}`);
  for (const op of ['ReduceMean', 'ReduceMax', 'Exp', 'Sqrt']) assert.ok(!ops.includes(op), `${op} in ${ops}`);
});

test('conv input gradient: a Conv with the flipped kernel for initializer weights, ConvTranspose for fed ones', () => {
  for (const [mode, want] of [['inline', 'Conv'], ['feed', 'ConvTranspose']] as const) {
    const g = new o.Graph();
    const x = g.input('x', [1, 3, 8, 8]);
    const y = o.conv2d(x, w(g, 'w', [4, 3, 3, 3]), null, { padding: 1 });
    const [gx] = o.grad(o.reduceSum(o.mul(y, y)), [x]);
    const ops = opTypes({ gx }, mode);
    assert.equal(ops.filter((t) => t === want).length, want === 'Conv' ? 2 : 1, `${mode}: ${ops}`);
    if (want === 'Conv') assert.ok(!ops.includes('ConvTranspose'));
  }
});

test('cotangents of slices that tile a tensor are joined by one Concat, not padded and added', () => {
  const g = new o.Graph();
  const x = g.input('x', [2, 6]);
  const y = o.mul(o.slice(x, [1], [0], [3]), o.slice(x, [1], [3], [6]));
  const [gx] = o.grad(o.reduceSum(y), [x]);
  const ops = opTypes({ gx });
  assert.ok(ops.includes('Concat') && !ops.includes('Pad'), String(ops));
});

test('float64 graphs: transposed matmuls fall back to Transpose + MatMul (FusedMatMul is float32-only)', async () => {
  const { compile } = await import('../../src/runtime/session.ts');
  const g = new o.Graph();
  const a = g.input('a', [2, 4, 3], 'float64');
  const b = g.input('b', [5, 4], 'float64');
  const y = o.matmul(a, b, { transA: true, transB: true });
  const feeds = { a: Float64Array.from({ length: 24 }, (_, i) => Math.sin(i)), b: Float64Array.from({ length: 20 }, (_, i) => Math.cos(i)) };
  const got = (await (await compile({ y })).run(feeds)).y as Float64Array;
  const [want] = o.evaluate([y], feeds);
  assert.equal(got.length, want.length);
  for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i] - want[i]) < 1e-12);
});

test("GEGLU: a linear layer read only in last-axis halves becomes one Gemm per half (the product is never split), same values", async () => {
  const { compile } = await import('../../src/runtime/session.ts');
  const build = (g: o.Graph) => {
    const x = g.input('x', [1, 5, 4]);
    const wt = g.weight('w', [6, 4], { kind: 'memory', data: Float32Array.from({ length: 24 }, (_, i) => Math.sin(i + 1)) });
    const b = g.weight('b', [6], { kind: 'memory', data: Float32Array.from({ length: 6 }, (_, i) => Math.cos(i)) });
    const proj = o.linear(x, wt, b);
    return o.mul(o.slice(proj, [2], [0], [3]), o.gelu(o.slice(proj, [2], [3], [6])));
  };
  const g = new o.Graph();
  const y = build(g);
  const ops = opTypes({ y });
  assert.equal(ops.filter((t) => t === 'Gemm').length, 2, String(ops));
  assert.ok(!ops.includes('Split'), String(ops));
  const x = Float32Array.from({ length: 20 }, (_, i) => Math.sin(3 * i));
  const got = (await (await compile({ y })).run({ x })).y as Float32Array;
  const [want] = o.evaluate([y], { x: Float64Array.from(x) });
  for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i] - want[i]) < 1e-5, `${i}: ${got[i]} vs ${want[i]}`);
  // Fed weights are not initializers: slicing them would run on every call, so the product is sliced instead.
  const g2 = new o.Graph();
  assert.equal(opTypes({ y: build(g2) }, 'feed').filter((t) => t === 'Gemm').length, 1);
});
