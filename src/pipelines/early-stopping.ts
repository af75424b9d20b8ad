// When to stop textual inversion, and which saved step to use.
//
// The training loss cannot tell: every step draws new images, noise, timesteps and
// captions, so its noise hides the trend. DVAR (Voronov et al., NeurIPS 2023, "Is This
// Loss Informative?") draws ONE evaluation batch at the start and computes the plain
// denoising loss on it as training goes: that number depends on the embedding alone.
// Training stops when its recent values stop moving compared with its whole history:
//   Var(last `window` values) / Var(all values so far) < eps.
import { OnewordError } from '../errors.ts';

export type StopMode = 'fixed' | 'auto';
export type KeepMode = 'best' | 'last' | 'all';
export type InitMode = 'tokens' | 'encoder';

export interface StoppingOptions {
  /** fixed: train `steps` steps; auto: stop early when the deterministic loss settles (DVAR). */
  stop: StopMode;
  /** DVAR's window, in steps. */
  stopWindow: number;
  /** DVAR's threshold on the variance ratio. */
  stopEps: number;
  /** Compute the deterministic loss every N steps; 0 = only at saved steps; null = the mode's default. */
  evalEvery: number | null;
  /** Which embeddings remain in the output folder at the end. */
  keep: KeepMode;
}

/**
 * The paper's settings for textual inversion (window 310, eps 0.15). The deterministic
 * loss costs a forward pass over a step's worth of samples: 0.42 of a train step's CPU
 * time on the shapes model (batch 4, one thread). Every step would add 42 %; every
 * EVAL_EVERY_AUTO = 5 steps adds 8 %, and the ratio of variances barely changes when the
 * sequence is thinned (the window stays 310 steps, read as 62 evaluations).
 */
export const STOPPING_DEFAULTS: StoppingOptions = { stop: 'fixed', stopWindow: 310, stopEps: 0.15, evalEvery: null, keep: 'last' };
export const EVAL_EVERY_AUTO = 5;

/** The evaluation interval in force: the given one, else EVAL_EVERY_AUTO for auto and 0 for fixed. */
export function evalInterval(o: Pick<StoppingOptions, 'stop' | 'evalEvery'>): number {
  return o.evalEvery ?? (o.stop === 'auto' ? EVAL_EVERY_AUTO : 0);
}

/** DVAR's window in evaluations (the window is given in steps). */
export function windowValues(o: Pick<StoppingOptions, 'stop' | 'evalEvery' | 'stopWindow'>): number {
  return Math.max(2, Math.ceil(o.stopWindow / Math.max(1, evalInterval(o))));
}

export function checkStoppingOptions(o: StoppingOptions & { initMode: InitMode; initPull: number }): void {
  const bad = (option: string, problem: string) => OnewordError.badOption(option, problem);
  if (o.stop !== 'fixed' && o.stop !== 'auto') throw bad('stop', `must be fixed or auto, got "${o.stop}"`);
  if (!Number.isInteger(o.stopWindow) || o.stopWindow < 2) throw bad('stopWindow', `must be a whole number ≥ 2, got ${o.stopWindow}`);
  if (!(o.stopEps > 0 && o.stopEps < 1)) throw bad('stopEps', `must be between 0 and 1 (exclusive), got ${o.stopEps}`);
  if (o.evalEvery !== null && (!Number.isInteger(o.evalEvery) || o.evalEvery < 0)) throw bad('evalEvery', `must be a whole number ≥ 0, got ${o.evalEvery}`);
  if (o.stop === 'auto' && o.evalEvery === 0) throw bad('evalEvery', 'must be at least 1 with stop auto (the rule needs the loss as training goes)');
  if (o.keep !== 'best' && o.keep !== 'last' && o.keep !== 'all') throw bad('keep', `must be best, last or all, got "${o.keep}"`);
  if (o.initMode !== 'tokens' && o.initMode !== 'encoder') throw bad('initMode', `must be tokens or encoder, got "${o.initMode}"`);
  if (!(o.initPull >= 0 && Number.isFinite(o.initPull))) throw bad('initPull', `must be a number ≥ 0, got ${o.initPull}`);
}

/** Population variance (the paper's Var). */
function variance(xs: readonly number[]): number {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  return xs.reduce((a, x) => a + (x - mean) ** 2, 0) / xs.length;
}

