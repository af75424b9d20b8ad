// `npm run eval -- shapes [--model DIR] [--prompts N] [--steps N] [--guidance W] [--out DIR]`:
// generates seeded random prompts with the shapes model, reads the images back with the
// shapes analyzer and prints one JSON line of per-attribute accuracies.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encodePng } from '../src/shapes/index.ts';
import { analyzerAccuracy, evaluateModel } from '../src/shapes-model/evaluate.ts';
import { loadSamplerModel } from '../src/shapes-model/sample.ts';

const args = process.argv.slice(2).filter((a) => a !== 'shapes');
const opt = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const num = (name: string, def: number) => (opt(name) === undefined ? def : Number(opt(name)));
const model = loadSamplerModel(opt('--model') ?? 'models/shapes');
const out = opt('--out');
if (out) mkdirSync(out, { recursive: true });
const lines: string[] = [];
const t0 = performance.now();
const result = await evaluateModel(model, {
  prompts: num('--prompts', 200),
  steps: num('--steps', 25),
  guidance: num('--guidance', 5),
  batch: num('--batch', 8),
  varietyPrompts: num('--variety-prompts', 4),
  varietySeeds: num('--variety-seeds', 8),
  onImage: out
    ? async (img, prompt, read, i) => {
        const file = `${String(i).padStart(4, '0')}.png`;
        writeFileSync(join(out, file), await encodePng(img));
        lines.push(JSON.stringify({ file, prompt, analyzed: read }));
      }
    : undefined,
});
if (out) writeFileSync(join(out, 'results.jsonl'), `${lines.join('\n')}\n`);
// The analyzer's accuracy on renders of the same prompts: what a perfect model would score.
const analyzer = analyzerAccuracy(result.images);
process.stdout.write(`${JSON.stringify({ ...result, analyzer, seconds: Math.round((performance.now() - t0) / 1000) })}\n`);
