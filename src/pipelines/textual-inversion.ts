// Textual inversion (Gal et al. 2022): learn the embedding v* of a new token from a few
// images, with the text encoder, UNet and VAE frozen. Each step: pick an image (and maybe
// its mirror), caption it with a random neutral template, sample its cached latent
// distribution, noise it at a uniform random timestep, and take an AdamW step on v* to
// minimise the MSE between the UNet's prediction and the noise (or v).
import { createHash } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.ts';
import { flipHorizontal, ImageError, listImages, loadTrainingImage } from '../io/images.ts';
import { saveA1111Embedding, saveDiffusersEmbedding } from '../io/embeddings.ts';
import { adamWState, adamWStep, clipGradNorm, type AdamWState } from '../optim/adamw.ts';
import { createScheduler, TorchGenerator } from '../schedulers/index.ts';
import { tokenizeWeighted } from './prompt.ts';
import { makeSchedule, type ScheduleKind } from './lr-schedule.ts';
import { templatesFor, type ConceptKind } from './templates.ts';
import { TrainStep } from './ti-step.ts';
import type { StableDiffusion } from './stable-diffusion.ts';
import { OnewordError } from '../errors.ts';

export interface TrainOptions {
  images: string;
  token: string;
  init: string;
  vectors: number;
  what: ConceptKind;
  resolution: number;
  centerCrop: boolean;
  flipP: number;
  steps: number;
  lr: string | number;
  scaleLr: boolean;
  batch: number;
  gradAccum: number;
  lrSchedule: ScheduleKind;
  lrWarmup: number;
  maxGradNorm: number | null;
  seed: number;
  saveEvery: number;
  out: string;
  adamBeta1: number;
  adamBeta2: number;
  adamEps: number;
  weightDecay: number;
}

export const TRAIN_DEFAULTS = {
  vectors: 1,
  what: 'object' as ConceptKind,
  centerCrop: false,
  flipP: 0.5,
  steps: 3000,
  lr: 5e-4 as string | number,
  scaleLr: false,
  batch: 1,
  gradAccum: 1,
  lrSchedule: 'constant' as ScheduleKind,
  lrWarmup: 0,
  maxGradNorm: null as number | null,
  seed: 0,
  saveEvery: 500,
  adamBeta1: 0.9,
  adamBeta2: 0.999,
  adamEps: 1e-8,
  weightDecay: 1e-2,
};

export class TrainError extends OnewordError {
  override name = 'TrainError';
}

/** One training image (and, when flips are on, its mirror), encoded once. */
interface CachedLatents {
  path: string;
  mean: Float32Array[];
  std: Float32Array[];
}

export interface StepLog {
  step: number;
  loss: number;
  lr: number;
  seconds: number;
  grad_norm?: number;
}

export interface TrainerState {
  step: number;
  vectors: Float32Array;
  adam: AdamWState;
  rng: ReturnType<TorchGenerator['getState']>;
}

const STATE_FILE = 'train-state.safetensors';

function hashImages(paths: string[]): string {
  const h = createHash('sha256');
  for (const p of paths) h.update(readFileSync(p));
  return h.digest('hex').slice(0, 16);
}

/**
 * Validates options against the model and the image folder; every problem a user can
 * make is reported here, before any compute.
 */
