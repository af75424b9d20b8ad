// `oneword demo` (what `npm start` runs): textual inversion end to end on the bundled
// shapes model — learn a word for a concept words cannot name, then use it in new
// sentences, and measure reconstruction and editability as the paper does.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { listImages } from '../io/images.ts';
import { StableDiffusion } from '../pipelines/stable-diffusion.ts';
import { TextualInversionTrainer, train, TRAIN_DEFAULTS, type TrainOptions } from '../pipelines/textual-inversion.ts';
import { conceptNames, DEFAULT_EVAL_PROMPTS, evaluateConcept, fillTemplate, toRgbImage, type Concept, type EvalPrompt, type MethodScore, type NamingMethod } from '../pipelines/shapes-eval.ts';
import { analyze } from '../shapes/analyze.ts';
import { parseSpec, randomAttributes, type Attrs } from '../shapes/attributes.ts';
import { describeSetting } from '../shapes/caption.ts';
import { readImage, writePng } from '../shapes/png.ts';
import { Rng } from '../shapes/random.ts';
import { render } from '../shapes/render.ts';
import { parseArgs, UsageError } from './args.ts';
import { DEFAULT_MODEL } from './defaults.ts';
import { Progress, type ProgressMode } from './progress.ts';
import { evalTable, renderReport, type ReportData, type ReportImage } from './report.ts';

const ASSETS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'assets', 'demo');

/**
 * Demo training settings, chosen by measurement on the bundled model (dotted orange star,
 * 48 images per naming): 1500 steps at lr 1e-3, batch 4 reached reconstruction 0.81 where
 * 600 × 2e-3 × 2 reached 0.77, 3000 × 1e-3 × 4 0.69 (and 300 × 5e-3 × 2 0.67 on 24 images);
 * about a minute on 2 cores. No flips: the captions name left and right.
 */
export const DEMO_TRAINING = { steps: 1500, lr: 1e-3, batch: 4, flipP: 0 };

/** Images per prompt and naming: 6 prompts × 8 = 48 per naming keeps the scores' noise near ±0.06. */
export const DEMO_COUNT = 8;

/**
 * The demo's caption templates (AUTOMATIC1111 syntax): the paper's neutral templates plus
 * each image's own caption ([filewords], its .txt), which names what is NOT the concept —
 * position and background — so the word does not absorb them and stays editable.
 */
export const DEMO_TEMPLATES = [
  'a [name] [filewords]',
  'a photo of a [name] [filewords]',
  'a rendering of a [name] [filewords]',
  'the photo of a [name] [filewords]',
  'a good photo of the [name] [filewords]',
  'a close-up photo of a [name] [filewords]',
  'a rendition of a [name] [filewords]',
  'a cropped photo of the [name] [filewords]',
];

export const DEMO_HELP = `Usage: oneword demo [options]

Learns the word <my-thing> for a concept that plain English cannot name in the bundled shapes
model (by default a dotted orange star: the model draws dots, but only a made-up word of its
training captions asks for them) from 4 captioned images, then uses the word in new sentences,
compares it with the init word and the best English description, and writes
demo-report/index.html and eval.json.

Options:
  --concept SPEC   concept to learn, e.g. '{"shape":"heart","color":"blue","texture":"striped"}'
                   (4 training images are rendered for it)
  --images DIR     train on these images instead (the concept is read from them by the analyzer
                   unless --concept is given; a .txt beside an image is its caption)
  --steps N        training steps (default ${DEMO_TRAINING.steps})
  --count N        images per prompt and naming (default ${DEMO_COUNT})
  --model PATH     model (default: the bundled shapes model)
  --seed N         seed (default 0)
  --out DIR        report folder (default demo-report)
  --progress MODE  bar | json | quiet (default bar)
`;

/**
 * Renders `count` training images of a concept (position, size and background at random,
 * seeded) and writes each image's caption beside it (0.png + 0.txt, …), as the demo trains on.
 */
export async function renderConceptImages(concept: Partial<Attrs>, dir: string, seed: number, count = 4): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const rng = new Rng(`demo-${seed}`);
  for (let i = 0; i < count; i++) {
    const attrs = randomAttributes(rng, { shape: concept.shape, color: concept.color, texture: concept.texture });
    await writePng(render(attrs, rng), join(dir, `${i}.png`));
    writeFileSync(join(dir, `${i}.txt`), `${describeSetting(attrs)}\n`);
  }
  return dir;
}

/** Writes the demo's caption templates (DEMO_TEMPLATES) as an AUTOMATIC1111 template file in `dir`. */
export function writeDemoTemplates(dir: string): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'templates.txt');
  writeFileSync(file, `${DEMO_TEMPLATES.join('\n')}\n`);
  return file;
}

