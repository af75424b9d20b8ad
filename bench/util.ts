// Benchmark helpers: timing, memory, one JSON line per case.
export async function median(fn: () => Promise<unknown>, reps: number, warmup = 1): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    ts.push((performance.now() - t0) / 1000);
  }
  ts.sort((a, b) => a - b);
  return ts[Math.floor(ts.length / 2)];
}

/** Peak resident memory of this process so far, in MB. */
export function peakRssMb(): number {
  return Math.round(process.resourceUsage().maxRSS / 1024);
}

export function report(fields: Record<string, number | string>): void {
  const out: Record<string, number | string> = {};
  for (const [k, v] of Object.entries(fields)) out[k] = typeof v === 'number' ? Number(v.toPrecision(4)) : v;
  console.log(JSON.stringify(out));
}
