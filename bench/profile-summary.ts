// Per-op-type summary of an ORT profile (JSON written with enableProfiling).
// On a shared machine a node's time varies run to run with other processes' load, so
// each node counts with its fastest run ("min ms"): a robust estimate of what the kernels
// cost on a quiet machine. The mean over runs is printed next to it.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

interface Ev { cat: string; name: string; dur: number; args?: { op_name?: string } }

/** Table of op types by their summed fastest-run time; the last `runs` of `runs + warmup` runs count. */
export function summarize(file: string, runs: number, warmup: number): string {
  const events = (JSON.parse(readFileSync(file, 'utf8')) as Ev[]).filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time'));
  const perRun = events.length / (runs + warmup);
  if (!Number.isInteger(perRun)) throw new Error(`${file}: ${events.length} node events do not split into ${runs + warmup} runs`);
  const timed = events.slice(events.length - perRun * runs);
  const byOp = new Map<string, { min: number; mean: number; n: number }>();
  for (let i = 0; i < perRun; i++) {
    const durs = Array.from({ length: runs }, (_, r) => timed[r * perRun + i].dur / 1000);
    const op = timed[i].args?.op_name ?? '?';
    const row = byOp.get(op) ?? { min: 0, mean: 0, n: 0 };
    row.min += Math.min(...durs);
    row.mean += durs.reduce((p, q) => p + q, 0) / runs;
    row.n++;
    byOp.set(op, row);
  }
  const rows = [...byOp.entries()].sort((a, b) => b[1].min - a[1].min);
  const total = rows.reduce((p, [, r]) => p + r.min, 0);
  const totalMean = rows.reduce((p, [, r]) => p + r.mean, 0);
  const lines = [`kernels ${total.toFixed(0)} ms (fastest run per node), ${totalMean.toFixed(0)} ms (mean); ${perRun} nodes`, 'op type                        min ms   share   mean ms  nodes'];
  for (const [op, r] of rows) {
    lines.push(`${op.padEnd(28)} ${r.min.toFixed(1).padStart(8)} ${(100 * r.min / total).toFixed(1).padStart(6)} % ${r.mean.toFixed(1).padStart(9)} ${String(r.n).padStart(6)}`);
  }
  return lines.join('\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [file, runs, warmup] = process.argv.slice(2);
  console.log(summarize(file, Number(runs ?? 3), Number(warmup ?? 2)));
}
