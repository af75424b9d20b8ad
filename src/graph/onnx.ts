// Serialises a graph to an ONNX ModelProto. Weights can be inlined, fed at run time, or
// referenced as external data inside a file (e.g. straight into a .safetensors file).
import { create, toBinary } from '@bufbuild/protobuf';
import {
  AttributeProtoSchema,
  AttributeProto_AttributeType,
  GraphProtoSchema,
  ModelProtoSchema,
  NodeProtoSchema,
  OperatorSetIdProtoSchema,
  StringStringEntryProtoSchema,
  TensorProtoSchema,
  TensorProto_DataLocation,
  TensorProto_DataType,
  TensorShapeProtoSchema,
  TensorShapeProto_DimensionSchema,
  TypeProtoSchema,
  TypeProto_TensorSchema,
  ValueInfoProtoSchema,
  type AttributeProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from 'onnx-buf';
import { relative, isAbsolute, sep, dirname } from 'node:path';
import { realpathSync } from 'node:fs';
import { GraphError, Tensor, type DType, type Graph, type HostArray, type WeightData } from './tensor.ts';

export const OPSET = 18;

const ELEM: Record<DType, TensorProto_DataType> = {
  float32: TensorProto_DataType.FLOAT,
  float16: TensorProto_DataType.FLOAT16,
  float64: TensorProto_DataType.DOUBLE,
  int64: TensorProto_DataType.INT64,
  bool: TensorProto_DataType.BOOL,
};

/**
 * How frozen weights reach ORT:
 * - `inline`: copied into the model bytes (small graphs, tests);
 * - `feed`: graph inputs bound once to host arrays (no copy; works for any source);
 * - `external`: ONNX external data pointing into the weight file, memory-mapped by ORT
 *   (file-backed float32 weights under `externalRoot`; others fall back to `feed`).
 */
export type WeightMode = 'inline' | 'feed' | 'external';

export interface ExportOptions {
  weights?: WeightMode;
  externalRoot?: string;
}

export interface ExportedModel {
  bytes: Uint8Array;
  /** Weights that must be fed as inputs on every run, by input name. */
  weightFeeds: Map<string, { dtype: DType; shape: readonly number[]; data: () => HostArray }>;
  inputs: Array<{ name: string; dtype: DType; shape: readonly number[] }>;
  outputNames: string[];
  /** Folder that external-data locations are relative to (pass to ORT). */
  externalRoot: string | null;
  /** The files external data is read from (real paths): their contents are part of the model. */
  externalFiles: string[];
}

/** Deepest folder containing every path (after resolving symlinks, as ORT requires). */
function commonFolder(paths: string[]): string {
  const parts = paths.map((p) => dirname(p).split(sep));
  const first = parts[0];
  let n = first.length;
  for (const p of parts) {
    let i = 0;
    while (i < n && i < p.length && p[i] === first[i]) i++;
    n = i;
  }
  return first.slice(0, n).join(sep) || sep;
}

function valueInfo(name: string, dtype: DType, shape: readonly number[]): ValueInfoProto {
  return create(ValueInfoProtoSchema, {
    name,
    type: create(TypeProtoSchema, {
      value: {
        case: 'tensorType',
        value: create(TypeProto_TensorSchema, {
          elemType: ELEM[dtype],
          shape: create(TensorShapeProtoSchema, {
            dim: shape.map((d) => create(TensorShapeProto_DimensionSchema, { value: { case: 'dimValue', value: BigInt(d) } })),
          }),
        }),
      },
    }),
  });
}

function bytesOf(a: HostArray): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength) as Uint8Array<ArrayBuffer>;
}

function tensorProto(name: string, dtype: DType, shape: readonly number[], data: HostArray): TensorProto {
  return create(TensorProtoSchema, {
    name,
    dims: shape.map((d) => BigInt(d)),
    dataType: ELEM[dtype],
    rawData: bytesOf(data) as Uint8Array<ArrayBuffer>,
  });
}

