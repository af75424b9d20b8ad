// Stopping and crashing lose nothing: a job stopped from the API, and a server killed with
// -9 mid-job and started again, both resume from their checkpoint and end with exactly the
// embedding of a run that was never interrupted.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadEmbedding, StableDiffusion, trainTextualInversion } from '../../src/index.ts';
import { startServer } from '../../src/server/server.ts';
import { BIN, conceptImages, FIXTURES, getJson, postJob, readEvents, untilState } from './helpers.ts';

// Enough steps that a stop sent after step 3 arrives long before the end, even on a fast machine.
const STEPS = 400;
const SAVE_EVERY = 50;
const FIELDS = { model: 'sd1-tiny', token: '<srv-dot>', init: 'star', resolution: 16, lr: 5e-2, steps: STEPS, 'save-every': SAVE_EVERY };
let dir: string;
let images: string[];
let reference: Promise<number[]>;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'oneword-resume-'));
  images = await conceptImages(join(dir, 'images'));
  // The uninterrupted run, through the library, with the same images in the same order.
  reference = (async () => {
    const sd = StableDiffusion.load(join(FIXTURES, 'sd1-tiny'), { threads: 1 });
    const run = await trainTextualInversion(sd, { images, token: '<srv-dot>', init: 'star', resolution: 16, lr: 5e-2, steps: STEPS, saveEvery: 0 });
    return [...run.embedding.vectors];
  })();
});
after(() => rmSync(dir, { recursive: true, force: true }));

async function finalVectors(base: string, id: string): Promise<number[]> {
  const r = await fetch(new URL(`/api/jobs/${id}/embedding?format=diffusers`, base));
  assert.equal(r.status, 200);
  const file = join(dir, `${id}.safetensors`);
  writeFileSync(file, Buffer.from(await r.arrayBuffer()));
  return [...loadEmbedding(file).vectors];
}

test('serve: stop saves a checkpoint at the current step; resume finishes bit for bit as an uninterrupted run', async () => {
  const server = await startServer({ port: 0, data: join(dir, 'stop'), models: FIXTURES, threads: 1 });
  try {
    const { body } = await postJob(server.url, FIELDS, images);
    const id = body.id!;
    await readEvents(server.url, id, (e) => e.event === 'step' && (e.data.step as number) >= 3);
    const stop = await getJson(server.url, `/api/jobs/${id}/stop`, { method: 'POST' });
    assert.equal(stop.status, 200);
    await readEvents(server.url, id, untilState('stopped', 'done', 'failed'));
    const stopped = (await getJson(server.url, `/api/jobs/${id}`)).body as Record<string, any>;
    assert.equal(stopped.state, 'stopped', `the job ended before the stop arrived (step ${stopped.step})`);
    assert.ok(stopped.step >= 3 && stopped.step < STEPS);
    // The stop step is saved (and downloadable) though it is no multiple of save-every.
    assert.ok(stopped.checkpoints.some((c: any) => c.step === stopped.step), JSON.stringify(stopped.checkpoints));
    assert.equal((await getJson(server.url, `/api/jobs/${id}/stop`, { method: 'POST' })).status, 409);
    assert.equal((await getJson(server.url, `/api/jobs/${id}/resume`, { method: 'POST' })).status, 200);
    await readEvents(server.url, id, untilState('done', 'failed'));
    const done = (await getJson(server.url, `/api/jobs/${id}`)).body as Record<string, any>;
    assert.equal(done.state, 'done', done.error);
    assert.deepEqual((await getJson<{ step: number[] }>(server.url, `/api/jobs/${id}/log`)).body.step, Array.from({ length: STEPS }, (_, i) => i + 1));
    assert.deepEqual(await finalVectors(server.url, id), await reference);
  } finally {
    await server.close();
  }
});