export function checkTrainOptions(sd: StableDiffusion, o: TrainOptions): { images: string[]; initIds: number[] } {
  const f = sd.vaeFactor;
  const bad = (option: string, problem: string) => TrainError.badOption(option, problem);
  if (!/\S/.test(o.token) || /\s/.test(o.token)) throw bad('token', `must be one word without spaces, got "${o.token}"`);
  if (!Number.isInteger(o.vectors) || o.vectors < 1 || o.vectors > 75) throw bad('vectors', `must be a whole number from 1 to 75, got ${o.vectors}`);
  if (!Number.isInteger(o.resolution) || o.resolution < f || o.resolution % f !== 0) {
    throw bad('resolution', `must be a positive multiple of ${f} (this model's VAE downscales by ${f}), got ${o.resolution}`);
  }
  for (const [k, v] of [['steps', o.steps], ['batch', o.batch], ['gradAccum', o.gradAccum]] as const) {
    if (!Number.isInteger(v) || v < 1) throw bad(k, `must be a positive whole number, got ${v}`);
  }
  if (!(o.flipP >= 0 && o.flipP <= 1)) throw bad('flipP', `must be between 0 and 1, got ${o.flipP}`);
  if (!Number.isInteger(o.saveEvery) || o.saveEvery < 0) throw bad('saveEvery', `must be a whole number ≥ 0, got ${o.saveEvery}`);
  if (o.maxGradNorm !== null && !(o.maxGradNorm > 0)) throw bad('maxGradNorm', `must be positive, got ${o.maxGradNorm}`);
  if (o.what !== 'object' && o.what !== 'style') throw bad('what', `must be object or style, got "${o.what}"`);
  makeSchedule(o.lr, o.lrSchedule, o.steps, o.lrWarmup);
  // The token must be new to the tokenizer, in every spelling it would be matched by.
  const existing = sd.tokenizer.tokenToId(o.token) ?? sd.tokenizer.tokenToId(`${o.token}</w>`) ?? sd.tokenizer.tokenToId(`${o.token.toLowerCase()}</w>`);
  if (existing !== undefined) {
    throw new TrainError(`token "${o.token}" already exists in the vocabulary (id ${existing}); choose a new word such as "<${o.token.replace(/^<|>$/g, '')}>"`, { usage: true, option: 'token' });
  }
  const initIds = sd.tokenizer.encode(o.init);
  if (!o.init.trim() || initIds.length === 0) throw bad('init', `"${o.init}" has no tokens; give a word that describes the concept, e.g. "cat"`);
  if (!existsSync(o.images)) throw bad('images', `${o.images}: no such folder`);
  let images: string[];
  try {
    images = listImages(o.images);
  } catch (e) {
    if (e instanceof ImageError) throw bad('images', e.message);
    throw e;
  }
  return { images, initIds };
}

export class TextualInversionTrainer {
  readonly schedule;
  private cache: CachedLatents[] = [];
  private step!: TrainStep;
  private readonly noiseScheduler;
  private readonly gen: TorchGenerator;
  state: TrainerState;
  private order: number[] = [];
  private stopRequested = false;

  private constructor(
    readonly sd: StableDiffusion,
    readonly opts: TrainOptions,
    readonly images: string[],
    readonly imagesHash: string,
    initIds: number[],
  ) {
    const d = sd.hiddenSize;
    const lr = typeof opts.lr === 'number' && opts.scaleLr ? opts.lr * opts.batch * opts.gradAccum : opts.lr;
    this.schedule = makeSchedule(lr, opts.lrSchedule, opts.steps, opts.lrWarmup);
    this.noiseScheduler = createScheduler('ddpm', sd.ckpt.schedulerConfig);
    this.gen = new TorchGenerator(opts.seed);
    // v* starts as the init phrase's embeddings, token by token, cycling (as kohya and A1111 do).
    const table = sd.ckpt.textEncoder.float32('text_model.embeddings.token_embedding.weight');
    const vectors = new Float32Array(opts.vectors * d);
    for (let k = 0; k < opts.vectors; k++) {
      const id = initIds[k % initIds.length];
      vectors.set(table.subarray(id * d, (id + 1) * d), k * d);
    }
    this.state = { step: 0, vectors, adam: adamWState(vectors.length), rng: this.gen.getState() };
  }

  static async create(sd: StableDiffusion, opts: TrainOptions): Promise<TextualInversionTrainer> {
    const { images, initIds } = checkTrainOptions(sd, opts);
    const t = new TextualInversionTrainer(sd, opts, images, hashImages(images), initIds);
    const learned = sd.addLearnedToken(opts.token, t.state.vectors, opts.vectors);
    if (learned.ids[0] !== sd.vocabSize) throw new TrainError('train: the token to learn must be the first added token');
    await t.encodeImages();
    const f = sd.vaeFactor;
    const r = opts.resolution / f;
    t.step = await TrainStep.create(sd, { batch: opts.batch, rows: opts.vectors, latent: [sd.latentChannels, r, r] });
    return t;
  }

