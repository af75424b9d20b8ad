// Textual inversion as one library call: every option has the CLI's default, images come
// from a folder, files or memory, nothing is written to disk unless asked (`out`), and the
// result can save the learned word in the formats other tools read.
import { join } from 'node:path';
import { savePng } from '../io/images.ts';
import { lockFolder, makeFolder } from '../io/output-folder.ts';
import { checkRunFolder, previewFolder } from './run-files.ts';
import type { LearnedEmbedding } from '../io/embeddings.ts';
import { defaultSize, generate, type GeneratedImage } from './generate.ts';
import type { ConceptKind } from './templates.ts';
import type { ScheduleKind } from './lr-schedule.ts';
import type { StableDiffusion } from './stable-diffusion.ts';
import type { InitMode, KeepMode, Recommendation, StopMode } from './early-stopping.ts';
import {
  TextualInversionTrainer,
  train,
  TRAIN_DEFAULTS,
  TrainError,
  writeEmbeddingFiles,
  type EmbeddingFileFormat,
  type StepLog,
  type TrainingImages,
  type TrainOptions,
} from './textual-inversion.ts';

/** Options of trainTextualInversion: the `oneword train` flags in camelCase, same defaults. */
export interface TextualInversionOptions {
  /** A folder of images, or a list of image files and/or decoded RGB images (3–5 are typical). */
  images: TrainingImages;
  /** The new word, e.g. "<my-cat>"; it must not exist in the vocabulary. */
  token: string;
  /** A coarse description to start from, e.g. "cat"; a phrase initialises the vectors token by token, cycling. */
  init: string;
  /**
   * How the vectors start: "tokens" = the init phrase's token embeddings; "encoder" = the
   * text encoder's final hidden states for the phrase at its tokens' positions (Cross
   * Initialization, Pang et al. 2024). Default "tokens".
   */
  initMode?: InitMode;
  /** λ of an L2 pull λ‖v − v₀‖² towards the starting vectors. Default 0 (none). */
  initPull?: number;
  /** Vectors per token. Default 1. */
  vectors?: number;
  /** Which caption templates to train with. Default "object". */
  what?: ConceptKind;
  /**
   * An AUTOMATIC1111 prompt-template file used instead: one caption per line, [name] for the
   * word, [filewords] for the image's caption (a .txt beside the image file). Default none.
   */
  templateFile?: string | null;
  /** Training size in pixels. Default: the model's native size (512 for SD 1.5). */
  resolution?: number;
  /** Crop to a centred square before resizing. Default false. */
  centerCrop?: boolean;
  /** Probability of a horizontal flip. Default 0.5. */
  flipP?: number;
  /** Optimiser steps (with stop "auto": at most). Default 3000. */
  steps?: number;
  /**
   * "fixed": train `steps` steps. "auto": stop when the deterministic loss (the loss on one
   * evaluation batch drawn at the start) settles: Var(last stopWindow steps) / Var(all) <
   * stopEps (DVAR, Voronov et al. 2023). Default "fixed".
   */
  stop?: StopMode;
  /** DVAR's window in steps. Default 310 (the paper's setting for textual inversion). */
  stopWindow?: number;
  /** DVAR's threshold. Default 0.15. */
  stopEps?: number;
  /**
   * Compute the deterministic loss every N steps (each costs about 0.4 of a step);
   * 0 = only at saved steps. Default 5 with stop "auto", else 0.
   */
  evalEvery?: number | null;
  /**
   * Which embeddings remain in `out` at the end. "last": learned_embeds.safetensors and
   * <name>.safetensors hold the last step, beside the checkpoints; "best": they hold the
   * recommended step, and the checkpoints' embeddings are removed; "all": as "last", and
   * the last step also gets -steps-N files. Default "last".
   */
  keep?: KeepMode;
  /** Learning rate, or an A1111 schedule such as "5e-3:100, 1e-3:1000, 1e-5". Default 5e-4. */
  lr?: number | string;
  /** Multiply the learning rate by batch × gradAccum. Default false. */
  scaleLr?: boolean;
  /** Default "constant". */
  lrSchedule?: ScheduleKind;
  /** Warmup steps of the schedule. Default 0. */
  lrWarmup?: number;
  /** Images per step. Default 1. */
  batch?: number;
  /** Gradient accumulation steps. Default 1. */
  gradAccum?: number;
  /** Clip the gradient's L2 norm to this; null = no clipping. Default null. */
  maxGradNorm?: number | null;
  /** Seed for data order, noise and timesteps. Default 0. */
  seed?: number;
  /** Checkpoint every N steps into `out` (0 = only at the end). Default 500; needs `out`. */
  saveEvery?: number;
  /**
   * Folder for checkpoints, train-log.jsonl, previews and the final embeddings. Default: none,
   * nothing is written. A folder holding a run's files is refused unless `resume` names it;
   * while training, the folder is locked (.oneword.lock) against a second run.
   */
  out?: string;
  /** Continue the run saved in this folder (same images, options and model; `steps` may grow). */
  resume?: string;
  /** Generate the preview prompt every N steps and at the end (0 = off). Default 0. */
  previewEvery?: number;
  /** Default "a photo of {token}" ("a painting in the style of {token}" for what: "style"). */
  previewPrompt?: string;
  /** AdamW settings. Defaults 0.9, 0.999, 1e-8 and weight decay 1e-2 (diffusers' textual_inversion.py). */
  adamBeta1?: number;
  adamBeta2?: number;
  adamEps?: number;
  weightDecay?: number;
  /** Also measure the loss on a fixed batch before and after training (16 extra train passes). Default false. */
  measureFixedLoss?: boolean;
  /** Stops training at the next step; with `out`, a checkpoint is written first. */
  signal?: AbortSignal;
  /** Called once everything is checked and the images are encoded, before the first step. */
  onStart?: (run: { steps: number; resolution: number; vectors: number; step: number }) => void;
  onStep?: (log: StepLog, runningLoss: number) => void;
  /** Files written for a saved step (only with `out`), and that step's deterministic loss. */
  onSave?: (step: number, files: string[], evalLoss?: number) => void;
  /** Each preview image; `file` is where it was saved (only with `out`). */
  onPreview?: (preview: { step: number; image: GeneratedImage; file?: string }) => void;
}

