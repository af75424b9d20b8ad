// Deterministic random weights for an architecture (benchmarks, from-scratch training).
import type { WeightSet, WeightSpec } from '../io/weights.ts';

/** Fills like PyTorch's default init in scale: uniform ±1/√fan_in; norms get weight 1, bias 0. */
export function initWeight(name: string, shape: readonly number[], seed: number): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  const isNorm = /norm/.test(name) && shape.length === 1;
  if (isNorm) {
    if (name.endsWith('.weight')) out.fill(1);
    return out;
  }
  const fanIn = shape.length > 1 ? shape.slice(1).reduce((a, b) => a * b, 1) : shape[0];
  const bound = 1 / Math.sqrt(fanIn);
  let s = (seed ^ hash(name)) >>> 0;
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = (((t ^ (t >>> 14)) >>> 0) / 4294967296 * 2 - 1) * bound;
  }
  return out;
}

function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

export function randomWeightSet(spec: WeightSpec, seed = 0): WeightSet {
  return {
    names: () => [...spec.keys()].sort(),
    has: (n) => spec.has(n),
    shape: (n) => {
      const s = spec.get(n);
      if (!s) throw new Error(`random weights: no tensor "${n}"`);
      return s;
    },
    float32: (n) => initWeight(n, spec.get(n)!, seed),
    fileLocation: () => null,
  };
}
