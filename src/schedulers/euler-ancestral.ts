// Euler ancestral: an Euler step down to sigma_down, then fresh noise of scale sigma_up,
// so that sigma_down^2 + sigma_up^2 = sigma_next^2. Needs a noise source every step.
// Mirrors diffusers' EulerAncestralDiscreteScheduler.

import {
  type NoiseSource, type Scheduler, alphasCumprodOf, checkSameLength, f32, makeBetas, npInterpIndex, npLinspace,
  sigmasFromAlphasCumprod,
} from './common.ts';
import { type BaseSchedulerConfig, type RawSchedulerConfig, checkOneOf, resolveConfig } from './config.ts';
import { SigmaScheduler, eulerTimesteps } from './euler.ts';

export type EulerAncestralConfig = BaseSchedulerConfig;

export const EULER_ANCESTRAL_DEFAULTS: EulerAncestralConfig = {
  num_train_timesteps: 1000,
  beta_start: 0.0001,
  beta_end: 0.02,
  beta_schedule: 'linear',
  trained_betas: null,
  prediction_type: 'epsilon',
  timestep_spacing: 'linspace',
  steps_offset: 0,
  rescale_betas_zero_snr: false,
};

const NAME = 'EulerAncestralDiscreteScheduler';

export class EulerAncestralDiscreteScheduler extends SigmaScheduler implements Scheduler {
  readonly kind = 'euler_a';
  readonly config: EulerAncestralConfig;
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  readonly order = 1;
  protected readonly className = NAME;
  timesteps: number[];
  sigmas: Float32Array;
  numInferenceSteps: number | null = null;

  constructor(config?: RawSchedulerConfig, overrides: Partial<EulerAncestralConfig> = {}) {
    super();
    this.config = resolveConfig(NAME, EULER_ANCESTRAL_DEFAULTS, config, overrides);
    checkOneOf(NAME, 'prediction_type', this.config.prediction_type, ['epsilon', 'v_prediction']);
    this.betas = makeBetas(this.config, NAME);
    this.alphasCumprod = alphasCumprodOf(this.betas);
    if (this.config.rescale_betas_zero_snr) this.alphasCumprod[this.alphasCumprod.length - 1] = 2 ** -24;
    const full = sigmasFromAlphasCumprod(this.alphasCumprod).reverse();
    this.sigmas = Float32Array.from([...full, 0]);
    this.timesteps = npLinspace(0, this.config.num_train_timesteps - 1, this.config.num_train_timesteps).reverse();
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
    this.timesteps = eulerTimesteps(this.config, n, NAME);
    const table = sigmasFromAlphasCumprod(this.alphasCumprod);
    this.sigmas = Float32Array.from([...this.timesteps.map((t) => npInterpIndex(t, table)), 0]);
    this.numInferenceSteps = n;
    this.stepIdx = null;
    this.beginIdx = null;
  }

  scaleModelInput(sample: Float32Array, t: number): Float32Array {
    const sigma = this.sigmas[this.initStepIndex(t)];
    const d = f32(Math.sqrt(f32(f32(sigma * sigma) + 1)));
    return sample.map((x) => x / d);
  }

  /** The split of the next noise level into the deterministic and the fresh-noise part. */
  sigmaUpDown(i: number): { sigmaUp: number; sigmaDown: number } {
    const from = this.sigmas[i];
    const to = this.sigmas[i + 1];
    const from2 = f32(from * from);
    const to2 = f32(to * to);
    const sigmaUp = f32(Math.sqrt(f32(f32(to2 * f32(from2 - to2)) / from2)));
    const sigmaDown = f32(Math.sqrt(f32(to2 - f32(sigmaUp * sigmaUp))));
    return { sigmaUp, sigmaDown };
  }

  step(modelOutput: Float32Array, t: number, sample: Float32Array, noise?: NoiseSource): Float32Array {
    checkSameLength(NAME, modelOutput, sample);
    if (!noise) throw new Error(`${NAME}.step: a noise source is required (ancestral sampling adds noise every step)`);
    const i = this.initStepIndex(t);
    const sigma = this.sigmas[i];
    const { sigmaUp, sigmaDown } = this.sigmaUpDown(i);
    const dt = f32(sigmaDown - sigma);
    const v = this.config.prediction_type === 'v_prediction';
    const vCoeff = f32(-sigma / f32(Math.sqrt(f32(f32(sigma * sigma) + 1))));
    const vDiv = f32(f32(sigma * sigma) + 1);
    const z = noise.randn(sample.length);
    const out = new Float32Array(sample.length);
    for (let k = 0; k < sample.length; k++) {
      const x = sample[k];
      const m = modelOutput[k];
      const x0 = v ? f32(f32(m * vCoeff) + f32(x / vDiv)) : f32(x - f32(sigma * m));
      const derivative = f32(f32(x - x0) / sigma);
      out[k] = f32(x + f32(derivative * dt)) + f32(z[k] * sigmaUp);
    }
    this.stepIdx = i + 1;
    return out;
  }
}