function attrInt(name: string, i: number): AttributeProto {
  return create(AttributeProtoSchema, { name, type: AttributeProto_AttributeType.INT, i: BigInt(i) });
}
function attrFloat(name: string, f: number): AttributeProto {
  return create(AttributeProtoSchema, { name, type: AttributeProto_AttributeType.FLOAT, f });
}
function attrInts(name: string, ints: readonly number[]): AttributeProto {
  return create(AttributeProtoSchema, { name, type: AttributeProto_AttributeType.INTS, ints: ints.map((v) => BigInt(v)) });
}
function attrString(name: string, s: string): AttributeProto {
  return create(AttributeProtoSchema, { name, type: AttributeProto_AttributeType.STRING, s: new TextEncoder().encode(s) as Uint8Array<ArrayBuffer> });
}
function attrTensor(name: string, t: TensorProto): AttributeProto {
  return create(AttributeProtoSchema, { name, type: AttributeProto_AttributeType.TENSOR, t });
}

const SIMPLE: Record<string, string> = {
  add: 'Add', sub: 'Sub', mul: 'Mul', div: 'Div', pow: 'Pow', max: 'Max',
  equal: 'Equal', less: 'Less', greater: 'Greater',
  neg: 'Neg', exp: 'Exp', log: 'Log', sqrt: 'Sqrt', tanh: 'Tanh', sigmoid: 'Sigmoid', erf: 'Erf', sin: 'Sin', cos: 'Cos',
  where: 'Where', gather: 'Gather',
};

/** Microsoft's contrib domain (FusedMatMul, MultiHeadAttention), part of every ORT build. */
const MS = 'com.microsoft';

/** x·W or x·Wᵀ with a 2-D right operand: lowered as one Gemm (with its bias add when it has one). */
function linearGemm(t: Tensor): boolean {
  return t.op === 'matmul' && !t.attrs.transA && t.inputs[1].rank === 2 && t.inputs[0].rank >= 2 && t.dtype === 'float32';
}

type Feeds = ExportedModel['weightFeeds'];

/**
 * The model being written: nodes, initializers and inputs in order, plus the naming state.
 * Aux names (k*, c*, x*, z*, i*) are numbered in emission order, so equal graphs give equal bytes.
 */
class OnnxWriter {
  readonly nodes: NodeProto[] = [];
  readonly inits: TensorProto[] = [];
  readonly inputs: ValueInfoProto[] = [];
  readonly inputList: ExportedModel['inputs'] = [];
  readonly weightFeeds: Feeds = new Map();
  readonly externalFiles = new Set<string>();
  /** ONNX value name of each lowered tensor, by id. */
  readonly nameOf = new Map<number, string>();
  usesMs = false;
  private aux = 0;
  private inlineBytes = 0;

  constructor(readonly graph: Graph, readonly plan: ExportPlan) {}

  emit(opType: string, ins: string[], out: string, attrs: AttributeProto[] = [], domain = ''): void {
    if (domain === MS) this.usesMs = true;
    this.nodes.push(create(NodeProtoSchema, { opType, input: ins, output: [out], name: `${opType}_${this.nodes.length}`, attribute: attrs, domain }));
  }
  tmp(): string { return `x${this.aux++}`; }
  /** A fresh name with another prefix (z: zeros, i: indices). */
  fresh(prefix: string): string { return `${prefix}${this.aux++}`; }
  constI64(vals: readonly number[]): string {
    const name = `k${this.aux++}`;
    this.inits.push(tensorProto(name, 'int64', [vals.length], BigInt64Array.from(vals, (v) => BigInt(v))));
    return name;
  }
  constF(vals: readonly number[], dtype: DType, shape: readonly number[] = [vals.length]): string {
    const name = `c${this.aux++}`;
    this.inits.push(tensorProto(name, dtype, shape, dtype === 'float64' ? Float64Array.from(vals) : Float32Array.from(vals)));
    return name;
  }
  reshapeTo(x: string, shape: readonly number[]): string {
    const out = this.tmp();
    this.emit('Reshape', [x, this.constI64(shape)], out);
    return out;
  }

