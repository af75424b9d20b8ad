// DPM-Solver++ multistep (Lu et al. 2022), the "DPM++ 2M" sampler at solver order 2,
// optionally on Karras noise levels. Works in data (x0) prediction: each model output is
// converted to x0, and the update extrapolates over the last `solver_order` x0 estimates
// in log-SNR (lambda) time. Mirrors diffusers' DPMSolverMultistepScheduler.

import {
  type NoiseSource, type Scheduler, alphasCumprodOf, checkSameLength, f32, karrasSigmas, makeBetas, npArange,
  npInterpIndex, npLinspace, perItem, roundHalfEven, sigmaToT, sigmasFromAlphasCumprod,
} from './common.ts';
import { type BaseSchedulerConfig, type RawSchedulerConfig, checkOneOf, resolveConfig } from './config.ts';
import { SigmaScheduler } from './euler.ts';
import { sleefExpf, sleefLogf } from './sleef-f32.ts';

export type DPMAlgorithm = 'dpmsolver++' | 'sde-dpmsolver++' | 'dpmsolver' | 'sde-dpmsolver';

export interface DPMSolverConfig extends BaseSchedulerConfig {
  solver_order: number;
  thresholding: boolean;
  dynamic_thresholding_ratio: number;
  sample_max_value: number;
  algorithm_type: DPMAlgorithm;
  solver_type: 'midpoint' | 'heun';
  lower_order_final: boolean;
  euler_at_final: boolean;
  use_karras_sigmas: boolean;
  use_lu_lambdas: boolean;
  final_sigmas_type: 'zero' | 'sigma_min';
  lambda_min_clipped: number;
  variance_type: string | null;
}

export const DPM_SOLVER_DEFAULTS: DPMSolverConfig = {
  num_train_timesteps: 1000,
  beta_start: 0.0001,
  beta_end: 0.02,
  beta_schedule: 'linear',
  trained_betas: null,
  solver_order: 2,
  prediction_type: 'epsilon',
  thresholding: false,
  dynamic_thresholding_ratio: 0.995,
  sample_max_value: 1.0,
  algorithm_type: 'dpmsolver++',
  solver_type: 'midpoint',
  lower_order_final: true,
  euler_at_final: false,
  use_karras_sigmas: false,
  use_lu_lambdas: false,
  final_sigmas_type: 'zero',
  lambda_min_clipped: -Infinity,
  variance_type: null,
  timestep_spacing: 'linspace',
  steps_offset: 0,
  rescale_betas_zero_snr: false,
};

const NAME = 'DPMSolverMultistepScheduler';

/** alpha_t, sigma_t (float32) of the VP process at noise level sigma (VE parameterisation). */
function alphaSigma(sigma: number): { alpha: number; sigma: number; lambda: number } {
  const alpha = f32(1 / f32(Math.sqrt(f32(f32(sigma * sigma) + 1))));
  const s = f32(sigma * alpha);
  return { alpha, sigma: s, lambda: f32(sleefLogf(alpha) - sleefLogf(s)) };
}

export class DPMSolverMultistepScheduler extends SigmaScheduler implements Scheduler {
  readonly kind = 'dpmpp2m';
  readonly config: DPMSolverConfig;
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  readonly initNoiseSigma = 1;
  readonly order = 1;
  protected readonly className = NAME;
  timesteps: number[];
  sigmas: Float32Array;
  numInferenceSteps: number | null = null;
  private modelOutputs: (Float32Array | null)[];
  private lowerOrderNums = 0;
  /** float32 lambda_t = log(alpha_t) - log(sigma_t) over the training steps. */
  private readonly lambdaT: Float32Array;

