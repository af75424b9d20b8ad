// `node --import tsx bench/profile.ts <what> [--size 256] [--batch 1] [--runs 3] [--out DIR]`
// ORT's per-node profile of one compiled graph on the SD 1.5 architecture (random weights),
// summed per op type (ms per run), plus the optimised graph ORT runs (DIR/optimized.onnx).
//   what: unet   UNet forward (batch --batch)
// `node --import tsx bench/profile-summary.ts FILE RUNS WARMUP` summarises a profile again.
//         train  the textual-inversion step graph (forward + ∂loss/∂v*)
import { mkdirSync, readFileSync, readdirSync, renameSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Graph, grad, mse } from '../src/graph/index.ts';
import { compile } from '../src/runtime/session.ts';
import { StableDiffusion } from '../src/pipelines/stable-diffusion.ts';
import { clipTextEncoder } from '../src/models/clip-text.ts';
import { unet2DCondition } from '../src/models/unet.ts';
import { ensureSd15 } from './sd15.ts';
import { summarize } from './profile-summary.ts';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { size: { type: 'string', default: '256' }, batch: { type: 'string', default: '1' }, runs: { type: 'string', default: '3' }, warmup: { type: 'string', default: '2' }, out: { type: 'string', default: 'profile-out' }, 'no-optimized': { type: 'boolean', default: false } },
});
const what = positionals[0] ?? 'unet';
const size = Number(values.size);
const batch = Number(values.batch);
const runs = Number(values.runs);
const warmup = Number(values.warmup);
const out = values.out!;
mkdirSync(out, { recursive: true });

const sd = StableDiffusion.load(ensureSd15());
const h = size / 8;
const g = new Graph();
const d = sd.hiddenSize;
let outputs;
const feeds: Record<string, Float32Array | BigInt64Array> = {};
if (what === 'unet') {
  const x = g.input('sample', [batch, 4, h, h]);
  const t = g.input('t', [batch]);
  const ctx = g.input('context', [batch, 77, d]);
  outputs = { out: unet2DCondition(sd.params(g, 'unet'), sd.ckpt.unetConfig, x, t, ctx) };
  Object.assign(feeds, { sample: new Float32Array(batch * 4 * h * h).fill(0.1), t: new Float32Array(batch).fill(500), context: new Float32Array(batch * 77 * d).fill(0.01) });
} else if (what === 'train') {
  const ids = g.input('ids', [batch, 77], 'int64');
  const rows = g.input('rows', [1, d]);
  const noisy = g.input('noisy', [batch, 4, h, h]);
  const t = g.input('t', [batch]);
  const target = g.input('target', [batch, 4, h, h]);
  const context = clipTextEncoder(sd.params(g, 'textEncoder').scope('text_model'), sd.ckpt.textEncoderConfig, ids, { extraRows: rows });
  const loss = mse(unet2DCondition(sd.params(g, 'unet'), sd.ckpt.unetConfig, noisy, t, context), target);
  outputs = { loss, grad: grad(loss, [rows])[0] };
  const idv = [49406, 320, 1125, 539, 49408, 49407];
  while (idv.length < 77) idv.push(49407);
  Object.assign(feeds, {
    ids: BigInt64Array.from(Array.from({ length: batch }, () => idv).flat(), (v) => BigInt(v)),
    rows: new Float32Array(d).fill(0.01),
    noisy: new Float32Array(batch * 4 * h * h).fill(0.1),
    t: new Float32Array(batch).fill(500),
    target: new Float32Array(batch * 4 * h * h).fill(0.05),
  });
} else throw new Error(`unknown graph "${what}" (unet, train)`);

const t0 = performance.now();
const c = await compile(outputs, {
  ...sd.compileOptions(),
  profilePrefix: join(out, 'ort'),
  ...(values['no-optimized'] ? {} : { optimizedModelPath: join(out, 'optimized.onnx') }),
});
console.error(`session created in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
// Warm-ups are not counted below (their events come first): the first runs fault in the
// mapped weights and grow ORT's arena.
for (let i = 0; i < warmup; i++) await c.run(feeds);
const wall: number[] = [];
for (let i = 0; i < runs; i++) {
  const s = performance.now();
  await c.run(feeds);
  wall.push((performance.now() - s) / 1000);
}
c.session.endProfiling();
const prof = join(out, `profile-${what}-${size}-b${batch}.json`);
// The binding does not return the file's name: it is the newest ort_*.json under `out`.
const written = readdirSync(out).filter((f) => f.startsWith('ort_') && f.endsWith('.json')).map((f) => join(out, f));
written.sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
renameSync(written[0], prof);

const summary = summarize(prof, runs, warmup);
wall.sort((a, b) => a - b);
console.log(`${what} ${size}² batch ${batch}: wall median ${wall[Math.floor(runs / 2)].toFixed(3)} s over ${runs} runs; ${summary}`);