/** Var(last `window` values) / Var(all values); null until there are `window` values or while all are equal. */
export function varianceRatio(values: readonly number[], window: number): number | null {
  if (values.length < window) return null;
  const all = variance(values);
  if (!(all > 0)) return null;
  return variance(values.slice(values.length - window)) / all;
}

/** DVAR's rule: stop once the ratio falls below eps. */
export function shouldStop(values: readonly number[], window: number, eps: number): boolean {
  const r = varianceRatio(values, window);
  return r !== null && r < eps;
}

export interface SavedStep {
  step: number;
  evalLoss: number;
  /** The checkpoint's embedding files (removed by --keep best). */
  files?: string[];
}

export interface Recommendation {
  step: number;
  evalLoss: number;
  reason: string;
}

/**
 * The deterministic losses of one run, kept with the training state so that a resumed run
 * stops where the uninterrupted one would and recommends the same step.
 */
export class StoppingRecord {
  /** The deterministic loss every `evalEvery` steps: DVAR's sequence. */
  history: number[] = [];
  /** Every saved step (checkpoints and the end) with its deterministic loss. */
  saved: SavedStep[] = [];
  /** The saved step with the lowest loss (its vectors, for --keep best). */
  best: (SavedStep & { vectors: Float32Array }) | null = null;
  /** Where and why stop auto ended the run. */
  stoppedAt: { step: number; ratio: number } | null = null;

  addSaved(step: number, evalLoss: number, vectors: Float32Array, files: string[] = []): void {
    if (this.saved.some((s) => s.step === step)) return;
    this.saved.push(files.length ? { step, evalLoss, files } : { step, evalLoss });
    if (!this.best || evalLoss < this.best.evalLoss) this.best = { step, evalLoss, vectors: Float32Array.from(vectors) };
  }

  /** The step to use: where stop auto stopped, else the saved step with the lowest deterministic loss. */
  recommend(o: Pick<StoppingOptions, 'stopWindow' | 'stopEps'>): Recommendation | null {
    const stop = this.stoppedAt;
    if (stop) {
      const at = this.saved.find((s) => s.step === stop.step);
      if (at) {
        return { ...at, reason: `training stopped here: the deterministic loss stopped improving (variance of the last ${o.stopWindow} steps / all steps = ${stop.ratio.toFixed(3)} < ${o.stopEps})` };
      }
    }
    if (!this.best) return null;
    const { step, evalLoss } = this.best;
    const last = this.saved[this.saved.length - 1];
    const why = this.saved.length === 1
      ? 'the only saved step'
      : `lowest deterministic loss of the ${this.saved.length} saved steps${last.step !== step ? ` (the last, step ${last.step}, has ${last.evalLoss.toPrecision(5)})` : ''}`;
    return { step, evalLoss, reason: why };
  }

  /** Records an evaluation step's deterministic loss; with stop auto, returns the variance ratio and marks the stop. */
  observe(step: number, evalLoss: number, o: Pick<StoppingOptions, 'stop' | 'evalEvery' | 'stopWindow' | 'stopEps'>): number | null {
    this.history.push(evalLoss);
    if (o.stop !== 'auto') return null;
    const ratio = varianceRatio(this.history, windowValues(o));
    if (ratio !== null && ratio < o.stopEps && !this.stoppedAt) this.stoppedAt = { step, ratio };
    return ratio;
  }

  /** What a training state stores: a JSON string and, when there is a best step, its vectors. */
  toState(): { json: string; bestVectors: Float32Array | null } {
    const best = this.best ? { step: this.best.step, evalLoss: this.best.evalLoss } : null;
    return { json: JSON.stringify({ history: this.history, saved: this.saved, best, stoppedAt: this.stoppedAt }), bestVectors: this.best?.vectors ?? null };
  }

  static fromState(json: string | undefined, bestVectors: Float32Array | null): StoppingRecord {
    const r = new StoppingRecord();
    if (!json) return r;
    const s = JSON.parse(json) as { history: number[]; saved: SavedStep[]; best: SavedStep | null; stoppedAt: StoppingRecord['stoppedAt'] };
    r.history = s.history;
    r.saved = s.saved;
    r.best = s.best && bestVectors ? { ...s.best, vectors: bestVectors } : null;
    r.stoppedAt = s.stoppedAt;
    return r;
  }
}
