// `oneword train`: learn a new word from a few images (textual inversion).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { StableDiffusion, threadsProblem } from '../pipelines/stable-diffusion.ts';
import { checkTrainValues, savedModel, savedModelConfig, savedOptions, TRAIN_DEFAULTS, type TrainValues } from '../pipelines/textual-inversion.ts';
import { checkRunFolder } from '../pipelines/run-files.ts';
import { trainTextualInversion, type TextualInversionOptions } from '../pipelines/train-textual-inversion.ts';
import { parseArgs, UsageError, type FlagSpec } from './args.ts';
import { DEFAULT_MODEL } from './defaults.ts';
import { Progress, reportWarnings, type ProgressMode } from './progress.ts';

export const TRAIN_HELP = `Usage: oneword train --images DIR --token "<name>" --init "word" [options]

Learns one new word (textual inversion): the text encoder, UNet and VAE stay frozen; only
the token's embedding vector(s) are trained.

Options (defaults as diffusers' textual_inversion.py unless noted):
  --model PATH          diffusers folder or single-file .safetensors (default: ${DEFAULT_MODEL})
  --config DIR          for a single file: a diffusers folder whose */config.json describe it
                        (non-standard heads or resolution; as diffusers' from_single_file(config=))
  --images DIR          3–5 (or more) .jpg/.png/.webp images of the concept
  --token NAME          the new word, e.g. "<my-cat>" (must not exist in the vocabulary; it names
                        the <name>.safetensors file, so no / \\ : * ? " < > | inside)
  --init TEXT           a coarse description to start from, e.g. "cat"; a phrase initialises
                        the vectors token by token, cycling
  --init-mode MODE      tokens | encoder (default tokens): start from the init phrase's token
                        embeddings, or from the text encoder's output for it (Cross Initialization)
  --init-pull X         L2 pull X·‖v − v₀‖² towards the starting vectors (default 0 = none)
  --vectors N           vectors per token (default 1)
  --what KIND           object | style: which caption templates to use (default object)
  --template-file FILE  AUTOMATIC1111 prompt-template file instead: one caption per line with
                        [name] for the word and [filewords] for the image's caption, read from
                        a .txt beside each image (cat.png → cat.txt)
  --resolution N        training size (default: the model's native size, 512 for SD 1.5)
  --center-crop         crop to a centred square before resizing
  --flip-p P            probability of a horizontal flip (default 0.5)
  --steps N             optimiser steps (default 3000; with --stop auto, at most)
  --stop MODE           fixed | auto (default fixed). auto stops when the deterministic loss
                        (the loss on one evaluation batch drawn at the start: same images,
                        latents, noise, timesteps, captions) settles: Var(last window) /
                        Var(all) < eps (DVAR, Voronov et al. 2023)
  --stop-window N       DVAR's window in steps (default 310)
  --stop-eps X          DVAR's threshold (default 0.15)
  --eval-every N        compute the deterministic loss every N steps, about 0.4 of a step
                        each (default 5 with --stop auto; otherwise 0 = only at saved steps)
  --keep WHICH          last | best | all: which embeddings remain in --out at the end
                        (default last). last: learned_embeds.safetensors and <name>.safetensors
                        hold the last step, beside the checkpoints; best: they hold the
                        recommended step and the checkpoints' embeddings are removed; all: as
                        last, and the last step also gets its -steps-N files
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
                        and model (same images; only --steps, --out and --stop may change;
                        --stop fixed continues a run that stopped early)
  --out DIR             output folder (default outputs/ti-<name>); a folder that already holds
                        a run is refused: pass --resume DIR to continue it, or another --out.
                        A lock file (.oneword.lock) keeps a second run out while this one trains
  --threads N           CPU threads, 1 to the number of cores (default: all cores)
  --low-memory          keep the weights memory-mapped (no private re-laid-out copy; ~6 % slower);
                        on by default when the weights exceed a third of this machine's memory
  --progress MODE       bar | json | quiet (default bar);  --quiet = --progress quiet

Writes learned_embeds.safetensors (diffusers) and <name>.safetensors (AUTOMATIC1111 /
ComfyUI), train-log.jsonl and train-state.safetensors. Ctrl-C or SIGTERM saves a checkpoint and stops
(press it twice to quit without saving). A step whose loss, gradient or update is not finite
stops the run with an error; the last checkpoint stays as it was. Every saved step records its
deterministic loss (train-log.jsonl "eval_loss" and the files' metadata), and the run ends
naming the step it recommends and why.
`;