  /** alpha·op(a)·op(b): FusedMatMul takes the transposes as flags (float32 only; else Transpose + MatMul). */
  matMul(dtype: DType, a: string, b: string, rankA: number, rankB: number, transA: boolean, transB: boolean, alpha: number, out: string): void {
    if (dtype === 'float32' && (transA || transB || alpha !== 1)) {
      this.emit('FusedMatMul', [a, b], out, [attrInt('transA', transA ? 1 : 0), attrInt('transB', transB ? 1 : 0), attrFloat('alpha', alpha)], MS);
      return;
    }
    const swapped = (x: string, rank: number) => {
      const perm = [...Array(rank).keys()];
      [perm[rank - 2], perm[rank - 1]] = [perm[rank - 1], perm[rank - 2]];
      const o = this.tmp();
      this.emit('Transpose', [x], o, [attrInts('perm', perm)]);
      return o;
    };
    const product = alpha === 1 ? out : this.tmp();
    this.emit('MatMul', [transA ? swapped(a, rankA) : a, transB ? swapped(b, rankB) : b], product);
    if (alpha !== 1) this.emit('Mul', [product, this.constF([alpha], dtype, [])], out);
  }

  /** A graph input: a value fed on every run. */
  input(t: Tensor, name: string): void {
    this.inputs.push(valueInfo(name, t.dtype, t.shape));
    this.inputList.push({ name, dtype: t.dtype, shape: t.shape });
  }

  /** A frozen weight: external data in its file, inline bytes, or an input fed once (see WeightMode). */
  weight(t: Tensor, name: string): void {
    const d = t.attrs.data as WeightData;
    const { mode, externalRoot: root, real } = this.plan;
    if (mode === 'external' && d.kind === 'file' && root && t.dtype === 'float32') {
      const rel = relative(realpathSync(root), real.get(d.path)!);
      if (rel.startsWith('..') || isAbsolute(rel)) {
        throw new GraphError(`weight "${name}": file ${d.path} lies outside the external-data folder ${root}`);
      }
      this.externalFiles.add(real.get(d.path)!);
      this.inits.push(
        create(TensorProtoSchema, {
          name,
          dims: t.shape.map((v) => BigInt(v)),
          dataType: ELEM[t.dtype],
          dataLocation: TensorProto_DataLocation.EXTERNAL,
          externalData: [
            create(StringStringEntryProtoSchema, { key: 'location', value: rel.split(sep).join('/') }),
            create(StringStringEntryProtoSchema, { key: 'offset', value: String(d.offset) }),
            create(StringStringEntryProtoSchema, { key: 'length', value: String(d.length) }),
          ],
        }),
      );
    } else if (mode === 'inline') {
      const data = d.kind === 'memory' ? d.data : d.read();
      this.inlineBytes += data.byteLength;
      // protobuf caps a message at 2 GiB: big weight sets must be fed or external.
      if (this.inlineBytes > 1.8 * 2 ** 30) {
        throw new GraphError(`exportOnnx: more than 1.8 GiB of inline weights; compile with weights: 'feed' or 'external' for models this large`);
      }
      this.inits.push(tensorProto(name, t.dtype, t.shape, data));
    } else {
      this.inputs.push(valueInfo(name, t.dtype, t.shape));
      this.weightFeeds.set(name, { dtype: t.dtype, shape: t.shape, data: () => (d.kind === 'memory' ? d.data : d.read()) });
    }
  }

  /** Initializer-backed: constant folding may transform it once at session creation. */
  isInit(t: Tensor): boolean {
    const { mode, externalRoot } = this.plan;
    if (t.op === 'const') return true;
    if (t.op !== 'weight') return false;
    if (mode === 'inline') return true;
    return mode === 'external' && (t.attrs.data as WeightData).kind === 'file' && !!externalRoot && t.dtype === 'float32';
  }
}

