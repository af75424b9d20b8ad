// Euler sampler in the k-diffusion (sigma) parameterisation (Karras et al. 2022, Alg. 2),
// optionally on Karras noise levels. Mirrors diffusers' EulerDiscreteScheduler.

import {
  type NoiseSource, type Scheduler, alphasCumprodOf, checkSameLength, f32, karrasSigmas, makeBetas, npArange,
  npInterpIndex, npLinspace, perItem, roundHalfEven, sigmaToT, sigmasFromAlphasCumprod,
} from './common.ts';
import { type BaseSchedulerConfig, type RawSchedulerConfig, checkOneOf, resolveConfig } from './config.ts';
import { sleefLogf } from './sleef-f32.ts';

export interface EulerConfig extends BaseSchedulerConfig {
  interpolation_type: 'linear';
  use_karras_sigmas: boolean;
  sigma_min: number | null;
  sigma_max: number | null;
  timestep_type: 'discrete' | 'continuous';
}

export const EULER_DEFAULTS: EulerConfig = {
  num_train_timesteps: 1000,
  beta_start: 0.0001,
  beta_end: 0.02,
  beta_schedule: 'linear',
  trained_betas: null,
  prediction_type: 'epsilon',
  interpolation_type: 'linear',
  use_karras_sigmas: false,
  sigma_min: null,
  sigma_max: null,
  timestep_spacing: 'linspace',
  timestep_type: 'discrete',
  steps_offset: 0,
  rescale_betas_zero_snr: false,
};

/** Stochastic "churn" of Karras et al.; all off by default (plain Euler). */
export interface EulerOptions {
  sChurn?: number;
  sTmin?: number;
  sTmax?: number;
  sNoise?: number;
}

/** The float32 timestep grid Euler-type schedulers build (descending). */
export function eulerTimesteps(cfg: BaseSchedulerConfig, n: number, className: string): number[] {
  const T = cfg.num_train_timesteps;
  if (!(Number.isInteger(n) && n > 0)) throw new Error(`${className}: num_inference_steps must be a positive integer, got ${n}`);
  if (cfg.timestep_spacing === 'linspace') return npLinspace(0, T - 1, n).map(f32).reverse();
  if (cfg.timestep_spacing === 'leading') {
    const ratio = Math.floor(T / n);
    return Array.from({ length: n }, (_, i) => (n - 1 - i) * ratio + cfg.steps_offset);
  }
  if (cfg.timestep_spacing === 'trailing') return npArange(T, 0, -(T / n)).map((v) => roundHalfEven(v) - 1);
  throw new Error(`${className}: timestep_spacing "${cfg.timestep_spacing}" is not supported (use leading, linspace or trailing)`);
}

/**
 * Step bookkeeping shared by the sigma-based schedulers: the step index starts at the
 * position of the first timestep seen (the second match if it occurs twice, as in
 * diffusers, so img2img starting mid-grid lands right), or at an explicit begin index.
 */
export abstract class SigmaScheduler {
  abstract readonly timesteps: readonly number[];
  abstract readonly sigmas: Float32Array | null;
  protected stepIdx: number | null = null;
  protected beginIdx: number | null = null;
  protected abstract readonly className: string;

  get stepIndex(): number | null { return this.stepIdx; }
  /** Start the next run at this grid position (diffusers' set_begin_index, for img2img). */
  setBeginIndex(i: number): void { this.beginIdx = i; }

  indexForTimestep(t: number): number {
    const hits: number[] = [];
    this.timesteps.forEach((v, i) => { if (v === t) hits.push(i); });
    if (hits.length === 0) return this.missingTimestep(t);
    return hits.length > 1 ? hits[1] : hits[0];
  }

  protected missingTimestep(t: number): number {
    throw new Error(`${this.className}: timestep ${t} is not in the schedule (pass one of scheduler.timesteps)`);
  }

  protected initStepIndex(t: number): number {
    if (this.stepIdx === null) this.stepIdx = this.beginIdx ?? this.indexForTimestep(t);
    return this.stepIdx;
  }

  /** x + sigma(t) * noise, per batch item. */
  addNoise(original: Float32Array, noise: Float32Array, timesteps: number | readonly number[]): Float32Array {
    if (noise.length !== original.length) throw new Error(`addNoise: noise has ${noise.length} values, sample ${original.length}`);
    const { ts, per } = perItem(original.length, timesteps);
    const out = new Float32Array(original.length);
    ts.forEach((t, b) => {
      const idx = this.beginIdx === null ? this.indexForTimestep(t) : this.stepIdx ?? this.beginIdx;
      const sigma = this.sigmas![idx];
      for (let i = b * per; i < (b + 1) * per; i++) out[i] = original[i] + f32(noise[i] * sigma);
    });
    return out;
  }
}

const NAME = 'EulerDiscreteScheduler';

export class EulerDiscreteScheduler extends SigmaScheduler implements Scheduler {
  readonly kind = 'euler';
  readonly config: EulerConfig;
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  readonly order = 1;
  protected readonly className = NAME;
  timesteps: number[];
  sigmas: Float32Array;
  readonly options: Required<EulerOptions>;
  numInferenceSteps: number | null = null;