test('serve: a training process that dies (out of memory) fails the job, not the server; resume continues from its checkpoint', async () => {
  const data = join(dir, 'oom');
  const server = await startServer({ port: 0, data, models: FIXTURES, threads: 1 });
  try {
    const id = (await postJob(server.url, FIELDS, images)).body.id!;
    await readEvents(server.url, id, (e) => e.event === 'step' && (e.data.step as number) >= SAVE_EVERY + 10);
    process.kill(Number(readFileSync(join(data, 'engine.pid'), 'utf8')), 'SIGKILL');
    await readEvents(server.url, id, untilState('failed'));
    const failed = (await getJson(server.url, `/api/jobs/${id}`)).body as Record<string, any>;
    assert.equal(failed.step % SAVE_EVERY, 0);
    assert.ok(failed.step >= SAVE_EVERY);
    assert.equal(failed.error, `the training process was killed by SIGKILL (out of memory?); resume continues from step ${failed.step}`);
    assert.equal((await getJson(server.url, '/api/models')).status, 200, 'the server still answers');
    assert.equal((await getJson(server.url, `/api/jobs/${id}/resume`, { method: 'POST' })).status, 200);
    await readEvents(server.url, id, untilState('done', 'failed'));
    assert.equal(((await getJson(server.url, `/api/jobs/${id}`)).body as Record<string, any>).state, 'done');
    assert.deepEqual(await finalVectors(server.url, id), await reference);
  } finally {
    await server.close();
  }
});

function startCli(data: string): Promise<{ child: ChildProcess; url: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, 'serve', '--port', '0', '--data', data, '--models', FIXTURES, '--threads', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => {
      out += d;
      const m = /oneword serve: (http:\/\/\S+)/.exec(out);
      if (m) resolve({ child, url: m[1] });
    });
    child.stderr!.on('data', (d) => (err += d));
    child.once('exit', (code) => reject(new Error(`oneword serve exited with ${code}: ${err}`)));
  });
}

async function gone(pid: number, timeoutMs = 60_000): Promise<boolean> {
  for (const t0 = Date.now(); Date.now() - t0 < timeoutMs; await new Promise((r) => setTimeout(r, 100))) {
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
  }
  return false;
}

test('serve: killed with -9 mid-job, a restarted server shows the job stopped at its last checkpoint; resuming loses nothing', async () => {
  const data = join(dir, 'crash');
  const { child, url } = await startCli(data);
  const { body } = await postJob(url, FIELDS, images);
  const id = body.id!;
  const seen = await readEvents(url, id, (e) => e.event === 'step' && (e.data.step as number) >= 2 * SAVE_EVERY + 10);
  const reached = seen.at(-1)!.data.step as number;
  const enginePid = Number(readFileSync(join(data, 'engine.pid'), 'utf8'));
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  // The engine notices its server is gone and stops by itself.
  assert.ok(await gone(enginePid), 'the engine outlived its server');

  const server = await startServer({ port: 0, data, models: FIXTURES, threads: 1 });
  try {
    const job = (await getJson(server.url, `/api/jobs/${id}`)).body as Record<string, any>;
    assert.equal(job.state, 'stopped');
    assert.equal(job.step % SAVE_EVERY, 0);
    assert.ok(job.step >= 2 * SAVE_EVERY && job.step <= reached, `checkpoint ${job.step}, reached ${reached}`);
    assert.match(job.note, new RegExp(`the server stopped while this job was training; resume continues from step ${job.step}`));
    // Put back to the checkpoint: the log ends there, the checkpoint's files are listed, nothing half-written is left.
    assert.deepEqual((await getJson<{ step: number[] }>(server.url, `/api/jobs/${id}/log`)).body.step, Array.from({ length: job.step }, (_, i) => i + 1));
    assert.deepEqual(job.checkpoints.map((c: any) => c.step), Array.from({ length: job.step / SAVE_EVERY }, (_, i) => (i + 1) * SAVE_EVERY));
    assert.deepEqual(readdirSync(join(data, 'jobs', id, 'run')).filter((f) => f.endsWith('.tmp')), []);
    assert.ok(!existsSync(join(data, 'jobs', id, 'run', 'learned_embeds.safetensors')));

    assert.equal((await getJson(server.url, `/api/jobs/${id}/resume`, { method: 'POST' })).status, 200);
    await readEvents(server.url, id, untilState('done', 'failed'));
    const done = (await getJson(server.url, `/api/jobs/${id}`)).body as Record<string, any>;
    assert.equal(done.state, 'done', done.error);
    assert.deepEqual((await getJson<{ step: number[] }>(server.url, `/api/jobs/${id}/log`)).body.step, Array.from({ length: STEPS }, (_, i) => i + 1));
    assert.deepEqual(await finalVectors(server.url, id), await reference);
  } finally {
    await server.close();
  }
});