/** What is decided about the graph before anything is written. */
interface ExportPlan {
  mode: WeightMode;
  /** Real paths of the weight files (external mode). */
  real: Map<string, string>;
  externalRoot: string | null;
  /** Tensors the outputs depend on, by id. */
  live: Uint8Array;
  /** matmul nodes lowered together with their bias add as one Gemm: matmul id → add id. */
  gemmBias: Map<number, number>;
  /** add id → the Gemm that computes it. */
  gemmOut: Map<number, { x2: string; w: string; bias: Tensor; transB: boolean }>;
  /** Gemm-lowered adds read only through last-axis slices: each slice becomes its own Gemm. */
  gemmSplit: Set<number>;
}

/**
 * External data must lie under one folder without symlinks leading out of it, so
 * locations are resolved first (e.g. Hugging Face cache snapshots link into blobs/).
 */
function realWeightPaths(graph: Graph, mode: WeightMode): Map<string, string> {
  const real = new Map<string, string>();
  if (mode !== 'external') return real;
  for (const t of graph.tensors) {
    const d = t.attrs.data as WeightData | undefined;
    if (t.op === 'weight' && d?.kind === 'file' && !real.has(d.path)) real.set(d.path, realpathSync(d.path));
  }
  return real;
}

function liveTensors(graph: Graph, outs: [string, Tensor][]): Uint8Array {
  const live = new Uint8Array(graph.tensors.length);
  const stack = outs.map(([, t]) => t);
  while (stack.length) {
    const t = stack.pop()!;
    if (t.graph !== graph) throw new GraphError('exportOnnx: outputs belong to different graphs');
    if (live[t.id]) continue;
    live[t.id] = 1;
    stack.push(...t.inputs);
  }
  return live;
}

/** Consumers of each live tensor, by id (graph outputs count as one use, marked by null). */
function consumers(graph: Graph, live: Uint8Array, outs: [string, Tensor][]): Array<Array<Tensor | null>> {
  const uses: Array<Array<Tensor | null>> = graph.tensors.map(() => []);
  for (const t of graph.tensors) if (live[t.id]) for (const x of t.inputs) uses[x.id].push(t);
  for (const [, t] of outs) uses[t.id].push(null);
  return uses;
}

/** Bias adds that fuse into their matmul's Gemm: only a matmul used once (outputs count as one use). */
function gemmFusions(graph: Graph, live: Uint8Array, consumed: Array<Array<Tensor | null>>): Map<number, number> {
  const uses = consumed.map((c) => c.length);
  const gemmBias = new Map<number, number>();
  for (const t of graph.tensors) {
    if (!live[t.id] || t.op !== 'add') continue;
    for (const [mm, bias] of [[t.inputs[0], t.inputs[1]], [t.inputs[1], t.inputs[0]]]) {
      if (linearGemm(mm) && uses[mm.id] === 1 && !gemmBias.has(mm.id) && bias.rank === 1 && bias.shape[0] === mm.shape[mm.rank - 1]) {
        gemmBias.set(mm.id, t.id);
        break;
      }
    }
  }
  return gemmBias;
}

/**
 * Linear layers whose output is only ever read in last-axis pieces (GEGLU's value and gate
 * halves) with initializer weights: each piece is computed by its own Gemm on the matching
 * rows of W and b (sliced once, at session creation), so the full product is never written
 * and then split. Measured in docs/performance.md.
 */
function gemmSplits(graph: Graph, gemmBias: Map<number, number>, consumed: Array<Array<Tensor | null>>, isInit: (t: Tensor) => boolean): Set<number> {
  const out = new Set<number>();
  for (const [mm, add] of gemmBias) {
    const m = graph.tensors[mm];
    const a = graph.tensors[add];
    const bias = a.inputs[0] === m ? a.inputs[1] : a.inputs[0];
    if (!m.attrs.transB || !isInit(m.inputs[1]) || !isInit(bias)) continue;
    const last = a.rank - 1;
    const readers = consumed[add];
    const pieces = readers.every((r) => r !== null && r.op === 'slice' && (r.attrs.axes as number[]).length === 1 && (r.attrs.axes as number[])[0] === last);
    if (readers.length > 1 && pieces) out.add(add);
  }
  return out;
}

