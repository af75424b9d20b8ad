// Trainable weights for oneword's own model: a store of named float32 arrays (diffusers
// names) and a Params view over it whose weights become graph *inputs*, so one compiled
// train-step graph serves every step while the optimiser updates the arrays in TS.
import { Graph, GraphError, Tensor } from '../graph/index.ts';
import { Params, type WeightSet } from '../models/params.ts';

export interface StoredTensor {
  shape: number[];
  data: Float32Array;
}

/** Named float32 tensors (one component, diffusers names), in a fixed (insertion) order. */
export class ParamStore implements WeightSet {
  readonly tensors = new Map<string, StoredTensor>();

  static fromSpec(spec: Map<string, number[]>, init: (name: string, shape: number[]) => Float32Array): ParamStore {
    const s = new ParamStore();
    for (const [name, shape] of spec) s.set(name, shape, init(name, shape));
    return s;
  }

  set(name: string, shape: readonly number[], data: Float32Array): void {
    const n = shape.reduce((a, b) => a * b, 1);
    if (data.length !== n) throw new GraphError(`ParamStore: ${data.length} values for "${name}" of shape [${shape.join(', ')}]`);
    this.tensors.set(name, { shape: [...shape], data });
  }

  get(name: string): StoredTensor {
    const t = this.tensors.get(name);
    if (!t) throw new GraphError(`ParamStore: no tensor "${name}"`);
    return t;
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }
  shape(name: string): number[] {
    return this.get(name).shape;
  }
  float32(name: string): Float32Array {
    return this.get(name).data;
  }
  fileLocation(): null {
    return null;
  }

  /** Total number of scalars. */
  get size(): number {
    let n = 0;
    for (const t of this.tensors.values()) n += t.data.length;
    return n;
  }

  /** A deep copy (e.g. the EMA shadow). */
  clone(): ParamStore {
    const s = new ParamStore();
    for (const [k, t] of this.tensors) s.set(k, t.shape, Float32Array.from(t.data));
    return s;
  }

  /** Copies values from another store with the same names and shapes. */
  copyFrom(other: ParamStore): void {
    for (const [k, t] of this.tensors) t.data.set(other.get(k).data);
  }
}

/**
 * A Params whose weights are graph inputs named `${tag}${name}`. The model code (clip-text.ts,
 * unet.ts, vae.ts) runs unchanged on it; `used()` lists the inputs it created, in creation
 * order, so the trainer can ask `grad(loss, used)` and feed the store's arrays every step.
 */
export class TrainParams extends Params {
  private readonly inputs: Map<string, Tensor>;

  constructor(graph: Graph, readonly store: ParamStore, tag: string, prefix = '', inputs?: Map<string, Tensor>) {
    super(graph, store, tag, prefix);
    this.inputs = inputs ?? new Map();
  }

  override scope(name: string): Params {
    return new TrainParams(this.graph, this.store, this.tag, `${this.prefix}${name}.`, this.inputs);
  }

  override has(name: string): boolean {
    return this.store.has(this.prefix + name);
  }

  override get(name: string, shape?: readonly number[]): Tensor {
    const full = this.prefix + name;
    const hit = this.inputs.get(full);
    if (hit) return hit;
    if (!this.store.has(full)) throw new GraphError(`missing weight "${full}"`);
    const stored = this.store.shape(full);
    if (shape && stored.join() !== shape.join()) {
      throw new GraphError(`weight "${full}" has shape [${stored.join(', ')}], expected [${shape.join(', ')}]`);
    }
    const t = this.graph.input(`${this.tag}${full}`, stored, 'float32');
    this.inputs.set(full, t);
    return t;
  }

  /** Store names and graph tensors of every weight the built graph uses. */
  used(): Array<{ name: string; input: string; tensor: Tensor }> {
    return [...this.inputs].map(([name, tensor]) => ({ name, input: `${this.tag}${name}`, tensor }));
  }
}
