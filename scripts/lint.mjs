// Lint: the layering rules of DESIGN.md (lower layers never import higher ones),
// plus a few hygiene checks TypeScript does not make.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const forbidden = {
  graph: ['runtime', 'io', 'models', 'schedulers', 'pipelines', 'cli', 'shapes', 'onnxruntime-node'],
  runtime: ['io', 'models', 'schedulers', 'pipelines', 'cli', 'shapes'],
  io: ['runtime', 'models', 'schedulers', 'pipelines', 'cli', 'onnxruntime-node'],
  models: ['schedulers', 'pipelines', 'cli'],
  schedulers: ['graph', 'runtime', 'models', 'pipelines', 'cli'],
  pipelines: ['cli'],
  shapes: ['cli'],
};

function* walk(dir) {
  for (const e of readdirSync(dir)) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) yield* walk(p);
    else if (p.endsWith('.ts')) yield p;
  }
}

const problems = [];
for (const file of walk('src')) {
  const layer = relative('src', file).split('/')[0];
  const text = readFileSync(file, 'utf8');
  for (const m of text.matchAll(/^\s*(?:import|export)[^'"]*from\s+['"]([^'"]+)['"]/gm)) {
    const spec = m[1];
    const target = spec.startsWith('.') ? relative('src', join(file, '..', spec)).split('/')[0] : spec;
    if ((forbidden[layer] ?? []).includes(target)) problems.push(`${file}: layer "${layer}" must not import "${spec}"`);
  }
  if (/\bconsole\.log\(/.test(text) && !file.startsWith('src/cli')) problems.push(`${file}: console.log outside the CLI (use the caller's reporter)`);
  if (/\beval\(|new Function\(/.test(text)) problems.push(`${file}: dynamic code evaluation`);
}
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log('lint: ok');