  constructor(config?: RawSchedulerConfig, overrides: Partial<DPMSolverConfig> = {}) {
    super();
    const cfg = (this.config = resolveConfig(NAME, DPM_SOLVER_DEFAULTS, config, overrides));
    checkOneOf(NAME, 'prediction_type', cfg.prediction_type, ['epsilon', 'v_prediction', 'sample']);
    checkOneOf(NAME, 'algorithm_type', cfg.algorithm_type, ['dpmsolver++', 'sde-dpmsolver++', 'dpmsolver', 'sde-dpmsolver']);
    checkOneOf(NAME, 'solver_type', cfg.solver_type, ['midpoint', 'heun']);
    checkOneOf(NAME, 'final_sigmas_type', cfg.final_sigmas_type, ['zero', 'sigma_min']);
    if (![1, 2, 3].includes(cfg.solver_order)) throw new Error(`${NAME}: solver_order must be 1, 2 or 3`);
    if (cfg.thresholding) throw new Error(`${NAME}: thresholding is not supported (it is meant for pixel-space models)`);
    if (cfg.variance_type != null) throw new Error(`${NAME}: variance_type "${cfg.variance_type}" is not supported`);
    if ((cfg.algorithm_type === 'dpmsolver' || cfg.algorithm_type === 'sde-dpmsolver') && cfg.final_sigmas_type === 'zero') {
      throw new Error(`${NAME}: final_sigmas_type "zero" needs algorithm_type dpmsolver++ or sde-dpmsolver++`);
    }
    this.betas = makeBetas(cfg, NAME);
    this.alphasCumprod = alphasCumprodOf(this.betas);
    if (cfg.rescale_betas_zero_snr) this.alphasCumprod[this.alphasCumprod.length - 1] = 2 ** -24;
    this.lambdaT = this.alphasCumprod.map((a) =>
      f32(sleefLogf(f32(Math.sqrt(a))) - sleefLogf(f32(Math.sqrt(f32(1 - a))))));
    this.sigmas = sigmasFromAlphasCumprod(this.alphasCumprod);
    this.timesteps = npLinspace(0, cfg.num_train_timesteps - 1, cfg.num_train_timesteps).map(f32).reverse();
    this.modelOutputs = new Array(cfg.solver_order).fill(null);
  }

  get predictionType() { return this.config.prediction_type; }
  get numTrainTimesteps() { return this.config.num_train_timesteps; }

  protected override missingTimestep(): number {
    return this.timesteps.length - 1;
  }

  setTimesteps(n: number): void {
    const cfg = this.config;
    if (!(Number.isInteger(n) && n > 0)) throw new Error(`${NAME}: num_inference_steps must be a positive integer, got ${n}`);
    // Clip the grid where lambda falls below lambda_min_clipped (searchsorted on the flipped table).
    let clippedIdx = 0;
    for (let i = this.lambdaT.length - 1; i >= 0 && this.lambdaT[i] < cfg.lambda_min_clipped; i--) clippedIdx++;
    const last = cfg.num_train_timesteps - clippedIdx;
    let timesteps: number[];
    if (cfg.timestep_spacing === 'linspace') {
      timesteps = npLinspace(0, last - 1, n + 1).map(roundHalfEven).reverse().slice(0, -1);
    } else if (cfg.timestep_spacing === 'leading') {
      const ratio = Math.floor(last / (n + 1));
      timesteps = Array.from({ length: n }, (_, i) => (n - i) * ratio + cfg.steps_offset);
    } else if (cfg.timestep_spacing === 'trailing') {
      timesteps = npArange(last, 0, -(cfg.num_train_timesteps / n)).map((v) => roundHalfEven(v) - 1);
    } else {
      throw new Error(`${NAME}: timestep_spacing "${cfg.timestep_spacing}" is not supported (use leading, linspace or trailing)`);
    }
    const table = sigmasFromAlphasCumprod(this.alphasCumprod);
    const logSigmas = table.map((s) => f32(Math.log(s))); // numpy's log, not torch's
    let sigmas: number[];
    if (cfg.use_karras_sigmas) {
      sigmas = karrasSigmas(table[0], table[table.length - 1], n);
      timesteps = sigmas.map((s) => roundHalfEven(sigmaToT(s, logSigmas)));
    } else if (cfg.use_lu_lambdas) {
      // Uniform steps in log-sigma (= -lambda) between the training extremes.
      const lo = logSigmas[0];
      const hi = logSigmas[logSigmas.length - 1];
      sigmas = npLinspace(0, 1, n).map((r) => Math.exp(hi + r * (lo - hi)));
      timesteps = sigmas.map((s) => roundHalfEven(sigmaToT(s, logSigmas)));
    } else {
      sigmas = timesteps.map((t) => npInterpIndex(t, table));
    }
    const sigmaLast = cfg.final_sigmas_type === 'zero' ? 0 : table[0];
    this.sigmas = Float32Array.from([...sigmas, sigmaLast]);
    this.timesteps = timesteps;
    this.numInferenceSteps = timesteps.length;
    this.modelOutputs = new Array(cfg.solver_order).fill(null);
    this.lowerOrderNums = 0;
    this.stepIdx = null;
    this.beginIdx = null;
  }

