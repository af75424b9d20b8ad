// `oneword generate`: text-to-image with optional learned embeddings; PNGs carry A1111 infotext.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { a1111ShortHash, formatA1111Parameters, savePng } from '../io/images.ts';
import { describeSamplers, SAMPLER_INFOTEXT, type SamplerName } from '../schedulers/index.ts';
import { checkGenerateOptions, checkGenerateValues, type GenerateOptions } from '../pipelines/generate.ts';
import { makeFolder, outputFolderProblem } from '../io/output-folder.ts';
import { OnewordError } from '../errors.ts';
import { StableDiffusion, threadsProblem } from '../pipelines/stable-diffusion.ts';
import { parseArgs, UsageError } from './args.ts';
import { Progress, reportWarnings, type ProgressMode } from './progress.ts';
import { DEFAULT_MODEL, modelName } from './defaults.ts';

export const GENERATE_HELP = `Usage: oneword generate --prompt "…" [options]

Options:
  --model PATH          diffusers folder or single-file .safetensors (default: ${DEFAULT_MODEL})
  --config DIR          for a single file: a diffusers folder whose */config.json describe it
                        (non-standard heads or resolution; as diffusers' from_single_file(config=))
  --prompt TEXT         the prompt; A1111 syntax: (word:1.2), (word), [word], BREAK; any length
                        (emphasis weights from -1000 to 1000)
  --negative TEXT       negative prompt (default: empty; SDXL: empty = all-zero negative conditioning,
                        as diffusers' force_zeros_for_empty_prompt)
  --steps N             sampling steps (default 30)
  --cfg X               classifier-free guidance scale (default 7.5, SDXL 5.0; 1 = no guidance)
  --scheduler NAME      sampler (default dpmpp2m-karras; dpmpp2m for zero-terminal-SNR models, euler for SDXL):
${describeSamplers().replace(/^/gm, '    ')}
  --eta X               DDIM noise (ddim only; default 0)
  --seed N              seed of the first image; image i uses seed + i (default 42)
  --width N, --height N image size up to 8192, a multiple of the VAE factor (default: the model's native size)
  --count N             number of images (default 1)
  SDXL size conditioning (StableDiffusionXLPipeline's original_size, crops_coords_top_left, target_size):
  --original-size H,W   default: the image size
  --crops-coords-top-left TOP,LEFT  default 0,0
  --target-size H,W     default: the image size
  --embedding FILE      load a textual-inversion embedding (repeatable); FILE:TOKEN sets its prompt word
                        (default: the file name). diffusers, A1111/kohya .safetensors and .pt/.bin files
  --out DIR             output folder (default outputs)
  --threads N           CPU threads, 1 to the number of cores (default: all cores)
  --low-memory          keep the weights memory-mapped (no private re-laid-out copy; ~6 % slower);
                        on by default when the weights exceed a third of this machine's memory
  --progress MODE       bar | json | quiet (default bar);  --quiet = --progress quiet
`;

/** Library option → flag, where the flag has another name. */
export const GENERATE_OPTION_FLAGS: Record<string, string> = { negativePrompt: '--negative', guidance: '--cfg', sampler: '--scheduler' };

/** `FILE:TOKEN` → [file, token]; a Windows drive letter or plain path stays whole. */
function splitEmbeddingArg(arg: string): [string, string | undefined] {
  const i = arg.lastIndexOf(':');
  if (i <= 1 || existsSync(arg)) return [arg, undefined];
  return [arg.slice(0, i), arg.slice(i + 1)];
}

/** Checks each --embedding before a model is loaded: the file is there, the token is one word. */
function checkEmbeddingArgs(args: string[]): void {
  for (const a of args) {
    const [file, token] = splitEmbeddingArg(a);
    if (!existsSync(file) || !statSync(file).isFile()) throw new UsageError(`--embedding ${file}: no such file`);
    if (token !== undefined && (!/\S/.test(token) || /\s/.test(token))) throw new UsageError(`--embedding ${a}: the token must be one word without spaces, got "${token}"`);
  }
}

/** Loads each --embedding into the model; returns A1111's short hash per token (for the infotext). */
export function loadEmbeddingsInto(sd: StableDiffusion, args: string[]): Record<string, string> {
  const hashes: Record<string, string> = {};
  for (const a of args) {
    const [file, token] = splitEmbeddingArg(a);
    let learned;
    try {
      learned = sd.loadTextualInversion(file, { token });
    } catch (e) {
      // A token clash is the caller's choice of word: name the flag that chose it.
      if (e instanceof OnewordError && e.usage && e.option === 'token') throw new UsageError(`--embedding ${a}: ${e.problem}`);
      throw e;
    }
    hashes[learned.token] = a1111ShortHash(file, 12);
  }
  return hashes;
}

/** The next free 5-digit image number in `dir` (A1111's 00000-<seed>.png naming). */
export function nextIndex(dir: string): number {
  let max = -1;
  for (const f of readdirSync(dir)) {
    const m = /^(\d{5})-/.exec(f);
    if (m) max = Math.max(max, Number(m[1]));
  }
  return max + 1;
}