/** Writes the ONNX nodes of one tensor; `ins` are its inputs' value names, `name` its own. */
type Lowering = (w: OnnxWriter, t: Tensor, ins: string[], name: string) => void;

/**
 * Multi-head attention: ORT's MultiHeadAttention kernel (packed heads in and out, so no
 * transposes; scores never stored whole) measured as fast or faster than MatMul + Softmax +
 * MatMul for every SD shape and 1.9× faster for 4096-token self-attention. Value widths
 * other than the key width fall back to split heads + FusedMatMul + Softmax + MatMul.
 */
function lowerAttention(w: OnnxWriter, t: Tensor, ins: string[], name: string): void {
  const { heads, scale, causal } = t.attrs as { heads: number; scale: number; causal: boolean };
  const [q, k, v] = t.inputs;
  const [bsz, lq, dq] = q.shape;
  const lk = k.shape[1];
  const dv = v.shape[2];
  if (t.dtype === 'float32' && dv === dq) {
    const attrs = [attrInt('num_heads', heads), attrFloat('scale', scale)];
    if (causal) attrs.push(attrInt('unidirectional', 1));
    w.emit('MultiHeadAttention', ins, name, attrs, MS);
    return;
  }
  const split = (x: string, l: number, f: number, perm: number[]) => {
    const out = w.tmp();
    w.emit('Transpose', [w.reshapeTo(x, [bsz, l, heads, f / heads])], out, [attrInts('perm', perm)]);
    return out;
  };
  const scores = w.tmp();
  w.matMul(t.dtype, split(ins[0], lq, dq, [0, 2, 1, 3]), split(ins[1], lk, dq, [0, 2, 3, 1]), 4, 4, false, false, scale, scores);
  let masked = scores;
  if (causal) {
    const mask = new Array<number>(lq * lk);
    for (let i = 0; i < lq; i++) for (let j = 0; j < lk; j++) mask[i * lk + j] = j > i ? -1e9 : 0;
    masked = w.tmp();
    w.emit('Add', [scores, w.constF(mask, t.dtype, [lq, lk])], masked);
  }
  const probs = w.tmp();
  w.emit('Softmax', [masked], probs, [attrInt('axis', -1)]);
  const ctx = w.tmp();
  w.emit('MatMul', [probs, split(ins[2], lk, dv, [0, 2, 1, 3])], ctx);
  const merged = w.tmp();
  w.emit('Transpose', [ctx], merged, [attrInts('perm', [0, 2, 1, 3])]);
  w.emit('Reshape', [merged, w.constI64(t.shape)], name);
}

function lowerMatMul(w: OnnxWriter, t: Tensor, ins: string[], name: string): void {
  const { transA, transB } = t.attrs as { transA: boolean; transB: boolean };
  const bias = w.plan.gemmBias.get(t.id);
  if (bias !== undefined) {
    // x·Wᵀ + b with a 2-D weight: one Gemm over the flattened rows, bias included (the
    // add node below just names the result). W stays as stored: nothing is transposed.
    const x = t.inputs[0];
    const addNode = w.graph.tensors[bias];
    const biasIn = addNode.inputs[0] === t ? addNode.inputs[1] : addNode.inputs[0];
    const x2 = x.rank === 2 ? ins[0] : w.reshapeTo(ins[0], [x.size / x.shape[x.rank - 1], x.shape[x.rank - 1]]);
    w.plan.gemmOut.set(bias, { x2, w: ins[1], bias: biasIn, transB });
    return;
  }
  w.matMul(t.dtype, ins[0], ins[1], t.inputs[0].rank, t.inputs[1].rank, transA, transB, 1, name);
}

