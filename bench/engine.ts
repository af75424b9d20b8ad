// Engine benchmark: our graph path vs the same op as a bare single-op ONNX model in ORT.
import '../src/runtime/ort-telemetry.ts';
import ort from 'onnxruntime-node';
import { create, toBinary } from '@bufbuild/protobuf';
import {
  AttributeProtoSchema, AttributeProto_AttributeType, GraphProtoSchema, ModelProtoSchema, NodeProtoSchema,
  OperatorSetIdProtoSchema, TensorProto_DataType, TensorShapeProtoSchema, TensorShapeProto_DimensionSchema,
  TypeProtoSchema, TypeProto_TensorSchema, ValueInfoProtoSchema,
} from 'onnx-buf';
import * as o from '../src/graph/index.ts';
import { compile } from '../src/runtime/session.ts';

function vi(name: string, shape: number[]) {
  return create(ValueInfoProtoSchema, {
    name,
    type: create(TypeProtoSchema, { value: { case: 'tensorType', value: create(TypeProto_TensorSchema, {
      elemType: TensorProto_DataType.FLOAT,
      shape: create(TensorShapeProtoSchema, { dim: shape.map((d) => create(TensorShapeProto_DimensionSchema, { value: { case: 'dimValue', value: BigInt(d) } })) }),
    }) } }),
  });
}

/** A one-node ONNX model written by hand, independent of our exporter. */
async function bareOp(opType: string, ins: Array<[string, number[]]>, out: [string, number[]], ints: Record<string, number[]> = {}) {
  const attribute = Object.entries(ints).map(([name, v]) => create(AttributeProtoSchema, { name, type: AttributeProto_AttributeType.INTS, ints: v.map(BigInt) }));
  const model = create(ModelProtoSchema, {
    irVersion: 9n,
    opsetImport: [create(OperatorSetIdProtoSchema, { domain: '', version: 18n })],
    graph: create(GraphProtoSchema, {
      name: 'bare',
      node: [create(NodeProtoSchema, { opType, input: ins.map((i) => i[0]), output: [out[0]], attribute })],
      input: ins.map(([n, s]) => vi(n, s)),
      output: [vi(out[0], out[1])],
    }),
  });
  return ort.InferenceSession.create(toBinary(ModelProtoSchema, model), { graphOptimizationLevel: 'all' });
}

function rand(n: number) {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.sin(i * 12.9898) * 0.5;
  return a;
}

async function timeIt(fn: () => Promise<unknown>, reps: number): Promise<number> {
  await fn();
  await fn();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    ts.push(performance.now() - t0);
  }
  ts.sort((a, b) => a - b);
  return ts[Math.floor(ts.length / 2)];
}

export async function benchEngine(): Promise<void> {
  const reps = 7;
  // Conv 3×3, 320→320, 64×64.
  {
    const xs = [1, 320, 64, 64], ws = [320, 320, 3, 3];
    const x = rand(320 * 64 * 64), w = rand(320 * 320 * 9);
    const flops = 2 * 320 * 320 * 9 * 64 * 64;
    const g = new o.Graph();
    const tx = g.input('x', xs);
    const tw = g.weight('w', ws, { kind: 'memory', data: w });
    const ours = await compile({ y: o.conv2d(tx, tw, null, { padding: 1 }) }, { weights: 'feed' });
    const oursMs = await timeIt(() => ours.run({ x }), reps);
    const bare = await bareOp('Conv', [['x', xs], ['w', ws]], ['y', xs], { pads: [1, 1, 1, 1], kernel_shape: [3, 3] });
    const feeds = { x: new ort.Tensor('float32', x, xs), w: new ort.Tensor('float32', w, ws) };
    const refMs = await timeIt(() => bare.run(feeds), reps);
    line('conv3x3-320-64-forward', oursMs, flops, refMs);

    // Input gradient: dL/dx for L = Σ conv(x, w)·gy, which autodiff turns into a ConvTranspose.
    const g2 = new o.Graph();
    const x2 = g2.input('x', xs);
    const gy = g2.input('gy', xs);
    const w2 = g2.weight('w', ws, { kind: 'memory', data: w });
    const [gx] = o.grad(o.reduceSum(o.mul(o.conv2d(x2, w2, null, { padding: 1 }), gy)), [x2]);
    const oursG = await compile({ gx }, { weights: 'feed' });
    const gyv = rand(320 * 64 * 64);
    const oursGMs = await timeIt(() => oursG.run({ gy: gyv }), reps);
    const bareT = await bareOp('ConvTranspose', [['gy', xs], ['w', ws]], ['gx', xs], { pads: [1, 1, 1, 1], kernel_shape: [3, 3] });
    const feedsT = { gy: new ort.Tensor('float32', gyv, xs), w: new ort.Tensor('float32', w, ws) };
    const refGMs = await timeIt(() => bareT.run(feedsT), reps);
    line('conv3x3-320-64-input-grad', oursGMs, flops, refGMs);
  }
  // MatMul 1024³.
  {
    const s = [1024, 1024];
    const a = rand(1024 * 1024), b = rand(1024 * 1024).reverse();
    const g = new o.Graph();
    const ours = await compile({ y: o.matmul(g.input('a', s), g.input('b', s)) });
    const oursMs = await timeIt(() => ours.run({ a, b }), reps);
    const bare = await bareOp('MatMul', [['a', s], ['b', s]], ['y', s]);
    const feeds = { a: new ort.Tensor('float32', a, s), b: new ort.Tensor('float32', b, s) };
    const refMs = await timeIt(() => bare.run(feeds), reps);
    line('matmul-1024', oursMs, 2 * 1024 ** 3, refMs);
  }
}

function line(name: string, oursMs: number, flops: number, refMs: number) {
  const r = (v: number, d = 2) => Number(v.toFixed(d));
  console.log(JSON.stringify({ case: name, ours_ms: r(oursMs), gflops: r(flops / oursMs / 1e6, 1), ref_ms: r(refMs), ratio: r(oursMs / refMs, 3) }));
}