const SPEC: Record<string, FlagSpec> = {
  model: { type: 'string' }, config: { type: 'string' }, images: { type: 'string' }, token: { type: 'string' }, init: { type: 'string' },
  vectors: { type: 'number' }, what: { type: 'string' }, 'template-file': { type: 'string' }, resolution: { type: 'number' }, 'center-crop': { type: 'boolean' },
  'flip-p': { type: 'number' }, steps: { type: 'number' }, lr: { type: 'string' }, 'scale-lr': { type: 'boolean' },
  'lr-schedule': { type: 'string' }, 'lr-warmup': { type: 'number' }, batch: { type: 'number' }, 'grad-accum': { type: 'number' },
  'max-grad-norm': { type: 'number' }, seed: { type: 'number' }, 'save-every': { type: 'number' },
  'preview-every': { type: 'number' }, 'preview-prompt': { type: 'string' }, resume: { type: 'string' }, out: { type: 'string' },
  stop: { type: 'string' }, 'stop-window': { type: 'number' }, 'stop-eps': { type: 'number' }, 'eval-every': { type: 'number' },
  keep: { type: 'string' }, 'init-mode': { type: 'string' }, 'init-pull': { type: 'number' },
  threads: { type: 'number' }, 'low-memory': { type: 'boolean' }, progress: { type: 'string' }, quiet: { type: 'boolean', alias: 'q' }, help: { type: 'boolean', alias: 'h' },
};

/** Flags a resumed run may set; the others are saved with the run and cannot change. */
const RESUME_FLAGS = new Set([
  'model', 'config', 'resume', 'steps', 'out', 'stop', 'threads', 'low-memory', 'progress', 'quiet', 'help', 'preview-every', 'preview-prompt',
]);

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

  const { opts, model } = resume ? resumedOptions(f, resume) : newRunOptions(f);
  modelPath ??= model;

  // Everything the user typed is checked before a model is loaded; the token and the output
  // folder first, as they decide which files are written.
  checkTrainValues({ ...TRAIN_DEFAULTS, ...defined(opts) } as TrainValues);
  checkRunFolder(opts.out!, opts.token, resume);
  modelPath ??= DEFAULT_MODEL;
  if (!existsSync(modelPath)) throw new UsageError(`--model ${modelPath}: no such file or folder`);
  // A resumed run loads its single file with the config folder it was trained with, unless told otherwise.
  const config = (f.config as string | undefined) ?? (resume && f.model === undefined ? savedModelConfig(resume) : undefined);
  const sd = StableDiffusion.load(modelPath, { threads, config, lowMemory: f['low-memory'] ? true : undefined });
  reportWarnings(mode, sd.ckpt.warnings);

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
  let evalLoss: number | undefined;
  try {
    run = await trainTextualInversion(sd, {
      ...opts,
      previewEvery: f['preview-every'] as number | undefined,
      previewPrompt: f['preview-prompt'] as string | undefined,
      measureFixedLoss: true,
      signal: stop.signal,
      onStart: (r) => {
        const until = opts.stop === 'auto' ? `up to ${r.steps} steps (stop auto)` : `${r.steps} steps`;
        log(`oneword train: ${opts.token} ← "${opts.init}" (${r.vectors} vector${r.vectors > 1 ? 's' : ''}), ${until} at ${r.resolution}px, out ${opts.out}${resume ? `, resuming ${resume} at step ${r.step}` : ''}`);
      },
      onStep: (l, running) => {
        evalLoss = l.eval_loss ?? evalLoss;
        progress.update(l.step, { loss: running, ...(evalLoss === undefined ? {} : { eval_loss: evalLoss }), lr: l.lr });
      },
      onSave: (step, files, loss) => (mode === 'json'
        ? process.stdout.write(`${JSON.stringify({ event: 'saved', step, eval_loss: loss, files })}\n`)
        : log(`saved step ${step}${loss === undefined ? '' : ` (deterministic loss ${loss.toPrecision(5)})`}: ${files.join(', ')}`)),
      onPreview: ({ file }) => file && log(`preview: ${file}`),
    });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  if (run.stopped) return stoppedBy === 'SIGTERM' ? 143 : 130;
  const { before, after } = run.fixedLoss!;
  const rec = run.recommended;
  const summary = {
    event: 'done', steps: run.steps, stopped_early: run.earlyStop !== null, fixed_loss_before: before, fixed_loss_after: after,
    recommended_step: rec?.step, recommended_eval_loss: rec?.evalLoss, recommended_because: rec?.reason, out: opts.out,
  };
  if (mode === 'json') process.stdout.write(`${JSON.stringify(summary)}\n`);
  else {
    if (run.earlyStop) log(`stopped early at step ${run.earlyStop.step} of at most ${steps}`);
    log(`done: loss on a fixed batch ${before.toFixed(5)} → ${after!.toFixed(5)}; embeddings in ${opts.out}`);
    if (rec) log(`recommended: step ${rec.step} (deterministic loss ${rec.evalLoss.toPrecision(5)}): ${rec.reason}`);
  }
  return 0;
}