  /** The VAE encoder runs once per image (and per mirror), never per step. */
  private async encodeImages(): Promise<void> {
    const size = this.opts.resolution;
    const flips = this.opts.flipP > 0;
    for (const path of this.images) {
      const chw = await loadTrainingImage(path, { size, centerCrop: this.opts.centerCrop });
      const versions = flips ? [chw, flipHorizontal(chw, size, size)] : [chw];
      const entry: CachedLatents = { path, mean: [], std: [] };
      for (const v of versions) {
        const d = await this.sd.vaeEncode(v, [1, 3, size, size]);
        entry.mean.push(d.mean);
        entry.std.push(d.std);
      }
      this.cache.push(entry);
    }
  }

  requestStop(): void {
    this.stopRequested = true;
  }
  get stopping(): boolean {
    return this.stopRequested;
  }

  /** Next image index: a fresh random permutation each pass over the images. */
  private nextImage(): number {
    if (this.order.length === 0) {
      const n = this.cache.length;
      const u = this.gen.rand(n);
      this.order = Array.from({ length: n }, (_, i) => i).sort((a, b) => u[a] - u[b] || a - b);
    }
    return this.order.shift()!;
  }

  private promptIds(template: string): number[] {
    const text = template.replace('{}', this.opts.token);
    const embeddings = new Map([[this.opts.token, this.opts.vectors]]);
    return tokenizeWeighted(this.sd.tokenizer, text, { embeddings, emphasis: false }).chunks[0].ids;
  }

  /** Builds one random batch: ids, noisy latents, timesteps, targets. */
  private sampleBatch() {
    const b = this.opts.batch;
    const templates = templatesFor(this.opts.what);
    const [ch, h, w] = [this.sd.latentChannels, this.opts.resolution / this.sd.vaeFactor, this.opts.resolution / this.sd.vaeFactor];
    const n = ch * h * w;
    const ids: number[] = [];
    const noisy = new Float32Array(b * n);
    const target = new Float32Array(b * n);
    const ts: number[] = [];
    const sf = this.sd.scalingFactor;
    for (let k = 0; k < b; k++) {
      const img = this.cache[this.nextImage()];
      const u = this.gen.rand(2);
      const flip = img.mean.length > 1 && u[0] < this.opts.flipP ? 1 : 0;
      const template = templates[Math.min(templates.length - 1, Math.floor(u[1] * templates.length))];
      ids.push(...this.promptIds(template));
      const eps = this.gen.randn([1, ch, h, w]);
      const mean = img.mean[flip];
      const std = img.std[flip];
      const latents = Float32Array.from(mean, (m, i) => (m + std[i] * eps[i]) * sf);
      const noise = this.gen.randn([1, ch, h, w]);
      const t = this.gen.randint(0, this.noiseScheduler.numTrainTimesteps, 1)[0];
      noisy.set(this.noiseScheduler.addNoise(latents, noise, [t]), k * n);
      target.set(this.noiseScheduler.trainingTarget(latents, noise, [t]), k * n);
      ts.push(t);
    }
    return { ids, noisy, target, ts };
  }

