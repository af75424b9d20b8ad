// What every reference check shares: result rows, the comparisons and their tolerances,
// the reference file and model a check reads, and the checks SD and SDXL files have alike
// (VAE, schedules).
import type { SafetensorsFile } from '../io/safetensors.ts';
import { createScheduler, type SchedulerKind } from '../schedulers/index.ts';
import type { StableDiffusion } from './stable-diffusion.ts';
import { decodeLatents, denoise, type DenoiseOptions } from './text-to-image.ts';

export interface VerifyRow {
  name: string;
  maxAbs: number;
  /** max |a − b| / max |ref| (error relative to the tensor's scale). */
  maxRel: number;
  tol: number;
  pass: boolean;
  note?: string;
}

type Arr = ArrayLike<number>;

export function compare(name: string, got: Arr, want: Arr, rel = 1e-4, note?: string): VerifyRow {
  if (got.length !== want.length) return { name, maxAbs: Infinity, maxRel: Infinity, tol: 0, pass: false, note: `length ${got.length} ≠ ${want.length}` };
  let maxAbs = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i] - want[i]);
    maxAbs = Number.isNaN(e) ? Infinity : Math.max(maxAbs, e);
    scale = Math.max(scale, Math.abs(want[i]));
  }
  const tol = rel * (1 + scale);
  return { name, maxAbs, maxRel: scale > 0 ? maxAbs / scale : maxAbs, tol, pass: maxAbs <= tol, note };
}

export function exact(name: string, got: Arr, want: Arr): VerifyRow {
  let bad = got.length === want.length ? 0 : Math.max(got.length, want.length);
  for (let i = 0; i < Math.min(got.length, want.length); i++) if (got[i] !== want[i]) bad++;
  return { name, maxAbs: bad, maxRel: bad, tol: 0, pass: bad === 0, note: bad ? `${bad} ids differ` : 'exact' };
}

export function cosine(a: Arr, b: Arr): number {
  let d = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    d += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return d / Math.sqrt(na * nb);
}

export const nums = (a: BigInt64Array | Arr): number[] => Array.from(a as ArrayLike<number | bigint>, Number);

/** Scheduler variants of the reference file → how diffusers built them. */
export const SCHEDULE_VARIANTS: Record<string, { kind: SchedulerKind; karras?: boolean }> = {
  ddim: { kind: 'ddim' },
  pndm: { kind: 'pndm' },
  euler: { kind: 'euler' },
  euler_karras: { kind: 'euler', karras: true },
  euler_a: { kind: 'euler_a' },
  dpmpp2m: { kind: 'dpmpp2m' },
  dpmpp2m_karras: { kind: 'dpmpp2m', karras: true },
};

/** What every check reads: the reference file, the model, and where rows go. */
export interface Check {
  ref: SafetensorsFile;
  sd: StableDiffusion;
  push: (r: VerifyRow) => void;
  /** A float tensor of the reference file. */
  F: (name: string) => Float32Array;
  /** An integer tensor of the reference file, as numbers. */
  I: (name: string) => number[];
  prompts: string[];
  placeholder: string;
}

export async function checkVae(c: Check): Promise<void> {
  const { ref, sd, push, F } = c;
  const enc = await sd.vaeEncode(F('vae.pixels'), ref.info('vae.pixels').shape);
  push(compare('vae.enc.mean', enc.mean, F('vae.enc.mean')));
  push(compare('vae.enc.std', enc.std, F('vae.enc.std')));
  push(compare('vae.enc.logvar', enc.logvar, F('vae.enc.logvar')));
  push(compare('vae.dec.sample', await sd.vaeDecode(F('vae.dec.latents'), ref.info('vae.dec.latents').shape), F('vae.dec.sample')));
  push(compare('vae.scaling_factor', [sd.scalingFactor], F('vae.scaling_factor')));
}

