// Scheduler factory and the sampler names the CLI accepts.
//
// Every scheduler is built from a model's `scheduler/scheduler_config.json` the way
// diffusers' `<Scheduler>.from_config(config, **overrides)` builds it, so `ddim` on an
// SD 1.5 folder (whose file describes PNDM) gets SD 1.5's betas, steps_offset and
// set_alpha_to_one, while settings the file does not name keep the class defaults.
//
// CLI sampler names (SAMPLERS below):
//   ddim            DDIMScheduler, eta 0 (deterministic); eta > 0 adds noise each step
//   pndm            PNDMScheduler (PLMS), the SD 1.x default; n + 1 UNet calls with skip_prk_steps
//   euler           EulerDiscreteScheduler
//   euler-karras    EulerDiscreteScheduler, use_karras_sigmas
//   euler-a         EulerAncestralDiscreteScheduler (stochastic)
//   dpmpp2m         DPMSolverMultistepScheduler, dpmsolver++, solver_order 2
//   dpmpp2m-karras  the same on Karras sigmas
// Stochastic samplers take a NoiseSource in step(); pass the TorchGenerator that drew the
// initial latents to get diffusers' exact noise sequence for a seed.

import { readFileSync } from 'node:fs';
import { DDIMScheduler } from './ddim.ts';
import { DDPMScheduler } from './ddpm.ts';
import { DPMSolverMultistepScheduler } from './dpm-solver.ts';
import { EulerAncestralDiscreteScheduler } from './euler-ancestral.ts';
import { EulerDiscreteScheduler } from './euler.ts';
import { PNDMScheduler } from './pndm.ts';
import {
  type PredictionType, type RawSchedulerConfig, type TimestepSpacing, SchedulerConfigError, parsePythonJson,
} from './config.ts';

export type { NoiseSource, Scheduler } from './common.ts';
export { DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler };
export { TorchGenerator } from './torch-random.ts';
export {
  SchedulerConfigError, defaultSchedulerConfig, parsePythonJson, type PredictionType, type RawSchedulerConfig, type TimestepSpacing,
} from './config.ts';

export type SchedulerKind = 'ddpm' | 'ddim' | 'pndm' | 'euler' | 'euler_a' | 'dpmpp2m';

interface SchedulerByKind {
  ddpm: DDPMScheduler;
  ddim: DDIMScheduler;
  pndm: PNDMScheduler;
  euler: EulerDiscreteScheduler;
  euler_a: EulerAncestralDiscreteScheduler;
  dpmpp2m: DPMSolverMultistepScheduler;
}

export interface SchedulerOverrides {
  /** Karras noise levels (euler, dpmpp2m). */
  useKarrasSigmas?: boolean;
  /** DDIM noise weight; > 0 makes DDIM stochastic (needs a noise source in step). */
  eta?: number;
  predictionType?: PredictionType;
  timestepSpacing?: TimestepSpacing;
  /** Any other diffusers config key, snake_case, e.g. `{ steps_offset: 1 }`. */
  config?: RawSchedulerConfig;
}

/**
 * Build a scheduler of `kind` from a model's scheduler config (undefined = class defaults;
 * for single-file checkpoints pass `defaultSchedulerConfig('sd1' | 'sd2')`).
 * `dpmpp2m` is DPMSolverMultistep pinned to algorithm dpmsolver++ at solver order 2.
 */
