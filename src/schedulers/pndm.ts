// PNDM (Liu et al. 2022), the SD 1.x default: pseudo linear multistep (PLMS) updates over
// the last four model outputs, optionally warmed up with Runge-Kutta (PRK) steps. SD
// configs set `skip_prk_steps`, which warms up with one extra model call instead (so the
// grid has n + 1 entries with one timestep repeated). Mirrors diffusers' PNDMScheduler.

import {
  type Scheduler, addNoiseAlpha, alphasCumprodOf, checkSameLength, f32, makeBetas, npArange, npLinspace,
  roundHalfEven,
} from './common.ts';
import { type BaseSchedulerConfig, type RawSchedulerConfig, checkOneOf, resolveConfig } from './config.ts';

export interface PNDMConfig extends Omit<BaseSchedulerConfig, 'rescale_betas_zero_snr'> {
  skip_prk_steps: boolean;
  set_alpha_to_one: boolean;
}

export const PNDM_DEFAULTS: PNDMConfig = {
  num_train_timesteps: 1000,
  beta_start: 0.0001,
  beta_end: 0.02,
  beta_schedule: 'linear',
  trained_betas: null,
  skip_prk_steps: false,
  set_alpha_to_one: false,
  prediction_type: 'epsilon',
  timestep_spacing: 'leading',
  steps_offset: 0,
};

const NAME = 'PNDMScheduler';

export class PNDMScheduler implements Scheduler {
  readonly kind = 'pndm';
  readonly config: PNDMConfig;
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  readonly finalAlphaCumprod: number;
  readonly initNoiseSigma = 1;
  readonly order = 1;
  readonly sigmas = null;
  timesteps: number[] = [];
  prkTimesteps: number[] = [];
  plmsTimesteps: number[] = [];
  numInferenceSteps: number | null = null;
  // Multistep state: past model outputs (`ets`), the PRK accumulator, the sample held over the warm-up.
  private ets: Float32Array[] = [];
  private counter = 0;
  private curModelOutput: Float32Array | null = null;
  private curSample: Float32Array | null = null;

  constructor(config?: RawSchedulerConfig, overrides: Partial<PNDMConfig> = {}) {
    this.config = resolveConfig(NAME, PNDM_DEFAULTS, config, overrides);
    checkOneOf(NAME, 'prediction_type', this.config.prediction_type, ['epsilon', 'v_prediction']);
    this.betas = makeBetas({ ...this.config, rescale_betas_zero_snr: false }, NAME);
    this.alphasCumprod = alphasCumprodOf(this.betas);
    this.finalAlphaCumprod = this.config.set_alpha_to_one ? 1 : this.alphasCumprod[0];
  }

  get predictionType() { return this.config.prediction_type; }
  get numTrainTimesteps() { return this.config.num_train_timesteps; }

  setTimesteps(n: number): void {
    const cfg = this.config;
    const T = cfg.num_train_timesteps;
    if (!(Number.isInteger(n) && n > 0 && n <= T)) throw new Error(`${NAME}: bad num_inference_steps ${n}`);
    this.numInferenceSteps = n;
    // Ascending base grid (PNDM reverses it only at the end).
    let base: number[];
    if (cfg.timestep_spacing === 'linspace') {
      base = npLinspace(0, T - 1, n).map(roundHalfEven);
    } else if (cfg.timestep_spacing === 'leading') {
      const ratio = Math.floor(T / n);
      base = Array.from({ length: n }, (_, i) => i * ratio + cfg.steps_offset);
    } else if (cfg.timestep_spacing === 'trailing') {
      base = npArange(T, 0, -(T / n)).map((v) => roundHalfEven(v) - 1).reverse();
    } else {
      throw new Error(`${NAME}: timestep_spacing "${cfg.timestep_spacing}" is not supported`);
    }
    if (cfg.skip_prk_steps) {
      this.prkTimesteps = [];
      this.plmsTimesteps = [...base.slice(0, -1), base[base.length - 2], base[base.length - 1]].reverse();
    } else {
      const half = Math.floor(Math.floor(T / n) / 2);
      const last4 = base.slice(-4);
      const prk: number[] = [];
      for (const t of last4) prk.push(t, t + half);
      // prk[:-1].repeat(2)[1:-1], reversed
      const rep: number[] = [];
      for (const t of prk.slice(0, -1)) rep.push(t, t);
      this.prkTimesteps = rep.slice(1, -1).reverse();
      this.plmsTimesteps = base.slice(0, -3).reverse();
    }
    this.timesteps = [...this.prkTimesteps, ...this.plmsTimesteps];
    this.ets = [];
    this.counter = 0;
    this.curModelOutput = null;
    this.curSample = null;
  }

  scaleModelInput(sample: Float32Array): Float32Array { return sample; }

