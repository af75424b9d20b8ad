// Numerics shared by the schedulers: the beta / alphas_cumprod tables, numpy-style
// timestep grids, sigma interpolation and Karras sigmas, and the Scheduler interface.
//
// Precision policy: diffusers keeps its tables in torch float32 and builds sigma and
// timestep grids in numpy float64. We do the same: float64 where numpy computes, and
// Math.fround after every operation torch performs in float32 (in torch's order), so
// tables and sampling steps come out bit-identical to diffusers' on x86 CPUs.

import { fmaf } from './torch-random.ts';
import type { BaseSchedulerConfig, PredictionType } from './config.ts';

export const f32 = Math.fround;

/** Anything that can draw standard normal noise, e.g. a TorchGenerator. */
export interface NoiseSource {
  randn(shape: number | readonly number[]): Float32Array;
}

export interface Scheduler {
  /** Registry name (`ddim`, `pndm`, `euler`, `euler_a`, `dpmpp2m`, `ddpm`). */
  readonly kind: string;
  readonly predictionType: PredictionType;
  readonly numTrainTimesteps: number;
  /** torch float32 tables: betas and their cumulative products of (1 - beta). */
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  /** UNet timesteps, one per UNet call, after setTimesteps (integers for DDPM/DDIM/PNDM/DPM, float32 values for Euler). */
  readonly timesteps: readonly number[];
  /** Euler/DPM: the noise levels of the grid, with a trailing final sigma (0). null for the alpha-based schedulers. */
  readonly sigmas: Float32Array | null;
  /** Scale for the initial N(0, 1) latents. */
  readonly initNoiseSigma: number;
  /** Number of UNet calls per step (always 1 here). */
  readonly order: number;
  setTimesteps(numInferenceSteps: number): void;
  /** Input scaling for the UNet at timestep t; returns `sample` itself when there is none. */
  scaleModelInput(sample: Float32Array, t: number): Float32Array;
  /** One denoising step from `t`: returns the previous (less noisy) sample. `noise` is needed by stochastic samplers. */
  step(modelOutput: Float32Array, t: number, sample: Float32Array, noise?: NoiseSource): Float32Array;
  /**
   * Forward diffusion: noise `original` to `timesteps` (one per batch item; the batch is
   * split evenly across them).
   */
  addNoise(original: Float32Array, noise: Float32Array, timesteps: number | readonly number[]): Float32Array;
}

// ---- torch float32 table construction ----------------------------------------

/**
 * `torch.linspace(start, end, steps, dtype=float32)` as torch's AVX2 CPU kernel computes
 * it: float32 step, first half counted up from start and second half down from end,
 * 8-wide vector blocks built as base + k*step, with GCC's fused multiply-adds.
 * Bit-identical to the betas diffusers builds (checked against the reference file).
 */
export function torchLinspaceF32(start: number, end: number, steps: number): Float32Array {
  const out = new Float32Array(steps);
  if (steps === 1) { out[0] = f32(start); return out; }
  const s = f32(start);
  const e = f32(end);
  const step = f32(f32(e - s) / (steps - 1));
  const half = Math.floor(steps / 2);
  const at = (idx: number): number => (idx < half ? fmaf(step, f32(idx), s) : fmaf(-step, f32(steps - idx - 1), e));
  const VEC = 8;
  let i = 0;
  // The vector loop runs two vectors per iteration; the remainder is scalar.
  for (; i + 2 * VEC <= steps; i += VEC) {
    const base = at(i);
    out[i] = base;
    out[i + 1] = f32(base + step);
    for (let k = 2; k < VEC; k++) out[i + k] = fmaf(k, step, base);
  }
  for (; i < steps; i++) out[i] = at(i);
  return out;
}

/** The beta schedule of a config, as the float32 tensor diffusers builds. */
export function makeBetas(cfg: BaseSchedulerConfig, className: string): Float32Array {
  const n = cfg.num_train_timesteps;
  let betas: Float32Array;
  if (cfg.trained_betas != null) {
    betas = Float32Array.from(cfg.trained_betas);
  } else if (cfg.beta_schedule === 'linear') {
    betas = torchLinspaceF32(cfg.beta_start, cfg.beta_end, n);
  } else if (cfg.beta_schedule === 'scaled_linear') {
    betas = torchLinspaceF32(Math.sqrt(cfg.beta_start), Math.sqrt(cfg.beta_end), n).map((b) => f32(b * b));
  } else if (cfg.beta_schedule === 'squaredcos_cap_v2') {
    betas = betasForAlphaBar(n);
  } else if (cfg.beta_schedule === 'sigmoid' && className === 'DDPMScheduler') {
    const x = torchLinspaceF32(-6, 6, n);
    const range = f32(cfg.beta_end - cfg.beta_start);
    betas = x.map((v) => f32(f32(f32(1 / (1 + Math.exp(-v))) * range) + cfg.beta_start));
  } else {
    throw new Error(`${className}: beta_schedule "${cfg.beta_schedule}" is not implemented`);
  }
  if (cfg.rescale_betas_zero_snr) betas = rescaleZeroTerminalSnr(betas);
  return betas;
}