  scaleModelInput(sample: Float32Array): Float32Array { return sample; }

  /** Model output -> x0 (dpmsolver++) or epsilon (dpmsolver), at the current step's sigma. */
  private convertModelOutput(m: Float32Array, x: Float32Array): Float32Array {
    const { alpha, sigma } = alphaSigma(this.sigmas[this.stepIdx!]);
    const pt = this.config.prediction_type;
    const dataPred = this.config.algorithm_type === 'dpmsolver++' || this.config.algorithm_type === 'sde-dpmsolver++';
    const out = new Float32Array(m.length);
    for (let i = 0; i < m.length; i++) {
      if (dataPred) {
        out[i] = pt === 'epsilon' ? f32(x[i] - f32(sigma * m[i])) / alpha
          : pt === 'v_prediction' ? f32(alpha * x[i]) - f32(sigma * m[i])
          : m[i];
      } else {
        out[i] = pt === 'epsilon' ? m[i]
          : pt === 'v_prediction' ? f32(alpha * m[i]) + f32(sigma * x[i])
          : f32(x[i] - f32(alpha * m[i])) / sigma;
      }
    }
    return out;
  }

  step(modelOutput: Float32Array, t: number, sample: Float32Array, noise?: NoiseSource): Float32Array {
    if (this.numInferenceSteps === null) throw new Error(`${NAME}.step: call setTimesteps first`);
    checkSameLength(NAME, modelOutput, sample);
    const cfg = this.config;
    const idx = this.initStepIndex(t);
    const nT = this.timesteps.length;
    const lowerOrderFinal = idx === nT - 1 &&
      (cfg.euler_at_final || (cfg.lower_order_final && nT < 15) || cfg.final_sigmas_type === 'zero');
    const lowerOrderSecond = idx === nT - 2 && cfg.lower_order_final && nT < 15;
    const converted = this.convertModelOutput(modelOutput, sample);
    for (let i = 0; i < cfg.solver_order - 1; i++) this.modelOutputs[i] = this.modelOutputs[i + 1];
    this.modelOutputs[cfg.solver_order - 1] = converted;
    const sde = cfg.algorithm_type.startsWith('sde-');
    let z: Float32Array | null = null;
    if (sde) {
      if (!noise) throw new Error(`${NAME}.step: algorithm_type ${cfg.algorithm_type} needs a noise source`);
      z = noise.randn(sample.length);
    }
    let prev: Float32Array;
    if (cfg.solver_order === 1 || this.lowerOrderNums < 1 || lowerOrderFinal) {
      prev = this.firstOrder(converted, sample, z);
    } else if (cfg.solver_order === 2 || this.lowerOrderNums < 2 || lowerOrderSecond) {
      prev = this.secondOrder(sample, z);
    } else {
      prev = this.thirdOrder(sample);
    }
    if (this.lowerOrderNums < cfg.solver_order) this.lowerOrderNums++;
    this.stepIdx = idx + 1;
    return prev;
  }