/** The demo's training options for a concept's images: DEMO_TRAINING at the model's native size, the demo's templates, init = the shape. */
export function demoTrainOptions(sd: StableDiffusion, o: { images: string; concept: Concept; token: string; seed: number; templateFile: string; out?: string; steps?: number }): TrainOptions {
  return {
    ...TRAIN_DEFAULTS,
    ...DEMO_TRAINING,
    steps: o.steps ?? DEMO_TRAINING.steps,
    images: o.images,
    token: o.token,
    init: o.concept.shape,
    resolution: (sd.ckpt.unetConfig.sample_size ?? 32) * sd.vaeFactor,
    seed: o.seed,
    saveEvery: 0,
    out: o.out,
    templateFile: o.templateFile,
  };
}

function majority<T>(xs: T[]): T {
  const counts = new Map<T, number>();
  for (const x of xs) counts.set(x, (counts.get(x) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1])[0][0];
}

function rgbOf(img: { width: number; height: number; data: Uint8Array }, caption: string, ok?: boolean): ReportImage {
  return { rgb: img.data, width: img.width, height: img.height, caption, ok };
}

export interface DemoOptions {
  concept?: Partial<Attrs>;
  images?: string;
  steps?: number;
  count?: number;
  model?: string;
  seed?: number;
  out: string;
  prompts?: EvalPrompt[];
  mode: ProgressMode;
  /** Training options over the demo's defaults (DEMO_TRAINING). */
  training?: Partial<TrainOptions>;
}

export interface DemoResult {
  html: string;
  eval: { concept: Concept; learned: Score; init_word: Score; description: Score; steps: number; seconds: number };
  scores: Record<NamingMethod, MethodScore>;
  /** What the word learned, in words (also in the report). */
  summary: string;
}

/** Learns <my-thing> for a concept, evaluates the three namings, writes index.html and eval.json. */
export async function runDemo(o: DemoOptions): Promise<DemoResult> {
  const { out, mode } = o;
  const seed = o.seed ?? 0;
  const say = (s: string) => mode === 'bar' && process.stderr.write(`${s}\n`);
  const t0 = performance.now();
  mkdirSync(out, { recursive: true });

  // The concept and its training images.
  let spec = o.concept;
  let imagesDir = o.images;
  if (!imagesDir) {
    if (spec) {
      imagesDir = await renderConceptImages(spec, join(out, 'images'), seed);
    } else {
      imagesDir = join(ASSETS, 'dotted-orange-star');
      spec = JSON.parse(readFileSync(join(imagesDir, 'concept.json'), 'utf8')) as Partial<Attrs>;
    }
  }
  const trainingImages = await Promise.all(listImages(imagesDir).map((p) => readImage(p)));
  if (!spec) {
    const seen = trainingImages.map((im) => analyze(im).attrs);
    spec = { shape: majority(seen.map((a) => a.shape)), color: majority(seen.map((a) => a.color)), texture: majority(seen.map((a) => a.texture)) };
    say(`concept read from the images: ${JSON.stringify(spec)}`);
  }
  const concept = { shape: spec.shape!, color: spec.color!, texture: spec.texture! } as Concept;
  const token = '<my-thing>';
  const templateFile = writeDemoTemplates(out);

  // Train.
  const sd = StableDiffusion.load(o.model ?? DEFAULT_MODEL);
  const opts: TrainOptions = {
    ...demoTrainOptions(sd, { images: imagesDir, concept, token, seed, templateFile, out: join(out, 'embedding'), steps: o.steps }),
    ...o.training,
  };
  say(`learning ${token} (init "${concept.shape}") for ${JSON.stringify(concept)} from ${trainingImages.length} images`);
  const trainer = await TextualInversionTrainer.create(sd, opts);
  const progress = new Progress(mode, 'train', opts.steps);
  const losses: number[] = [];
  await train(trainer, { onStep: (l, running) => { losses.push(l.loss); progress.update(l.step, { loss: running }); } });

  // Evaluate the three namings on new sentences.
  const prompts = o.prompts ?? DEFAULT_EVAL_PROMPTS;
  const count = o.count ?? DEMO_COUNT;
  const names = conceptNames(concept, token);
  const grid: ReportData['grid'] = prompts.map((p) => ({
    template: p.template,
    prompts: { learned: fillTemplate(p.template, names.learned), init_word: fillTemplate(p.template, names.init_word), description: fillTemplate(p.template, names.description) },
    images: { learned: [], init_word: [], description: [] },
  }));
  const genProgress = new Progress(mode, 'generate', prompts.length * count * 3);
  let made = 0;
  const parts = { learned: new PartCounts(), init_word: new PartCounts(), description: new PartCounts() };
  const scores = await evaluateConcept(sd, concept, token, {
    prompts, count, seed: 1000 + seed,
    onImage: (method: NamingMethod, prompt, image, v) => {
      const row = grid.find((g) => g.prompts[method] === prompt)!;
      const a = v.attrs;
      row.images[method].push(rgbOf(toRgbImage(image), `${a.color} ${a.texture} ${a.shape}, ${a.size}, ${a.position}, ${a.background}`, v.reconstructs));
      parts[method].add(a, concept);
      genProgress.update(++made);
    },
  });
  const seconds = (performance.now() - t0) / 1000;
  const summary = summarize(token, concept, names, scores, parts);
  const report: ReportData = {
    title: `oneword demo: ${token} = ${concept.texture} ${concept.color} ${concept.shape}`,
    concept, token, losses, scores, steps: opts.steps, seconds,
    summary,
    training: trainingImages.map((im, i) => rgbOf(im, `training image ${i + 1}`)),
    grid,
  };
  const html = join(out, 'index.html');
  writeFileSync(html, renderReport(report));
  const evalJson = { concept, learned: pick(scores.learned), init_word: pick(scores.init_word), description: pick(scores.description), steps: opts.steps, seconds: Number(seconds.toFixed(1)) };
  writeFileSync(join(out, 'eval.json'), `${JSON.stringify(evalJson, null, 2)}\n`);
  return { html, eval: evalJson, scores, summary };
}