function lowerAdd(w: OnnxWriter, t: Tensor, ins: string[], name: string): void {
  const g = w.plan.gemmOut.get(t.id);
  if (!g) {
    w.emit('Add', ins, name);
    return;
  }
  if (w.plan.gemmSplit.has(t.id)) return; // computed piece by piece in lowerSlice
  const out = t.rank === 2 ? name : w.tmp();
  w.emit('Gemm', [g.x2, g.w, w.nameOf.get(g.bias.id)!], out, [attrInt('transB', g.transB ? 1 : 0)]);
  if (t.rank !== 2) w.emit('Reshape', [out, w.constI64(t.shape)], name);
}

/**
 * Reshape to [N, G, rest] + InstanceNormalization + per-channel affine: measured
 * fastest (opset-21 GroupNormalization is expanded into ~29 small ops by ORT).
 */
function lowerGroupNorm(w: OnnxWriter, t: Tensor, ins: string[], name: string): void {
  const a = t.attrs as { groups: number; eps: number };
  const [n, c] = t.shape;
  const groups = a.groups;
  const normed = w.tmp();
  w.emit('InstanceNormalization', [w.reshapeTo(ins[0], [n, groups, -1]), w.constF(new Array(groups).fill(1), t.dtype), w.constF(new Array(groups).fill(0), t.dtype)], normed, [attrFloat('epsilon', a.eps)]);
  const affine = [c, ...t.shape.slice(2).map(() => 1)];
  const scaled = w.tmp();
  w.emit('Mul', [w.reshapeTo(normed, t.shape), w.reshapeTo(ins[1], affine)], scaled);
  w.emit('Add', [scaled, w.reshapeTo(ins[2], affine)], name);
}

/**
 * A stride-1 transposed convolution of an initializer kernel as a plain Conv with the
 * kernel transposed and flipped, padded by dilation·(k−1) − pad (plus output_padding at the
 * end). The kernel is flipped by a MatMul with the k·k reversal matrix and transposed, both
 * folded once at session creation (a Slice with step −1 folded ~10 s slower on the UNet).
 * Measured with one thread on the TI train step: backward convs ~1.35× faster than ORT's
 * ConvTranspose, the whole step ~7 %; costs ~0.5 GB of folded kernels. False when it does not apply.
 */
function convTAsConv(w: OnnxWriter, t: Tensor, ins: string[], name: string): boolean {
  const a = t.attrs as Record<string, any>;
  if (a.stride !== 1 || a.groups !== 1 || !w.isInit(t.inputs[1])) return false;
  const ws = t.inputs[1].shape;
  const [kh, kw] = [ws[2], ws[3]];
  const ph = a.dilation * (kh - 1) - a.pad, pw = a.dilation * (kw - 1) - a.pad;
  if (ph < 0 || pw < 0) return false;
  const [co, ci] = ws;
  let kernel = ins[1];
  if (kh * kw > 1) {
    const rev = new Array<number>(kh * kw * kh * kw).fill(0);
    for (let i = 0; i < kh * kw; i++) rev[i * kh * kw + (kh * kw - 1 - i)] = 1;
    const flat = w.tmp();
    w.emit('MatMul', [w.reshapeTo(ins[1], [co * ci, kh * kw]), w.constF(rev, t.dtype, [kh * kw, kh * kw])], flat);
    kernel = w.reshapeTo(flat, ws);
  }
  const wt = w.tmp();
  w.emit('Transpose', [kernel], wt, [attrInts('perm', [1, 0, 2, 3])]);
  w.emit('Conv', [ins[0], wt], name, [
    attrInts('kernel_shape', [kh, kw]),
    attrInts('pads', [ph, pw, ph + a.outputPadding[0], pw + a.outputPadding[1]]),
    attrInts('dilations', [a.dilation, a.dilation]),
  ]);
  return true;
}

function lowerConv(w: OnnxWriter, t: Tensor, ins: string[], name: string): void {
  const a = t.attrs as Record<string, any>;
  const ws = t.inputs[1].shape;
  const attrs = [
    attrInts('kernel_shape', [ws[2], ws[3]]),
    attrInts('strides', [a.stride, a.stride]),
    attrInts('pads', [a.pad, a.pad, a.pad, a.pad]),
    attrInts('dilations', [a.dilation, a.dilation]),
    attrInt('group', a.groups),
  ];
  if (t.op === 'convT') {
    if (convTAsConv(w, t, ins, name)) return;
    attrs.push(attrInts('output_padding', a.outputPadding));
  }
  w.emit(t.op === 'conv' ? 'Conv' : 'ConvTranspose', ins, name, attrs);
}