  private firstOrder(m: Float32Array, x: Float32Array, z: Float32Array | null): Float32Array {
    const i = this.stepIdx!;
    const T = alphaSigma(this.sigmas[i + 1]);
    const S = alphaSigma(this.sigmas[i]);
    const h = f32(T.lambda - S.lambda);
    const alg = this.config.algorithm_type;
    const out = new Float32Array(x.length);
    if (alg === 'dpmsolver++') {
      const a = f32(T.sigma / S.sigma);
      const b = f32(T.alpha * f32(sleefExpf(-h) - 1));
      for (let k = 0; k < x.length; k++) out[k] = f32(a * x[k]) - f32(b * m[k]);
    } else if (alg === 'dpmsolver') {
      const a = f32(T.alpha / S.alpha);
      const b = f32(T.sigma * f32(sleefExpf(h) - 1));
      for (let k = 0; k < x.length; k++) out[k] = f32(a * x[k]) - f32(b * m[k]);
    } else if (alg === 'sde-dpmsolver++') {
      const e2 = sleefExpf(f32(-2 * h));
      const a = f32(f32(T.sigma / S.sigma) * sleefExpf(-h));
      const b = f32(T.alpha * f32(1 - e2));
      const c = f32(T.sigma * f32(Math.sqrt(f32(1 - e2))));
      for (let k = 0; k < x.length; k++) out[k] = f32(f32(a * x[k]) + f32(b * m[k])) + f32(c * z![k]);
    } else {
      const a = f32(T.alpha / S.alpha);
      const b = f32(2 * f32(T.sigma * f32(sleefExpf(h) - 1)));
      const c = f32(T.sigma * f32(Math.sqrt(f32(sleefExpf(f32(2 * h)) - 1))));
      for (let k = 0; k < x.length; k++) out[k] = f32(f32(a * x[k]) - f32(b * m[k])) + f32(c * z![k]);
    }
    return out;
  }

  private secondOrder(x: Float32Array, z: Float32Array | null): Float32Array {
    const i = this.stepIdx!;
    const T = alphaSigma(this.sigmas[i + 1]);
    const S0 = alphaSigma(this.sigmas[i]);
    const S1 = alphaSigma(this.sigmas[i - 1]);
    const m0 = this.modelOutputs[this.modelOutputs.length - 1]!;
    const m1 = this.modelOutputs[this.modelOutputs.length - 2]!;
    const h = f32(T.lambda - S0.lambda);
    const h0 = f32(S0.lambda - S1.lambda);
    const r0 = f32(h0 / h);
    const invR0 = f32(1 / r0);
    const { algorithm_type: alg, solver_type: st } = this.config;
    const out = new Float32Array(x.length);
    // x_t = a*x - b*D0 + c*D1 (+ d*z), with D1 = (m0 - m1) / r0; per-variant coefficients.
    let a: number, b: number, c: number, d = 0;
    if (alg === 'dpmsolver++') {
      const em1 = f32(sleefExpf(-h) - 1);
      a = f32(T.sigma / S0.sigma);
      b = f32(T.alpha * em1);
      c = st === 'midpoint' ? -f32(0.5 * b) : f32(T.alpha * f32(f32(em1 / h) + 1));
    } else if (alg === 'dpmsolver') {
      const ep1 = f32(sleefExpf(h) - 1);
      a = f32(T.alpha / S0.alpha);
      b = f32(T.sigma * ep1);
      c = st === 'midpoint' ? -f32(0.5 * b) : -f32(T.sigma * f32(f32(ep1 / h) - 1));
    } else if (alg === 'sde-dpmsolver++') {
      const e2 = sleefExpf(f32(-2 * h));
      a = f32(f32(T.sigma / S0.sigma) * sleefExpf(-h));
      b = -f32(T.alpha * f32(1 - e2));
      c = st === 'midpoint' ? f32(0.5 * -b) : f32(T.alpha * f32(f32(f32(1 - e2) / f32(-2 * h)) + 1));
      d = f32(T.sigma * f32(Math.sqrt(f32(1 - e2))));
    } else {
      const ep1 = f32(sleefExpf(h) - 1);
      a = f32(T.alpha / S0.alpha);
      b = f32(2 * f32(T.sigma * ep1));
      c = st === 'midpoint' ? -f32(T.sigma * ep1) : -f32(2 * f32(T.sigma * f32(f32(ep1 / h) - 1)));
      d = f32(T.sigma * f32(Math.sqrt(f32(sleefExpf(f32(2 * h)) - 1))));
    }
    for (let k = 0; k < x.length; k++) {
      const D1 = f32(invR0 * f32(m0[k] - m1[k]));
      // (v - y and v + (-y) round identically, so signs can live in the coefficients.)
      const v = f32(f32(f32(a * x[k]) - f32(b * m0[k])) + f32(c * D1));
      out[k] = z ? v + f32(d * z[k]) : v;
    }
    return out;
  }