export function createScheduler<K extends SchedulerKind>(
  kind: K, modelConfig?: RawSchedulerConfig, overrides: SchedulerOverrides = {},
): SchedulerByKind[K] {
  const cfg: Record<string, unknown> = { ...overrides.config };
  if (overrides.predictionType !== undefined) cfg.prediction_type = overrides.predictionType;
  if (overrides.timestepSpacing !== undefined) cfg.timestep_spacing = overrides.timestepSpacing;
  if (overrides.useKarrasSigmas !== undefined) {
    if (kind !== 'euler' && kind !== 'dpmpp2m') throw new SchedulerConfigError(`Karras sigmas are available for euler and dpmpp2m, not ${kind}`);
    cfg.use_karras_sigmas = overrides.useKarrasSigmas;
  }
  if (overrides.eta !== undefined && kind !== 'ddim') throw new SchedulerConfigError(`eta applies to ddim only, not ${kind}`);
  let s: SchedulerByKind[SchedulerKind];
  switch (kind) {
    case 'ddpm': s = new DDPMScheduler(modelConfig, cfg); break;
    case 'ddim': s = new DDIMScheduler(modelConfig, cfg, { eta: overrides.eta }); break;
    case 'pndm': s = new PNDMScheduler(modelConfig, cfg); break;
    case 'euler': s = new EulerDiscreteScheduler(modelConfig, cfg); break;
    case 'euler_a': s = new EulerAncestralDiscreteScheduler(modelConfig, cfg); break;
    case 'dpmpp2m':
      s = new DPMSolverMultistepScheduler(modelConfig, { ...cfg, algorithm_type: 'dpmsolver++', solver_order: 2 });
      break;
    default: throw new SchedulerConfigError(`unknown scheduler kind "${kind as string}"`);
  }
  return s as SchedulerByKind[K];
}

/** Sampler names for the command line. */
export const SAMPLERS = {
  'ddim': { kind: 'ddim', karras: false, help: 'DDIM, deterministic (eta 0; --eta > 0 adds noise)' },
  'pndm': { kind: 'pndm', karras: false, help: 'PNDM/PLMS, the SD 1.x default' },
  'euler': { kind: 'euler', karras: false, help: 'Euler (k-diffusion sigmas)' },
  'euler-karras': { kind: 'euler', karras: true, help: 'Euler on Karras sigmas' },
  'euler-a': { kind: 'euler_a', karras: false, help: 'Euler ancestral (stochastic: noise each step)' },
  'dpmpp2m': { kind: 'dpmpp2m', karras: false, help: 'DPM-Solver++ 2M' },
  'dpmpp2m-karras': { kind: 'dpmpp2m', karras: true, help: 'DPM-Solver++ 2M on Karras sigmas (good at 20-30 steps)' },
} as const satisfies Record<string, { kind: SchedulerKind; karras: boolean; help: string }>;

export type SamplerName = keyof typeof SAMPLERS;
export const SAMPLER_NAMES = Object.keys(SAMPLERS) as SamplerName[];

/** AUTOMATIC1111's display names of the samplers (the "Sampler:" of a PNG's infotext). */
export const SAMPLER_INFOTEXT: Record<SamplerName, string> = {
  ddim: 'DDIM', pndm: 'PLMS', euler: 'Euler', 'euler-karras': 'Euler Karras', 'euler-a': 'Euler a',
  dpmpp2m: 'DPM++ 2M', 'dpmpp2m-karras': 'DPM++ 2M Karras',
};

/** A scheduler from a CLI sampler name (see SAMPLERS). */
export function createSampler(
  name: string, modelConfig?: RawSchedulerConfig, overrides: Omit<SchedulerOverrides, 'useKarrasSigmas'> = {},
): SchedulerByKind[SchedulerKind] {
  const entry = (SAMPLERS as Record<string, (typeof SAMPLERS)[SamplerName]>)[name];
  if (!entry) throw new SchedulerConfigError(`unknown sampler "${name}" (use one of ${SAMPLER_NAMES.join(', ')})`);
  return createScheduler(entry.kind, modelConfig, { ...overrides, ...(entry.karras ? { useKarrasSigmas: true } : {}) });
}

/** One line per sampler name, for --help text. */
export function describeSamplers(): string {
  const w = Math.max(...SAMPLER_NAMES.map((n) => n.length));
  return SAMPLER_NAMES.map((n) => `  ${n.padEnd(w)}  ${SAMPLERS[n].help}`).join('\n');
}

/** Read a `scheduler_config.json` (Python-flavoured JSON). */
export function readSchedulerConfig(path: string): RawSchedulerConfig {
  const v = parsePythonJson(readFileSync(path, 'utf8'));
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new SchedulerConfigError(`${path}: not a JSON object`);
  return v as RawSchedulerConfig;
}