function lowerReduce(w: OnnxWriter, t: Tensor, ins: string[], name: string): void {
  const a = t.attrs as { axes: number[]; keepDims: boolean };
  const op = { reduceSum: 'ReduceSum', reduceMean: 'ReduceMean', reduceMax: 'ReduceMax' }[t.op as 'reduceSum'];
  w.emit(op, [ins[0], w.constI64(a.axes)], name, [attrInt('keepdims', a.keepDims ? 1 : 0)]);
}

/** A slice, or one piece of a split Gemm (see gemmSplits): Gemm on the sliced rows of W and b. */
function lowerSlice(w: OnnxWriter, t: Tensor, ins: string[], name: string): void {
  const a = t.attrs as { starts: number[]; ends: number[]; axes: number[] };
  const src = t.inputs[0];
  const g = w.plan.gemmSplit.has(src.id) ? w.plan.gemmOut.get(src.id) : undefined;
  if (!g) {
    w.emit('Slice', [ins[0], w.constI64(a.starts), w.constI64(a.ends), w.constI64(a.axes)], name);
    return;
  }
  const rows = (x: string) => {
    const out = w.tmp();
    w.emit('Slice', [x, w.constI64(a.starts), w.constI64(a.ends), w.constI64([0])], out);
    return out;
  };
  const out = t.rank === 2 ? name : w.tmp();
  w.emit('Gemm', [g.x2, rows(g.w), rows(w.nameOf.get(g.bias.id)!)], out, [attrInt('transB', 1)]);
  if (t.rank !== 2) w.emit('Reshape', [out, w.constI64(t.shape)], name);
}

/** One lowering per primitive that is not a plain one-to-one ONNX op (those are in SIMPLE). */
const lowerings: Record<string, Lowering> = {
  input: (w, t, _ins, name) => w.input(t, name),
  weight: (w, t, _ins, name) => w.weight(t, name),
  const: (w, t, _ins, name) => { w.inits.push(tensorProto(name, t.dtype, t.shape, t.attrs.values as HostArray)); },
  matmul: lowerMatMul,
  add: lowerAdd,
  softmax: (w, t, ins, name) => w.emit('Softmax', ins, name, [attrInt('axis', t.attrs.axis as number)]),
  layerNorm: (w, t, ins, name) => w.emit('LayerNormalization', ins, name, [attrInt('axis', -1), attrFloat('epsilon', t.attrs.eps as number)]),
  groupNorm: lowerGroupNorm,
  mha: lowerAttention,
  cast: (w, t, ins, name) => w.emit('Cast', ins, name, [attrInt('to', ELEM[t.dtype])]),
  conv: lowerConv,
  convT: lowerConv,
  resize: (w, t, ins, name) => w.emit('Resize', [ins[0], '', '', w.constI64(t.shape)], name, [
    attrString('mode', 'nearest'),
    attrString('coordinate_transformation_mode', 'asymmetric'),
    attrString('nearest_mode', 'floor'),
  ]),
  reduceSum: lowerReduce,
  reduceMean: lowerReduce,
  reduceMax: lowerReduce,
  reshape: (w, t, ins, name) => w.emit('Reshape', [ins[0], w.constI64(t.shape)], name),
  expand: (w, t, ins, name) => w.emit('Expand', [ins[0], w.constI64(t.shape)], name),
  transpose: (w, t, ins, name) => w.emit('Transpose', ins, name, [attrInts('perm', t.attrs.perm as number[])]),
  concat: (w, t, ins, name) => w.emit('Concat', ins, name, [attrInt('axis', t.attrs.axis as number)]),
  slice: lowerSlice,
  pad: (w, t, ins, name) => {
    const pads = t.attrs.pads as number[][];
    w.emit('Pad', [ins[0], w.constI64([...pads.map((p) => p[0]), ...pads.map((p) => p[1])])], name, [attrString('mode', 'constant')]);
  },
  scatterAdd: (w, t, ins, name) => {
    const zeros = w.fresh('z');
    const zero = tensorProto('value', t.dtype, [1], t.dtype === 'float64' ? new Float64Array(1) : new Float32Array(1));
    w.emit('ConstantOfShape', [w.constI64(t.shape)], zeros, [attrTensor('value', zero)]);
    const idx = w.fresh('i');
    w.emit('Reshape', [ins[0], w.constI64([...t.inputs[0].shape, 1])], idx);
    w.emit('ScatterND', [zeros, idx, ins[1]], name, [attrString('reduction', 'add')]);
  },
};

