// Lint: the layering rules of DESIGN.md (lower layers never import higher ones) for every
// folder of src/, no production code reading the test tree, no function over 100 lines
// without a stated reason, plus a few hygiene checks TypeScript does not make.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const ALL = ['errors.ts', 'index.ts', 'graph', 'optim', 'runtime', 'io', 'models', 'schedulers', 'shapes', 'pipelines', 'shapes-model', 'cli', 'server'];
/** What each layer (a folder of src/, or a file at its root) may import besides itself and node:/npm packages. */
const allowed = {
  'errors.ts': [],
  graph: ['errors.ts'],
  optim: ['errors.ts'],
  runtime: ['errors.ts', 'graph'],
  io: ['errors.ts'],
  models: ['errors.ts', 'graph', 'io'],
  schedulers: ['errors.ts', 'io'],
  shapes: ['errors.ts'],
  pipelines: ['errors.ts', 'graph', 'optim', 'runtime', 'io', 'models', 'schedulers', 'shapes'],
  'shapes-model': ['errors.ts', 'graph', 'optim', 'runtime', 'io', 'models', 'schedulers', 'shapes', 'pipelines'],
  'index.ts': ['errors.ts', 'io', 'schedulers', 'pipelines'],
  // The CLI uses the public API and the pipelines, never graphs, sessions or model internals.
  // main.ts also dispatches `oneword serve` (loaded on demand) to server/.
  cli: ['errors.ts', 'io', 'schedulers', 'shapes', 'pipelines', 'server'],
  // `oneword serve`: a front end beside the CLI (it shares the CLI's flag parser and helpers).
  server: ['errors.ts', 'index.ts', 'io', 'schedulers', 'pipelines', 'cli'],
};
/** npm packages only some layers may use. */
const packages = { 'onnxruntime-node': ['runtime'], hono: ['server'], '@hono/node-server': ['server'] };

/**
 * Functions allowed past 100 lines, with the reason. Elsewhere a comment line starting
 * `// long function:` just above the function (or in its doc comment) states the reason.
 */
const LONG_FUNCTIONS = {
  'src/io/pickle.ts:unpickle': 'one switch over the pickle opcodes, each case a few lines, read top to bottom like the protocol',
  'src/io/pickle.ts:loadTorchArchive': 'the archive layout checks in file order, one error per way a file can be wrong',
  'src/io/zip.ts:parseDirectory': 'the end record, zip64 locator and central directory parsed in file order',
};
const MAX_FUNCTION_LINES = 100;

function* walk(dir) {
  for (const e of readdirSync(dir)) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) yield* walk(p);
    else if (p.endsWith('.ts')) yield p;
  }
}

const KEYWORDS = new Set(['if', 'for', 'while', 'switch', 'catch', 'return', 'with', 'else', 'do', 'try']);
const START = /^(\s*)(?:export\s+)?(?:default\s+)?(?:async\s+)?function\s*\*?\s*([\w$]+)|^(\s+)(?:(?:public|private|protected|static|override|readonly|async|get|set)\s+)*\*?([\w$]+)\s*(?:<[^>]*>)?\(/;

/** Function and method declarations longer than the limit (the code's own formatting marks where each ends). */
function* longFunctions(lines) {
  for (let i = 0; i < lines.length; i++) {
    const m = START.exec(lines[i]);
    if (!m) continue;
    const name = m[2] ?? m[4];
    const indent = m[1] ?? m[3];
    if (KEYWORDS.has(name)) continue;
    let s = i; // the signature ends at the line that opens the body
    while (s < lines.length && !/[{;}]\s*$/.test(lines[s])) s++;
    if (s >= lines.length || !/\)(\s*:[^=]*)?\s*\{\s*$/.test(lines[s])) continue;
    const end = new RegExp(`^${indent}\\}[;,)]*\\s*$`);
    let j = s + 1;
    while (j < lines.length && !end.test(lines[j])) j++;
    if (j < lines.length && j - i + 1 > MAX_FUNCTION_LINES) yield { name, line: i, length: j - i + 1 };
  }
}

/** A `// long function:` line among the comment lines right above line `i`. */
function hasReason(lines, i) {
  for (let k = i - 1; k >= 0 && /^\s*(\/\/|\/\*|\*)/.test(lines[k]); k--) if (/long function:/.test(lines[k])) return true;
  return false;
}

const problems = [];
for (const file of walk('src')) {
  const layer = relative('src', file).split('/')[0];
  if (!(layer in allowed)) {
    problems.push(`${file}: no layering rule for "${layer}" (add one to scripts/lint.mjs)`);
    continue;
  }
  const text = readFileSync(file, 'utf8');
  for (const m of text.matchAll(/^\s*(?:import|export)[^'"]*from\s+['"]([^'"]+)['"]|\bimport\(\s*['"]([^'"]+)['"]\s*\)/gm)) {
    const spec = m[1] ?? m[2];
    if (spec.startsWith('.')) {
      const target = relative('src', join(file, '..', spec)).split('/')[0];
      if (target.startsWith('..')) problems.push(`${file}: imports "${spec}" from outside src/`);
      else if (target !== layer && ALL.includes(target) && !allowed[layer].includes(target)) problems.push(`${file}: layer "${layer}" must not import "${spec}"`);
    } else if (spec in packages && !packages[spec].includes(layer)) {
      problems.push(`${file}: layer "${layer}" must not import "${spec}"`);
    }
  }
  // Production code reads only what the package ships (test/ is not in package.json "files").
  if (/['"`/]test['"`/]/.test(text.replace(/^\s*(\/\/|\*).*$/gm, ''))) problems.push(`${file}: refers to the test/ tree (ship a copy under assets/ or models/)`);
  if (/\bconsole\.log\(/.test(text) && !file.startsWith('src/cli')) problems.push(`${file}: console.log outside the CLI (use the caller's reporter)`);
  if (/\beval\(|new Function\(/.test(text)) problems.push(`${file}: dynamic code evaluation`);
  const lines = text.split('\n');
  for (const f of longFunctions(lines)) {
    if (hasReason(lines, f.line) || LONG_FUNCTIONS[`${file}:${f.name}`]) continue;
    problems.push(`${file}:${f.line + 1}: ${f.name} is ${f.length} lines (over ${MAX_FUNCTION_LINES}): split it into named steps, or state why not in a "// long function:" comment`);
  }
}
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log('lint: ok');