function pick(flags: Record<string, unknown>, map: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, flag] of Object.entries(map)) if (flags[flag] !== undefined) out[k] = flags[flag];
  return out;
}

type Flags = Record<string, unknown>;

/** A resumed run keeps its options (and model); only the step count, the output folder and the stopping rule may change. */
function resumedOptions(f: Flags, resume: string): { opts: TextualInversionOptions; model?: string } {
  const fixed = Object.keys(f).find((k) => !RESUME_FLAGS.has(k));
  if (fixed) throw new UsageError(`--${fixed} cannot be combined with --resume: a resumed run keeps the options it was started with`);
  const { images, ...saved } = savedOptions(resume);
  if (images === null) throw new UsageError(`${resume} was trained from images in memory; resume it from the library with the same images`);
  const opts: TextualInversionOptions = { ...saved, images, steps: (f.steps as number | undefined) ?? saved.steps, out: (f.out as string | undefined) ?? resume, resume };
  if (f.stop !== undefined) opts.stop = f.stop as TextualInversionOptions['stop'];
  if (f.model !== undefined) return { opts };
  const model = savedModel(resume);
  if (model === undefined) throw new UsageError(`${resume} does not record its model; pass --model (the model it was trained on)`);
  if (!existsSync(model)) throw new UsageError(`${resume} was trained on ${model}, which is not there any more; pass --model`);
  return { opts, model };
}

/** The options of a new run, from its flags. */
function newRunOptions(f: Flags): { opts: TextualInversionOptions; model?: string } {
  for (const k of ['images', 'token', 'init'] as const) if (f[k] === undefined) throw new UsageError(`train needs --${k}`);
  const token = String(f.token);
  const lrFlag = f.lr as string | undefined;
  const opts: TextualInversionOptions = {
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
      stop: 'stop', stopWindow: 'stop-window', stopEps: 'stop-eps', evalEvery: 'eval-every', keep: 'keep', initMode: 'init-mode', initPull: 'init-pull',
    }),
  };
  return { opts };
}

/** The entries of `o` that are set (undefined ones would hide the defaults they are spread over). */
function defined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
