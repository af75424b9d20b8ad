// `oneword train`: learn a new word from a few images (textual inversion).
import { join } from 'node:path';
import { defaultSize } from '../pipelines/generate.ts';
import { StableDiffusion } from '../pipelines/stable-diffusion.ts';
import { savedOptions, TRAIN_DEFAULTS } from '../pipelines/textual-inversion.ts';
import { trainTextualInversion, type TextualInversionOptions } from '../pipelines/train-textual-inversion.ts';
import { parseArgs, UsageError, type FlagSpec } from './args.ts';
import { DEFAULT_MODEL } from './defaults.ts';
import { Progress, type ProgressMode } from './progress.ts';

export const TRAIN_HELP = `Usage: oneword train --images DIR --token "<name>" --init "word" [options]

Learns one new word (textual inversion): the text encoder, UNet and VAE stay frozen; only
the token's embedding vector(s) are trained.

Options (defaults as diffusers' textual_inversion.py unless noted):
  --model PATH          diffusers folder or single-file .safetensors (default: ${DEFAULT_MODEL})
  --config DIR          for a single file: a diffusers folder whose */config.json describe it
                        (non-standard heads or resolution; as diffusers' from_single_file(config=))
  --images DIR          3–5 (or more) .jpg/.png/.webp images of the concept
  --token NAME          the new word, e.g. "<my-cat>" (must not exist in the vocabulary)
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
  --resume DIR          continue a run from DIR/train-state.safetensors (same images; --steps may
                        grow; --stop fixed continues a run that stopped early)
  --out DIR             output folder (default outputs/ti-<name>)
  --threads N           CPU threads (default: all cores)
  --progress MODE       bar | json | quiet (default bar);  --quiet = --progress quiet

Writes learned_embeds.safetensors (diffusers) and <name>.safetensors (AUTOMATIC1111 /
ComfyUI), train-log.jsonl and train-state.safetensors; Ctrl-C saves a checkpoint first.
Every saved step records its deterministic loss (train-log.jsonl "eval_loss" and the files'
metadata), and the run ends naming the step it recommends and why.
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
  threads: { type: 'number' }, progress: { type: 'string' }, quiet: { type: 'boolean', alias: 'q' }, help: { type: 'boolean', alias: 'h' },
};

export async function trainCommand(argv: string[]): Promise<number> {
  const { flags: f, positional } = parseArgs(argv, SPEC);
  if (f.help) {
    process.stdout.write(TRAIN_HELP);
    return 0;
  }
  if (positional.length) throw new UsageError(`unexpected argument "${positional[0]}"`);
  const mode = (f.quiet ? 'quiet' : (f.progress as string | undefined) ?? 'bar') as ProgressMode;
  if (!['bar', 'json', 'quiet'].includes(mode)) throw new UsageError(`--progress must be bar, json or quiet, got "${mode}"`);
  const resume = f.resume as string | undefined;
  const modelPath = (f.model as string | undefined) ?? DEFAULT_MODEL;
  const sd = StableDiffusion.load(modelPath, { threads: f.threads as number | undefined, config: f.config as string | undefined });

  let opts: TextualInversionOptions;
  if (resume) {
    // A resumed run keeps its options; only the step count and the output folder may change.
    const { images, ...saved } = savedOptions(resume);
    if (images === null) throw new UsageError(`${resume} was trained from images in memory; resume it from the library with the same images`);
    opts = { ...saved, images, steps: (f.steps as number | undefined) ?? saved.steps, out: (f.out as string | undefined) ?? resume, resume };
    if (f.stop !== undefined) opts.stop = f.stop as TextualInversionOptions['stop'];
  } else {
    for (const k of ['images', 'token', 'init'] as const) if (f[k] === undefined) throw new UsageError(`train needs --${k}`);
    const token = String(f.token);
    const lrFlag = f.lr as string | undefined;
    const lr = lrFlag === undefined ? undefined : /[:,]/.test(lrFlag) ? lrFlag : Number(lrFlag);
    if (typeof lr === 'number' && !Number.isFinite(lr)) throw new UsageError(`--lr needs a number or an A1111 schedule, got "${lrFlag}"`);
    opts = {
      images: String(f.images),
      token,
      init: String(f.init),
      out: (f.out as string | undefined) ?? join('outputs', `ti-${token.replace(/^<|>$/g, '').replace(/[^\w.-]+/g, '_')}`),
      lr,
      ...pick(f, {
        vectors: 'vectors', what: 'what', templateFile: 'template-file', resolution: 'resolution', centerCrop: 'center-crop',
        flipP: 'flip-p', steps: 'steps', scaleLr: 'scale-lr', batch: 'batch', gradAccum: 'grad-accum', lrSchedule: 'lr-schedule',
        lrWarmup: 'lr-warmup', maxGradNorm: 'max-grad-norm', seed: 'seed', saveEvery: 'save-every',
        stop: 'stop', stopWindow: 'stop-window', stopEps: 'stop-eps', evalEvery: 'eval-every', keep: 'keep', initMode: 'init-mode', initPull: 'init-pull',
      }),
    };
  }

  const log = (s: string) => mode === 'bar' && process.stderr.write(`${s}\n`);
  const steps = opts.steps ?? TRAIN_DEFAULTS.steps;
  const vectors = opts.vectors ?? TRAIN_DEFAULTS.vectors;
  const until = opts.stop === 'auto' ? `up to ${steps} steps (stop auto)` : `${steps} steps`;
  log(`oneword train: ${opts.token} ← "${opts.init}" (${vectors} vector${vectors > 1 ? 's' : ''}), ${until} at ${opts.resolution ?? defaultSize(sd)}px, out ${opts.out}${resume ? `, resuming ${resume}` : ''}`);
  const progress = new Progress(mode, 'train', steps);
  const stop = new AbortController();
  const onSigint = () => {
    if (stop.signal.aborted) process.exit(130);
    log('\nstopping: saving a checkpoint (Ctrl-C again to quit without saving)…');
    stop.abort();
  };
  process.on('SIGINT', onSigint);
  let run;
  let evalLoss: number | undefined;
  try {
    run = await trainTextualInversion(sd, {
      ...opts,
      previewEvery: f['preview-every'] as number | undefined,
      previewPrompt: f['preview-prompt'] as string | undefined,
      measureFixedLoss: true,
      signal: stop.signal,
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
    process.off('SIGINT', onSigint);
  }
  if (run.stopped) return 130;
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
