// Scheduler configs: diffusers' `scheduler_config.json` keys (snake_case, kept 1:1 so a
// model folder's file is read as-is) and the `from_config` rules that turn a model's
// config into the settings of a possibly different scheduler class.

import type { Family } from '../io/ldm-names.ts';
import { OnewordError } from '../errors.ts';

/** A scheduler_config.json as parsed (diffusers writes Python floats, e.g. -Infinity). */
export type RawSchedulerConfig = Record<string, unknown>;

export type PredictionType = 'epsilon' | 'v_prediction' | 'sample';
export type TimestepSpacing = 'leading' | 'linspace' | 'trailing';
export type BetaSchedule = 'linear' | 'scaled_linear' | 'squaredcos_cap_v2' | 'sigmoid';

/** Keys every scheduler here shares (the beta table and the timestep grid). */
export interface BaseSchedulerConfig {
  num_train_timesteps: number;
  beta_start: number;
  beta_end: number;
  beta_schedule: BetaSchedule;
  trained_betas: number[] | null;
  prediction_type: PredictionType;
  timestep_spacing: TimestepSpacing;
  steps_offset: number;
  rescale_betas_zero_snr: boolean;
}

export class SchedulerConfigError extends OnewordError {
  override name = 'SchedulerConfigError';
}

/**
 * Parse JSON written by Python's json module, which may contain the bare tokens
 * NaN, Infinity and -Infinity (diffusers stores `lambda_min_clipped: -Infinity`).
 */
export function parsePythonJson(text: string): unknown {
  let out = '';
  let i = 0;
  while (i < text.length) {
    const ch = text[i];
    if (ch === '"') {
      // Copy a string literal verbatim, honouring escapes.
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
      continue;
    }
    const m = /^(-?Infinity|NaN)/.exec(text.slice(i, i + 9));
    if (m) {
      out += `"\\u0000${m[1]}"`; // an escaped NUL marks the token; no real key or value starts with one
      i += m[1].length;
      continue;
    }
    out += ch;
    i++;
  }
  return JSON.parse(out, (_k, v) => {
    if (typeof v === 'string' && v.charCodeAt(0) === 0) {
      const t = v.slice(1);
      return t === 'NaN' ? NaN : t === 'Infinity' ? Infinity : -Infinity;
    }
    return v;
  });
}

/**
 * Resolve the settings of a scheduler class from a (model) config, the way
 * `Cls.from_config(config, **overrides)` does in diffusers:
 *  - only keys the class knows are taken (others, e.g. PNDM's `skip_prk_steps` for Euler, are ignored);
 *  - keys listed in `_use_default_values` were never set by the user, so the class default wins
 *    (this is why an SD 1.5 PNDM config gives Euler its own default `timestep_spacing: linspace`);
 *  - overrides win over everything.
 */
export function resolveConfig<T extends object>(
  className: string,
  defaults: T,
  config: RawSchedulerConfig | undefined,
  overrides: Partial<T> = {},
): T {
  const usedDefaults = new Set<string>(
    Array.isArray(config?._use_default_values) ? (config!._use_default_values as string[]) : [],
  );
  const out: Record<string, unknown> = { ...(defaults as Record<string, unknown>) };
  for (const key of Object.keys(defaults)) {
    const ov = (overrides as Record<string, unknown>)[key];
    if (ov !== undefined) out[key] = ov;
    else if (config && key in config && !usedDefaults.has(key)) out[key] = config[key];
  }
  for (const key of Object.keys(overrides)) {
    if (!(key in defaults)) throw new SchedulerConfigError(`${className}: unknown config key "${key}"`);
  }
  // Light type check against the defaults, so a malformed file fails with a clear message.
  for (const [key, def] of Object.entries(defaults)) {
    const v = out[key];
    if (def === null || v === null) continue;
    if (typeof def !== typeof v) {
      throw new SchedulerConfigError(`${className}: config "${key}" should be a ${typeof def}, got ${JSON.stringify(v)}`);
    }
  }
  return out as T;
}

/** Check a string-valued setting against its allowed values. */
export function checkOneOf<T extends string>(className: string, key: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value)) {
    throw new SchedulerConfigError(`${className}: ${key} "${value}" is not supported (use one of ${allowed.join(', ')})`);
  }
  return value as T;
}

/**
 * The prediction type of a Stable Diffusion model whose files do not say: SD 1.x predicts
 * noise (epsilon); SD 2.x predicts v at 768 px (2.0/2.1-768-v) and noise at 512 px (the
 * "base" models). Without a resolution, SD 2.x is taken as 768-v, as diffusers does for
 * single files (its default config is stabilityai/stable-diffusion-2-1).
 */
export function defaultPredictionType(family: Family, sampleSize?: number | null): 'epsilon' | 'v_prediction' {
  if (family === 'sd1' || family === 'sdxl') return 'epsilon';
  return sampleSize == null || sampleSize >= 96 ? 'v_prediction' : 'epsilon';
}

/**
 * Scheduler configs for single-file checkpoints (no `scheduler/` folder): the configs the
 * diffusers-format releases ship. SD 1.x: runwayml/stable-diffusion-v1-5 (PNDM, epsilon);
 * SD 2.x: stabilityai/stable-diffusion-2-1 (DDIM, v_prediction; the 512px "base" models
 * are epsilon — pass predictionType). Neither sets `timestep_spacing`, so each scheduler
 * class keeps its own default, exactly as with a model folder. SDXL:
 * stabilityai/stable-diffusion-xl-base-1.0 (Euler, epsilon, `leading` spacing).
 */
export function defaultSchedulerConfig(family: Family, predictionType?: PredictionType): RawSchedulerConfig {
  const prediction = predictionType ?? defaultPredictionType(family);
  if (prediction === 'sample') throw new SchedulerConfigError('single-file defaults exist for epsilon and v_prediction only');
  const common = {
    beta_end: 0.012, beta_schedule: 'scaled_linear', beta_start: 0.00085, clip_sample: false, num_train_timesteps: 1000,
    set_alpha_to_one: false, skip_prk_steps: true, steps_offset: 1, trained_betas: null,
  };
  if (family === 'sd1') {
    return { _class_name: 'PNDMScheduler', ...common, ...(prediction === 'epsilon' ? {} : { prediction_type: prediction }) };
  }
  if (family === 'sdxl') {
    return {
      _class_name: 'EulerDiscreteScheduler', ...common, interpolation_type: 'linear', prediction_type: prediction,
      sample_max_value: 1.0, timestep_spacing: 'leading', use_karras_sigmas: false,
    };
  }
  return { _class_name: 'DDIMScheduler', ...common, prediction_type: prediction };
}
