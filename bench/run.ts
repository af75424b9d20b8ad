// `npm run bench -- <suite…>`: prints one JSON line per case.
//   engine      single ops: ours vs a bare one-op ORT model (in this process)
//   components  UNet forward 256²/512², text encoder
//   generate    20-step DDIM, CFG 7.5, 256² and 512² (ONEWORD_BENCH_STEPS overrides 20)
//   train       one textual-inversion step, cached latents, 256² and 512²
//   sdxl        the SDXL base architecture: UNet forward and one TI step (both encoders'
//               rows) at 512² and 1024² (no PyTorch figures to compare with yet)
//               (ONEWORD_BENCH_TRAIN_STEPS timed steps after one warm-up; median)
// Model cases run the real SD 1.5 architecture with random weights, written once to a
// diffusers folder (bench/sd15.ts; ONEWORD_BENCH_MODEL_DIR to relocate), each case in its
// own process so peak_rss_mb is that case's. A case name runs just that case.
// ONEWORD_BENCH_THREADS sets ORT's intra-op thread count (default: all cores).
// ONEWORD_BENCH_LOW_MEMORY=1 loads models with lowMemory (weights memory-mapped, no prepacking).
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { benchEngine } from './engine.ts';
import { CASES } from './cases.ts';
import { ensureSd15 } from './sd15.ts';
import { ensureSdxl } from './sdxl.ts';

function runChild(name: string): void {
  const entry = fileURLToPath(new URL('./case.ts', import.meta.url));
  const r = spawnSync(process.execPath, ['--import', 'tsx', entry, name], { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', maxBuffer: 1 << 24 });
  const line = r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).pop();
  if (r.status === 0 && line) console.log(line);
  else console.log(JSON.stringify({ case: name, error: `exit ${r.status ?? r.signal}` }));
}

const modelSuites = [...new Set(Object.values(CASES).map((c) => c.suite))];
const wanted = process.argv.slice(2);
// sdxl (14 GB of weights written once) runs only when named.
const names = wanted.length ? wanted : ['engine', ...modelSuites.filter((m) => m !== 'sdxl')];
for (const n of names) {
  if (n !== 'engine' && !modelSuites.includes(n) && !CASES[n]) {
    console.error(`unknown benchmark suite or case "${n}" (suites: engine, ${modelSuites.join(', ')}; cases: ${Object.keys(CASES).join(', ')})`);
    process.exit(2);
  }
}
for (const n of names) {
  if (n === 'engine') {
    await benchEngine();
    continue;
  }
  for (const [c, spec] of Object.entries(CASES)) {
    if (c !== n && spec.suite !== n) continue;
    // Written once, before the first case that needs it (not inside a timed child).
    if (spec.suite === 'sdxl') ensureSdxl();
    else ensureSd15();
    runChild(c);
  }
}
