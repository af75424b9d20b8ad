// Terminal progress: a bar with it/s and ETA on stderr, JSON lines for scripts, or nothing.
export type ProgressMode = 'bar' | 'json' | 'quiet';

export class Progress {
  private start = performance.now();
  private lastDraw = 0;
  constructor(
    private readonly mode: ProgressMode,
    private label: string,
    private readonly total: number,
  ) {}

  reset(label?: string): void {
    this.start = performance.now();
    if (label) this.label = label;
  }

  /** `done` units finished; `extra` goes into the JSON line and after the bar. */
  update(done: number, extra: Record<string, number | string> = {}): void {
    const secs = (performance.now() - this.start) / 1000;
    const rate = done / Math.max(secs, 1e-9);
    const eta = rate > 0 ? (this.total - done) / rate : 0;
    if (this.mode === 'json') {
      process.stdout.write(`${JSON.stringify({ event: 'progress', task: this.label, done, total: this.total, it_per_s: round(rate), eta_s: round(eta), ...extra })}\n`);
      return;
    }
    if (this.mode !== 'bar') return;
    const now = performance.now();
    if (done < this.total && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    const width = 24;
    const filled = Math.round((done / this.total) * width);
    const speed = rate >= 1 ? `${rate.toFixed(2)} it/s` : `${(1 / Math.max(rate, 1e-9)).toFixed(2)} s/it`;
    const more = Object.entries(extra).map(([k, v]) => `${k} ${typeof v === 'number' ? round(v) : v}`).join(' ');
    const line = `${this.label} ${'█'.repeat(filled)}${'░'.repeat(width - filled)} ${done}/${this.total} ${speed} ETA ${fmtTime(eta)}${more ? ` ${more}` : ''}`;
    process.stderr.write(process.stderr.isTTY ? `\r${line}\x1b[K` : `${line}\n`);
    if (done >= this.total && process.stderr.isTTY) process.stderr.write('\n');
  }
}

function round(v: number): number {
  return Number(v.toPrecision(4));
}

/**
 * The loader's warnings (an assumed prediction type, ignored tensors, a missing fp16
 * variant…): on stderr as "warning: …" lines, as `warning` events in JSON mode; never
 * hidden except by --quiet.
 */
export function reportWarnings(mode: ProgressMode, warnings: readonly string[]): void {
  for (const w of warnings) {
    if (mode === 'json') process.stdout.write(`${JSON.stringify({ event: 'warning', message: w })}\n`);
    else if (mode === 'bar') process.stderr.write(`warning: ${w}\n`);
  }
}

export function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return '?';
  const m = Math.floor(s / 60);
  const sec = Math.round(s - m * 60);
  return m ? `${m}m${String(sec).padStart(2, '0')}s` : `${sec}s`;
}
