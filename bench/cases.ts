// Benchmark cases on the real Stable Diffusion 1.5 architecture with random weights, run
// through the same pipeline code a user runs (StableDiffusion, generate, TrainStep, AdamW).
// Each case runs in its own process (bench/case.ts) so its peak RSS is its own.
import { StableDiffusion } from '../src/pipelines/stable-diffusion.ts';
import { generate } from '../src/pipelines/generate.ts';
import { TrainStep } from '../src/pipelines/ti-step.ts';
import { adamWState, adamWStep } from '../src/optim/adamw.ts';
import { DDPMScheduler, TorchGenerator } from '../src/schedulers/index.ts';
import { ensureSd15 } from './sd15.ts';
import { ensureSdxl } from './sdxl.ts';
import { median, peakRssMb, rssSplitMb } from './util.ts';
import { availableParallelism } from 'node:os';

export type Fields = Record<string, number | string | null>;

/** PyTorch + diffusers on the same kind of 2-vCPU machine (shared/peer/PEER.md). */
export const PEER: Record<string, number> = {
  'unet-256': 1.75, // UNet forward inside a TI step, 256², cached-latents row
  'unet-512': 9.37,
  'text-encoder': 0.1,
  'generate-256': 33.2,
  'generate-512': 268.1,
  'train-256': 4.01, // TI step, cached latents
  'train-512': 18.21,
};

