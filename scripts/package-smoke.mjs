// Run by scripts/check-package.sh in a folder where the packed oneword is installed: plain
// Node, no TypeScript, the library as a user sees it. Trains a word from image files and
// from the same images in memory, saves it, loads it into another model, generates.
// Usage: node package-smoke.mjs MODEL IMAGES_DIR OUT_DIR
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { decodeRgb, savePng, StableDiffusion, trainTextualInversion } from 'oneword';

const [model, imagesDir, out] = process.argv.slice(2);
const paths = readdirSync(imagesDir).filter((f) => f.endsWith('.png')).sort().map((f) => join(imagesDir, f));
const train = { token: '<dotted-star>', init: 'star', steps: 3, resolution: 16, lr: 5e-2 };
const t0 = performance.now();

const sd = await StableDiffusion.load(model, { threads: 1 });
const fromPaths = await trainTextualInversion(sd, { ...train, images: paths });
const images = await Promise.all(paths.map((p) => decodeRgb(p)));
const fromMemory = await trainTextualInversion(await StableDiffusion.load(model, { threads: 1 }), { ...train, images });
assert.deepEqual([...fromMemory.embedding.vectors], [...fromPaths.embedding.vectors], 'in-memory images trained differently');

const files = await fromPaths.save(join(out, 'ti'));
const prompt = { prompt: 'a photo of <dotted-star>', steps: 4, sampler: 'ddim', width: 32, height: 32, seed: 1 };
const sd2 = await StableDiffusion.load(model, { threads: 1 });
const [plain] = await sd2.generate(prompt);
sd2.loadTextualInversion(files.diffusers);
const [withWord] = await sd2.generate(prompt);
const [inTrainedModel] = await sd.generate(prompt);
assert.deepEqual([...withWord.pixels], [...inTrainedModel.pixels], 'the saved word generates differently');
assert.notDeepEqual([...withWord.pixels], [...plain.pixels], 'the loaded word changed nothing');
savePng(join(out, 'dotted-star.png'), withWord.pixels, withWord.width, withWord.height);

process.stdout.write(`${JSON.stringify({
  oneword: import.meta.resolve('oneword'),
  tsxInstalled: existsSync(join(process.cwd(), 'node_modules', 'tsx')),
  images: paths.length,
  steps: fromPaths.steps,
  lossPerStep: fromPaths.log.map((l) => Number(l.loss.toFixed(5))),
  files: Object.values(files),
  image: `${withWord.width}x${withWord.height}`,
  seconds: Number(((performance.now() - t0) / 1000).toFixed(1)),
})}\n`);
