// `npm run eval -- stopping [--concepts N] [--max-steps N] [--count N] [--model DIR]
//                           [--stop-window N] [--stop-eps X] [--eval-every N] [--gen-steps N] [--out DIR]`:
// how many steps a word needs. Learns fixed concepts of the shapes world (not the demo's
// dotted orange star) with the demo's recipe three ways and scores each word as the demo
// does (reconstruction and editability, read back by the analyzer):
//   fixed        the demo's training settings (DEMO_TRAINING), a fixed number of steps
//   auto         the same with --stop auto (DVAR; the demo's steps as the upper bound)
//   encoder-auto Cross Initialization (--init-mode encoder) and --stop auto
// One JSON line per concept and variant, then one per variant with the medians; seconds
// are training time (train() alone, after one warm-up run has compiled the graphs).
// The flags shrink it for a smoke run, e.g. --concepts 2 --max-steps 4 --count 1
// --gen-steps 2 --stop-window 3 --stop-eps 0.9 --eval-every 1 --model test/fixtures/sd1-tiny.
import { join } from 'node:path';
import { DEMO_COUNT, DEMO_TRAINING, demoTrainOptions, renderConceptImages, writeDemoTemplates } from '../src/cli/demo.ts';
import { DEFAULT_MODEL } from '../src/cli/defaults.ts';
import { StableDiffusion } from '../src/pipelines/stable-diffusion.ts';
import { evaluateConcept, type Concept } from '../src/pipelines/shapes-eval.ts';
import { TextualInversionTrainer, train, type TrainOptions } from '../src/pipelines/textual-inversion.ts';

const args = process.argv.slice(2).filter((a) => a !== 'stopping');
const opt = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const num = (name: string, def: number) => (opt(name) === undefined ? def : Number(opt(name)));

/** Patterned concepts: the texture is what English cannot name in this world. */
const CONCEPTS: Concept[] = [
  { shape: 'heart', color: 'blue', texture: 'striped' },
  { shape: 'circle', color: 'green', texture: 'checkered' },
  { shape: 'square', color: 'purple', texture: 'dotted' },
  { shape: 'triangle', color: 'red', texture: 'striped' },
  { shape: 'ring', color: 'yellow', texture: 'checkered' },
  { shape: 'heart', color: 'pink', texture: 'dotted' },
  { shape: 'star', color: 'brown', texture: 'striped' },
  { shape: 'square', color: 'orange', texture: 'checkered' },
];

// The stopping rule's settings default to oneword's (window 310, eps 0.15, every 5 steps).
const rule: Partial<TrainOptions> = {};
if (opt('--stop-window') !== undefined) rule.stopWindow = num('--stop-window', 310);
if (opt('--stop-eps') !== undefined) rule.stopEps = num('--stop-eps', 0.15);
if (opt('--eval-every') !== undefined) rule.evalEvery = num('--eval-every', 5);
const VARIANTS: Record<string, Partial<TrainOptions>> = {
  fixed: {},
  auto: { stop: 'auto', ...rule },
  'encoder-auto': { stop: 'auto', initMode: 'encoder', ...rule },
};

const model = opt('--model') ?? DEFAULT_MODEL;
const concepts = CONCEPTS.slice(0, num('--concepts', CONCEPTS.length));
const maxSteps = num('--max-steps', DEMO_TRAINING.steps);
const count = num('--count', DEMO_COUNT);
const genSteps = num('--gen-steps', 25);
const out = opt('--out') ?? 'tmp/eval-stopping';
const token = '<my-thing>';

/** Compiles the train and evaluation graphs once, so no variant's seconds include compiling. */
async function warmUp(images: string, concept: Concept, templateFile: string): Promise<void> {
  const sd = StableDiffusion.load(model);
  const opts = demoTrainOptions(sd, { images, concept, token, seed: 0, templateFile, steps: 1 });
  await train(await TextualInversionTrainer.create(sd, { ...opts, out: undefined, stop: 'auto', evalEvery: 1 }));
}

interface Row { variant: string; steps: number; seconds: number; reconstruction: number; editability: number }
const rows: Row[] = [];

for (const [ci, concept] of concepts.entries()) {
  const name = `${concept.texture}-${concept.color}-${concept.shape}`;
  const dir = join(out, name);
  const images = await renderConceptImages(concept, join(dir, 'images'), ci);
  const templateFile = writeDemoTemplates(dir);
  if (ci === 0) await warmUp(images, concept, templateFile);
  for (const [variant, extra] of Object.entries(VARIANTS)) {
    // A fresh model per variant: each learns the same word from scratch.
    const sd = StableDiffusion.load(model);
    const opts: TrainOptions = { ...demoTrainOptions(sd, { images, concept, token, seed: ci, templateFile, steps: maxSteps }), out: undefined, ...extra };
    const trainer = await TextualInversionTrainer.create(sd, opts);
    // Training time only: the images' encoding and the compiled graphs are the same for every variant.
    const t0 = performance.now();
    const result = await train(trainer);
    const seconds = (performance.now() - t0) / 1000;
    const scores = await evaluateConcept(sd, concept, token, { methods: ['learned'], count, steps: genSteps, seed: 1000 + ci });
    const row: Row = { variant, steps: trainer.state.step, seconds: round(seconds), reconstruction: round(scores.learned.reconstruction), editability: round(scores.learned.editability) };
    rows.push(row);
    console.log(JSON.stringify({ case: 'stopping', concept: name, ...row, stopped_early: result.earlyStop !== null, recommended_step: result.recommended?.step ?? null }));
  }
}

for (const variant of Object.keys(VARIANTS)) {
  const mine = rows.filter((r) => r.variant === variant);
  const med = (k: keyof Omit<Row, 'variant'>) => round(median(mine.map((r) => r[k])));
  console.log(JSON.stringify({
    case: 'stopping', variant, concepts: mine.length,
    median_steps: med('steps'), median_seconds: med('seconds'), median_reconstruction: med('reconstruction'), median_editability: med('editability'),
  }));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function round(v: number): number {
  return Number(v.toFixed(3));
}
