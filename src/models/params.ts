// Named access to a component's frozen weights while building a graph. Model code asks
// for diffusers' names ("down_blocks.0.resnets.0.conv1.weight"); each becomes one graph
// weight, read lazily and shared by every graph built from the same weight set.
import { Graph, GraphError, Tensor, type WeightData } from '../graph/index.ts';
import type { WeightSet } from '../io/weights.ts';

export type { WeightSet };

const hostCache = new WeakMap<WeightSet, Map<string, Float32Array>>();

/** Reads a weight once per weight set, so several sessions feed the same memory. */
function cachedRead(set: WeightSet, name: string): Float32Array {
  let m = hostCache.get(set);
  if (!m) hostCache.set(set, (m = new Map()));
  let v = m.get(name);
  if (!v) m.set(name, (v = set.float32(name)));
  return v;
}

export class Params {
  private readonly made: Map<string, Tensor>;
  constructor(
    readonly graph: Graph,
    readonly set: WeightSet,
    /** Prefix of graph weight names, keeping components apart in one graph. */
    readonly tag: string,
    readonly prefix = '',
    made?: Map<string, Tensor>,
  ) {
    this.made = made ?? new Map();
  }

  scope(name: string): Params {
    return new Params(this.graph, this.set, this.tag, `${this.prefix}${name}.`, this.made);
  }

  has(name: string): boolean {
    return this.set.has(this.prefix + name);
  }

  /** The weight `name`; `shape` (if given) must match, or be a 1×1-conv form of it. */
  get(name: string, shape?: readonly number[]): Tensor {
    const full = this.prefix + name;
    const hit = this.made.get(full);
    if (hit) return hit;
    if (!this.set.has(full)) throw new GraphError(`missing weight "${full}"`);
    let stored = this.set.shape(full);
    if (shape && stored.join() !== shape.join()) {
      // LDM checkpoints store some linear layers as 1×1 convs; the values are the same.
      const squeezed = stored.length === 4 && stored[2] === 1 && stored[3] === 1 ? stored.slice(0, 2) : stored;
      if (squeezed.join() !== shape.join()) {
        throw new GraphError(`weight "${full}" has shape [${stored.join(', ')}], expected [${shape.join(', ')}]`);
      }
      stored = [...shape];
    }
    const set = this.set;
    const loc = set.fileLocation(full);
    const read = () => cachedRead(set, full);
    const data: WeightData = loc ? { kind: 'file', ...loc, read } : { kind: 'lazy', read };
    const t = this.graph.weight(`${this.tag}${full}`, stored, data);
    this.made.set(full, t);
    return t;
  }
}
