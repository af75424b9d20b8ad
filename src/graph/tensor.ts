// Symbolic tensors. Building ops only records a graph; nothing computes until the
// graph is compiled (runtime/) or interpreted (graph/evaluate.ts).
import { OnewordError } from '../errors.ts';

export type DType = 'float32' | 'float16' | 'float64' | 'int64' | 'bool';
export const DTYPES: readonly DType[] = ['float32', 'float16', 'float64', 'int64', 'bool'];

export type Attrs = Record<string, unknown>;
export type HostArray = Float32Array | Float64Array | BigInt64Array | Uint8Array | Uint16Array;

export function checkDType(dtype: string, where: string): DType {
  if (!(DTYPES as readonly string[]).includes(dtype)) {
    throw new GraphError(`${where}: unknown dtype "${dtype}" (expected one of ${DTYPES.join(', ')})`);
  }
  return dtype as DType;
}

export function isFloat(d: DType): boolean {
  return d === 'float32' || d === 'float16' || d === 'float64';
}

export class GraphError extends OnewordError {
  override name = 'GraphError';
}

/** Where a weight's values come from when the graph runs. */
export type WeightData =
  | { kind: 'memory'; data: HostArray }
  /** Read on first use (e.g. cast from an fp16 checkpoint). */
  | { kind: 'lazy'; read: () => HostArray }
  /** Raw little-endian float32 bytes at `offset` in a file (e.g. inside a .safetensors file). */
  | { kind: 'file'; path: string; offset: number; length: number; read: () => HostArray };

export class Tensor {
  constructor(
    readonly graph: Graph,
    readonly id: number,
    readonly op: string,
    readonly inputs: readonly Tensor[],
    readonly attrs: Attrs,
    readonly shape: readonly number[],
    readonly dtype: DType,
  ) {}

  get rank(): number {
    return this.shape.length;
  }
  get size(): number {
    return numel(this.shape);
  }
  toString(): string {
    return `${this.op}#${this.id}[${this.shape.join(',')}]:${this.dtype}`;
  }
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export class Graph {
  readonly tensors: Tensor[] = [];
  private readonly names = new Set<string>();

  /** Records a node; only ops.ts and the leaf constructors below call this. */
  node(op: string, inputs: readonly Tensor[], attrs: Attrs, shape: readonly number[], dtype: DType): Tensor {
    for (const x of inputs) {
      if (x.graph !== this) throw new GraphError(`${op}: input ${x} belongs to another graph`);
    }
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw new GraphError(`${op}: invalid output shape [${shape.join(', ')}]`);
    }
    const t = new Tensor(this, this.tensors.length, op, inputs, attrs, [...shape], dtype);
    this.tensors.push(t);
    return t;
  }

  private claim(name: string, kind: string): void {
    if (!/^[A-Za-z_][\w.\-/:]*$/.test(name)) throw new GraphError(`${kind}: invalid name "${name}"`);
    if (this.names.has(name)) throw new GraphError(`${kind}: name "${name}" is already used in this graph`);
    this.names.add(name);
  }

  /** A value fed at run time. */
  input(name: string, shape: readonly number[], dtype: DType = 'float32'): Tensor {
    checkDType(dtype, `input "${name}"`);
    this.claim(name, 'input');
    return this.node('input', [], { name }, shape, dtype);
  }

  /** A frozen parameter: stays constant across runs, may be large. */
  weight(name: string, shape: readonly number[], data: WeightData, dtype: DType = 'float32'): Tensor {
    checkDType(dtype, `weight "${name}"`);
    this.claim(name, 'weight');
    if (data.kind === 'memory' && data.data.length !== numel(shape)) {
      throw new GraphError(`weight "${name}": ${data.data.length} values for shape [${shape.join(', ')}]`);
    }
    return this.node('weight', [], { name, data }, shape, dtype);
  }

  /** A small constant baked into the graph. */
  constant(values: ArrayLike<number> | HostArray, shape: readonly number[], dtype: DType = 'float32'): Tensor {
    checkDType(dtype, 'constant');
    const n = numel(shape);
    if (values.length !== n) throw new GraphError(`constant: ${values.length} values for shape [${shape.join(', ')}]`);
    return this.node('const', [], { values: toHost(values, dtype) }, shape, dtype);
  }

  scalar(v: number, dtype: DType = 'float32'): Tensor {
    return this.constant([v], [], dtype);
  }
}

export function toHost(values: ArrayLike<number> | HostArray, dtype: DType): HostArray {
  switch (dtype) {
    case 'float32':
      return values instanceof Float32Array ? values : Float32Array.from(values as ArrayLike<number>, Number);
    case 'float64':
      return values instanceof Float64Array ? values : Float64Array.from(values as ArrayLike<number>, Number);
    case 'int64':
      return values instanceof BigInt64Array ? values : BigInt64Array.from(values as ArrayLike<number>, (v) => BigInt(Math.trunc(Number(v))));
    case 'bool':
      return Uint8Array.from(values as ArrayLike<number>, (v) => (v ? 1 : 0));
    case 'float16':
      if (values instanceof Uint16Array) return values;
      throw new GraphError('float16 constants must be given as Uint16Array bit patterns');
  }
}