/** Cosine schedule (Nichol & Dhariwal): computed in double, stored as float32. */
export function betasForAlphaBar(n: number, maxBeta = 0.999): Float32Array {
  const alphaBar = (t: number): number => Math.cos(((t + 0.008) / 1.008) * Math.PI / 2) ** 2;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), maxBeta);
  return out;
}

/** torch.cumprod(1 - betas): CPU cumprod accumulates float32 in double, storing each prefix as float32. */
export function alphasCumprodOf(betas: Float32Array): Float32Array {
  const out = new Float32Array(betas.length);
  let acc = 1;
  for (let i = 0; i < betas.length; i++) {
    acc *= f32(1 - betas[i]);
    out[i] = acc;
  }
  return out;
}

/** Zero terminal SNR rescaling (Lin et al. 2023, Algorithm 1), in float32 like diffusers. */
export function rescaleZeroTerminalSnr(betas: Float32Array): Float32Array {
  const acp = alphasCumprodOf(betas);
  const s = acp.map((a) => f32(Math.sqrt(a)));
  const s0 = s[0];
  const sT = s[s.length - 1];
  const scale = f32(s0 / f32(s0 - sT));
  const bar = s.map((v) => { const w = f32(f32(v - sT) * scale); return f32(w * w); });
  const out = new Float32Array(betas.length);
  out[0] = f32(1 - bar[0]);
  for (let i = 1; i < bar.length; i++) out[i] = f32(1 - f32(bar[i] / bar[i - 1]));
  return out;
}

// ---- numpy helpers ---------------------------------------------------------------

/** numpy's round(): halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** np.linspace(start, stop, num) in float64 (i * step + start, last element exactly stop). */
export function npLinspace(start: number, stop: number, num: number): number[] {
  if (num === 1) return [start];
  const step = (stop - start) / (num - 1);
  const out: number[] = [];
  for (let i = 0; i < num; i++) out.push(i * step + start);
  out[num - 1] = stop;
  return out;
}

/** np.arange(start, stop, step) for a float step. */
export function npArange(start: number, stop: number, step: number): number[] {
  const n = Math.max(0, Math.ceil((stop - start) / step));
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(start + i * step);
  return out;
}

/** np.interp(x, arange(len(fp)), fp) for x inside [0, len-1], in float64. */
export function npInterpIndex(x: number, fp: ArrayLike<number>): number {
  const last = fp.length - 1;
  if (x >= last) return fp[last];
  if (x <= 0) return fp[0];
  const j = Math.floor(x);
  if (j === x) return fp[j];
  return (fp[j + 1] - fp[j]) * (x - j) + fp[j]; // slope over a unit step
}

/**
 * diffusers' `_sigma_to_t`: the fractional training timestep of a noise level, by linear
 * interpolation in log-sigma between neighbouring training steps. `logSigmas` is the
 * float32 table np.log(sigmas); the interpolation weight mixes float32 and float64 as numpy does.
 */
export function sigmaToT(sigma: number, logSigmas: Float32Array): number {
  const logSigma = Math.log(Math.max(sigma, 1e-10));
  // Index of the last training log-sigma <= logSigma (log-sigmas increase with t).
  let count = 0;
  let lowIdx = 0;
  let best = -1;
  for (let i = 0; i < logSigmas.length; i++) {
    if (logSigma - logSigmas[i] >= 0) count++;
    if (count > best) { best = count; lowIdx = i; }
  }
  lowIdx = Math.min(lowIdx, logSigmas.length - 2);
  const highIdx = lowIdx + 1;
  const low = logSigmas[lowIdx];
  const high = logSigmas[highIdx];
  // (float32 low - float64 logSigma) / (float32 low - float32 high): the denominator is float32.
  let w = (low - logSigma) / f32(low - high);
  w = Math.min(1, Math.max(0, w));
  return (1 - w) * lowIdx + w * highIdx;
}