export interface SaveOptions {
  /** Which files to write. Default both: learned_embeds.safetensors (diffusers) and <name>.safetensors (A1111 / ComfyUI). */
  formats?: readonly EmbeddingFileFormat[];
}

export interface TrainingRun {
  /** The learned word; the model it was trained on already knows it. */
  readonly embedding: LearnedEmbedding;
  /** Optimiser steps taken in all (a resumed run counts the earlier ones). */
  readonly steps: number;
  /** True when `signal` stopped training early. */
  readonly stopped: boolean;
  /** With stop "auto": the step where the deterministic loss settled and training ended (null if it ran to `steps`). */
  readonly earlyStop: { step: number; ratio: number } | null;
  /**
   * The step to use and why: the stopping point, else the saved step with the lowest
   * deterministic loss. Null when no deterministic loss was computed (no `out`, stop "fixed", evalEvery 0).
   */
  readonly recommended: Recommendation | null;
  /** One entry per step taken in this call. */
  readonly log: StepLog[];
  /** With measureFixedLoss: the loss on a fixed batch before and after (after only when not stopped). */
  readonly fixedLoss?: { before: number; after?: number };
  /** Writes the learned word into `dir`; returns the files by format (SDXL words: `diffusers2` is learned_embeds_2.safetensors). */
  save(dir: string, opts?: SaveOptions): Promise<Partial<Record<EmbeddingFileFormat | 'diffusers2', string>>>;
}

/** Options that go to the trainer as given (the others shape the call around it). */
const TRAINER_OPTIONS = [
  'vectors', 'what', 'templateFile', 'resolution', 'centerCrop', 'flipP', 'steps', 'lr', 'scaleLr', 'lrSchedule', 'lrWarmup', 'batch',
  'gradAccum', 'maxGradNorm', 'seed', 'saveEvery', 'out', 'adamBeta1', 'adamBeta2', 'adamEps', 'weightDecay',
  'stop', 'stopWindow', 'stopEps', 'evalEvery', 'keep', 'initMode', 'initPull',
] as const satisfies ReadonlyArray<keyof TrainOptions & keyof TextualInversionOptions>;

const KNOWN_OPTIONS = new Set<string>([
  ...TRAINER_OPTIONS, 'images', 'token', 'init', 'resume', 'previewEvery', 'previewPrompt', 'measureFixedLoss', 'signal', 'onStart', 'onStep', 'onSave', 'onPreview',
]);