  private thirdOrder(x: Float32Array): Float32Array {
    const i = this.stepIdx!;
    const T = alphaSigma(this.sigmas[i + 1]);
    const S0 = alphaSigma(this.sigmas[i]);
    const S1 = alphaSigma(this.sigmas[i - 1]);
    const S2 = alphaSigma(this.sigmas[i - 2]);
    const L = this.modelOutputs.length;
    const m0 = this.modelOutputs[L - 1]!;
    const m1 = this.modelOutputs[L - 2]!;
    const m2 = this.modelOutputs[L - 3]!;
    const h = f32(T.lambda - S0.lambda);
    const h0 = f32(S0.lambda - S1.lambda);
    const h1 = f32(S1.lambda - S2.lambda);
    const r0 = f32(h0 / h);
    const r1 = f32(h1 / h);
    const w1 = f32(r0 / f32(r0 + r1));
    const w2 = f32(1 / f32(r0 + r1));
    const i0 = f32(1 / r0);
    const i1 = f32(1 / r1);
    const pp = this.config.algorithm_type === 'dpmsolver++';
    let a: number, b: number, c: number, d: number;
    if (pp) {
      const em1 = f32(sleefExpf(-h) - 1);
      a = f32(T.sigma / S0.sigma);
      b = f32(T.alpha * em1);
      c = f32(T.alpha * f32(f32(em1 / h) + 1));
      d = f32(T.alpha * f32(f32(f32(em1 + h) / f32(h * h)) - 0.5));
    } else {
      const ep1 = f32(sleefExpf(h) - 1);
      a = f32(T.alpha / S0.alpha);
      b = f32(T.sigma * ep1);
      c = -f32(T.sigma * f32(f32(ep1 / h) - 1));
      d = f32(T.sigma * f32(f32(f32(ep1 - h) / f32(h * h)) - 0.5));
    }
    const out = new Float32Array(x.length);
    for (let k = 0; k < x.length; k++) {
      const d10 = f32(i0 * f32(m0[k] - m1[k]));
      const d11 = f32(i1 * f32(m1[k] - m2[k]));
      const D1 = f32(d10 + f32(w1 * f32(d10 - d11)));
      const D2 = f32(w2 * f32(d10 - d11));
      out[k] = f32(f32(f32(a * x[k]) - f32(b * m0[k])) + f32(c * D1)) - f32(d * D2);
    }
    return out;
  }

  /** alpha_t x + sigma_t noise at the sigma of each timestep (img2img). */
  override addNoise(original: Float32Array, noise: Float32Array, timesteps: number | readonly number[]): Float32Array {
    if (noise.length !== original.length) throw new Error(`addNoise: noise has ${noise.length} values, sample ${original.length}`);
    const { ts, per } = perItem(original.length, timesteps);
    const out = new Float32Array(original.length);
    ts.forEach((t, b) => {
      const idx = this.beginIdx === null ? this.indexForTimestep(t) : this.stepIdx ?? this.beginIdx;
      const { alpha, sigma } = alphaSigma(this.sigmas[idx]);
      for (let i = b * per; i < (b + 1) * per; i++) out[i] = f32(alpha * original[i]) + f32(sigma * noise[i]);
    });
    return out;
  }
}