  /** One optimiser step (with gradient accumulation); returns its log line. */
  async trainStep(t0: number): Promise<StepLog> {
    const s = this.state;
    const grad = new Float32Array(s.vectors.length);
    let loss = 0;
    for (let a = 0; a < this.opts.gradAccum; a++) {
      const batch = this.sampleBatch();
      const r = await this.step.run({ ...batch, t: batch.ts, rows: s.vectors });
      loss += r.loss / this.opts.gradAccum;
      for (let i = 0; i < grad.length; i++) grad[i] += r.grad[i] / this.opts.gradAccum;
    }
    let gradNorm: number | undefined;
    if (this.opts.maxGradNorm !== null) gradNorm = clipGradNorm([grad], this.opts.maxGradNorm);
    const lr = this.schedule.at(s.step);
    adamWStep(s.vectors, grad, s.adam, {
      lr, beta1: this.opts.adamBeta1, beta2: this.opts.adamBeta2, eps: this.opts.adamEps, weightDecay: this.opts.weightDecay,
    });
    s.step += 1;
    this.sd.addLearnedToken(this.opts.token, s.vectors, this.opts.vectors);
    const log: StepLog = { step: s.step, loss, lr, seconds: (performance.now() - t0) / 1000 };
    if (gradNorm !== undefined) log.grad_norm = gradNorm;
    return log;
  }

  /**
   * Loss on a fixed set of (image, flip, noise, timestep) draws, independent of the
   * training RNG: the number that shows whether v* is learning.
   */
  async fixedLoss(samples = 8, seed = 1234): Promise<number> {
    const gen = new TorchGenerator(seed);
    const [ch, h, w] = [this.sd.latentChannels, this.opts.resolution / this.sd.vaeFactor, this.opts.resolution / this.sd.vaeFactor];
    const templates = templatesFor(this.opts.what);
    const timesteps = Array.from({ length: samples }, (_, i) => Math.floor(((i + 0.5) / samples) * this.noiseScheduler.numTrainTimesteps));
    const fixedStep = this.opts.batch === 1 ? this.step : await TrainStep.create(this.sd, { batch: 1, rows: this.opts.vectors, latent: [ch, h, w] });
    let total = 0;
    for (let i = 0; i < samples; i++) {
      const img = this.cache[i % this.cache.length];
      const eps = gen.randn([1, ch, h, w]);
      const noise = gen.randn([1, ch, h, w]);
      const latents = Float32Array.from(img.mean[0], (m, k) => (m + img.std[0][k] * eps[k]) * this.sd.scalingFactor);
      const t = timesteps[i];
      const r = await fixedStep.run({
        ids: this.promptIds(templates[i % templates.length]),
        rows: this.state.vectors,
        noisy: this.noiseScheduler.addNoise(latents, noise, [t]),
        t: [t],
        target: this.noiseScheduler.trainingTarget(latents, noise, [t]),
      });
      total += r.loss;
    }
    return total / samples;
  }

  /** Atomically writes the whole training state (embedding, AdamW moments, step, RNG, options). */
  saveState(dir = this.opts.out): string {
    mkdirSync(dir, { recursive: true });
    const s = this.state;
    s.rng = this.gen.getState();
    const path = join(dir, STATE_FILE);
    writeSafetensors(
      path,
      {
        vectors: { dtype: 'F32', shape: [this.opts.vectors, this.sd.hiddenSize], data: s.vectors },
        'adam.m': { dtype: 'F32', shape: [s.vectors.length], data: s.adam.m },
        'adam.v': { dtype: 'F32', shape: [s.vectors.length], data: s.adam.v },
      },
      {
        format: 'oneword-train-state',
        step: String(s.step),
        adam_step: String(s.adam.step),
        rng: JSON.stringify(s.rng),
        order: JSON.stringify(this.order),
        options: JSON.stringify(this.opts),
        images_hash: this.imagesHash,
        model: this.sd.ckpt.source,
      },
    );
    return path;
  }

  /** Restores a state written by saveState; the images must be the same files. */
  loadState(dir: string): void {
    const path = join(dir, STATE_FILE);
    if (!existsSync(path)) throw TrainError.badOption('resume', `${dir}: no ${STATE_FILE} in this folder`);
    const f = SafetensorsFile.open(path);
    if (f.metadata.format !== 'oneword-train-state') throw new TrainError(`${path}: not a oneword training state`);
    if (f.metadata.images_hash !== this.imagesHash) throw TrainError.badOption('resume', `${dir}: the training images changed since this state was saved`);
    const vectors = f.readFloat32('vectors');
    if (vectors.length !== this.state.vectors.length) throw new TrainError(`${path}: ${vectors.length} values, expected ${this.state.vectors.length}`);
    this.state.vectors.set(vectors);
    this.state.adam = { step: Number(f.metadata.adam_step), m: f.readFloat32('adam.m'), v: f.readFloat32('adam.v') };
    this.state.step = Number(f.metadata.step);
    this.gen.setState(JSON.parse(f.metadata.rng));
    this.order = JSON.parse(f.metadata.order ?? '[]') as number[];
    this.sd.addLearnedToken(this.opts.token, this.state.vectors, this.opts.vectors);
  }

