// Runs a compiled train-step graph and applies AdamW (and an EMA of the weights) in TS.
// Checkpoints hold weights, optimiser moments and the EMA, so a run resumes bit-exactly.
import { existsSync } from 'node:fs';
import { adamWState, adamWStep, clipGradNorm, type AdamWState } from '../optim/adamw.ts';
import { compile, type CompiledGraph, type Feed } from '../runtime/session.ts';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../io/safetensors.ts';
import { ParamStore } from './params.ts';
import type { StepGraph } from './graphs.ts';

export interface OptimConfig {
  lr: number;
  warmupSteps: number;
  totalSteps: number;
  /** The cosine schedule ends at lr · minLrFrac. */
  minLrFrac: number;
  /** Decoupled weight decay for matrices and conv kernels (not norms, biases, embeddings). */
  weightDecay: number;
  beta1: number;
  beta2: number;
  clipNorm: number;
  /** EMA decay of the weights (0 = no EMA); warmed up as min(decay, (1+s)/(10+s)). */
  emaDecay: number;
}

export function learningRate(c: OptimConfig, step: number): number {
  if (step < c.warmupSteps) return (c.lr * (step + 1)) / c.warmupSteps;
  const p = Math.min(1, (step - c.warmupSteps) / Math.max(1, c.totalSteps - c.warmupSteps));
  return c.lr * (c.minLrFrac + (1 - c.minLrFrac) * 0.5 * (1 + Math.cos(Math.PI * p)));
}

export interface StepResult {
  loss: number;
  extras: Record<string, number>;
  gradNorm: number;
  lr: number;
}

interface Slot {
  input: string;
  store: ParamStore;
  name: string;
  state: AdamWState;
  decay: boolean;
  ema: Float32Array | null;
}

export class Trainer {
  step = 0;
  private readonly slots: Slot[];

  private constructor(readonly graph: StepGraph, readonly compiled: CompiledGraph, readonly optim: OptimConfig) {
    this.slots = graph.weights.map((w) => {
      const t = w.store.get(w.name);
      const isMatrix = t.shape.length >= 2 && !/embedding/.test(w.name);
      return {
        ...w,
        state: adamWState(t.data.length),
        decay: isMatrix,
        ema: optim.emaDecay > 0 ? Float32Array.from(t.data) : null,
      };
    });
  }

  static async create(graph: StepGraph, optim: OptimConfig, threads?: number): Promise<Trainer> {
    const compiled = await compile(graph.outputs, { weights: 'feed', threads });
    return new Trainer(graph, compiled, optim);
  }

  /** One optimiser step on a batch (`data`: the graph's data inputs by name). */
  async trainStep(data: Record<string, Feed>): Promise<StepResult> {
    const feeds: Record<string, Feed> = { ...data };
    for (const s of this.slots) feeds[s.input] = s.store.get(s.name).data;
    const out = await this.compiled.run(feeds);
    const loss = (out.loss as Float32Array)[0];
    const extras: Record<string, number> = {};
    for (const k of Object.keys(this.graph.outputs)) if (k !== 'loss' && !k.startsWith('grad:')) extras[k] = (out[k] as Float32Array)[0];
    const grads = this.slots.map((s) => out[`grad:${s.input}`] as Float32Array);
    if (!Number.isFinite(loss)) throw new Error(`training diverged at step ${this.step}: loss ${loss}`);
    const gradNorm = clipGradNorm(grads, this.optim.clipNorm);
    const lr = learningRate(this.optim, this.step);
    const o = this.optim;
    this.slots.forEach((s, i) => {
      adamWStep(s.store.get(s.name).data, grads[i], s.state, {
        lr, beta1: o.beta1, beta2: o.beta2, eps: 1e-8, weightDecay: s.decay ? o.weightDecay : 0,
      });
    });
    this.step += 1;
    if (o.emaDecay > 0) {
      const d = Math.min(o.emaDecay, (1 + this.step) / (10 + this.step));
      for (const s of this.slots) {
        const w = s.store.get(s.name).data;
        const e = s.ema!;
        for (let k = 0; k < w.length; k++) e[k] += (1 - d) * (w[k] - e[k]);
      }
    }
    return { loss, extras, gradNorm, lr };
  }

  /** Stores with the EMA weights (or copies of the live weights when there is no EMA). */
  emaStores(): Map<ParamStore, ParamStore> {
    const out = new Map<ParamStore, ParamStore>();
    for (const s of this.slots) {
      let e = out.get(s.store);
      if (!e) out.set(s.store, (e = s.store.clone()));
      if (s.ema) e.get(s.name).data.set(s.ema);
    }
    return out;
  }

  saveCheckpoint(path: string, meta: Record<string, string> = {}): void {
    const t: Record<string, TensorToWrite> = {};
    for (const s of this.slots) {
      const w = s.store.get(s.name);
      t[`param/${s.input}`] = { dtype: 'F32', shape: w.shape, data: w.data };
      t[`adam_m/${s.input}`] = { dtype: 'F32', shape: w.shape, data: s.state.m };
      t[`adam_v/${s.input}`] = { dtype: 'F32', shape: w.shape, data: s.state.v };
      if (s.ema) t[`ema/${s.input}`] = { dtype: 'F32', shape: w.shape, data: s.ema };
    }
    writeSafetensors(path, t, { ...meta, step: String(this.step) });
  }

  /** Restores weights, moments, EMA and the step counter; returns the checkpoint's metadata. */
  loadCheckpoint(path: string): Record<string, string> {
    if (!existsSync(path)) throw new Error(`no checkpoint at ${path}`);
    const f = SafetensorsFile.open(path);
    for (const s of this.slots) {
      s.store.get(s.name).data.set(f.readFloat32(`param/${s.input}`));
      s.state.m.set(f.readFloat32(`adam_m/${s.input}`));
      s.state.v.set(f.readFloat32(`adam_v/${s.input}`));
      if (s.ema) s.ema.set(f.readFloat32(`ema/${s.input}`));
    }
    this.step = Number(f.metadata.step);
    for (const s of this.slots) s.state.step = this.step;
    return f.metadata;
  }
}