  addNoise(original: Float32Array, noise: Float32Array, timesteps: number | readonly number[]): Float32Array {
    return addNoiseAlpha(this.alphasCumprod, original, noise, timesteps);
  }

  step(modelOutput: Float32Array, t: number, sample: Float32Array): Float32Array {
    if (this.numInferenceSteps === null) throw new Error(`${NAME}.step: call setTimesteps first`);
    checkSameLength(NAME, modelOutput, sample);
    if (this.counter < this.prkTimesteps.length && !this.config.skip_prk_steps) return this.stepPrk(modelOutput, t, sample);
    return this.stepPlms(modelOutput, t, sample);
  }

  private stepPrk(modelOutput: Float32Array, t: number, sample: Float32Array): Float32Array {
    const n = this.numInferenceSteps!;
    const diffToPrev = this.counter % 2 ? 0 : Math.floor(Math.floor(this.config.num_train_timesteps / n) / 2);
    const prevT = t - diffToPrev;
    const timestep = this.prkTimesteps[Math.floor(this.counter / 4) * 4];
    const k = this.counter % 4;
    const w6 = f32(1 / 6);
    const w3 = f32(1 / 3);
    let eps = modelOutput;
    if (k === 0) {
      this.curModelOutput = modelOutput.map((m) => f32(w6 * m));
      this.ets.push(modelOutput);
      this.curSample = sample;
    } else if (k === 1 || k === 2) {
      const acc = this.curModelOutput!;
      for (let i = 0; i < acc.length; i++) acc[i] = acc[i] + f32(w3 * modelOutput[i]);
    } else {
      const acc = this.curModelOutput!;
      eps = acc.map((a, i) => a + f32(w6 * modelOutput[i]));
      this.curModelOutput = null;
    }
    const cur = this.curSample ?? sample;
    const prev = this.prevSample(cur, timestep, prevT, eps);
    this.counter++;
    return prev;
  }

  private stepPlms(modelOutput: Float32Array, t: number, sample: Float32Array): Float32Array {
    const n = this.numInferenceSteps!;
    const stride = Math.floor(this.config.num_train_timesteps / n);
    let prevT = t - stride;
    if (!this.config.skip_prk_steps && this.ets.length < 3) {
      throw new Error(`${NAME}: PLMS steps need the PRK warm-up first`);
    }
    if (this.counter !== 1) {
      this.ets = this.ets.slice(-3);
      this.ets.push(modelOutput);
    } else {
      // The warm-up's second call re-evaluates the first step's timestep.
      prevT = t;
      t = t + stride;
    }
    const e = this.ets;
    const L = e.length;
    let eps: Float32Array;
    if (L === 1 && this.counter === 0) {
      eps = modelOutput;
      this.curSample = sample;
    } else if (L === 1 && this.counter === 1) {
      eps = modelOutput.map((m, i) => f32(f32(m + e[0][i]) / 2));
      sample = this.curSample!;
      this.curSample = null;
    } else if (L === 2) {
      eps = e[1].map((a, i) => f32(f32(f32(3 * a) - e[0][i]) / 2));
    } else if (L === 3) {
      eps = e[2].map((a, i) => f32(f32(f32(f32(23 * a) - f32(16 * e[1][i])) + f32(5 * e[0][i])) / 12));
    } else {
      const w = f32(1 / 24);
      eps = e[3].map((a, i) =>
        f32(w * f32(f32(f32(f32(55 * a) - f32(59 * e[2][i])) + f32(37 * e[1][i])) - f32(9 * e[0][i]))));
    }
    const prev = this.prevSample(sample, t, prevT, eps);
    this.counter++;
    return prev;
  }

  /** Formula (9) of the PNDM paper: x_{t-δ} from x_t and the (combined) epsilon. */
  private prevSample(sample: Float32Array, t: number, prevT: number, modelOutput: Float32Array): Float32Array {
    const apt = this.alphasCumprod[t];
    const aptPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    const bpt = f32(1 - apt);
    const bptPrev = f32(1 - aptPrev);
    const sa = f32(Math.sqrt(apt));
    const sb = f32(Math.sqrt(bpt));
    const sampleCoeff = f32(Math.sqrt(f32(aptPrev / apt)));
    const denom = f32(f32(apt * f32(Math.sqrt(bptPrev))) + f32(Math.sqrt(f32(f32(apt * bpt) * aptPrev))));
    const diff = f32(aptPrev - apt);
    const v = this.config.prediction_type === 'v_prediction';
    const out = new Float32Array(sample.length);
    for (let i = 0; i < sample.length; i++) {
      const x = sample[i];
      const eps = v ? f32(f32(sa * modelOutput[i]) + f32(sb * x)) : modelOutput[i];
      out[i] = f32(sampleCoeff * x) - f32(f32(diff * eps) / denom);
    }
    return out;
  }
}
