// `oneword shapes eval`: reconstruction / editability of any embedding for a shapes concept.
import { readFileSync } from 'node:fs';
import { loadEmbedding } from '../io/embeddings.ts';
import { StableDiffusion } from '../pipelines/stable-diffusion.ts';
import { DEFAULT_EVAL_PROMPTS, evaluateConcept, type Concept, type EvalPrompt } from '../pipelines/shapes-eval.ts';
import { parseSpec } from '../shapes/attributes.ts';
import { parseArgs, UsageError } from './args.ts';
import { DEFAULT_MODEL } from './defaults.ts';

export const SHAPES_EVAL_HELP = `Usage: oneword shapes eval --embedding FILE --concept SPEC [--model PATH] [--prompts FILE] [--count N] [--seed N]

Generates each prompt with the learned word, the init word (the shape's name) and the best
description words allow (colour + shape), and prints JSON: reconstruction (shape, colour and
texture shown), editability (also obeys the prompt's position/size/background) and obeys.
--prompts is a JSON list of {"template": "a large {} on a black background",
"constraints": {"size": "large", "background": "black"}}.
`;

export async function shapesEvalCommand(argv: string[]): Promise<number> {
  const { flags } = parseArgs(argv, {
    model: { type: 'string' }, embedding: { type: 'string' }, concept: { type: 'string' }, prompts: { type: 'string' },
    count: { type: 'number' }, seed: { type: 'number' }, steps: { type: 'number' }, token: { type: 'string' }, help: { type: 'boolean', alias: 'h' },
  });
  if (flags.help) {
    process.stdout.write(SHAPES_EVAL_HELP);
    return 0;
  }
  if (!flags.embedding || !flags.concept) throw new UsageError('shapes eval needs --embedding and --concept');
  let spec;
  try {
    spec = parseSpec(JSON.parse(String(flags.concept)));
  } catch (e) {
    throw new UsageError(`--concept: ${(e as Error).message}`);
  }
  for (const k of ['shape', 'color', 'texture'] as const) if (!spec[k]) throw new UsageError(`--concept must name a shape, color and texture (missing "${k}")`);
  const sd = StableDiffusion.load((flags.model as string | undefined) ?? DEFAULT_MODEL);
  const e = loadEmbedding(String(flags.embedding), { token: flags.token as string | undefined });
  sd.loadTextualInversion(e);
  const prompts: EvalPrompt[] = flags.prompts ? (JSON.parse(readFileSync(String(flags.prompts), 'utf8')) as EvalPrompt[]) : DEFAULT_EVAL_PROMPTS;
  const concept = { shape: spec.shape, color: spec.color, texture: spec.texture } as Concept;
  const scores = await evaluateConcept(sd, concept, e.token, {
    prompts, count: flags.count as number | undefined, seed: flags.seed as number | undefined, steps: flags.steps as number | undefined,
  });
  process.stdout.write(`${JSON.stringify({ concept, token: e.token, ...scores })}\n`);
  return 0;
}
