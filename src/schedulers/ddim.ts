// DDIM (Song et al. 2021): deterministic for eta = 0, adds fresh noise of scale
// eta * sigma_t per step for eta > 0 (eta = 1 is DDPM-like). Mirrors diffusers' DDIMScheduler.

import {
  type NoiseSource, type Scheduler, addNoiseAlpha, alphasCumprodOf, checkSameLength, f32, makeBetas,
  spacedTimesteps, velocityAlpha,
} from './common.ts';
import { type BaseSchedulerConfig, type RawSchedulerConfig, checkOneOf, resolveConfig } from './config.ts';

export interface DDIMConfig extends BaseSchedulerConfig {
  clip_sample: boolean;
  clip_sample_range: number;
  set_alpha_to_one: boolean;
  thresholding: boolean;
  dynamic_thresholding_ratio: number;
  sample_max_value: number;
}

export const DDIM_DEFAULTS: DDIMConfig = {
  num_train_timesteps: 1000,
  beta_start: 0.0001,
  beta_end: 0.02,
  beta_schedule: 'linear',
  trained_betas: null,
  clip_sample: true,
  set_alpha_to_one: true,
  steps_offset: 0,
  prediction_type: 'epsilon',
  thresholding: false,
  dynamic_thresholding_ratio: 0.995,
  clip_sample_range: 1.0,
  sample_max_value: 1.0,
  timestep_spacing: 'leading',
  rescale_betas_zero_snr: false,
};

export interface DDIMOptions {
  /** Weight of the per-step noise (diffusers' `eta` step argument); 0 = deterministic DDIM. */
  eta?: number;
  /** Recompute epsilon from the clipped x0 (diffusers' `use_clipped_model_output`). */
  useClippedModelOutput?: boolean;
}

const NAME = 'DDIMScheduler';

export class DDIMScheduler implements Scheduler {
  readonly kind = 'ddim';
  readonly config: DDIMConfig;
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  /** alphas_cumprod "before" step 0, used by the last step. */
  readonly finalAlphaCumprod: number;
  readonly initNoiseSigma = 1;
  readonly order = 1;
  readonly sigmas = null;
  eta: number;
  useClippedModelOutput: boolean;
  timesteps: number[];
  numInferenceSteps: number | null = null;

  constructor(config?: RawSchedulerConfig, overrides: Partial<DDIMConfig> = {}, options: DDIMOptions = {}) {
    this.config = resolveConfig(NAME, DDIM_DEFAULTS, config, overrides);
    checkOneOf(NAME, 'prediction_type', this.config.prediction_type, ['epsilon', 'v_prediction', 'sample']);
    if (this.config.thresholding) throw new Error(`${NAME}: thresholding is not supported (it is meant for pixel-space models)`);
    this.betas = makeBetas(this.config, NAME);
    this.alphasCumprod = alphasCumprodOf(this.betas);
    this.finalAlphaCumprod = this.config.set_alpha_to_one ? 1 : this.alphasCumprod[0];
    this.eta = options.eta ?? 0;
    if (!(this.eta >= 0)) throw new Error(`${NAME}: eta must be >= 0, got ${this.eta}`);
    this.useClippedModelOutput = options.useClippedModelOutput ?? false;
    this.timesteps = Array.from({ length: this.config.num_train_timesteps }, (_, i) => this.config.num_train_timesteps - 1 - i);
  }

  get predictionType() { return this.config.prediction_type; }
  get numTrainTimesteps() { return this.config.num_train_timesteps; }

  setTimesteps(n: number): void {
    this.timesteps = spacedTimesteps(this.config, n, NAME);
    this.numInferenceSteps = n;
  }

  scaleModelInput(sample: Float32Array): Float32Array { return sample; }

  addNoise(original: Float32Array, noise: Float32Array, timesteps: number | readonly number[]): Float32Array {
    return addNoiseAlpha(this.alphasCumprod, original, noise, timesteps);
  }

  getVelocity(sample: Float32Array, noise: Float32Array, timesteps: number | readonly number[]): Float32Array {
    return velocityAlpha(this.alphasCumprod, sample, noise, timesteps);
  }

  /** The noise standard deviation an eta = 1 step adds going from t to prevT. */
  variance(t: number, prevT: number): number {
    const apt = this.alphasCumprod[t];
    const aptPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    return f32(f32(f32(1 - aptPrev) / f32(1 - apt)) * f32(1 - f32(apt / aptPrev)));
  }

  step(modelOutput: Float32Array, t: number, sample: Float32Array, noise?: NoiseSource): Float32Array {
    if (this.numInferenceSteps === null) throw new Error(`${NAME}.step: call setTimesteps first`);
    checkSameLength(NAME, modelOutput, sample);
    const cfg = this.config;
    // diffusers uses this stride for every timestep_spacing.
    const prevT = t - Math.floor(cfg.num_train_timesteps / this.numInferenceSteps);
    const apt = this.alphasCumprod[t];
    const aptPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    const bpt = f32(1 - apt);
    const sa = f32(Math.sqrt(apt));
    const sb = f32(Math.sqrt(bpt));
    const std = f32(this.eta * f32(Math.sqrt(this.variance(t, prevT))));
    const dirCoeff = f32(Math.sqrt(f32(f32(1 - aptPrev) - f32(std * std))));
    const x0Coeff = f32(Math.sqrt(aptPrev));
    const clip = cfg.clip_sample ? cfg.clip_sample_range : Infinity;
    const n = sample.length;
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const x = sample[i];
      const m = modelOutput[i];
      let x0: number;
      let eps: number;
      if (cfg.prediction_type === 'epsilon') {
        x0 = f32(f32(x - f32(sb * m)) / sa);
        eps = m;
      } else if (cfg.prediction_type === 'v_prediction') {
        x0 = f32(f32(sa * x) - f32(sb * m));
        eps = f32(f32(sa * m) + f32(sb * x));
      } else {
        x0 = m;
        eps = f32(f32(x - f32(sa * x0)) / sb);
      }
      x0 = Math.min(clip, Math.max(-clip, x0));
      if (this.useClippedModelOutput) eps = f32(f32(x - f32(sa * x0)) / sb);
      out[i] = f32(x0Coeff * x0) + f32(dirCoeff * eps);
    }
    if (this.eta > 0) {
      if (!noise) throw new Error(`${NAME}.step: eta > 0 needs a noise source`);
      const z = noise.randn(n);
      for (let i = 0; i < n; i++) out[i] = out[i] + f32(std * z[i]);
    }
    return out;
  }
}