  /** Writes the learned word in both formats: diffusers and A1111/ComfyUI. */
  saveEmbeddings(dir = this.opts.out, suffix = ''): { diffusers: string; a1111: string } {
    mkdirSync(dir, { recursive: true });
    const d = this.sd.hiddenSize;
    const name = this.opts.token.replace(/^<|>$/g, '') || 'embedding';
    const diffusers = join(dir, `learned_embeds${suffix}.safetensors`);
    const a1111 = join(dir, `${name}${suffix}.safetensors`);
    saveDiffusersEmbedding(diffusers, this.opts.token, this.state.vectors, this.opts.vectors, d);
    saveA1111Embedding(a1111, name, this.state.vectors, this.opts.vectors, d, { step: this.state.step, sdCheckpointName: this.sd.ckpt.source });
    return { diffusers, a1111 };
  }
}

/** Reads the options saved in a state folder (for --resume). */
export function savedOptions(dir: string): TrainOptions {
  const path = join(dir, STATE_FILE);
  if (!existsSync(path)) throw TrainError.badOption('resume', `${dir}: no ${STATE_FILE} in this folder`);
  return JSON.parse(SafetensorsFile.open(path).metadata.options) as TrainOptions;
}

export interface TrainHooks {
  onStep?: (log: StepLog, runningLoss: number) => void;
  onSave?: (step: number, files: string[]) => void;
  /** Called every `previewEvery` steps (and at the end) with the trainer. */
  preview?: { every: number; run: (trainer: TextualInversionTrainer) => Promise<string[]> };
}

/**
 * The training loop: steps until `opts.steps`, checkpoints every `saveEvery` steps and when
 * stopped (Ctrl-C), logs each step to train-log.jsonl. Returns the final log lines.
 */
export async function train(trainer: TextualInversionTrainer, hooks: TrainHooks = {}): Promise<{ stopped: boolean; last?: StepLog }> {
  const o = trainer.opts;
  mkdirSync(o.out, { recursive: true });
  const logPath = join(o.out, 'train-log.jsonl');
  const t0 = performance.now();
  let running = NaN;
  let last: StepLog | undefined;
  const checkpoint = () => {
    const files = [trainer.saveState()];
    const e = trainer.saveEmbeddings(o.out, `-steps-${trainer.state.step}`);
    files.push(e.diffusers, e.a1111);
    hooks.onSave?.(trainer.state.step, files);
  };
  while (trainer.state.step < o.steps) {
    if (trainer.stopping) {
      checkpoint();
      return { stopped: true, last };
    }
    last = await trainer.trainStep(t0);
    running = Number.isNaN(running) ? last.loss : 0.98 * running + 0.02 * last.loss;
    appendFileSync(logPath, `${JSON.stringify(last)}\n`);
    hooks.onStep?.(last, running);
    const step = trainer.state.step;
    if (o.saveEvery > 0 && step % o.saveEvery === 0 && step < o.steps) checkpoint();
    if (hooks.preview && hooks.preview.every > 0 && step % hooks.preview.every === 0 && step < o.steps) await hooks.preview.run(trainer);
  }
  trainer.saveState();
  const e = trainer.saveEmbeddings();
  hooks.onSave?.(trainer.state.step, [e.diffusers, e.a1111]);
  if (hooks.preview && hooks.preview.every > 0) await hooks.preview.run(trainer);
  return { stopped: false, last };
}
