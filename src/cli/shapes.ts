// `oneword shapes`: render images of the shapes world, and analyze images back into attributes.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ATTRIBUTE_NAMES, ATTRIBUTE_VALUES, parseSpec, randomAttributes } from '../shapes/attributes.ts';
import { Rng } from '../shapes/random.ts';
import { IMAGE_SIZE, render } from '../shapes/render.ts';
import { describe } from '../shapes/caption.ts';
import { analyze } from '../shapes/analyze.ts';
import { readImage, writePng } from '../shapes/png.ts';

const VALUES = ATTRIBUTE_NAMES.map((n) => `  ${n.padEnd(11)}${ATTRIBUTE_VALUES[n].join(', ')}`).join('\n');

const HELP = `oneword shapes — the procedural shapes world (${IMAGE_SIZE}×${IMAGE_SIZE} images, one object each)

Usage:
  oneword shapes render [--spec JSON] [--count N] [--seed S] --out DIR
  oneword shapes analyze [--jsonl] IMG...
  oneword shapes eval --embedding FILE --concept SPEC [--model M] [--prompts FILE]

Commands:
  render    render N images of a concept; attributes not in --spec are random.
            Writes DIR/0000.png, DIR/0001.png, … and DIR/attributes.jsonl
            (one line per image: file, attributes, full caption).
  analyze   read images back into attributes; prints a JSON array (or JSON lines with
            --jsonl) with attributes, per-attribute confidence (0–1) and a caption.
            Images of another size are resized to ${IMAGE_SIZE}×${IMAGE_SIZE} first.
  eval      reconstruction and editability of a learned embedding for a concept, against
            the init word and the best description (see "oneword shapes eval --help").

Options (render):
  --spec JSON   fixed attributes, e.g. '{"shape":"star","color":"orange","texture":"dotted"}'
  --count N     number of images (default 4)
  --seed S      integer seed (default 0); image i depends only on (S, i)
  --out DIR     output folder (created if missing)

Attributes and values:
${VALUES}
`;

class UsageError extends Error {}

interface Parsed {
  flags: Map<string, string | true>;
  positional: string[];
}

function parseArgs(argv: string[], valued: readonly string[], boolean: readonly string[]): Parsed {
  const flags = new Map<string, string | true>();
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (!a.startsWith('-') || a === '-') {
      positional.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(0, eq) : a;
    if (name === '-h' || name === '--help') flags.set('--help', true);
    else if (boolean.includes(name)) flags.set(name, true);
    else if (valued.includes(name)) {
      const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
      if (v === undefined) throw new UsageError(`${name} needs a value`);
      flags.set(name, v);
    } else throw new UsageError(`unknown option ${name}`);
  }
  return { flags, positional };
}

function intFlag(p: Parsed, name: string, def: number, min: number): number {
  const v = p.flags.get(name);
  if (v === undefined) return def;
  const n = Number(v);
  if (typeof v !== 'string' || !Number.isInteger(n) || n < min) throw new UsageError(`${name} must be an integer >= ${min}, got "${String(v)}"`);
  return n;
}

async function renderCommand(argv: string[], io: Io): Promise<number> {
  const p = parseArgs(argv, ['--spec', '--count', '--seed', '--out'], []);
  if (p.flags.has('--help')) {
    io.out(HELP);
    return 0;
  }
  if (p.positional.length) throw new UsageError(`unexpected argument "${p.positional[0]}"`);
  const out = p.flags.get('--out');
  if (typeof out !== 'string' || !out) throw new UsageError('render needs --out DIR');
  const count = intFlag(p, '--count', 4, 1);
  const seed = intFlag(p, '--seed', 0, 0);
  let fixed = {};
  const specText = p.flags.get('--spec');
  if (typeof specText === 'string') {
    let json: unknown;
    try {
      json = JSON.parse(specText);
    } catch (e) {
      throw new UsageError(`--spec is not valid JSON (${(e as Error).message}); example: '{"shape":"star","color":"orange"}'`);
    }
    try {
      fixed = parseSpec(json);
    } catch (e) {
      throw new UsageError(`--spec: ${(e as Error).message}`);
    }
  }
  await mkdir(out, { recursive: true });
  const lines: string[] = [];
  const width = Math.max(4, String(count - 1).length);
  for (let i = 0; i < count; i++) {
    // one generator per image, so image i is the same whatever --count is
    const rng = new Rng(`shapes-render:${seed}:${i}`);
    const attrs = randomAttributes(rng, fixed);
    const file = `${String(i).padStart(width, '0')}.png`;
    await writePng(render(attrs, { rng }), join(out, file));
    lines.push(JSON.stringify({ file, index: i, seed, attributes: attrs, caption: describe(attrs) }));
  }
  await writeFile(join(out, 'attributes.jsonl'), lines.join('\n') + '\n');
  io.err(`wrote ${count} image${count === 1 ? '' : 's'} and attributes.jsonl to ${out}\n`);
  return 0;
}

async function analyzeCommand(argv: string[], io: Io): Promise<number> {
  const p = parseArgs(argv, [], ['--jsonl']);
  if (p.flags.has('--help')) {
    io.out(HELP);
    return 0;
  }
  if (!p.positional.length) throw new UsageError('analyze needs at least one image path');
  const results: object[] = [];
  let failed = 0;
  for (const file of p.positional) {
    let entry: object;
    try {
      const a = analyze(await readImage(file));
      entry = { file, found: a.found, attributes: a.attrs, confidence: round(a.confidence), caption: describe(a.attrs) };
    } catch (e) {
      failed++;
      entry = { file, error: (e as Error).message };
      io.err(`oneword shapes analyze: ${file}: ${(e as Error).message}\n`);
    }
    results.push(entry);
    if (p.flags.has('--jsonl')) io.out(JSON.stringify(entry) + '\n');
  }
  if (!p.flags.has('--jsonl')) io.out(JSON.stringify(results, null, 2) + '\n');
  return failed ? 1 : 0;
}

function round(conf: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(conf).map(([k, v]) => [k, Math.round(v * 1000) / 1000]));
}

/** Where the command writes; tests pass their own to capture output. */
export interface Io {
  out(text: string): void;
  err(text: string): void;
}

const PROCESS_IO: Io = { out: (t) => void process.stdout.write(t), err: (t) => void process.stderr.write(t) };

/** Entry point for `oneword shapes …`; returns the process exit code (0 ok, 1 failure, 2 usage). */
export async function shapesCommand(argv: string[], io: Io = PROCESS_IO): Promise<number> {
  const [sub, ...rest] = argv;
  try {
    if (!sub) {
      io.err(HELP);
      return 2;
    }
    if (sub === 'help' || sub === '--help' || sub === '-h') {
      io.out(HELP);
      return 0;
    }
    if (sub === 'render') return await renderCommand(rest, io);
    if (sub === 'analyze') return await analyzeCommand(rest, io);
    if (sub === 'eval') return await (await import('./shapes-eval.ts')).shapesEvalCommand(rest);
    throw new UsageError(`unknown subcommand "${sub}" (expected render, analyze or eval)`);
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`oneword shapes: ${e.message}\nRun "oneword shapes --help" for usage.\n`);
      return 2;
    }
    io.err(`oneword shapes: ${(e as Error).message}\n`);
    return 1;
  }
}
