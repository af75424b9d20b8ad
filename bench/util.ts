// Benchmark helpers: timing, memory, one JSON line per case.
import { readFileSync } from 'node:fs';

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

/** Current resident memory split into private (anon) and file-backed (mapped weights) MB; Linux only. */
export function rssSplitMb(): { rss_anon_mb: number; rss_file_mb: number } | Record<string, never> {
  try {
    const status = readFileSync('/proc/self/status', 'utf8');
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    return { rss_anon_mb: Math.round(kb('RssAnon') / 1024), rss_file_mb: Math.round(kb('RssFile') / 1024) };
  } catch {
    return {};
  }
}

export function report(fields: Record<string, number | string | null>): void {
  const out: Record<string, number | string | null> = {};
  for (const [k, v] of Object.entries(fields)) out[k] = typeof v === 'number' ? Number(v.toPrecision(4)) : v;
  console.log(JSON.stringify(out));
}