const envInt = (name: string, def: number) => {
  const v = process.env[name];
  if (v === undefined || v === '') return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, got "${v}"`);
  return n;
};

/** ONEWORD_BENCH_THREADS sets ORT's intra-op threads (default: all cores). */
function load(): StableDiffusion {
  const threads = process.env.ONEWORD_BENCH_THREADS ? envInt('ONEWORD_BENCH_THREADS', 1) : undefined;
  return StableDiffusion.load(ensureSd15(), { threads, lowMemory: process.env.ONEWORD_BENCH_LOW_MEMORY === '1' });
}

/** "a photo of" + optional extra ids, with bos/eos/padding to 77 (SD 1.x tokenizer). */
function promptIds(sd: StableDiffusion, extra: number[] = []): number[] {
  const ids = [49406, ...sd.tokenizer.encode('a photo of'), ...extra, 49407];
  while (ids.length < 77) ids.push(49407);
  return ids;
}

async function unetCase(size: number): Promise<Fields> {
  const sd = load();
  const h = size / 8;
  const sample = new Float32Array(4 * h * h).fill(0.1);
  const context = await sd.encodeIds(promptIds(sd), 1);
  const secs = await median(() => sd.unet(sample, [1, 4, h, h], [500], context), size >= 512 ? 3 : 5);
  return { seconds: secs };
}

async function textEncoderCase(): Promise<Fields> {
  const sd = load();
  const ids = promptIds(sd);
  return { seconds: await median(() => sd.encodeIds(ids, 1), 9) };
}

async function generateCase(size: number): Promise<Fields> {
  const sd = load();
  const steps = envInt('ONEWORD_BENCH_STEPS', 20);
  const opts = { prompt: 'a photo of an astronaut riding a horse', steps, guidance: 7.5, sampler: 'ddim', width: size, height: size, seed: 0 };
  // Compiles the text encoder, the batch-2 UNet and the VAE decoder (excluded from the time).
  await generate(sd, { ...opts, steps: 1 });
  const stepAt: number[] = [];
  const t0 = performance.now();
  await generate(sd, { ...opts, onStep: () => stepAt.push(performance.now()) });
  const seconds = (performance.now() - t0) / 1000;
  const perStep = stepAt.length > 1 ? (stepAt[stepAt.length - 1] - stepAt[0]) / (stepAt.length - 1) / 1000 : null;
  return { seconds, seconds_per_step: perStep, steps };
}

async function trainCase(size: number): Promise<Fields> {
  const sd = load();
  const h = size / 8;
  const d = sd.hiddenSize;
  const tok = sd.addLearnedToken('<bench-token>', new Float32Array(d).fill(0.01), 1);
  const rows = sd.extraRows();
  const row = tok.ids[0] - sd.vocabSize;
  const step = await TrainStep.create(sd, { batch: 1, rows: rows.length / d, latent: [4, h, h] });
  const ids = promptIds(sd, tok.ids);
  const gen = new TorchGenerator(0);
  const latents = gen.randn([1, 4, h, h]).map((v) => v * 0.18215);
  const sched = new DDPMScheduler(sd.ckpt.schedulerConfig);
  const param = rows.subarray(row * d, (row + 1) * d);
  const state = adamWState(d);
  // One TI step with cached latents, as the peer's row: noise, timestep, add_noise, text
  // encoder + UNet + loss + ∂loss/∂v* (one graph), AdamW on the learned vector.
  const oneStep = async () => {
    const noise = gen.randn([1, 4, h, h]);
    const t = gen.randint(0, 1000)[0];
    const noisy = sched.addNoise(latents, noise, t);
    const r = await step.run({ ids, rows, noisy, t: [t], target: noise });
    adamWStep(param, r.grad.subarray(row * d, (row + 1) * d), state, { lr: 5e-3 });
    return r.loss;
  };
  const reps = envInt('ONEWORD_BENCH_TRAIN_STEPS', size >= 512 ? 3 : 5);
  return { seconds: await median(oneStep, reps, 1), steps_timed: reps };
}

/** The SDXL base architecture (bench/sdxl.ts). */
function loadXL(): StableDiffusion {
  const threads = process.env.ONEWORD_BENCH_THREADS ? envInt('ONEWORD_BENCH_THREADS', 1) : undefined;
  return StableDiffusion.load(ensureSdxl(), { threads, lowMemory: process.env.ONEWORD_BENCH_LOW_MEMORY === '1' });
}

/** SDXL's conditioning for one prompt: both encoders' states [1, 77, 2048], pooled [1, 1280], time ids for a square image. */
async function xlConditioning(sd: StableDiffusion, size: number, extra: number[] = []) {
  const ids = promptIds(sd, extra);
  const ids2 = [...ids.slice(0, ids.indexOf(49407) + 1)];
  while (ids2.length < 77) ids2.push(0); // tokenizer_2 pads with "!"
  const enc = await sd.encodeIdsXL(ids, ids2, 1);
  return { ids, ids2, ...enc, timeIds: Float32Array.from([size, size, 0, 0, size, size]) };
}

async function xlUnetCase(size: number): Promise<Fields> {
  const sd = loadXL();
  const h = size / 8;
  const sample = new Float32Array(4 * h * h).fill(0.1);
  const c = await xlConditioning(sd, size);
  const secs = await median(() => sd.unet(sample, [1, 4, h, h], [500], c.hidden, { textEmbeds: c.pooled, timeIds: c.timeIds }), envInt('ONEWORD_BENCH_XL_REPS', size >= 1024 ? 1 : 3));
  return { seconds: secs };
}

/** One SDXL TI step with cached latents: both encoders (the word's rows in each), pooled path, UNet, loss, ∂/∂ both rows, AdamW. */
async function xlTrainCase(size: number): Promise<Fields> {
  const sd = loadXL();
  const h = size / 8;
  const [d1, d2] = [sd.hiddenSize, sd.hiddenSize2];
  const tok = sd.addLearnedToken('<bench-token>', new Float32Array(d1).fill(0.01), 1, new Float32Array(d2).fill(0.01));
  const rows = sd.extraRows();
  const rows2 = sd.extraRows2();
  const step = await TrainStep.create(sd, { batch: 1, rows: rows.length / d1, rows2: rows2.length / d2, latent: [4, h, h] });
  const c = await xlConditioning(sd, size, tok.ids);
  const gen = new TorchGenerator(0);
  const latents = gen.randn([1, 4, h, h]).map((v) => v * 0.13025);
  const sched = new DDPMScheduler(sd.ckpt.schedulerConfig);
  const row = tok.ids[0] - sd.vocabSize;
  const param = new Float32Array(d1 + d2);
  const state = adamWState(d1 + d2);
  const oneStep = async () => {
    const noise = gen.randn([1, 4, h, h]);
    const t = gen.randint(0, 1000)[0];
    const noisy = sched.addNoise(latents, noise, t);
    const r = await step.run({ ids: c.ids, ids2: c.ids2, rows, rows2, timeIds: c.timeIds, noisy, t: [t], target: noise });
    const g = new Float32Array(d1 + d2);
    g.set(r.grad.subarray(row * d1, (row + 1) * d1));
    g.set(r.grad2!.subarray(row * d2, (row + 1) * d2), d1);
    adamWStep(param, g, state, { lr: 5e-3 });
    return r.loss;
  };
  const reps = envInt('ONEWORD_BENCH_TRAIN_STEPS', size >= 1024 ? 1 : 3);
  return { seconds: await median(oneStep, reps, 1), steps_timed: reps };
}

export const CASES: Record<string, { suite: string; run: () => Promise<Fields> }> = {
  'unet-256': { suite: 'components', run: () => unetCase(256) },
  'unet-512': { suite: 'components', run: () => unetCase(512) },
  'text-encoder': { suite: 'components', run: textEncoderCase },
  'generate-256': { suite: 'generate', run: () => generateCase(256) },
  'generate-512': { suite: 'generate', run: () => generateCase(512) },
  'train-256': { suite: 'train', run: () => trainCase(256) },
  'train-512': { suite: 'train', run: () => trainCase(512) },
  'xl-unet-512': { suite: 'sdxl', run: () => xlUnetCase(512) },
  'xl-unet-1024': { suite: 'sdxl', run: () => xlUnetCase(1024) },
  'xl-train-512': { suite: 'sdxl', run: () => xlTrainCase(512) },
  'xl-train-1024': { suite: 'sdxl', run: () => xlTrainCase(1024) },
};

/** Runs one case in this process and returns its JSON fields (peer columns included). */
export async function runCase(name: string): Promise<Fields> {
  const c = CASES[name];
  if (!c) throw new Error(`unknown case "${name}"`);
  const f = await c.run();
  const seconds = f.seconds as number;
  const { seconds: _s, ...rest } = f;
  void _s;
  // The peer's generate rows are 20 steps: with another step count there is nothing to compare.
  const peer = c.suite === 'generate' && f.steps !== 20 ? null : PEER[name];
  const threads = process.env.ONEWORD_BENCH_THREADS ? Number(process.env.ONEWORD_BENCH_THREADS) : availableParallelism();
  const lowMemory = process.env.ONEWORD_BENCH_LOW_MEMORY === '1';
  return { case: name, seconds, ...rest, peak_rss_mb: peakRssMb(), ...rssSplitMb(), peer_seconds: peer, ratio: peer ? seconds / peer : null, threads, ...(lowMemory ? { low_memory: 1 } : {}) };
}
