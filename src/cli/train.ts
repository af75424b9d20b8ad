// `oneword train`: learn a new word from a few images (textual inversion).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { StableDiffusion } from '../pipelines/stable-diffusion.ts';
import { checkTrainValues, savedModel, savedOptions, TRAIN_DEFAULTS, type TrainValues } from '../pipelines/textual-inversion.ts';
import { checkRunFolder } from '../pipelines/run-files.ts';
import { threadsProblem } from '../runtime/threads.ts';
import { trainTextualInversion, type TextualInversionOptions } from '../pipelines/train-textual-inversion.ts';
import { parseArgs, UsageError, type FlagSpec } from './args.ts';
import { DEFAULT_MODEL } from './defaults.ts';
import { Progress, type ProgressMode } from './progress.ts';

export const TRAIN_HELP = `Usage: oneword train --images DIR --token "<name>" --init "word" [options]

Learns one new word (textual inversion): the text encoder, UNet and VAE stay frozen; only
the token's embedding vector(s) are trained.

Options (defaults as diffusers' textual_inversion.py unless noted):
  --model PATH          diffusers folder or single-file .safetensors (default: ${DEFAULT_MODEL})
  --images DIR          3–5 (or more) .jpg/.png/.webp images of the concept
  --token NAME          the new word, e.g. "<my-cat>" (must not exist in the vocabulary; it names
                        the <name>.safetensors file, so no / \\ : * ? " < > | inside)
  --init TEXT           a coarse description to start from, e.g. "cat"; a phrase initialises
                        the vectors token by token, cycling
  --vectors N           vectors per token (default 1)
  --what KIND           object | style: which caption templates to use (default object)
  --template-file FILE  AUTOMATIC1111 prompt-template file instead: one caption per line with
                        [name] for the word and [filewords] for the image's caption, read from
                        a .txt beside each image (cat.png → cat.txt)
  --resolution N        training size (default: the model's native size, 512 for SD 1.5)
  --center-crop         crop to a centred square before resizing
  --flip-p P            probability of a horizontal flip (default 0.5)
  --steps N             optimiser steps (default 3000)
  --lr RATE             learning rate (default 5e-4), or an A1111 schedule: "5e-3:100, 1e-3:1000, 1e-5"
  --scale-lr            multiply the learning rate by batch × grad-accum
  --lr-schedule KIND    constant | linear | cosine (default constant)
  --lr-warmup N         warmup steps for the schedule (default 0)
  --batch N             images per step (default 1)
  --grad-accum N        gradient accumulation steps (default 1)
  --max-grad-norm X     clip the gradient's L2 norm (default: no clipping)
  --seed N              seed for data order, noise and timesteps (default 0)
  --save-every N        checkpoint every N steps (default 500; 0 = only at the end)
  --preview-every N     generate the preview prompt every N steps (default 0 = off)
  --preview-prompt TEXT default "a photo of {token}" (style: "a painting in the style of {token}")
  --resume DIR          continue a run from DIR/train-state.safetensors with its saved options
                        and model (same images; only --steps and --out may change)
  --out DIR             output folder (default outputs/ti-<name>); a folder that already holds
                        a run is refused: pass --resume DIR to continue it, or another --out.
                        A lock file (.oneword.lock) keeps a second run out while this one trains
  --threads N           CPU threads, 1 to the number of cores (default: all cores)
  --progress MODE       bar | json | quiet (default bar);  --quiet = --progress quiet

Writes learned_embeds.safetensors (diffusers) and <name>.safetensors (AUTOMATIC1111 /
ComfyUI), train-log.jsonl and train-state.safetensors. Ctrl-C or SIGTERM saves a checkpoint and stops
(press it twice to quit without saving). A step whose loss, gradient or update is not finite
stops the run with an error; the last checkpoint stays as it was.
`;

const SPEC: Record<string, FlagSpec> = {
  model: { type: 'string' }, images: { type: 'string' }, token: { type: 'string' }, init: { type: 'string' },
  vectors: { type: 'number' }, what: { type: 'string' }, 'template-file': { type: 'string' }, resolution: { type: 'number' }, 'center-crop': { type: 'boolean' },
  'flip-p': { type: 'number' }, steps: { type: 'number' }, lr: { type: 'string' }, 'scale-lr': { type: 'boolean' },
  'lr-schedule': { type: 'string' }, 'lr-warmup': { type: 'number' }, batch: { type: 'number' }, 'grad-accum': { type: 'number' },
  'max-grad-norm': { type: 'number' }, seed: { type: 'number' }, 'save-every': { type: 'number' },
  'preview-every': { type: 'number' }, 'preview-prompt': { type: 'string' }, resume: { type: 'string' }, out: { type: 'string' },
  threads: { type: 'number' }, progress: { type: 'string' }, quiet: { type: 'boolean', alias: 'q' }, help: { type: 'boolean', alias: 'h' },
};

/** Flags a resumed run may set; the others are saved with the run and cannot change. */
const RESUME_FLAGS = new Set(['model', 'resume', 'steps', 'out', 'threads', 'progress', 'quiet', 'help', 'preview-every', 'preview-prompt']);

