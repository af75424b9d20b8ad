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
import { GraphError, Tensor, type DType, type HostArray, type WeightData } from './tensor.ts';

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

/** Serialises the sub-graph that computes `outputs` (name → tensor). */
export function exportOnnx(outputs: Record<string, Tensor>, opts: ExportOptions = {}): ExportedModel {
  const mode = opts.weights ?? 'inline';
  const outs = Object.entries(outputs);
  if (outs.length === 0) throw new GraphError('exportOnnx: no outputs');
  const graph = outs[0][1].graph;
  // External data must lie under one folder without symlinks leading out of it, so
  // locations are resolved first (e.g. Hugging Face cache snapshots link into blobs/).
  const real = new Map<string, string>();
  if (mode === 'external') {
    for (const t of outs[0][1].graph.tensors) {
      const d = t.attrs.data as WeightData | undefined;
      if (t.op === 'weight' && d?.kind === 'file' && !real.has(d.path)) real.set(d.path, realpathSync(d.path));
    }
  }
  const externalRoot = mode === 'external' && real.size ? opts.externalRoot ?? commonFolder([...real.values()]) : null;
  // Reachable set.
  const live = new Uint8Array(graph.tensors.length);
  const stack = outs.map(([, t]) => t);
  while (stack.length) {
    const t = stack.pop()!;
    if (t.graph !== graph) throw new GraphError('exportOnnx: outputs belong to different graphs');
    if (live[t.id]) continue;
    live[t.id] = 1;
    stack.push(...t.inputs);
  }
  // Consumers per tensor (outputs count as one), for lowerings that fuse a node into its user.
  const uses = new Uint32Array(graph.tensors.length);
  for (const t of graph.tensors) if (live[t.id]) for (const x of t.inputs) uses[x.id]++;
  for (const [, t] of outs) uses[t.id]++;
  /** Initializer-backed: constant folding may transform it once at session creation. */
  const isInit = (t: Tensor) => t.op === 'const' || (t.op === 'weight' && (mode === 'inline' || (mode === 'external' && weightIsExternal(t))));
  const weightIsExternal = (t: Tensor) => {
    const d = t.attrs.data as WeightData;
    return d.kind === 'file' && !!externalRoot && t.dtype === 'float32';
  };
  // matmul nodes lowered together with their bias add as one Gemm: matmul id → add id.
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
  const gemmOut = new Map<number, { x2: string; w: string; bias: Tensor; transB: boolean }>();
  const nodes: NodeProto[] = [];
  const inits: TensorProto[] = [];
  const inputs: ValueInfoProto[] = [];
  const inputList: ExportedModel['inputs'] = [];
  const weightFeeds: ExportedModel['weightFeeds'] = new Map();
  const externalFiles = new Set<string>();
  const nameOf = new Map<number, string>();
  // Nodes that compute an output write to the output's name directly (no Identity copy).
  const directOut = new Map<number, string>();
  for (const [oname, t] of outs) if (t.op !== 'input' && t.op !== 'weight' && t.op !== 'const' && !directOut.has(t.id)) directOut.set(t.id, oname);
  let aux = 0;
  let inlineBytes = 0;
  const constI64 = (vals: readonly number[]): string => {
    const name = `k${aux++}`;
    inits.push(tensorProto(name, 'int64', [vals.length], BigInt64Array.from(vals, (v) => BigInt(v))));
    return name;
  };
  let usesMs = false;
  const emit = (opType: string, ins: string[], out: string, attrs: AttributeProto[] = [], domain = '') => {
    if (domain === MS) usesMs = true;
    nodes.push(create(NodeProtoSchema, { opType, input: ins, output: [out], name: `${opType}_${nodes.length}`, attribute: attrs, domain }));
  };
  const tmp = () => `x${aux++}`;
  const constF = (vals: readonly number[], dtype: DType, shape: readonly number[] = [vals.length]): string => {
    const name = `c${aux++}`;
    inits.push(tensorProto(name, dtype, shape, dtype === 'float64' ? Float64Array.from(vals) : Float32Array.from(vals)));
    return name;
  };
  const reshapeTo = (x: string, shape: readonly number[]): string => {
    const out = tmp();
    emit('Reshape', [x, constI64(shape)], out);
    return out;
  };
  /** alpha·op(a)·op(b): FusedMatMul takes the transposes as flags (float32 only; else Transpose + MatMul). */
  const emitMatMul = (dtype: DType, a: string, b: string, rankA: number, rankB: number, transA: boolean, transB: boolean, alpha: number, out: string) => {
    if (dtype === 'float32' && (transA || transB || alpha !== 1)) {
      emit('FusedMatMul', [a, b], out, [attrInt('transA', transA ? 1 : 0), attrInt('transB', transB ? 1 : 0), attrFloat('alpha', alpha)], MS);
      return;
    }
    const swapped = (x: string, rank: number) => {
      const perm = [...Array(rank).keys()];
      [perm[rank - 2], perm[rank - 1]] = [perm[rank - 1], perm[rank - 2]];
      const o = tmp();
      emit('Transpose', [x], o, [attrInts('perm', perm)]);
      return o;
    };
    const product = alpha === 1 ? out : tmp();
    emit('MatMul', [transA ? swapped(a, rankA) : a, transB ? swapped(b, rankB) : b], product);
    if (alpha !== 1) emit('Mul', [product, constF([alpha], dtype, [])], out);
  };

  /**
   * Multi-head attention: ORT's MultiHeadAttention kernel (packed heads in and out, so no
   * transposes; scores never stored whole) measured as fast or faster than MatMul + Softmax +
   * MatMul for every SD shape and 1.9× faster for 4096-token self-attention. Value widths
   * other than the key width fall back to split heads + FusedMatMul + Softmax + MatMul.
   */
  const lowerAttention = (t: Tensor, ins: string[], name: string) => {
    const { heads, scale, causal } = t.attrs as { heads: number; scale: number; causal: boolean };
    const [q, k, v] = t.inputs;
    const [bsz, lq, dq] = q.shape;
    const lk = k.shape[1];
    const dv = v.shape[2];
    if (t.dtype === 'float32' && dv === dq) {
      const attrs = [attrInt('num_heads', heads), attrFloat('scale', scale)];
      if (causal) attrs.push(attrInt('unidirectional', 1));
      emit('MultiHeadAttention', ins, name, attrs, MS);
      return;
    }
    const split = (x: string, l: number, f: number, perm: number[]) => {
      const out = tmp();
      emit('Transpose', [reshapeTo(x, [bsz, l, heads, f / heads])], out, [attrInts('perm', perm)]);
      return out;
    };
    const scores = tmp();
    emitMatMul(t.dtype, split(ins[0], lq, dq, [0, 2, 1, 3]), split(ins[1], lk, dq, [0, 2, 3, 1]), 4, 4, false, false, scale, scores);
    let masked = scores;
    if (causal) {
      const mask = new Array<number>(lq * lk);
      for (let i = 0; i < lq; i++) for (let j = 0; j < lk; j++) mask[i * lk + j] = j > i ? -1e9 : 0;
      masked = tmp();
      emit('Add', [scores, constF(mask, t.dtype, [lq, lk])], masked);
    }
    const probs = tmp();
    emit('Softmax', [masked], probs, [attrInt('axis', -1)]);
    const ctx = tmp();
    emit('MatMul', [probs, split(ins[2], lk, dv, [0, 2, 1, 3])], ctx);
    const merged = tmp();
    emit('Transpose', [ctx], merged, [attrInts('perm', [0, 2, 1, 3])]);
    emit('Reshape', [merged, constI64(t.shape)], name);
  };

  for (const t of graph.tensors) {
    if (!live[t.id]) continue;
    const a = t.attrs as Record<string, any>;
    const name = t.op === 'input' || t.op === 'weight' ? (a.name as string) : directOut.get(t.id) ?? `t${t.id}`;
    nameOf.set(t.id, name);
    const ins = t.inputs.map((x) => nameOf.get(x.id)!);
    switch (t.op) {
      case 'input':
        inputs.push(valueInfo(name, t.dtype, t.shape));
        inputList.push({ name, dtype: t.dtype, shape: t.shape });
        break;
      case 'weight': {
        const d = a.data as WeightData;
        const root = externalRoot;
        if (mode === 'external' && d.kind === 'file' && root && t.dtype === 'float32') {
          const rel = relative(realpathSync(root), real.get(d.path)!);
          if (rel.startsWith('..') || isAbsolute(rel)) {
            throw new GraphError(`weight "${name}": file ${d.path} lies outside the external-data folder ${root}`);
          }
          externalFiles.add(real.get(d.path)!);
          inits.push(
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
          inlineBytes += data.byteLength;
          // protobuf caps a message at 2 GiB: big weight sets must be fed or external.
          if (inlineBytes > 1.8 * 2 ** 30) {
            throw new GraphError(`exportOnnx: more than 1.8 GiB of inline weights; compile with weights: 'feed' or 'external' for models this large`);
          }
          inits.push(tensorProto(name, t.dtype, t.shape, data));
        } else {
          inputs.push(valueInfo(name, t.dtype, t.shape));
          weightFeeds.set(name, { dtype: t.dtype, shape: t.shape, data: () => (d.kind === 'memory' ? d.data : d.read()) });
        }
        break;
      }
      case 'const':
        inits.push(tensorProto(name, t.dtype, t.shape, a.values as HostArray));
        break;
      case 'matmul': {
        const { transA, transB } = a as { transA: boolean; transB: boolean };
        const bias = gemmBias.get(t.id);
        if (bias !== undefined) {
          // x·Wᵀ + b with a 2-D weight: one Gemm over the flattened rows, bias included (the
          // add node below just names the result). W stays as stored: nothing is transposed.
          const x = t.inputs[0];
          const addNode = graph.tensors[bias];
          const biasIn = addNode.inputs[0] === t ? addNode.inputs[1] : addNode.inputs[0];
          const x2 = x.rank === 2 ? ins[0] : reshapeTo(ins[0], [x.size / x.shape[x.rank - 1], x.shape[x.rank - 1]]);
          gemmOut.set(bias, { x2, w: ins[1], bias: biasIn, transB });
          break;
        }
        emitMatMul(t.dtype, ins[0], ins[1], t.inputs[0].rank, t.inputs[1].rank, transA, transB, 1, name);
        break;
      }
      case 'add': {
        const g = gemmOut.get(t.id);
        if (!g) {
          emit('Add', ins, name);
          break;
        }
        const out = t.rank === 2 ? name : tmp();
        emit('Gemm', [g.x2, g.w, nameOf.get(g.bias.id)!], out, [attrInt('transB', g.transB ? 1 : 0)]);
        if (t.rank !== 2) emit('Reshape', [out, constI64(t.shape)], name);
        break;
      }
      case 'softmax':
        emit('Softmax', ins, name, [attrInt('axis', a.axis)]);
        break;
      case 'layerNorm':
        emit('LayerNormalization', ins, name, [attrInt('axis', -1), attrFloat('epsilon', a.eps)]);
        break;
      case 'groupNorm': {
        // Reshape to [N, G, rest] + InstanceNormalization + per-channel affine: measured
        // fastest (opset-21 GroupNormalization is expanded into ~29 small ops by ORT).
        const [n, c] = t.shape;
        const groups = a.groups as number;
        const normed = tmp();
        emit('InstanceNormalization', [reshapeTo(ins[0], [n, groups, -1]), constF(new Array(groups).fill(1), t.dtype), constF(new Array(groups).fill(0), t.dtype)], normed, [attrFloat('epsilon', a.eps)]);
        const affine = [c, ...t.shape.slice(2).map(() => 1)];
        const scaled = tmp();
        emit('Mul', [reshapeTo(normed, t.shape), reshapeTo(ins[1], affine)], scaled);
        emit('Add', [scaled, reshapeTo(ins[2], affine)], name);
        break;
      }
      case 'mha':
        lowerAttention(t, ins, name);
        break;
      case 'cast':
        emit('Cast', ins, name, [attrInt('to', ELEM[t.dtype])]);
        break;
      case 'conv':
      case 'convT': {
        const w = t.inputs[1].shape;
        const attrs = [
          attrInts('kernel_shape', [w[2], w[3]]),
          attrInts('strides', [a.stride, a.stride]),
          attrInts('pads', [a.pad, a.pad, a.pad, a.pad]),
          attrInts('dilations', [a.dilation, a.dilation]),
          attrInt('group', a.groups),
        ];
        if (t.op === 'convT' && a.stride === 1 && a.groups === 1 && isInit(t.inputs[1])) {
          // Stride 1: the transposed convolution is a plain Conv with the kernel transposed
          // and flipped, padded by dilation·(k−1) − pad (plus output_padding at the end). The
          // kernel is flipped by a MatMul with the k·k reversal matrix and transposed, both
          // folded once at session creation (a Slice with step −1 folded ~10 s slower on the
          // UNet). Measured with one thread on the TI train step: backward convs ~1.35× faster
          // than ORT's ConvTranspose, the whole step ~7 %; costs ~0.5 GB of folded kernels.
          const [kh, kw] = [w[2], w[3]];
          const ph = a.dilation * (kh - 1) - a.pad, pw = a.dilation * (kw - 1) - a.pad;
          if (ph >= 0 && pw >= 0) {
            const [co, ci] = w;
            let kernel = ins[1];
            if (kh * kw > 1) {
              const rev = new Array<number>(kh * kw * kh * kw).fill(0);
              for (let i = 0; i < kh * kw; i++) rev[i * kh * kw + (kh * kw - 1 - i)] = 1;
              const flat = tmp();
              emit('MatMul', [reshapeTo(ins[1], [co * ci, kh * kw]), constF(rev, t.dtype, [kh * kw, kh * kw])], flat);
              kernel = reshapeTo(flat, w);
            }
            const wt = tmp();
            emit('Transpose', [kernel], wt, [attrInts('perm', [1, 0, 2, 3])]);
            emit('Conv', [ins[0], wt], name, [
              attrInts('kernel_shape', [kh, kw]),
              attrInts('pads', [ph, pw, ph + a.outputPadding[0], pw + a.outputPadding[1]]),
              attrInts('dilations', [a.dilation, a.dilation]),
            ]);
            break;
          }
        }
        if (t.op === 'convT') attrs.push(attrInts('output_padding', a.outputPadding));
        emit(t.op === 'conv' ? 'Conv' : 'ConvTranspose', ins, name, attrs);
        break;
      }
      case 'resize':
        emit('Resize', [ins[0], '', '', constI64(t.shape)], name, [
          attrString('mode', 'nearest'),
          attrString('coordinate_transformation_mode', 'asymmetric'),
          attrString('nearest_mode', 'floor'),
        ]);
        break;
      case 'reduceSum':
      case 'reduceMean':
      case 'reduceMax': {
        const op = { reduceSum: 'ReduceSum', reduceMean: 'ReduceMean', reduceMax: 'ReduceMax' }[t.op as 'reduceSum'];
        emit(op, [ins[0], constI64(a.axes)], name, [attrInt('keepdims', a.keepDims ? 1 : 0)]);
        break;
      }
      case 'reshape':
        emit('Reshape', [ins[0], constI64(t.shape)], name);
        break;
      case 'expand':
        emit('Expand', [ins[0], constI64(t.shape)], name);
        break;
      case 'transpose':
        emit('Transpose', ins, name, [attrInts('perm', a.perm)]);
        break;
      case 'concat':
        emit('Concat', ins, name, [attrInt('axis', a.axis)]);
        break;
      case 'slice':
        emit('Slice', [ins[0], constI64(a.starts), constI64(a.ends), constI64(a.axes)], name);
        break;
      case 'pad': {
        const pads = a.pads as number[][];
        emit('Pad', [ins[0], constI64([...pads.map((p) => p[0]), ...pads.map((p) => p[1])])], name, [attrString('mode', 'constant')]);
        break;
      }
      case 'scatterAdd': {
        const zeros = `z${aux++}`;
        const zero = tensorProto('value', t.dtype, [1], t.dtype === 'float64' ? new Float64Array(1) : new Float32Array(1));
        emit('ConstantOfShape', [constI64(t.shape)], zeros, [attrTensor('value', zero)]);
        const idx = `i${aux++}`;
        emit('Reshape', [ins[0], constI64([...t.inputs[0].shape, 1])], idx);
        emit('ScatterND', [zeros, idx, ins[1]], name, [attrString('reduction', 'add')]);
        break;
      }
      default: {
        const op = SIMPLE[t.op];
        if (!op) throw new GraphError(`exportOnnx: op "${t.op}" has no ONNX lowering`);
        emit(op, ins, name);
      }
    }
  }
  const outputInfos: ValueInfoProto[] = [];
  for (const [oname, t] of outs) {
    if (nameOf.get(t.id) !== oname) emit('Identity', [nameOf.get(t.id)!], oname);
    outputInfos.push(valueInfo(oname, t.dtype, t.shape));
  }
  const model = create(ModelProtoSchema, {
    irVersion: 9n,
    producerName: 'oneword',
    opsetImport: [
      create(OperatorSetIdProtoSchema, { domain: '', version: BigInt(OPSET) }),
      ...(usesMs ? [create(OperatorSetIdProtoSchema, { domain: MS, version: 1n })] : []),
    ],
    graph: create(GraphProtoSchema, { name: 'oneword', node: nodes, initializer: inits, input: inputs, output: outputInfos }),
  });
  const bytes = toBinary(ModelProtoSchema, model);
  return { bytes, weightFeeds, inputs: inputList, outputNames: outs.map(([n]) => n), externalRoot, externalFiles: [...externalFiles].sort() };
}