/** An SDXL size flag's "A,B" (height first, or top first), as two numbers; ranges are checked with the other options. */
function sizePair(flag: string, v: unknown): [number, number] | undefined {
  if (v === undefined) return undefined;
  const m = /^\s*(\d+)\s*,\s*(\d+)\s*$/.exec(String(v));
  if (!m) throw new UsageError(`--${flag} must be two whole numbers separated by a comma (${flag === 'crops-coords-top-left' ? 'TOP,LEFT' : 'H,W, height first'}), got "${v}"`);
  return [Number(m[1]), Number(m[2])];
}

export async function generateCommand(argv: string[]): Promise<number> {
  const { flags, positional } = parseArgs(argv, {
    model: { type: 'string' }, config: { type: 'string' }, prompt: { type: 'string', alias: 'p' }, negative: { type: 'string' },
    steps: { type: 'number' }, cfg: { type: 'number' }, scheduler: { type: 'string' }, eta: { type: 'number' },
    seed: { type: 'number' }, width: { type: 'number' }, height: { type: 'number' }, count: { type: 'number', alias: 'n' },
    embedding: { type: 'string', multiple: true }, out: { type: 'string', alias: 'o' }, threads: { type: 'number' }, 'low-memory': { type: 'boolean' },
    progress: { type: 'string' }, quiet: { type: 'boolean', alias: 'q' }, help: { type: 'boolean', alias: 'h' },
    'original-size': { type: 'string' }, 'crops-coords-top-left': { type: 'string' }, 'target-size': { type: 'string' },
  });
  if (flags.help) {
    process.stdout.write(GENERATE_HELP);
    return 0;
  }
  if (positional.length) throw new UsageError(`unexpected argument "${positional[0]}" (put the prompt in --prompt "…")`);
  if (flags.prompt === undefined) throw new UsageError('generate needs --prompt');
  const mode = (flags.quiet ? 'quiet' : (flags.progress as string | undefined) ?? 'bar') as ProgressMode;
  if (!['bar', 'json', 'quiet'].includes(mode)) throw new UsageError(`--progress must be bar, json or quiet, got "${mode}"`);
  // Everything the user typed is checked before a model is loaded.
  const threads = flags.threads as number | undefined;
  const threadsBad = threadsProblem(threads);
  if (threadsBad) throw new UsageError(`--threads ${threadsBad}`);
  const modelPath = (flags.model as string | undefined) ?? DEFAULT_MODEL;
  if (!existsSync(modelPath)) throw new UsageError(`--model ${modelPath}: no such file or folder`);
  const embeddings = (flags.embedding as string[] | undefined) ?? [];
  checkEmbeddingArgs(embeddings);
  const out = (flags.out as string | undefined) ?? 'outputs';
  const outBad = outputFolderProblem(out);
  if (outBad) throw new UsageError(`--out ${outBad}`);
  const given: GenerateOptions = {
    prompt: String(flags.prompt), negativePrompt: flags.negative as string | undefined, steps: flags.steps as number | undefined,
    guidance: flags.cfg as number | undefined, sampler: flags.scheduler as string | undefined, seed: flags.seed as number | undefined,
    width: flags.width as number | undefined, height: flags.height as number | undefined, count: flags.count as number | undefined,
    eta: flags.eta as number | undefined,
    originalSize: sizePair('original-size', flags['original-size']), cropsCoordsTopLeft: sizePair('crops-coords-top-left', flags['crops-coords-top-left']),
    targetSize: sizePair('target-size', flags['target-size']),
  };
  checkGenerateValues(given);
  const sd = StableDiffusion.load(modelPath, { threads, config: flags.config as string | undefined, lowMemory: flags['low-memory'] ? true : undefined });
  reportWarnings(mode, sd.ckpt.warnings);
  const tiHashes = loadEmbeddingsInto(sd, embeddings);
  const opts = checkGenerateOptions(sd, given);
  const progress = new Progress(mode, 'generate', opts.count * opts.steps);
  const images = await sd.generate({ ...opts, onStep: (i, s) => progress.update(i * opts.steps + s, { image: i + 1 }) });
  // Made only now: a run that fails leaves no empty folder behind.
  makeFolder(out);
  let index = nextIndex(out);
  const written: string[] = [];
  for (const img of images) {
    const parameters = formatA1111Parameters({
      prompt: opts.prompt, negativePrompt: opts.negativePrompt, steps: opts.steps, sampler: SAMPLER_INFOTEXT[opts.sampler as SamplerName] ?? opts.sampler,
      cfgScale: opts.guidance, seed: img.seed, width: img.width, height: img.height, model: modelName(modelPath),
      tiHashes: Object.keys(tiHashes).length ? tiHashes : undefined, extra: { Version: 'oneword' },
    });
    const file = join(out, `${String(index++).padStart(5, '0')}-${img.seed}.png`);
    savePng(file, img.pixels, img.width, img.height, { parameters });
    written.push(file);
  }
  if (mode === 'json') process.stdout.write(`${JSON.stringify({ event: 'done', files: written })}\n`);
  else if (mode === 'bar') for (const f of written) process.stdout.write(`${f}\n`);
  return 0;
}