/** The trainer's options: the given ones over the documented defaults. */
function trainerOptions(sd: StableDiffusion, o: TextualInversionOptions): TrainOptions {
  // A misspelt option must not silently train with the default.
  for (const k of Object.keys(o)) if (!KNOWN_OPTIONS.has(k)) throw new TrainError(`unknown option "${k}"`, { usage: true });
  for (const k of ['images', 'token', 'init'] as const) if (o[k] === undefined) throw TrainError.badOption(k, 'is required');
  if (o.saveEvery !== undefined && o.saveEvery > 0 && !o.out) throw TrainError.badOption('saveEvery', 'needs out, the folder to write checkpoints to');
  const opts: TrainOptions = { ...TRAIN_DEFAULTS, resolution: defaultSize(sd), images: o.images, token: o.token, init: o.init };
  const take = <K extends (typeof TRAINER_OPTIONS)[number]>(k: K) => {
    if (o[k] !== undefined) opts[k] = o[k] as TrainOptions[K];
  };
  TRAINER_OPTIONS.forEach(take);
  return opts;
}

/**
 * Learns a new word for `sd` from a few images (textual inversion): only the word's
 * embedding is trained. When it returns, `sd` already generates with the word.
 */
export async function trainTextualInversion(sd: StableDiffusion, options: TextualInversionOptions): Promise<TrainingRun> {
  const opts = trainerOptions(sd, options);
  if (!opts.out) return trainIn(sd, options, opts);
  // Checked before the folder is made, then again once it is locked (another run may have written meanwhile).
  checkRunFolder(opts.out, opts.token, options.resume);
  const lock = lockFolder(opts.out);
  try {
    checkRunFolder(opts.out, opts.token, options.resume);
    return await trainIn(sd, options, opts);
  } finally {
    lock.release();
  }
}

async function trainIn(sd: StableDiffusion, options: TextualInversionOptions, opts: TrainOptions): Promise<TrainingRun> {
  const trainer = await TextualInversionTrainer.create(sd, opts);
  if (options.resume) trainer.loadState(options.resume);
  options.onStart?.({ steps: opts.steps, resolution: opts.resolution, vectors: opts.vectors, step: trainer.state.step });
  const before = options.measureFixedLoss ? await trainer.fixedLoss() : undefined;

  const previewEvery = options.previewEvery ?? 0;
  const previewPrompt = (options.previewPrompt ?? (opts.what === 'style' ? 'a painting in the style of {token}' : 'a photo of {token}')).replaceAll('{token}', opts.token);
  const preview = async (t: TextualInversionTrainer) => {
    const [image] = await generate(sd, { prompt: previewPrompt, steps: 20, seed: opts.seed, width: opts.resolution, height: opts.resolution });
    let file: string | undefined;
    if (opts.out) {
      const dir = previewFolder(opts.out);
      makeFolder(dir);
      file = join(dir, `step-${String(t.state.step).padStart(6, '0')}.png`);
      savePng(file, image.pixels, image.width, image.height);
    }
    options.onPreview?.({ step: t.state.step, image, file });
    return file ? [file] : [];
  };

  const log: StepLog[] = [];
  const stop = () => trainer.requestStop();
  if (options.signal?.aborted) stop();
  options.signal?.addEventListener('abort', stop, { once: true });
  let result: Awaited<ReturnType<typeof train>>;
  try {
    result = await train(trainer, {
      onStep: (l, running) => {
        log.push(l);
        options.onStep?.(l, running);
      },
      onSave: options.onSave,
      preview: previewEvery > 0 ? { every: previewEvery, run: preview } : undefined,
    });
  } finally {
    options.signal?.removeEventListener('abort', stop);
  }
  const { stopped, earlyStop, recommended } = result;
  const fixedLoss = before === undefined ? undefined : { before, after: stopped ? undefined : await trainer.fixedLoss() };
  const embedding = trainer.embedding;
  const step = trainer.state.step;
  return {
    embedding,
    steps: step,
    stopped,
    earlyStop,
    recommended,
    log,
    fixedLoss,
    save: async (dir, so = {}) => writeEmbeddingFiles(dir, embedding, { formats: so.formats, step, model: sd.ckpt.source }),
  };
}
