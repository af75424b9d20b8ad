// Training jobs: one runs at a time, the rest wait in a queue. Each job is a folder under
// <data>/jobs/<id>: job.json (what was asked, where it stands), images/ (the uploads) and
// run/ (the trainer's output). Everything needed to show or resume a job is on disk, so
// jobs survive a server restart; one that was running when the server died is put back
// to its last checkpoint and shown as stopped.
import { EventEmitter } from 'node:events';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { EngineClient, EngineExit } from './engine-client.ts';
import { readJson, writeJsonAtomic } from './files.ts';
import { optionsAsFields } from './job-form.ts';
import type { FromEngine } from './protocol.ts';
import { hasCheckpoint, previews, readLog, reconcile, savedSteps, smoothedLoss, type LogLine } from './run-folder.ts';

export type JobState = 'queued' | 'running' | 'stopped' | 'done' | 'failed';

/** job.json. `options` are the library's (camelCase) less images, out and resume. */
export interface JobRecord {
  id: string;
  created: string;
  model: string;
  model_path: string;
  token: string;
  init: string;
  images: string[];
  options: Record<string, unknown>;
  state: JobState;
  step: number;
  steps: number;
  /** Running (smoothed) loss at `step`. */
  loss: number | null;
  error?: string;
  /** Why a job stopped when the user did not stop it (a server restart). */
  note?: string;
  queued_at?: string;
  started_at?: string;
  finished_at?: string;
}

export interface JobEvent {
  job: string;
  event: 'step' | 'loss' | 'preview' | 'checkpoint' | 'state';
  data: Record<string, unknown>;
}

/** A request the job's state does not allow (stop a finished job, delete a running one). */
export class JobConflict extends Error {}

/** Emits 'event' (JobEvent). */
export class JobManager extends EventEmitter {
  private readonly jobs = new Map<string, JobRecord>();
  /** Steps logged so far, per job (loaded on first use, appended while training). */
  private readonly logs = new Map<string, LogLine[]>();
  private running: string | null = null;
  /** Where the current run started (for it/s and ETA). */
  private runStart = 0;
  private rate: { itPerS: number; etaS: number } | null = null;
  private closing = false;

  constructor(
    readonly jobsDir: string,
    private readonly engine: EngineClient,
    private readonly threads?: number,
  ) {
    super();
    mkdirSync(jobsDir, { recursive: true });
    engine.on('message', (m: FromEngine) => this.onEngine(m));
    engine.on('exit', (e: EngineExit) => this.onEngineExit(e));
    this.load();
  }

  dir(id: string): string {
    return join(this.jobsDir, id);
  }
  runDir(id: string): string {
    return join(this.jobsDir, id, 'run');
  }

  private load(): void {
    for (const name of readdirSync(this.jobsDir)) {
      const dir = join(this.jobsDir, name);
      // A job whose upload was interrupted never became a job.
      if (name.startsWith('.staging-')) {
        rmSync(dir, { recursive: true, force: true });
        continue;
      }
      const file = join(dir, 'job.json');
      if (!existsSync(file)) continue;
      const job = readJson<JobRecord>(file);
      if (job.state === 'running') {
        const step = reconcile(this.runDir(job.id), job.token, job.model_path);
        Object.assign(job, {
          state: 'stopped', step, loss: smoothedLoss(readLog(this.runDir(job.id))),
          note: `the server stopped while this job was training; resume continues from step ${step}`,
        });
        this.save(job);
      }
      this.jobs.set(job.id, job);
    }
    setImmediate(() => this.pump());
  }

  private save(job: JobRecord): void {
    writeJsonAtomic(join(this.dir(job.id), 'job.json'), job);
  }

  /** Adopts a fully prepared staging folder (images written, job.json inside) as a queued job. */
  add(staging: string, job: JobRecord): JobRecord {
    renameSync(staging, this.dir(job.id));
    this.jobs.set(job.id, job);
    this.emitState(job);
    this.pump();
    return job;
  }

  list(): JobRecord[] {
    return [...this.jobs.values()].sort((a, b) => (a.created < b.created ? -1 : 1));
  }