/** The DDPM tables, then every scheduler variant's timesteps, sigmas and initial noise scale at 10, 20, 30 steps. */
export function checkSchedules(c: Check): void {
  const { ref, sd, push, F, I } = c;
  const ddpm = createScheduler('ddpm', sd.ckpt.schedulerConfig);
  push(compare('sched.betas', ddpm.betas, F('sched.betas'), 1e-6));
  push(compare('sched.alphas_cumprod', ddpm.alphasCumprod, F('sched.alphas_cumprod'), 1e-6));
  for (const [variant, spec] of Object.entries(SCHEDULE_VARIANTS)) {
    for (const n of [10, 20, 30]) {
      const key = `sched.${variant}.${n}`;
      if (!ref.has(`${key}.init_noise_sigma`)) continue;
      const s = createScheduler(spec.kind, sd.ckpt.schedulerConfig, spec.karras ? { useKarrasSigmas: true } : {});
      s.setTimesteps(n);
      const tsRef = ref.info(`${key}.timesteps`).dtype === 'I64' ? I(`${key}.timesteps`) : F(`${key}.timesteps`);
      push(ref.info(`${key}.timesteps`).dtype === 'I64' ? exact(`${key}.timesteps`, s.timesteps, tsRef) : compare(`${key}.timesteps`, s.timesteps, tsRef, 1e-5));
      if (ref.has(`${key}.sigmas`)) push(compare(`${key}.sigmas`, s.sigmas ?? [], F(`${key}.sigmas`), 1e-5));
      push(compare(`${key}.init_noise_sigma`, [s.initNoiseSigma], F(`${key}.init_noise_sigma`), 1e-5));
    }
  }
}

export function concat(parts: ArrayLike<number>[]): Float32Array {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p as ArrayLike<number>, o);
    o += p.length;
  }
  return out;
}

/** The sampler variants of the reference files' `sample.<name>.*` trajectories. */
export const SAMPLE_VARIANTS = [
  ['ddim', { kind: 'ddim' }], ['euler', { kind: 'euler' }], ['dpmpp2m_karras', { kind: 'dpmpp2m', karras: true }],
] as const;

/**
 * One sampling trajectory of the reference, `sample.<name>.*`: init sigma, timesteps, every
 * step's UNet output and latents, and the decoded image. `opts` is the rest of what the
 * denoising loop needs (prompts, guidance, SDXL's time ids).
 */
export async function checkTrajectory(
  c: Check, name: string, spec: { kind: string; karras?: boolean },
  opts: Omit<DenoiseOptions, 'scheduler' | 'steps' | 'initLatents' | 'latentShape' | 'onStep'>,
): Promise<void> {
  const { ref, sd, push, F, I } = c;
  const shape = ref.info('sample.init_latents').shape;
  const latentShape = [shape[1], shape[2], shape[3]] as [number, number, number];
  const scheduler = createScheduler(spec.kind as SchedulerKind, sd.ckpt.schedulerConfig, spec.karras ? { useKarrasSigmas: true } : {});
  const [unetOut, lat, tsSeen]: [Float32Array[], Float32Array[], number[]] = [[], [], []];
  const final = await denoise(sd, {
    ...opts, scheduler, steps: I('sample.num_inference_steps')[0], initLatents: F('sample.init_latents'), latentShape,
    onStep: (s) => { unetOut.push(s.unetOut); lat.push(s.latents); tsSeen.push(s.t); },
  });
  push(compare(`sample.${name}.init_noise_sigma`, [scheduler.initNoiseSigma], F(`sample.${name}.init_noise_sigma`), 1e-5));
  push(compare(`sample.${name}.timesteps`, tsSeen, F(`sample.${name}.timesteps`), 1e-5));
  push(compare(`sample.${name}.unet_out`, concat(unetOut), F(`sample.${name}.unet_out`), 1e-3, 'all steps'));
  push(compare(`sample.${name}.latents`, concat(lat), F(`sample.${name}.latents`), 1e-3, 'all steps; final latents decide'));
  const dec = await decodeLatents(sd, final, latentShape);
  push(compare(`sample.${name}.decoded`, dec.decoded, F(`sample.${name}.decoded`), 1e-3));
  push(compare(`sample.${name}.image`, dec.image, F(`sample.${name}.image`), 1e-3));
}
