// DDPM (Ho et al. 2020): the training noise schedule (addNoise, loss targets) and its
// ancestral sampler. Mirrors diffusers' DDPMScheduler.

import {
  type NoiseSource, type Scheduler, addNoiseAlpha, alphasCumprodOf, checkSameLength, f32, makeBetas,
  spacedTimesteps, velocityAlpha,
} from './common.ts';
import { type BaseSchedulerConfig, type RawSchedulerConfig, checkOneOf, resolveConfig } from './config.ts';
import { sleefExpf, sleefLogf } from './sleef-f32.ts';

export type DDPMVarianceType = 'fixed_small' | 'fixed_small_log' | 'fixed_large';

export interface DDPMConfig extends BaseSchedulerConfig {
  variance_type: DDPMVarianceType;
  clip_sample: boolean;
  clip_sample_range: number;
  thresholding: boolean;
  dynamic_thresholding_ratio: number;
  sample_max_value: number;
}

export const DDPM_DEFAULTS: DDPMConfig = {
  num_train_timesteps: 1000,
  beta_start: 0.0001,
  beta_end: 0.02,
  beta_schedule: 'linear',
  trained_betas: null,
  variance_type: 'fixed_small',
  clip_sample: true,
  prediction_type: 'epsilon',
  thresholding: false,
  dynamic_thresholding_ratio: 0.995,
  clip_sample_range: 1.0,
  sample_max_value: 1.0,
  timestep_spacing: 'leading',
  steps_offset: 0,
  rescale_betas_zero_snr: false,
};

const NAME = 'DDPMScheduler';

export class DDPMScheduler implements Scheduler {
  readonly kind = 'ddpm';
  readonly config: DDPMConfig;
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  readonly initNoiseSigma = 1;
  readonly order = 1;
  readonly sigmas = null;
  timesteps: number[];
  numInferenceSteps: number | null = null;

  constructor(config?: RawSchedulerConfig, overrides: Partial<DDPMConfig> = {}) {
    this.config = resolveConfig(NAME, DDPM_DEFAULTS, config, overrides);
    // (fixed_large_log and the learned variants need a variance-predicting UNet; SD has none.)
    checkOneOf(NAME, 'variance_type', this.config.variance_type, ['fixed_small', 'fixed_small_log', 'fixed_large']);
    checkOneOf(NAME, 'prediction_type', this.config.prediction_type, ['epsilon', 'v_prediction', 'sample']);
    if (this.config.thresholding) throw new Error(`${NAME}: thresholding is not supported (it is meant for pixel-space models)`);
    this.betas = makeBetas(this.config, NAME);
    this.alphasCumprod = alphasCumprodOf(this.betas);
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

  /** v-prediction target: sqrt(acp) * noise - sqrt(1 - acp) * sample. */
  getVelocity(sample: Float32Array, noise: Float32Array, timesteps: number | readonly number[]): Float32Array {
    return velocityAlpha(this.alphasCumprod, sample, noise, timesteps);
  }

  /** What the UNet is trained to predict for `x0` noised with `noise` at `timesteps`. */
  trainingTarget(x0: Float32Array, noise: Float32Array, timesteps: number | readonly number[]): Float32Array {
    switch (this.config.prediction_type) {
      case 'epsilon': return noise;
      case 'v_prediction': return this.getVelocity(x0, noise, timesteps);
      case 'sample': return x0;
    }
  }

  private prevTimestep(t: number): number {
    return t - Math.floor(this.config.num_train_timesteps / (this.numInferenceSteps ?? this.config.num_train_timesteps));
  }

  step(modelOutput: Float32Array, t: number, sample: Float32Array, noise?: NoiseSource): Float32Array {
    checkSameLength(NAME, modelOutput, sample);
    const cfg = this.config;
    const prevT = this.prevTimestep(t);
    const apt = this.alphasCumprod[t];
    const aptPrev = prevT >= 0 ? this.alphasCumprod[prevT] : 1;
    const bpt = f32(1 - apt);
    const bptPrev = f32(1 - aptPrev);
    const curAlpha = f32(apt / aptPrev);
    const curBeta = f32(1 - curAlpha);
    const sa = f32(Math.sqrt(apt));
    const sb = f32(Math.sqrt(bpt));
    const x0Coeff = f32(f32(f32(Math.sqrt(aptPrev)) * curBeta) / bpt);
    const xtCoeff = f32(f32(f32(Math.sqrt(curAlpha)) * bptPrev) / bpt);
    const n = sample.length;
    const out = new Float32Array(n);
    const clip = cfg.clip_sample ? cfg.clip_sample_range : Infinity;
    for (let i = 0; i < n; i++) {
      const x = sample[i];
      const m = modelOutput[i];
      let x0: number;
      if (cfg.prediction_type === 'epsilon') x0 = f32(f32(x - f32(sb * m)) / sa);
      else if (cfg.prediction_type === 'v_prediction') x0 = f32(f32(sa * x) - f32(sb * m));
      else x0 = m;
      x0 = Math.min(clip, Math.max(-clip, x0));
      out[i] = f32(x0Coeff * x0) + f32(xtCoeff * x);
    }
    if (t > 0) {
      if (!noise) throw new Error(`${NAME}.step: a noise source is required for t > 0`);
      const z = noise.randn(n);
      let variance = f32(f32(bptPrev / bpt) * curBeta);
      variance = Math.max(variance, f32(1e-20));
      let scale: number;
      switch (cfg.variance_type) {
        case 'fixed_small': scale = f32(Math.sqrt(variance)); break;
        case 'fixed_small_log': scale = sleefExpf(f32(0.5 * sleefLogf(variance))); break;
        case 'fixed_large': scale = f32(Math.sqrt(curBeta)); break;
      }
      for (let i = 0; i < n; i++) out[i] = out[i] + f32(scale * z[i]);
    }
    return out;
  }
}