  get(id: string): JobRecord | undefined {
    return this.jobs.get(id);
  }

  log(id: string): LogLine[] {
    let l = this.logs.get(id);
    if (!l) {
      l = readLog(this.runDir(id));
      this.logs.set(id, l);
    }
    return l;
  }

  /** The queue in order: the running job first. */
  queue(): string[] {
    const waiting = this.list().filter((j) => j.state === 'queued').sort((a, b) => ((a.queued_at ?? '') < (b.queued_at ?? '') ? -1 : 1));
    return [...(this.running ? [this.running] : []), ...waiting.map((j) => j.id)];
  }

  /** The public view of a job (GET /api/jobs/:id). */
  view(job: JobRecord): Record<string, unknown> {
    const run = this.runDir(job.id);
    const pv = previews(run);
    const log = this.log(job.id);
    const lossAt = (step: number) => smoothedLoss(log.filter((l) => l.step <= step));
    const url = `/api/jobs/${job.id}`;
    const checkpoints = savedSteps(run, job.steps).map((s) => ({
      step: s.step,
      final: s.final,
      loss: lossAt(s.step),
      preview: pv.has(s.step) ? `${url}/previews/${s.step}` : null,
      diffusers: s.diffusers ? `${url}/embedding?format=diffusers&step=${s.step}` : null,
      a1111: s.a1111 ? `${url}/embedding?format=a1111&step=${s.step}` : null,
    }));
    const q = this.queue().indexOf(job.id);
    return {
      id: job.id, state: job.state, step: job.step, steps: job.steps, loss: job.loss,
      token: job.token, init: job.init, model: job.model, created: job.created,
      started_at: job.started_at ?? null, finished_at: job.finished_at ?? null,
      error: job.error ?? null, note: job.note ?? null,
      queue_position: job.state === 'queued' ? q : null,
      it_per_s: job.id === this.running ? this.rate?.itPerS ?? null : null,
      eta_s: job.id === this.running ? this.rate?.etaS ?? null : null,
      options: optionsAsFields(job.options),
      images: job.images.map((_, i) => `${url}/images/${i}`),
      previews: [...pv.keys()].sort((a, b) => a - b).map((step) => ({ step, url: `${url}/previews/${step}` })),
      checkpoints,
    };
  }

  stop(id: string): JobRecord {
    const job = this.must(id);
    if (job.state === 'queued') {
      job.state = 'stopped';
      this.save(job);
      this.emitState(job);
      return job;
    }
    if (job.state !== 'running') throw new JobConflict(`job ${id} is ${job.state}; only a queued or running job can be stopped`);
    // The engine saves a checkpoint, then reports the job stopped.
    this.engine.stopJob(id);
    return job;
  }

  resume(id: string): JobRecord {
    const job = this.must(id);
    if (job.state !== 'stopped' && job.state !== 'failed') throw new JobConflict(`job ${id} is ${job.state}; only a stopped or failed job can be resumed`);
    Object.assign(job, { state: 'queued', queued_at: new Date().toISOString(), error: undefined, note: undefined });
    this.save(job);
    this.emitState(job);
    this.pump();
    return job;
  }

  delete(id: string): void {
    const job = this.must(id);
    if (job.state === 'running') throw new JobConflict(`job ${id} is running; stop it first`);
    this.jobs.delete(id);
    this.logs.delete(id);
    rmSync(this.dir(id), { recursive: true, force: true });
    this.emit('event', { job: id, event: 'state', data: { id, state: 'deleted' } } satisfies JobEvent);
  }

  private must(id: string): JobRecord {
    const job = this.jobs.get(id);
    if (!job) throw new JobConflict(`no job ${id}`);
    return job;
  }