/** Karras et al. (2022) noise levels, rho = 7, from sigmaMax down to sigmaMin, in float64. */
export function karrasSigmas(sigmaMin: number, sigmaMax: number, n: number): number[] {
  const rho = 7;
  const minInv = sigmaMin ** (1 / rho);
  const maxInv = sigmaMax ** (1 / rho);
  return npLinspace(0, 1, n).map((r) => (maxInv + r * (minInv - maxInv)) ** rho);
}

/** float32 table sqrt((1 - acp) / acp), as torch computes it. */
export function sigmasFromAlphasCumprod(acp: Float32Array): Float32Array {
  return acp.map((a) => f32(Math.sqrt(f32(f32(1 - a) / a))));
}

/**
 * The integer timestep grid shared by DDPM and DDIM (and PNDM, before its own reordering):
 * descending, as `set_timesteps` builds it for each `timestep_spacing`.
 */
export function spacedTimesteps(cfg: BaseSchedulerConfig, n: number, className: string): number[] {
  const T = cfg.num_train_timesteps;
  if (n > T) throw new Error(`${className}: num_inference_steps ${n} exceeds num_train_timesteps ${T}`);
  if (!(Number.isInteger(n) && n > 0)) throw new Error(`${className}: num_inference_steps must be a positive integer, got ${n}`);
  if (cfg.timestep_spacing === 'linspace') {
    return npLinspace(0, T - 1, n).map(roundHalfEven).reverse();
  }
  if (cfg.timestep_spacing === 'leading') {
    const ratio = Math.floor(T / n);
    const out: number[] = [];
    for (let i = n - 1; i >= 0; i--) out.push(i * ratio + cfg.steps_offset);
    return out;
  }
  if (cfg.timestep_spacing === 'trailing') {
    return npArange(T, 0, -(T / n)).map((v) => roundHalfEven(v) - 1);
  }
  throw new Error(`${className}: timestep_spacing "${cfg.timestep_spacing}" is not supported (use leading, linspace or trailing)`);
}

/** Batch timesteps for add_noise: a single t for all, or one per batch item. */
export function perItem(total: number, timesteps: number | readonly number[]): { ts: readonly number[]; per: number } {
  const ts = typeof timesteps === 'number' ? [timesteps] : timesteps;
  if (ts.length === 0 || total % ts.length !== 0) {
    throw new Error(`addNoise: ${total} values cannot be split into ${ts.length} batch items`);
  }
  return { ts, per: total / ts.length };
}

/**
 * `sqrt(acp[t]) * x + sqrt(1 - acp[t]) * noise` per batch item, in torch's float32
 * operation order (bit-identical to DDPMScheduler.add_noise).
 */
export function addNoiseAlpha(
  acp: Float32Array, original: Float32Array, noise: Float32Array, timesteps: number | readonly number[],
): Float32Array {
  if (noise.length !== original.length) throw new Error(`addNoise: noise has ${noise.length} values, sample ${original.length}`);
  const { ts, per } = perItem(original.length, timesteps);
  const out = new Float32Array(original.length);
  ts.forEach((t, b) => {
    const a = checkedAcp(acp, t);
    const sa = f32(Math.sqrt(a));
    const sb = f32(Math.sqrt(f32(1 - a)));
    for (let i = b * per; i < (b + 1) * per; i++) out[i] = f32(sa * original[i]) + f32(sb * noise[i]);
  });
  return out;
}

/** v-prediction target `sqrt(acp[t]) * noise - sqrt(1 - acp[t]) * sample` (diffusers' get_velocity). */
export function velocityAlpha(
  acp: Float32Array, sample: Float32Array, noise: Float32Array, timesteps: number | readonly number[],
): Float32Array {
  if (noise.length !== sample.length) throw new Error(`getVelocity: noise has ${noise.length} values, sample ${sample.length}`);
  const { ts, per } = perItem(sample.length, timesteps);
  const out = new Float32Array(sample.length);
  ts.forEach((t, b) => {
    const a = checkedAcp(acp, t);
    const sa = f32(Math.sqrt(a));
    const sb = f32(Math.sqrt(f32(1 - a)));
    for (let i = b * per; i < (b + 1) * per; i++) out[i] = f32(sa * noise[i]) - f32(sb * sample[i]);
  });
  return out;
}

function checkedAcp(acp: Float32Array, t: number): number {
  if (!Number.isInteger(t) || t < 0 || t >= acp.length) throw new Error(`timestep ${t} is not an integer in [0, ${acp.length - 1}]`);
  return acp[t];
}

export function checkSameLength(what: string, a: Float32Array, b: Float32Array): void {
  if (a.length !== b.length) throw new Error(`${what}: model output has ${a.length} values, sample ${b.length}`);
}