function lowerTensor(w: OnnxWriter, t: Tensor, ins: string[], name: string): void {
  const lower = lowerings[t.op];
  if (lower) return lower(w, t, ins, name);
  const op = SIMPLE[t.op];
  if (!op) throw new GraphError(`exportOnnx: op "${t.op}" has no ONNX lowering`);
  w.emit(op, ins, name);
}

/** Serialises the sub-graph that computes `outputs` (name → tensor). */
export function exportOnnx(outputs: Record<string, Tensor>, opts: ExportOptions = {}): ExportedModel {
  const mode = opts.weights ?? 'inline';
  const outs = Object.entries(outputs);
  if (outs.length === 0) throw new GraphError('exportOnnx: no outputs');
  const graph = outs[0][1].graph;
  const real = realWeightPaths(graph, mode);
  const externalRoot = mode === 'external' && real.size ? opts.externalRoot ?? commonFolder([...real.values()]) : null;
  const live = liveTensors(graph, outs);
  const consumed = consumers(graph, live, outs);
  const gemmBias = gemmFusions(graph, live, consumed);
  const plan: ExportPlan = { mode, real, externalRoot, live, gemmBias, gemmOut: new Map(), gemmSplit: new Set() };
  const w = new OnnxWriter(graph, plan);
  for (const id of gemmSplits(graph, gemmBias, consumed, (t) => w.isInit(t))) plan.gemmSplit.add(id);
  // Nodes that compute an output write to the output's name directly (no Identity copy).
  const directOut = new Map<number, string>();
  for (const [oname, t] of outs) if (t.op !== 'input' && t.op !== 'weight' && t.op !== 'const' && !directOut.has(t.id)) directOut.set(t.id, oname);
  for (const t of graph.tensors) {
    if (!live[t.id]) continue;
    const name = t.op === 'input' || t.op === 'weight' ? (t.attrs.name as string) : directOut.get(t.id) ?? `t${t.id}`;
    w.nameOf.set(t.id, name);
    lowerTensor(w, t, t.inputs.map((x) => w.nameOf.get(x.id)!), name);
  }
  const outputInfos: ValueInfoProto[] = [];
  for (const [oname, t] of outs) {
    if (w.nameOf.get(t.id) !== oname) w.emit('Identity', [w.nameOf.get(t.id)!], oname);
    outputInfos.push(valueInfo(oname, t.dtype, t.shape));
  }
  const model = create(ModelProtoSchema, {
    irVersion: 9n,
    producerName: 'oneword',
    opsetImport: [
      create(OperatorSetIdProtoSchema, { domain: '', version: BigInt(OPSET) }),
      ...(w.usesMs ? [create(OperatorSetIdProtoSchema, { domain: MS, version: 1n })] : []),
    ],
    graph: create(GraphProtoSchema, { name: 'oneword', node: w.nodes, initializer: w.inits, input: w.inputs, output: outputInfos }),
  });
  const bytes = toBinary(ModelProtoSchema, model);
  return { bytes, weightFeeds: w.weightFeeds, inputs: w.inputList, outputNames: outs.map(([n]) => n), externalRoot, externalFiles: [...w.externalFiles].sort() };
}
