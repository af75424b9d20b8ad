// `npm run train-shapes`: trains oneword's shapes model from scratch and writes it, in the
// diffusers layout, to models/shapes/ (with the loss log). Deterministic from --seed;
// resumes from the checkpoints in --work after an interruption.
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SHAPES_ARCH, TINY_ARCH } from '../src/shapes-model/config.ts';
import { FULL_RECIPE, trainShapesModel, type TrainConfig } from '../src/shapes-model/train.ts';

const HELP = `Usage: npm run train-shapes -- [options]

  --out DIR          model folder (default models/shapes)
  --work DIR         checkpoints and latent cache (default tmp/shapes-train)
  --seed N           seed (default ${FULL_RECIPE.seed})
  --vae-steps N      VAE steps (default ${FULL_RECIPE.vae.steps})
  --vae-edge X       weight of the VAE's edge term (default ${FULL_RECIPE.vae.edgeWeight}; see TrainConfig.vae)
  --text-steps N     text-encoder pretraining steps (default ${FULL_RECIPE.text.steps}; 0: learned jointly with the UNet)
  --unet-steps N     UNet steps (default ${FULL_RECIPE.unet.steps})
  --eval-every N     quick evaluation every N UNet steps (default ${FULL_RECIPE.evalEvery})
  --images N         images in the latent cache (default ${FULL_RECIPE.datasetImages})
  --batch N          UNet batch size (default ${FULL_RECIPE.unet.batch})
  --threads N        ORT intra-op threads (default: all cores)
  --preset tiny      a very small model (smoke test)
  --fresh            delete --work first instead of resuming
`;

const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
if (args.includes('--help') || args.includes('-h')) {
  process.stdout.write(HELP);
  process.exit(0);
}
const int = (name: string, def: number): number => {
  const v = opt(name);
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got "${v}"`);
  return n;
};

const num = (name: string, def: number): number => {
  const v = opt(name);
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, got "${v}"`);
  return n;
};

const tiny = opt('--preset') === 'tiny';
const outDir = opt('--out') ?? 'models/shapes';
const workDir = opt('--work') ?? 'tmp/shapes-train';
const cfg: TrainConfig = {
  ...FULL_RECIPE,
  arch: tiny ? TINY_ARCH : SHAPES_ARCH,
  seed: int('--seed', FULL_RECIPE.seed),
  vae: { ...FULL_RECIPE.vae, steps: int('--vae-steps', FULL_RECIPE.vae.steps), edgeWeight: num('--vae-edge', FULL_RECIPE.vae.edgeWeight) },
  text: { ...FULL_RECIPE.text, steps: int('--text-steps', FULL_RECIPE.text.steps) },
  evalEvery: int('--eval-every', FULL_RECIPE.evalEvery),
  datasetImages: int('--images', FULL_RECIPE.datasetImages),
  unet: { ...FULL_RECIPE.unet, steps: int('--unet-steps', FULL_RECIPE.unet.steps), batch: int('--batch', FULL_RECIPE.unet.batch) },
  threads: opt('--threads') ? int('--threads', 2) : undefined,
  workDir,
  outDir,
};

if (args.includes('--fresh')) rmSync(workDir, { recursive: true, force: true });
mkdirSync(workDir, { recursive: true });
mkdirSync(outDir, { recursive: true });
// A work folder belongs to one configuration: resuming with another would mix runs.
const stamp = join(workDir, 'config.json');
const cfgJson = JSON.stringify({ ...cfg, threads: undefined, workDir: undefined, outDir: undefined }, null, 2);
if (existsSync(stamp) && readFileSync(stamp, 'utf8') !== cfgJson) {
  process.stderr.write(`train-shapes: ${workDir} holds a run with another configuration; pass --fresh to start over\n`);
  process.exit(2);
}
const resuming = existsSync(stamp);
writeFileSync(stamp, cfgJson);
const logPath = join(outDir, 'train-log.jsonl');
if (!resuming) writeFileSync(logPath, '');
const log = (e: Record<string, unknown>) => {
  const line = JSON.stringify({ time: new Date().toISOString(), ...e });
  appendFileSync(logPath, `${line}\n`);
  process.stdout.write(`${line}\n`);
};
await trainShapesModel(cfg, log);