  /** Starts the next queued job when none runs. */
  private pump(): void {
    if (this.running || this.closing) return;
    const next = this.queue()[0];
    if (!next) return;
    const job = this.jobs.get(next)!;
    const run = this.runDir(job.id);
    // From the last checkpoint when there is one; from scratch (an empty folder) when not.
    const step = reconcile(run, job.token, job.model_path);
    const resume = hasCheckpoint(run);
    if (!resume) rmSync(run, { recursive: true, force: true });
    this.logs.delete(job.id);
    Object.assign(job, { state: 'running', step, started_at: new Date().toISOString(), finished_at: undefined });
    this.running = job.id;
    this.runStart = step;
    this.rate = null;
    this.save(job);
    this.emitState(job);
    const { previewEvery, previewPrompt, ...options } = job.options;
    this.engine.send({
      type: 'train', job: job.id, modelPath: job.model_path, threads: this.threads,
      options: {
        ...options, previewEvery, previewPrompt, token: job.token, init: job.init,
        images: job.images.map((f) => join(this.dir(job.id), 'images', f)), out: run, ...(resume ? { resume: run } : {}),
      },
    });
  }

  private onEngine(m: FromEngine): void {
    if (!('job' in m)) return;
    const job = this.jobs.get(m.job);
    if (!job) return;
    const emit = (event: JobEvent['event'], data: Record<string, unknown>) => this.emit('event', { job: job.id, event, data } satisfies JobEvent);
    switch (m.type) {
      case 'step': {
        job.step = m.step;
        job.loss = m.running;
        this.log(job.id).push({ step: m.step, loss: m.loss, lr: m.lr, seconds: m.seconds });
        const itPerS = (m.step - this.runStart) / Math.max(m.seconds, 1e-9);
        this.rate = { itPerS, etaS: (job.steps - m.step) / Math.max(itPerS, 1e-9) };
        emit('step', { step: m.step, steps: job.steps, it_per_s: this.rate.itPerS, eta_s: this.rate.etaS });
        emit('loss', { step: m.step, loss: m.loss, smoothed: m.running, lr: m.lr });
        break;
      }
      case 'preview':
        emit('preview', { step: m.step, url: `/api/jobs/${job.id}/previews/${m.step}` });
        break;
      case 'checkpoint':
        this.save(job);
        emit('checkpoint', { step: m.step, view: this.view(job) });
        break;
      case 'trained':
        this.finishRun(job, m.stopped ? 'stopped' : 'done', { step: m.step });
        break;
      case 'train-failed':
        this.finishRun(job, 'failed', { error: m.message });
        break;
    }
  }

  private finishRun(job: JobRecord, state: JobState, extra: Partial<JobRecord>): void {
    Object.assign(job, { state, finished_at: new Date().toISOString() }, extra);
    if (this.running === job.id) this.running = null;
    this.rate = null;
    this.save(job);
    this.emitState(job);
    this.pump();
  }

  /** The engine died (out of memory, a native crash): the running job goes back to its last checkpoint. */
  private onEngineExit(e: EngineExit): void {
    const id = this.running;
    if (!id) return;
    const job = this.jobs.get(id)!;
    const step = reconcile(this.runDir(id), job.token, job.model_path);
    this.logs.delete(id);
    const how = e.signal ? `was killed by ${e.signal}${e.signal === 'SIGKILL' ? ' (out of memory?)' : ''}` : `exited with code ${e.code}`;
    this.finishRun(job, 'failed', { step, loss: smoothedLoss(this.log(id)), error: `the training process ${how}; resume continues from step ${step}` });
  }

  private emitState(job: JobRecord): void {
    this.emit('event', { job: job.id, event: 'state', data: this.view(job) } satisfies JobEvent);
  }

  /** At shutdown: the running job saves a checkpoint and stops (within `timeoutMs`). */
  async close(timeoutMs = 60_000): Promise<void> {
    this.closing = true;
    const id = this.running;
    if (!id) return;
    const job = this.jobs.get(id)!;
    await new Promise<void>((resolve) => {
      const done = (ev: JobEvent) => {
        if (ev.job === id && ev.event === 'state' && job.state !== 'running') finish();
      };
      const timer = setTimeout(() => finish(), timeoutMs);
      const finish = () => {
        clearTimeout(timer);
        this.off('event', done);
        resolve();
      };
      this.on('event', done);
      this.engine.stopJob(id);
    });
    if (job.state === 'stopped') {
      job.note = `the server was shut down; resume continues from step ${job.step}`;
      this.save(job);
    }
  }
}