  constructor(config?: RawSchedulerConfig, overrides: Partial<EulerConfig> = {}, options: EulerOptions = {}) {
    super();
    this.config = resolveConfig(NAME, EULER_DEFAULTS, config, overrides);
    checkOneOf(NAME, 'prediction_type', this.config.prediction_type, ['epsilon', 'v_prediction', 'sample']);
    checkOneOf(NAME, 'interpolation_type', this.config.interpolation_type, ['linear']);
    checkOneOf(NAME, 'timestep_type', this.config.timestep_type, ['discrete', 'continuous']);
    this.betas = makeBetas(this.config, NAME);
    this.alphasCumprod = alphasCumprodOf(this.betas);
    // Zero terminal SNR would make the last sigma infinite; diffusers pins acp to 2^-24.
    if (this.config.rescale_betas_zero_snr) this.alphasCumprod[this.alphasCumprod.length - 1] = 2 ** -24;
    this.options = { sChurn: 0, sTmin: 0, sTmax: Infinity, sNoise: 1, ...options };
    // Before setTimesteps: the full training grid, as diffusers initialises it.
    const full = sigmasFromAlphasCumprod(this.alphasCumprod).reverse();
    this.sigmas = Float32Array.from([...full, 0]);
    this.timesteps = npLinspace(0, this.config.num_train_timesteps - 1, this.config.num_train_timesteps).map(f32).reverse();
  }

  get predictionType() { return this.config.prediction_type; }
  get numTrainTimesteps() { return this.config.num_train_timesteps; }

  get initNoiseSigma(): number {
    let max = 0;
    for (const s of this.sigmas) max = Math.max(max, s);
    if (this.config.timestep_spacing === 'linspace' || this.config.timestep_spacing === 'trailing') return max;
    return f32(Math.sqrt(f32(f32(max * max) + 1)));
  }

  setTimesteps(n: number): void {
    const cfg = this.config;
    let timesteps = eulerTimesteps(cfg, n, NAME);
    const table = sigmasFromAlphasCumprod(this.alphasCumprod);
    const logSigmas = table.map((s) => f32(Math.log(s)));
    let sigmas = timesteps.map((t) => npInterpIndex(t, table));
    if (cfg.use_karras_sigmas) {
      sigmas = karrasSigmas(cfg.sigma_min ?? sigmas[sigmas.length - 1], cfg.sigma_max ?? sigmas[0], n);
      timesteps = sigmas.map((s) => f32(sigmaToT(s, logSigmas)));
    }
    const s32 = Float32Array.from(sigmas);
    if (cfg.timestep_type === 'continuous' && cfg.prediction_type === 'v_prediction') {
      timesteps = Array.from(s32, (s) => f32(0.25 * sleefLogf(s)));
    }
    this.timesteps = timesteps;
    this.sigmas = Float32Array.from([...s32, 0]);
    this.numInferenceSteps = n;
    this.stepIdx = null;
    this.beginIdx = null;
  }

  scaleModelInput(sample: Float32Array, t: number): Float32Array {
    const sigma = this.sigmas[this.initStepIndex(t)];
    const d = f32(Math.sqrt(f32(f32(sigma * sigma) + 1)));
    return sample.map((x) => x / d);
  }

  step(modelOutput: Float32Array, t: number, sample: Float32Array, noise?: NoiseSource): Float32Array {
    checkSameLength(NAME, modelOutput, sample);
    const i = this.initStepIndex(t);
    const sigma = this.sigmas[i];
    const { sChurn, sTmin, sTmax, sNoise } = this.options;
    const gamma = sTmin <= sigma && sigma <= sTmax ? Math.min(sChurn / (this.sigmas.length - 1), 2 ** 0.5 - 1) : 0;
    const sigmaHat = f32(sigma * f32(gamma + 1));
    let x = sample;
    if (gamma > 0) {
      if (!noise) throw new Error(`${NAME}.step: s_churn > 0 needs a noise source`);
      const z = noise.randn(sample.length);
      const s = f32(Math.sqrt(f32(f32(sigmaHat * sigmaHat) - f32(sigma * sigma))));
      x = sample.map((v, k) => v + f32(f32(z[k] * sNoise) * s));
    }
    const dt = f32(this.sigmas[i + 1] - sigmaHat);
    const pt = this.config.prediction_type;
    const vCoeff = f32(-sigma / f32(Math.sqrt(f32(f32(sigma * sigma) + 1))));
    const vDiv = f32(f32(sigma * sigma) + 1);
    const out = new Float32Array(x.length);
    for (let k = 0; k < x.length; k++) {
      const xk = x[k];
      const m = modelOutput[k];
      const x0 = pt === 'epsilon' ? f32(xk - f32(sigmaHat * m))
        : pt === 'v_prediction' ? f32(f32(m * vCoeff) + f32(xk / vDiv))
        : m;
      const derivative = f32(f32(xk - x0) / sigmaHat);
      out[k] = xk + f32(derivative * dt);
    }
    this.stepIdx = i + 1;
    return out;
  }
}