export async function trainCommand(argv: string[]): Promise<number> {
  const { flags: f, positional } = parseArgs(argv, SPEC);
  if (f.help) {
    process.stdout.write(TRAIN_HELP);
    return 0;
  }
  if (positional.length) throw new UsageError(`unexpected argument "${positional[0]}"`);
  const mode = (f.quiet ? 'quiet' : (f.progress as string | undefined) ?? 'bar') as ProgressMode;
  if (!['bar', 'json', 'quiet'].includes(mode)) throw new UsageError(`--progress must be bar, json or quiet, got "${mode}"`);
  const threads = f.threads as number | undefined;
  const threadsBad = threadsProblem(threads);
  if (threadsBad) throw new UsageError(`--threads ${threadsBad}`);
  const resume = f.resume as string | undefined;
  let modelPath = f.model as string | undefined;

  let opts: TextualInversionOptions;
  if (resume) {
    // A resumed run keeps its options (and model); only the step count and the output folder may change.
    const fixed = Object.keys(f).find((k) => !RESUME_FLAGS.has(k));
    if (fixed) throw new UsageError(`--${fixed} cannot be combined with --resume: a resumed run keeps the options it was started with`);
    const { images, ...saved } = savedOptions(resume);
    if (images === null) throw new UsageError(`${resume} was trained from images in memory; resume it from the library with the same images`);
    opts = { ...saved, images, steps: (f.steps as number | undefined) ?? saved.steps, out: (f.out as string | undefined) ?? resume, resume };
    if (modelPath === undefined) {
      modelPath = savedModel(resume);
      if (modelPath === undefined) throw new UsageError(`${resume} does not record its model; pass --model (the model it was trained on)`);
      if (!existsSync(modelPath)) throw new UsageError(`${resume} was trained on ${modelPath}, which is not there any more; pass --model`);
    }
  } else {
    for (const k of ['images', 'token', 'init'] as const) if (f[k] === undefined) throw new UsageError(`train needs --${k}`);
    const token = String(f.token);
    const lrFlag = f.lr as string | undefined;
    opts = {
      images: String(f.images),
      token,
      init: String(f.init),
      out: (f.out as string | undefined) ?? join('outputs', `ti-${token.replace(/^<|>$/g, '').replace(/[^\w.-]+/g, '_')}`),
      // A number stays a number (scale-lr multiplies it); anything else keeps its text for the error.
      lr: lrFlag === undefined || /[:,]/.test(lrFlag) || !Number.isFinite(Number(lrFlag)) ? lrFlag : Number(lrFlag),
      ...pick(f, {
        vectors: 'vectors', what: 'what', templateFile: 'template-file', resolution: 'resolution', centerCrop: 'center-crop',
        flipP: 'flip-p', steps: 'steps', scaleLr: 'scale-lr', batch: 'batch', gradAccum: 'grad-accum', lrSchedule: 'lr-schedule',
        lrWarmup: 'lr-warmup', maxGradNorm: 'max-grad-norm', seed: 'seed', saveEvery: 'save-every',
      }),
    };
  }
  // Everything the user typed is checked before a model is loaded; the token and the output
  // folder first, as they decide which files are written.
  checkTrainValues({ ...TRAIN_DEFAULTS, ...defined(opts) } as TrainValues);
  checkRunFolder(opts.out!, opts.token, resume);
  modelPath ??= DEFAULT_MODEL;
  if (!existsSync(modelPath)) throw new UsageError(`--model ${modelPath}: no such file or folder`);
  const sd = StableDiffusion.load(modelPath, { threads });

  const log = (s: string) => mode === 'bar' && process.stderr.write(`${s}\n`);
  const steps = opts.steps ?? TRAIN_DEFAULTS.steps;
  const progress = new Progress(mode, 'train', steps);
  // Ctrl-C and SIGTERM (a scheduler or `kill`) both stop at the next step with a checkpoint.
  const stop = new AbortController();
  let stoppedBy: NodeJS.Signals | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stop.signal.aborted) process.exit(signal === 'SIGTERM' ? 143 : 130);
    stoppedBy = signal;
    log(`\nstopping: saving a checkpoint (${signal === 'SIGINT' ? 'Ctrl-C' : signal} again to quit without saving)…`);
    stop.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let run;
  try {
    run = await trainTextualInversion(sd, {
      ...opts,
      previewEvery: f['preview-every'] as number | undefined,
      previewPrompt: f['preview-prompt'] as string | undefined,
      measureFixedLoss: true,
      signal: stop.signal,
      onStart: (r) => log(`oneword train: ${opts.token} ← "${opts.init}" (${r.vectors} vector${r.vectors > 1 ? 's' : ''}), ${r.steps} steps at ${r.resolution}px, out ${opts.out}${resume ? `, resuming ${resume} at step ${r.step}` : ''}`),
      onStep: (l, running) => progress.update(l.step, { loss: running, lr: l.lr }),
      onSave: (step, files) => (mode === 'json' ? process.stdout.write(`${JSON.stringify({ event: 'saved', step, files })}\n`) : log(`saved step ${step}: ${files.join(', ')}`)),
      onPreview: ({ file }) => file && log(`preview: ${file}`),
    });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  if (run.stopped) return stoppedBy === 'SIGTERM' ? 143 : 130;
  const { before, after } = run.fixedLoss!;
  const summary = { event: 'done', steps: run.steps, fixed_loss_before: before, fixed_loss_after: after, out: opts.out };
  if (mode === 'json') process.stdout.write(`${JSON.stringify(summary)}\n`);
  else log(`done: loss on a fixed batch ${before.toFixed(5)} → ${after!.toFixed(5)}; embeddings in ${opts.out}`);
  return 0;
}

/** The entries of `o` that are set (undefined ones would hide the defaults they are spread over). */
function defined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function pick(flags: Record<string, unknown>, map: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, flag] of Object.entries(map)) if (flags[flag] !== undefined) out[k] = flags[flag];
  return out;
}
