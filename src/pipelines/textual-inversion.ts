// Textual inversion (Gal et al. 2022): learn the embedding v* of a new token from a few
// images, with the text encoder, UNet and VAE frozen. Each step: pick an image (and maybe
// its mirror), caption it with a random neutral template, sample its cached latent
// distribution, noise it at a uniform random timestep, and take an AdamW step on v* to
// minimise the MSE between the UNet's prediction and the noise (or v).
import { createHash, type Hash } from 'node:crypto';
import { appendFileSync, existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../io/safetensors.ts';
import { modelFingerprint } from './model-fingerprint.ts';
import { makeFolder } from '../io/output-folder.ts';
import { decodeRgb, flipHorizontal, ImageError, listImages, rgbImageProblem, trainingPixels, type RgbImage, type TrainingImageOptions } from '../io/images.ts';
import {
  diffusersSecondFile, saveA1111Embedding, saveDiffusersEmbedding, saveDiffusersSDXLEmbedding, saveSDXLEmbedding, type LearnedEmbedding,
} from '../io/embeddings.ts';
import { adamWState, adamWStep, clipGradNorm, type AdamWState } from '../optim/adamw.ts';
import { createScheduler, TorchGenerator } from '../schedulers/index.ts';
import { tokenizeWeighted } from './prompt.ts';
import { makeSchedule, ScheduleError, type ScheduleKind } from './lr-schedule.ts';
import { fillTrainingTemplate, readTemplateFile, templatesFor, type ConceptKind } from './templates.ts';
import { TrainStep, type TrainStepShape } from './ti-step.ts';
import { TextFeeds, type PromptIds, type RowFeeds } from './step-feeds.ts';
import type { CLIPTokenizer } from '../models/clip-tokenizer.ts';
import { checkStoppingOptions, evalInterval, STOPPING_DEFAULTS, StoppingRecord, type InitMode, type Recommendation, type StoppingOptions } from './early-stopping.ts';
import { EvalBatch } from './eval-batch.ts';
import { addInitPull, initialVectors } from './init-embedding.ts';
import type { StableDiffusion } from './stable-diffusion.ts';
import { OnewordError } from '../errors.ts';
import { embeddingFileNames, keepLogThrough, LOG_FILE, STATE_FILE, tokenFileNameProblem } from './run-files.ts';

/** Training images: a folder, or a list of image files and/or decoded RGB images. */
export type TrainingImages = string | ReadonlyArray<string | RgbImage>;

export interface TrainOptions extends StoppingOptions {
  images: TrainingImages;
  token: string;
  init: string;
  vectors: number;
  what: ConceptKind;
  /** An AUTOMATIC1111 template file ([name], [filewords]) instead of the built-in templates of `what`. */
  templateFile: string | null;
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
  /** Folder for checkpoints, the step log and the final embeddings; without it nothing is written. */
  out?: string;
  adamBeta1: number;
  adamBeta2: number;
  adamEps: number;
  weightDecay: number;
  /** Start from the init phrase's token embeddings, or from the text encoder's output for it. */
  initMode: InitMode;
  /** λ of an L2 pull λ‖v − v₀‖² towards the starting vectors (0 = none). */
  initPull: number;
}

export const TRAIN_DEFAULTS = {
  ...STOPPING_DEFAULTS,
  initMode: 'tokens' as InitMode,
  initPull: 0,
  vectors: 1,
  what: 'object' as ConceptKind,
  templateFile: null as string | null,
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

/** One training image, from a file or from memory. */
interface ImageSource {
  name: string;
  /** The image's caption, for [filewords] (a .txt beside an image file; none for images in memory). */
  caption: string;
  /** Training pixels [3, size, size], and the image's own size (SDXL conditions on it). */
  pixels(opts: TrainingImageOptions): Promise<{ chw: Float32Array; height: number; width: number }>;
  /** Feeds the image's content to the hash that ties a saved state to its images. */
  hash(h: Hash): void;
}

/** One training image (and, when flips are on, its mirror), encoded once. */
interface CachedLatents {
  name: string;
  /** The image's own caption (its .txt file), for [filewords]. */
  caption: string;
  mean: Float32Array[];
  std: Float32Array[];
  /** SDXL's time ids: [original height, original width, crop top, crop left, target height, target width]. */
  timeIds: number[];
}

export interface StepLog {
  step: number;
  loss: number;
  lr: number;
  seconds: number;
  grad_norm?: number;
  /** The deterministic loss on the evaluation batch (on evaluation steps). */
  eval_loss?: number;
  /** With stop auto: Var(last window) / Var(all) of the deterministic loss. */
  var_ratio?: number;
}

export interface TrainerState {
  step: number;
  vectors: Float32Array;
  adam: AdamWState;
  rng: ReturnType<TorchGenerator['getState']>;
}

/** The caption beside an image (`cat.png` → `cat.txt`), as AUTOMATIC1111 and kohya read it; '' if none. */
export function captionOf(imagePath: string): string {
  const txt = imagePath.replace(/\.[^./\\]+$/, '.txt');
  return existsSync(txt) ? readFileSync(txt, 'utf8').replace(/\s+/g, ' ').trim() : '';
}

/** Identity of the training set: the images and their captions (a resume must see the same). */
function hashImages(images: ImageSource[]): string {
  const h = createHash('sha256');
  for (const img of images) img.hash(h);
  return h.digest('hex').slice(0, 16);
}

const fileSource = (path: string): ImageSource => {
  const caption = captionOf(path);
  return {
    name: path,
    caption,
    pixels: async (opts) => {
      const img = await decodeRgb(path);
      return { chw: trainingPixels(img, opts), height: img.height, width: img.width };
    },
    hash: (h) => h.update(readFileSync(path)).update(caption),
  };
};

const memorySource = (img: RgbImage, index: number): ImageSource => ({
  name: `image ${index}`,
  caption: '',
  pixels: async (opts) => ({ chw: trainingPixels(img, opts), height: img.height, width: img.width }),
  hash: (h) => h.update(`rgb ${img.width}x${img.height}\n`).update(img.data),
});

/** The images to train on, checked: a folder's images, or each file or RGB image given. */
function imageSources(images: TrainingImages): ImageSource[] {
  const bad = (problem: string) => TrainError.badOption('images', problem);
  if (typeof images === 'string') {
    if (!existsSync(images)) throw bad(`${images}: no such folder`);
    try {
      return listImages(images).map(fileSource);
    } catch (e) {
      if (e instanceof ImageError) throw bad(e.message);
      throw e;
    }
  }
  if (!images || typeof images.length !== 'number' || images.length === 0) throw bad('must be a folder, or a non-empty list of image files or RGB images');
  return images.map((img, i) => {
    if (typeof img === 'string') {
      if (!existsSync(img) || !statSync(img).isFile()) throw bad(`${img}: no such file`);
      return fileSource(img);
    }
    const problem = rgbImageProblem(img);
    if (problem) throw bad(`[${i}]: ${problem}`);
    return memorySource(img, i);
  });
}

/** The images option as it can be saved with a training state (in-memory images cannot). */
function savableImages(images: TrainingImages): TrainingImages | null {
  if (typeof images === 'string') return images;
  return images.every((i) => typeof i === 'string') ? images : null;
}

/** Options as given before a model is loaded: the resolution default comes from the model. */
export type TrainValues = Omit<TrainOptions, 'resolution'> & { resolution?: number };

const LIMITS = { resolution: 4096, steps: 10_000_000, batch: 256, gradAccum: 10_000 } as const;

/**
 * Validates every option that does not need the model: the values, the token's spelling
 * (it names a file), the images and the template file. The CLI runs it before loading a
 * model; checkTrainOptions runs it again with the model's own checks.
 */
export function checkTrainValues(o: TrainValues): { images: ImageSource[]; templates: readonly string[] } {
  const bad = (option: string, problem: string) => TrainError.badOption(option, problem);
  if (typeof o.token !== 'string' || !/\S/.test(o.token) || /\s/.test(o.token)) throw bad('token', `must be one word without spaces, got "${o.token}"`);
  const nameProblem = tokenFileNameProblem(o.token);
  if (nameProblem) throw bad('token', nameProblem);
  if (typeof o.init !== 'string') throw bad('init', `must be a word or phrase, got ${JSON.stringify(o.init)}`);
  if (!Number.isInteger(o.vectors) || o.vectors < 1 || o.vectors > 75) throw bad('vectors', `must be a whole number from 1 to 75, got ${o.vectors}`);
  const whole = (k: keyof typeof LIMITS, v: unknown) => {
    if (!Number.isInteger(v) || (v as number) < 1 || (v as number) > LIMITS[k]) throw bad(k, `must be a whole number from 1 to ${LIMITS[k]}, got ${v}`);
  };
  if (o.resolution !== undefined) whole('resolution', o.resolution);
  whole('steps', o.steps);
  whole('batch', o.batch);
  whole('gradAccum', o.gradAccum);
  if (!(o.flipP >= 0 && o.flipP <= 1)) throw bad('flipP', `must be between 0 and 1, got ${o.flipP}`);
  if (!Number.isInteger(o.saveEvery) || o.saveEvery < 0) throw bad('saveEvery', `must be a whole number ≥ 0, got ${o.saveEvery}`);
  if (o.maxGradNorm !== null && !(o.maxGradNorm > 0 && o.maxGradNorm < Infinity)) throw bad('maxGradNorm', `must be a positive number, got ${o.maxGradNorm}`);
  if (o.what !== 'object' && o.what !== 'style') throw bad('what', `must be object or style, got "${o.what}"`);
  if (!Number.isSafeInteger(o.seed) || o.seed < 0) throw bad('seed', `must be a whole number from 0 to ${Number.MAX_SAFE_INTEGER}, got ${o.seed}`);
  if (!['constant', 'linear', 'cosine'].includes(o.lrSchedule)) throw bad('lrSchedule', `must be constant, linear or cosine, got "${o.lrSchedule}"`);
  if (!Number.isInteger(o.lrWarmup) || o.lrWarmup < 0) throw bad('lrWarmup', `must be a whole number ≥ 0, got ${o.lrWarmup}`);
  checkStoppingOptions(o);
  try {
    makeSchedule(o.lr, o.lrSchedule, o.steps, o.lrWarmup);
  } catch (e) {
    if (e instanceof ScheduleError) throw bad('lr', e.message.replace(/^learning rate /, ''));
    throw e;
  }
  for (const [k, v] of [['adamBeta1', o.adamBeta1], ['adamBeta2', o.adamBeta2]] as const) if (!(v >= 0 && v < 1)) throw bad(k, `must be from 0 to below 1, got ${v}`);
  if (!(o.adamEps > 0 && o.adamEps < Infinity)) throw bad('adamEps', `must be a positive number, got ${o.adamEps}`);
  if (!(o.weightDecay >= 0 && o.weightDecay < Infinity)) throw bad('weightDecay', `must be a number ≥ 0, got ${o.weightDecay}`);
  let templates: readonly string[] = templatesFor(o.what);
  if (o.templateFile) {
    if (!existsSync(o.templateFile)) throw bad('templateFile', `${o.templateFile}: no such file`);
    try {
      templates = readTemplateFile(o.templateFile, readFileSync(o.templateFile, 'utf8'));
    } catch (e) {
      throw bad('templateFile', (e as Error).message);
    }
  }
  return { images: imageSources(o.images), templates };
}

/**
 * Validates options against the model and the image folder; every problem a user can
 * make is reported here, before any compute.
 */
export function checkTrainOptions(sd: StableDiffusion, o: TrainOptions): { images: ImageSource[]; initIds: number[]; templates: readonly string[] } {
  const { images, templates } = checkTrainValues(o);
  const f = sd.vaeFactor;
  const bad = (option: string, problem: string) => TrainError.badOption(option, problem);
  if (o.resolution < f || o.resolution % f !== 0) {
    throw bad('resolution', `must be a positive multiple of ${f} (this model's VAE downscales by ${f}), got ${o.resolution}`);
  }
  // The token must be new to the tokenizer(s), in every spelling it would be matched by.
  for (const tok of sd.tokenizer2 ? [sd.tokenizer, sd.tokenizer2] : [sd.tokenizer]) {
    const existing = tok.tokenToId(o.token) ?? tok.tokenToId(`${o.token}</w>`) ?? tok.tokenToId(`${o.token.toLowerCase()}</w>`);
    if (existing !== undefined) {
      throw new TrainError(`token "${o.token}" already exists in the vocabulary (id ${existing}); choose a new word such as "<${o.token.replace(/^<|>$/g, '')}>"`, { usage: true, option: 'token' });
    }
  }
  if (sd.isXL && o.initMode === 'encoder') {
    throw bad('initMode', 'encoder (Cross Initialization) is for SD 1.x/2.x models; SDXL words start from the init phrase\'s token embeddings (tokens)');
  }
  const initIds = sd.tokenizer.encode(o.init);
  if (!o.init.trim() || initIds.length === 0) throw bad('init', `"${o.init}" has no tokens; give a word that describes the concept, e.g. "cat"`);
  return { images, initIds, templates };
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
  /** The vectors training started from (for the init pull). */
  initVectors = new Float32Array(0);
  /** Deterministic losses, saved steps and the stop point (stop auto, --keep). */
  record = new StoppingRecord();
  private evalBatch?: EvalBatch;
  private evalStep?: TrainStep;
  /** The last deterministic loss and the vectors it was computed for (a saved step often is an evaluation step too). */
  private lastEval?: { vectors: Float32Array; loss: number };

  private constructor(
    readonly sd: StableDiffusion,
    readonly opts: TrainOptions,
    readonly images: ImageSource[],
    readonly imagesHash: string,
    readonly templates: readonly string[],
  ) {
    const lr = typeof opts.lr === 'number' && opts.scaleLr ? opts.lr * opts.batch * opts.gradAccum : opts.lr;
    this.schedule = makeSchedule(lr, opts.lrSchedule, opts.steps, opts.lrWarmup);
    this.noiseScheduler = createScheduler('ddpm', sd.ckpt.schedulerConfig);
    this.gen = new TorchGenerator(opts.seed);
    // v* is set from the init phrase in create() (initialVectors). SDXL: every vector for
    // text encoder 1, then every vector for text encoder 2, optimised as one parameter.
    const vectors = new Float32Array(opts.vectors * (sd.hiddenSize + sd.hiddenSize2));
    this.state = { step: 0, vectors, adam: adamWState(vectors.length), rng: this.gen.getState() };
  }

  static async create(sd: StableDiffusion, opts: TrainOptions): Promise<TextualInversionTrainer> {
    const { images, initIds, templates } = checkTrainOptions(sd, opts);
    const t = new TextualInversionTrainer(sd, opts, images, hashImages(images), templates);
    // Images first: a file that fails to decode must not leave the word half-registered.
    await t.encodeImages();
    t.state.vectors.set(await initialVectors(sd, { text: opts.init, ids: initIds, vectors: opts.vectors, mode: opts.initMode }));
    t.initVectors = Float32Array.from(t.state.vectors);
    t.register(t.state.vectors);
    t.step = await t.stepFor(opts.batch);
    return t;
  }

  /**
   * The train step for `batch` images. It sees every learned token's rows (the model may
   * hold other words already); only this token's rows are updated.
   */
  private async stepFor(batch: number, current?: TrainStep, gradient = true): Promise<TrainStep> {
    const shape = this.stepShape(batch);
    if (current && current.shape.rows === shape.rows && current.shape.rows2 === shape.rows2) return current;
    return TrainStep.create(this.sd, shape, false, gradient);
  }

  private stepShape(batch: number): TrainStepShape {
    const r = this.opts.resolution / this.sd.vaeFactor;
    const rows = this.sd.extraRows().length / this.sd.hiddenSize;
    const rows2 = this.sd.isXL ? this.sd.extraRows2().length / this.sd.hiddenSize2 : undefined;
    return { batch, rows, rows2, latent: [this.sd.latentChannels, r, r] };
  }

  /** This token's vectors for text encoder 1 and (SDXL) text encoder 2. */
  private split(vectors: Float32Array): [Float32Array, Float32Array | undefined] {
    const n1 = this.opts.vectors * this.sd.hiddenSize;
    return [vectors.subarray(0, n1), this.sd.isXL ? vectors.subarray(n1) : undefined];
  }

  /** Sets this token's vectors in the model. */
  private register(vectors: Float32Array): void {
    const [v1, v2] = this.split(vectors);
    this.sd.addLearnedToken(this.opts.token, v1, this.opts.vectors, v2);
  }

  /** Every learned row of each text encoder, with this token's set to `vectors`. */
  private rowsWith(vectors: Float32Array): RowFeeds {
    this.register(vectors);
    return this.sd.isXL ? { rows: this.sd.extraRows(), rows2: this.sd.extraRows2() } : { rows: this.sd.extraRows() };
  }

  /** This token's part of a gradient over every learned row (SDXL: of both encoders, in split()'s order). */
  private ownGradient(r: { grad: Float32Array; grad2?: Float32Array }): Float32Array {
    const t = this.sd.learned.get(this.opts.token)!;
    const own = (all: Float32Array, ids: number[], vocab: number, d: number) => {
      const g = new Float32Array(ids.length * d);
      ids.forEach((id, k) => g.set(all.subarray((id - vocab) * d, (id - vocab + 1) * d), k * d));
      return g;
    };
    const g1 = own(r.grad, t.ids, this.sd.vocabSize, this.sd.hiddenSize);
    if (!this.sd.isXL) return g1;
    const g2 = own(r.grad2!, t.ids2!, this.sd.ckpt.textEncoder2Config!.vocab_size, this.sd.hiddenSize2);
    const g = new Float32Array(g1.length + g2.length);
    g.set(g1);
    g.set(g2, g1.length);
    return g;
  }

  /** SDXL's time ids for an image of this size, as diffusers' SDXL script: crop (0, 0), square target. */
  private timeIds(height: number, width: number): number[] {
    return this.sd.isXL ? [height, width, 0, 0, this.opts.resolution, this.opts.resolution] : [];
  }

  /** The VAE encoder runs once per image (and per mirror), never per step. */
  private async encodeImages(): Promise<void> {
    const size = this.opts.resolution;
    const flips = this.opts.flipP > 0;
    for (const image of this.images) {
      const { chw, height, width } = await image.pixels({ size, centerCrop: this.opts.centerCrop });
      const versions = flips ? [chw, flipHorizontal(chw, size, size)] : [chw];
      const entry: CachedLatents = { name: image.name, caption: image.caption, mean: [], std: [], timeIds: this.timeIds(height, width) };
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

  /** A caption's token ids for each tokenizer (SDXL's pad differently). */
  private promptIds(template: string, caption = ''): PromptIds {
    const text = fillTrainingTemplate(template, this.opts.token, caption);
    const embeddings = new Map([[this.opts.token, this.opts.vectors]]);
    const ids = (tokenizer: CLIPTokenizer) => tokenizeWeighted(tokenizer, text, { embeddings, emphasis: false }).chunks[0].ids;
    return this.sd.tokenizer2 ? { ids: ids(this.sd.tokenizer), ids2: ids(this.sd.tokenizer2) } : { ids: ids(this.sd.tokenizer) };
  }

  /** Builds one random batch: ids, noisy latents, timesteps, targets. */
  private sampleBatch() {
    const b = this.opts.batch;
    const templates = this.templates;
    const [ch, h, w] = [this.sd.latentChannels, this.opts.resolution / this.sd.vaeFactor, this.opts.resolution / this.sd.vaeFactor];
    const n = ch * h * w;
    const text = new TextFeeds(this.sd.isXL);
    const noisy = new Float32Array(b * n);
    const target = new Float32Array(b * n);
    const ts: number[] = [];
    const sf = this.sd.scalingFactor;
    for (let k = 0; k < b; k++) {
      const img = this.cache[this.nextImage()];
      const u = this.gen.rand(2);
      const flip = img.mean.length > 1 && u[0] < this.opts.flipP ? 1 : 0;
      const template = templates[Math.min(templates.length - 1, Math.floor(u[1] * templates.length))];
      text.add(this.promptIds(template, img.caption), img.timeIds);
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
    return { ...text.feeds(), noisy, target, ts };
  }

  /** One optimiser step (with gradient accumulation); returns its log line. */
  async trainStep(t0: number): Promise<StepLog> {
    const s = this.state;
    const grad = new Float32Array(s.vectors.length);
    let loss = 0;
    const rows = this.rowsWith(s.vectors);
    this.step = await this.stepFor(this.opts.batch, this.step);
    for (let a = 0; a < this.opts.gradAccum; a++) {
      const batch = this.sampleBatch();
      const r = await this.step.run({ ...batch, t: batch.ts, ...rows });
      loss += r.loss / this.opts.gradAccum;
      const own = this.ownGradient(r);
      for (let i = 0; i < grad.length; i++) grad[i] += own[i] / this.opts.gradAccum;
    }
    if (!Number.isFinite(loss)) throw this.diverged(`the loss is ${loss}`);
    if (!grad.every(Number.isFinite)) throw this.diverged('the gradient is not finite');
    addInitPull(grad, s.vectors, this.initVectors, this.opts.initPull);
    let gradNorm: number | undefined;
    if (this.opts.maxGradNorm !== null) gradNorm = clipGradNorm([grad], this.opts.maxGradNorm);
    const lr = this.schedule.at(s.step);
    // The update goes to copies: a step that overflows leaves the state as it was.
    const next = { vectors: Float32Array.from(s.vectors), adam: { step: s.adam.step, m: Float32Array.from(s.adam.m), v: Float32Array.from(s.adam.v) } };
    adamWStep(next.vectors, grad, next.adam, {
      lr, beta1: this.opts.adamBeta1, beta2: this.opts.adamBeta2, eps: this.opts.adamEps, weightDecay: this.opts.weightDecay,
    });
    if (!next.vectors.every(Number.isFinite) || !next.adam.v.every(Number.isFinite)) throw this.diverged('the updated vectors are not finite');
    s.vectors.set(next.vectors);
    s.adam = next.adam;
    s.step += 1;
    this.register(s.vectors);
    const log: StepLog = { step: s.step, loss, lr, seconds: (performance.now() - t0) / 1000 };
    if (gradNorm !== undefined) log.grad_norm = gradNorm;
    return log;
  }

  /** Training cannot go on from a non-finite step; the state stays at the last good step. */
  private diverged(what: string): TrainError {
    return new TrainError(`training diverged at step ${this.state.step + 1}: ${what} (the learning rate ${this.schedule.at(this.state.step)} is likely too high); nothing of this step was kept`);
  }

  /** Identity of the model, recorded with the state (computed once). */
  get modelFingerprint(): string {
    return (this.fingerprint ??= modelFingerprint(this.sd.ckpt));
  }
  private fingerprint?: string;

  /**
   * Loss on a fixed set of (image, flip, noise, timestep) draws, independent of the
   * training RNG: the number that shows whether v* is learning.
   */
  async fixedLoss(samples = 8, seed = 1234): Promise<number> {
    const gen = new TorchGenerator(seed);
    const [ch, h, w] = [this.sd.latentChannels, this.opts.resolution / this.sd.vaeFactor, this.opts.resolution / this.sd.vaeFactor];
    const templates = this.templates;
    const timesteps = Array.from({ length: samples }, (_, i) => Math.floor(((i + 0.5) / samples) * this.noiseScheduler.numTrainTimesteps));
    const rows = this.rowsWith(this.state.vectors);
    const fixedStep = await this.stepFor(1, this.opts.batch === 1 ? this.step : undefined);
    let total = 0;
    for (let i = 0; i < samples; i++) {
      const img = this.cache[i % this.cache.length];
      const eps = gen.randn([1, ch, h, w]);
      const noise = gen.randn([1, ch, h, w]);
      const latents = Float32Array.from(img.mean[0], (m, k) => (m + img.std[0][k] * eps[k]) * this.sd.scalingFactor);
      const t = timesteps[i];
      const text = new TextFeeds(this.sd.isXL).add(this.promptIds(templates[i % templates.length], img.caption), img.timeIds);
      const r = await fixedStep.run({
        ...text.feeds(),
        ...rows,
        noisy: this.noiseScheduler.addNoise(latents, noise, [t]),
        t: [t],
        target: this.noiseScheduler.trainingTarget(latents, noise, [t]),
      });
      total += r.loss;
    }
    return total / samples;
  }

  /**
   * The denoising loss on DVAR's evaluation batch, drawn once from the seed (batch ×
   * gradAccum samples): deterministic for given vectors, so its curve shows learning.
   */
  async evalLoss(): Promise<number> {
    const s = this.state;
    const cached = this.lastEval;
    if (cached && cached.vectors.every((v, i) => Object.is(v, s.vectors[i]))) return cached.loss;
    const r = this.opts.resolution / this.sd.vaeFactor;
    const xl = this.sd.isXL;
    this.evalBatch ??= EvalBatch.draw({
      images: this.cache,
      samples: this.opts.batch * this.opts.gradAccum,
      flipP: this.opts.flipP,
      seed: this.opts.seed,
      templates: this.templates,
      text: (template, img) => new TextFeeds(xl).add(this.promptIds(template, img.caption), img.timeIds),
      scheduler: this.noiseScheduler,
      latentShape: [this.sd.latentChannels, r, r],
      scalingFactor: this.sd.scalingFactor,
    });
    const rows = this.rowsWith(s.vectors);
    this.evalStep = await this.stepFor(this.opts.batch, this.evalStep, false);
    const loss = await this.evalBatch.loss(this.evalStep, rows);
    this.lastEval = { vectors: Float32Array.from(s.vectors), loss };
    return loss;
  }

  /** Records the current step as saved, with its deterministic loss and its checkpoint's embedding files. */
  async savedStep(files: string[] = []): Promise<void> {
    this.record.addSaved(this.state.step, await this.evalLoss(), this.state.vectors, files);
  }

  /**
   * The final embeddings as `keep` asks: last = learned_embeds.safetensors and
   * <name>.safetensors hold the last step, beside the checkpoints; best = they hold the
   * recommended step and the checkpoints' embeddings are removed; all = as last, and the
   * last step also gets its own -steps-N files. Returns the files written.
   */
  keepEmbeddings(dir: string, evalLoss: number): string[] {
    const files = this.saveEmbeddings(dir, '', evalLoss).all;
    const keep = this.opts.keep;
    if (keep === 'all') {
      files.push(...this.saveEmbeddings(dir, `-steps-${this.state.step}`, evalLoss).all);
    } else if (keep === 'best') {
      const rec = this.record.recommend(this.opts);
      const best = this.record.best;
      if (rec && best && rec.step === best.step && rec.step !== this.state.step) {
        writeEmbeddingFiles(dir, this.embeddingOf(best.vectors), { step: best.step, model: this.sd.ckpt.source, evalLoss: best.evalLoss });
      }
      for (const s of this.record.saved) for (const f of s.files ?? []) rmSync(f, { force: true });
    }
    return files;
  }

  /** Atomically writes the whole training state (embedding, AdamW moments, step, RNG, options). */
  saveState(dir = this.outDir()): string {
    makeFolder(dir);
    const s = this.state;
    s.rng = this.gen.getState();
    const path = join(dir, STATE_FILE);
    const stopping = this.record.toState();
    writeSafetensors(
      path,
      {
        ...this.vectorTensors('vectors', s.vectors),
        'adam.m': { dtype: 'F32', shape: [s.vectors.length], data: s.adam.m },
        'adam.v': { dtype: 'F32', shape: [s.vectors.length], data: s.adam.v },
        ...this.stoppingTensors(stopping.bestVectors),
      },
      {
        format: 'oneword-train-state',
        step: String(s.step),
        adam_step: String(s.adam.step),
        rng: JSON.stringify(s.rng),
        order: JSON.stringify(this.order),
        options: JSON.stringify({ ...this.opts, images: savableImages(this.opts.images) }),
        images_hash: this.imagesHash,
        model: resolve(this.sd.ckpt.source),
        ...(this.sd.ckpt.configDir ? { model_config: this.sd.ckpt.configDir } : {}),
        model_fingerprint: this.modelFingerprint,
        stopping: stopping.json,
      },
    );
    return path;
  }

  private stoppingTensors(best: Float32Array | null) {
    return { ...this.vectorTensors('init.vectors', this.initVectors), ...(best ? this.vectorTensors('best.vectors', best) : {}) };
  }

  /** A vector set as state tensors: `name` [N, D] (SDXL: text encoder 1's, and `name`2 [N, D2] for encoder 2). */
  private vectorTensors(name: string, data: Float32Array): Record<string, TensorToWrite> {
    const [v1, v2] = this.split(data);
    const n = this.opts.vectors;
    const out: Record<string, TensorToWrite> = { [name]: { dtype: 'F32', shape: [n, this.sd.hiddenSize], data: v1 } };
    if (v2) out[`${name}2`] = { dtype: 'F32', shape: [n, this.sd.hiddenSize2], data: v2 };
    return out;
  }

  /** A vector set written by vectorTensors, or null when the state has none. */
  private readVectors(f: SafetensorsFile, name: string): Float32Array | null {
    if (!f.has(name)) return null;
    const v1 = f.readFloat32(name);
    if (!this.sd.isXL) return v1;
    if (!f.has(`${name}2`)) throw new TrainError(`${f.path}: no "${name}2" (text encoder 2's vectors); this state was not trained on an SDXL model`);
    const v2 = f.readFloat32(`${name}2`);
    const out = new Float32Array(v1.length + v2.length);
    out.set(v1);
    out.set(v2, v1.length);
    return out;
  }

  /** Restores a state written by saveState; the images must be the same files. */
  loadState(dir: string): void {
    const path = join(dir, STATE_FILE);
    if (!existsSync(path)) throw TrainError.badOption('resume', `${dir}: no ${STATE_FILE} in this folder`);
    const f = SafetensorsFile.open(path);
    if (f.metadata.format !== 'oneword-train-state') throw new TrainError(`${path}: not a oneword training state`);
    if (f.metadata.images_hash !== this.imagesHash) throw TrainError.badOption('resume', `${dir}: the training images changed since this state was saved`);
    // States before the fingerprint was recorded carry only the model's path.
    const fingerprint = f.metadata.model_fingerprint;
    if (fingerprint !== undefined && fingerprint !== this.modelFingerprint) {
      throw TrainError.badOption('resume', `${dir} was trained on ${f.metadata.model ?? 'another model'}, not on ${this.sd.ckpt.source} (the weights differ); pass that model`);
    }
    const vectors = this.readVectors(f, 'vectors') ?? new Float32Array(0);
    if (vectors.length !== this.state.vectors.length) throw new TrainError(`${path}: ${vectors.length} values, expected ${this.state.vectors.length}`);
    this.state.vectors.set(vectors);
    this.state.adam = { step: Number(f.metadata.adam_step), m: f.readFloat32('adam.m'), v: f.readFloat32('adam.v') };
    this.state.step = Number(f.metadata.step);
    this.gen.setState(JSON.parse(f.metadata.rng));
    this.order = JSON.parse(f.metadata.order ?? '[]') as number[];
    const init = this.readVectors(f, 'init.vectors');
    if (init) this.initVectors = Float32Array.from(init);
    this.record = StoppingRecord.fromState(f.metadata.stopping, this.readVectors(f, 'best.vectors'));
    this.register(this.state.vectors);
  }

  /** The word learned so far. */
  get embedding(): LearnedEmbedding {
    return this.embeddingOf(this.state.vectors);
  }

  /** A vector set (split()'s layout) as an embedding: SDXL words carry text encoder 2's vectors too. */
  private embeddingOf(vectors: Float32Array): LearnedEmbedding {
    const [v1, v2] = this.split(vectors);
    const e: LearnedEmbedding = { token: this.opts.token, vectors: Float32Array.from(v1), count: this.opts.vectors, dim: this.sd.hiddenSize };
    if (v2) Object.assign(e, { vectors2: Float32Array.from(v2), dim2: this.sd.hiddenSize2 });
    return e;
  }

  /** Writes the learned word in both formats: diffusers and A1111/ComfyUI. */
  /** Writes the learned word in both formats; `all` lists every file (SDXL's diffusers pair has two). */
  saveEmbeddings(dir = this.outDir(), suffix = '', evalLoss?: number): { diffusers: string; a1111: string; all: string[] } {
    const files = writeEmbeddingFiles(dir, this.embedding, { suffix, step: this.state.step, model: this.sd.ckpt.source, evalLoss });
    const all = [files.diffusers!, ...(files.diffusers2 ? [files.diffusers2] : []), files.a1111!];
    return { diffusers: files.diffusers!, a1111: files.a1111!, all };
  }

  private outDir(): string {
    if (!this.opts.out) throw new TrainError('this training run has no output folder (out)', { usage: true, option: 'out' });
    return this.opts.out;
  }
}

export type EmbeddingFileFormat = 'diffusers' | 'a1111';

/**
 * Writes a learned word as `learned_embeds<suffix>.safetensors` (diffusers) and/or
 * `<name><suffix>.safetensors` (AUTOMATIC1111 / ComfyUI; name = the token without <>).
 * SDXL words (with text encoder 2's vectors): diffusers' pair, `learned_embeds<suffix>` for
 * text_encoder and `learned_embeds_2<suffix>` for text_encoder_2 (`diffusers2`), and
 * `<name>.safetensors` with `clip_l` and `clip_g` (kohya, A1111, ComfyUI).
 */
export function writeEmbeddingFiles(
  dir: string,
  e: LearnedEmbedding,
  opts: { formats?: readonly EmbeddingFileFormat[]; suffix?: string; step?: number; model?: string; evalLoss?: number } = {},
): Partial<Record<EmbeddingFileFormat | 'diffusers2', string>> {
  const formats = opts.formats ?? ['diffusers', 'a1111'];
  for (const f of formats) if (f !== 'diffusers' && f !== 'a1111') throw TrainError.badOption('formats', `must list "diffusers" and/or "a1111", got "${f}"`);
  // Checked before anything is written: the token becomes a file name inside `dir`.
  const names = embeddingFileNames(e.token, opts.suffix);
  makeFolder(dir);
  const files: Partial<Record<EmbeddingFileFormat | 'diffusers2', string>> = {};
  const a1111Meta = { step: opts.step, sdCheckpointName: opts.model, eval_loss: opts.evalLoss };
  const name = e.token.replace(/^<|>$/g, '');
  if (formats.includes('diffusers')) {
    files.diffusers = join(dir, names.diffusers);
    if (e.vectors2) {
      saveDiffusersSDXLEmbedding(files.diffusers, e.token, e.vectors, e.vectors2, e.count, e.dim, e.dim2!, trainingMeta(opts));
      files.diffusers2 = diffusersSecondFile(files.diffusers);
    } else {
      saveDiffusersEmbedding(files.diffusers, e.token, e.vectors, e.count, e.dim, trainingMeta(opts));
    }
  }
  if (formats.includes('a1111')) {
    files.a1111 = join(dir, names.a1111);
    if (e.vectors2) saveSDXLEmbedding(files.a1111, name, e.vectors, e.vectors2, e.count, e.dim, e.dim2!, a1111Meta);
    else saveA1111Embedding(files.a1111, name, e.vectors, e.count, e.dim, a1111Meta);
  }
  return files;
}

/** The training step and its deterministic loss, for the diffusers file's metadata. */
function trainingMeta(o: { step?: number; evalLoss?: number }): Record<string, string> {
  const meta: Record<string, string> = {};
  if (o.step !== undefined) meta.step = String(o.step);
  if (o.evalLoss !== undefined) meta.eval_loss = String(o.evalLoss);
  return meta;
}

/** The state file of a run folder, opened and checked to be one. */
function openState(dir: string): SafetensorsFile {
  const path = join(dir, STATE_FILE);
  if (!existsSync(path)) throw TrainError.badOption('resume', `${dir}: no ${STATE_FILE} in this folder`);
  const f = SafetensorsFile.open(path);
  if (f.metadata.format !== 'oneword-train-state') throw new TrainError(`${path}: not a oneword training state`);
  return f;
}

/** Reads the options saved in a state folder (to resume); `images` is null for in-memory images. */
export function savedOptions(dir: string): Omit<TrainOptions, 'images'> & { images: TrainingImages | null } {
  const f = openState(dir);
  let options: unknown;
  try {
    options = JSON.parse(f.metadata.options ?? '');
  } catch (e) {
    throw new TrainError(`${f.path}: the saved options are not valid JSON (${(e as Error).message}); the state is damaged`);
  }
  if (typeof options !== 'object' || options === null || Array.isArray(options)) throw new TrainError(`${f.path}: the saved options are not a JSON object; the state is damaged`);
  return options as Omit<TrainOptions, 'images'> & { images: TrainingImages | null };
}

/** The model a saved state was trained on: its path when recorded. */
export function savedModel(dir: string): string | undefined {
  return openState(dir).metadata.model;
}

/** The config folder a saved state's single-file model was loaded with (LoadOptions.config), if any. */
export function savedModelConfig(dir: string): string | undefined {
  return openState(dir).metadata.model_config;
}

export interface TrainHooks {
  onStep?: (log: StepLog, runningLoss: number) => void;
  /** Files written for a saved step, and that step's deterministic loss. */
  onSave?: (step: number, files: string[], evalLoss?: number) => void;
  /** Called every `previewEvery` steps (and at the end) with the trainer. */
  preview?: { every: number; run: (trainer: TextualInversionTrainer) => Promise<string[]> };
}

export interface TrainResult {
  /** True when requestStop (Ctrl-C) ended the run. */
  stopped: boolean;
  last?: StepLog;
  /** With stop auto: where the deterministic loss settled and training ended. */
  earlyStop: { step: number; ratio: number } | null;
  /** The step to use and why (when the run computed deterministic losses). */
  recommended: Recommendation | null;
}

/**
 * The training loop: steps until `opts.steps` (or, with stop auto, until the deterministic
 * loss settles). With an output folder it also logs each step to train-log.jsonl,
 * checkpoints every `saveEvery` steps, when stopped (Ctrl-C) and at the end, and leaves
 * the embeddings `keep` asks for; without one it writes nothing.
 */
export async function train(trainer: TextualInversionTrainer, hooks: TrainHooks = {}): Promise<TrainResult> {
  const o = trainer.opts;
  const out = o.out;
  if (out) makeFolder(out);
  const logPath = out ? join(out, LOG_FILE) : null;
  // A resumed run trains the steps after its checkpoint again: they are logged once.
  if (logPath) keepLogThrough(logPath, trainer.state.step);
  // The step of the checkpoint on disk (a resumed run starts from one).
  let saved = trainer.state.step > 0 ? trainer.state.step : undefined;
  const t0 = performance.now();
  let running = NaN;
  let last: StepLog | undefined;
  const record = trainer.record;
  const evalEvery = evalInterval(o);
  const checkpoint = async () => {
    if (!out) return;
    const evalLoss = await trainer.evalLoss();
    const e = trainer.saveEmbeddings(out, `-steps-${trainer.state.step}`, evalLoss);
    await trainer.savedStep(e.all);
    const state = trainer.saveState();
    saved = trainer.state.step;
    hooks.onSave?.(trainer.state.step, [state, ...e.all], evalLoss);
  };
  while (trainer.state.step < o.steps && !(o.stop === 'auto' && record.stoppedAt)) {
    if (trainer.stopping) {
      await checkpoint();
      return { stopped: true, last, earlyStop: null, recommended: null };
    }
    try {
      last = await trainer.trainStep(t0);
    } catch (e) {
      if (!(e instanceof TrainError) || !out) throw e;
      const kept = saved !== undefined ? `the last checkpoint (step ${saved}) is intact` : `no checkpoint had been written to ${out} yet`;
      throw new TrainError(`${e.message}; ${kept}`, { cause: e });
    }
    const step = trainer.state.step;
    if (evalEvery > 0 && step % evalEvery === 0) {
      last.eval_loss = await trainer.evalLoss();
      const ratio = record.observe(step, last.eval_loss, o);
      if (ratio !== null) last.var_ratio = ratio;
    }
    const ending = step >= o.steps || (o.stop === 'auto' && record.stoppedAt !== null);
    const saving = out !== undefined && ((o.saveEvery > 0 && step % o.saveEvery === 0) || ending);
    // Every saved step's deterministic loss is in the log too.
    if ((saving || (ending && evalEvery > 0)) && last.eval_loss === undefined) last.eval_loss = await trainer.evalLoss();
    running = Number.isNaN(running) ? last.loss : 0.98 * running + 0.02 * last.loss;
    if (logPath) appendFileSync(logPath, `${JSON.stringify(last)}\n`);
    hooks.onStep?.(last, running);
    if (saving && !ending) await checkpoint();
    if (hooks.preview && hooks.preview.every > 0 && step % hooks.preview.every === 0 && !ending) await hooks.preview.run(trainer);
  }
  // The end is a saved step too (without a folder, only when losses are being computed anyway).
  const evalLoss = out || evalEvery > 0 ? await trainer.evalLoss() : undefined;
  if (evalLoss !== undefined) await trainer.savedStep();
  if (out) {
    trainer.saveState();
    const files = trainer.keepEmbeddings(out, evalLoss!);
    hooks.onSave?.(trainer.state.step, files, evalLoss);
  }
  if (hooks.preview && hooks.preview.every > 0) await hooks.preview.run(trainer);
  return { stopped: false, last, earlyStop: o.stop === 'auto' ? record.stoppedAt : null, recommended: record.recommend(o) };
}
