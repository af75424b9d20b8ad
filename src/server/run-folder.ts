// What a job's run folder (the trainer's `out`) holds, read from the files themselves so
// that it is right after any crash: the checkpoint's step, the step log up to it, the saved
// steps' embeddings and the previews. `reconcile` puts a folder a crash left behind back
// into the state of its last checkpoint.
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsFile } from '../io/safetensors.ts';
import { writeEmbeddingFiles } from '../pipelines/textual-inversion.ts';

const STATE_FILE = 'train-state.safetensors';
const LOG_FILE = 'train-log.jsonl';

export interface LogLine {
  step: number;
  loss: number;
  lr: number;
  seconds: number;
}

/** The step of the saved training state; 0 when there is none yet. */
export function checkpointStep(runDir: string): number {
  const path = join(runDir, STATE_FILE);
  if (!existsSync(path)) return 0;
  return Number(SafetensorsFile.open(path).metadata.step) || 0;
}

export function hasCheckpoint(runDir: string): boolean {
  return existsSync(join(runDir, STATE_FILE));
}

/** The step log; a torn last line (a crash mid-write) is left out. */
export function readLog(runDir: string): LogLine[] {
  const path = join(runDir, LOG_FILE);
  if (!existsSync(path)) return [];
  const out: LogLine[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      const l = JSON.parse(line) as LogLine;
      if (Number.isInteger(l.step) && typeof l.loss === 'number') out.push(l);
    } catch {
      /* torn line */
    }
  }
  return out;
}

/** The trainer's running loss (an exponential average, 0.98) over a log. */
export function smoothedLoss(log: readonly LogLine[]): number | null {
  let running = NaN;
  for (const l of log) running = Number.isNaN(running) ? l.loss : 0.98 * running + 0.02 * l.loss;
  return Number.isNaN(running) ? null : running;
}

export interface SavedStep {
  step: number;
  /** Whether this is the run's final save (files without the -steps-N suffix). */
  final: boolean;
  diffusers?: string;
  a1111?: string;
}

const STEP_FILE = /^(.+)-steps-(\d+)\.safetensors$/;

/** Every saved step's embedding files, by step; `steps` is the run's length (the final files' step). */
export function savedSteps(runDir: string, steps: number): SavedStep[] {
  if (!existsSync(runDir)) return [];
  const byStep = new Map<number, SavedStep>();
  const at = (step: number, final: boolean) => byStep.get(step) ?? byStep.set(step, { step, final }).get(step)!;
  for (const f of readdirSync(runDir)) {
    if (!f.endsWith('.safetensors') || f.startsWith('.') || f === STATE_FILE) continue;
    const m = STEP_FILE.exec(f);
    const s = m ? at(Number(m[2]), false) : at(steps, true);
    const base = m ? m[1] : f.slice(0, -'.safetensors'.length);
    if (base === 'learned_embeds') s.diffusers = join(runDir, f);
    else s.a1111 = join(runDir, f);
  }
  return [...byStep.values()].filter((s) => s.diffusers || s.a1111).sort((a, b) => a.step - b.step);
}

/** Preview images by step. */
export function previews(runDir: string): Map<number, string> {
  const dir = join(runDir, 'previews');
  const out = new Map<number, string>();
  if (!existsSync(dir)) return out;
  for (const f of readdirSync(dir)) {
    const m = /^step-(\d+)\.png$/.exec(f);
    if (m) out.set(Number(m[1]), join(dir, f));
  }
  return out;
}

/**
 * Makes a run folder match its last checkpoint, as it would be had training stopped there:
 * the log keeps the steps up to it, later previews and half-written temp files go, and the
 * checkpoint's embeddings exist (a crash between the state and them could lose them).
 * Resuming from here then retraces the lost steps exactly. Returns the checkpoint's step.
 */
export function reconcile(runDir: string, token: string, modelPath: string): number {
  if (!existsSync(runDir)) return 0;
  const step = checkpointStep(runDir);
  for (const dir of [runDir, join(runDir, 'previews')]) {
    if (!existsSync(dir)) continue;
    for (const f of readdirSync(dir)) if (f.startsWith('.') && f.endsWith('.tmp')) rmSync(join(dir, f), { force: true });
  }
  const log = readLog(runDir).filter((l) => l.step <= step);
  const tmp = join(runDir, `.${LOG_FILE}.tmp`);
  writeFileSync(tmp, log.map((l) => `${JSON.stringify(l)}\n`).join(''));
  renameSync(tmp, join(runDir, LOG_FILE));
  for (const [s, file] of previews(runDir)) if (s > step) rmSync(file, { force: true });
  for (const saved of savedSteps(runDir, Number.MAX_SAFE_INTEGER)) {
    if (!saved.final && saved.step > step) for (const f of [saved.diffusers, saved.a1111]) if (f) rmSync(f, { force: true });
  }
  if (step > 0) {
    const have = savedSteps(runDir, Number.MAX_SAFE_INTEGER).find((s) => s.step === step);
    if (!have?.diffusers || !have.a1111) {
      const state = SafetensorsFile.open(join(runDir, STATE_FILE));
      const info = state.tensors.get('vectors')!;
      const [count, dim] = info.shape;
      writeEmbeddingFiles(runDir, { token, vectors: state.readFloat32('vectors'), count, dim }, { suffix: `-steps-${step}`, step, model: modelPath });
    }
  }
  return step;
}