export async function demoCommand(argv: string[]): Promise<number> {
  const { flags } = parseArgs(argv, {
    concept: { type: 'string' }, images: { type: 'string' }, steps: { type: 'number' }, count: { type: 'number' },
    model: { type: 'string' }, seed: { type: 'number' }, out: { type: 'string' }, progress: { type: 'string' },
    quiet: { type: 'boolean', alias: 'q' }, prompts: { type: 'string' }, help: { type: 'boolean', alias: 'h' },
  });
  if (flags.help) {
    process.stdout.write(DEMO_HELP);
    return 0;
  }
  const mode = (flags.quiet ? 'quiet' : (flags.progress as string | undefined) ?? 'bar') as ProgressMode;
  if (!['bar', 'json', 'quiet'].includes(mode)) throw new UsageError(`--progress must be bar, json or quiet, got "${mode}"`);
  let concept: Partial<Attrs> | undefined;
  if (flags.concept) {
    try {
      concept = parseSpec(JSON.parse(String(flags.concept)));
    } catch (e) {
      throw new UsageError(`--concept: ${(e as Error).message}`);
    }
    for (const k of ['shape', 'color', 'texture'] as const) if (!concept[k]) throw new UsageError(`--concept must name a shape, color and texture (missing "${k}")`);
  }
  const r = await runDemo({
    concept, mode,
    images: flags.images as string | undefined,
    steps: flags.steps as number | undefined,
    count: flags.count as number | undefined,
    model: flags.model as string | undefined,
    seed: flags.seed as number | undefined,
    out: (flags.out as string | undefined) ?? 'demo-report',
    prompts: flags.prompts ? (JSON.parse(readFileSync(String(flags.prompts), 'utf8')) as EvalPrompt[]) : undefined,
  });
  if (mode === 'json') process.stdout.write(`${JSON.stringify({ event: 'done', report: r.html, ...r.eval })}\n`);
  else if (mode === 'bar') process.stdout.write(`\n${evalTable(r.scores)}\n\n${r.summary}\n\nreport: ${r.html}\n`);
  return 0;
}

/** How often each part of the concept (shape, colour, texture) appears in a method's images. */
export class PartCounts {
  shape = 0;
  color = 0;
  texture = 0;
  images = 0;
  add(a: Attrs, c: Concept): void {
    this.images++;
    if (a.shape === c.shape) this.shape++;
    if (a.color === c.color) this.color++;
    if (a.texture === c.texture) this.texture++;
  }
}

/** The report's plain-language verdict: what the word captured, against the best description. */
export function summarize(token: string, c: Concept, names: Record<NamingMethod, string>, scores: Record<NamingMethod, MethodScore>, parts: Record<NamingMethod, PartCounts>): string {
  const l = parts.learned;
  const d = parts.description;
  const of = (n: number, p: PartCounts) => `${n} of ${p.images}`;
  const what = `${c.texture} ${c.color} ${c.shape}`;
  const missing = (['shape', 'color', 'texture'] as const).filter((k) => l[k] < l.images * 0.75);
  const learned = missing.length === 0
    ? `${token} captured the whole concept: its images show the ${what} in ${of(Math.round(scores.learned.reconstruction * l.images), l)} (shape ${of(l.shape, l)}, colour ${of(l.color, l)}, texture ${of(l.texture, l)})`
    : `${token} captured the concept only in part (shape ${of(l.shape, l)}, colour ${of(l.color, l)}, texture ${of(l.texture, l)}; ${missing.join(' and ')} not learned)`;
  const edit = `and it follows the rest of the prompt (position, size, background) in ${Math.round(scores.learned.editability * 100)} % of the images that ask for one`;
  const desc = `The best plain description, "${names.description}", draws the ${what} in ${Math.round(scores.description.reconstruction * 100)} % (texture right in ${of(d.texture, d)}: English has no word for it).`;
  return `${learned}, ${edit}. ${desc}`;
}

type Score = ReturnType<typeof pick>;

function pick(s: { reconstruction: number; editability: number; obeys: number; images: number }) {
  const r = (v: number) => Number(v.toFixed(3));
  return { reconstruction: r(s.reconstruction), editability: r(s.editability), obeys: r(s.obeys), images: s.images };
}
