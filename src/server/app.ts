// The HTTP API (and the page, which uses nothing else). Every route answers JSON; a
// refused request gets a 4xx and { "error": "<one line>" }.
import { timingSafeEqual } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Readable } from 'node:stream';
import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { streamSSE } from 'hono/streaming';
import { serveStatic } from '@hono/node-server/serve-static';
import { SAMPLER_NAMES } from '../index.ts';
import { safeFileName } from './files.ts';
import type { Generations } from './generation.ts';
import { prepareJob } from './job-form.ts';
import { JobConflict, type JobEvent, type JobManager } from './jobs.ts';
import type { ModelRegistry } from './models.ts';
import { RequestError } from './request-error.ts';
import { previews, savedSteps } from './run-folder.ts';

export const MAX_UPLOAD_BYTES = 50 * 1024 * 1024;

/** The page's folder: web/ beside src/ (a clone) or dist/ (an installed package). */
export const PAGE_DIR = new URL('../../web/', import.meta.url).pathname;

export interface AppOptions {
  models: ModelRegistry;
  jobs: JobManager;
  generations: Generations;
  /** Required on every API call (Bearer header, or the page's cookie) when set. */
  token?: string;
  /** Bound to loopback without a token: only requests addressed to a loopback name are served (no DNS rebinding). */
  loopbackOnly: boolean;
}

const LOOPBACK_HOST = /^(localhost|127(?:\.\d{1,3}){3}|\[::1\])(?::\d+)?$/i;

function sameToken(given: string | undefined, token: string): boolean {
  if (given === undefined) return false;
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

function cookie(c: Context, name: string): string | undefined {
  for (const part of (c.req.header('cookie') ?? '').split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === name) return decodeURIComponent(v.join('='));
  }
  return undefined;
}

function fileResponse(c: Context, path: string, type: string, downloadName?: string): Response {
  const headers: Record<string, string> = { 'content-type': type, 'content-length': String(statSync(path).size), 'cache-control': 'no-cache' };
  if (downloadName) headers['content-disposition'] = `attachment; filename="${safeFileName(downloadName)}"`;
  return c.body(Readable.toWeb(createReadStream(path)) as ReadableStream, 200, headers);
}

// long function: the route table, one registration per endpoint, read top to bottom like the
// API section of the README; splitting it would scatter the API over several functions.
export function createApp(o: AppOptions): Hono {
  const app = new Hono();
  const { jobs, models, generations } = o;

  app.onError((e, c) => {
    if (e instanceof RequestError) return c.json({ error: e.message }, e.status);
    if (e instanceof JobConflict) return c.json({ error: e.message }, /^no job/.test(e.message) ? 404 : 409);
    return c.json({ error: e.message.split('\n')[0] }, 500);
  });
  app.notFound((c) => c.json({ error: `no such route: ${c.req.method} ${c.req.path}` }, 404));

  app.use('*', async (c, next) => {
    if (o.loopbackOnly && !LOOPBACK_HOST.test(c.req.header('host') ?? '')) return c.json({ error: 'this server answers requests to localhost only (start it with --host and --token to share it)' }, 403);
    // A page of another site may not drive this one (the browser says where a request comes from).
    const origin = c.req.header('origin');
    if (origin && c.req.method !== 'GET' && origin !== new URL(c.req.url).origin) return c.json({ error: `requests from ${origin} are not allowed` }, 403);
    await next();
  });

  app.use('/api/*', async (c, next) => {
    if (o.token) {
      const header = c.req.header('authorization');
      const given = header?.startsWith('Bearer ') ? header.slice(7) : cookie(c, 'oneword_token');
      if (!sameToken(given, o.token)) return c.json({ error: 'this server needs its token: Authorization: Bearer <token>' }, 401);
    }
    await next();
  });

  const job = (id: string) => {
    const j = jobs.get(id);
    if (!j) throw new RequestError(`no job "${id}"`, 404);
    return j;
  };
  const stepParam = (c: Context): number | undefined => {
    const s = c.req.query('step');
    if (s === undefined) return undefined;
    if (!/^\d+$/.test(s)) throw new RequestError(`step must be a whole number, got "${s}"`);
    return Number(s);
  };

  app.get('/api/server', (c) => c.json({ version: JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version, auth: Boolean(o.token), queue: jobs.queue(), samplers: SAMPLER_NAMES }));
  app.get('/api/models', (c) => c.json(models.scan().map(({ path: _p, ...m }) => m)));

  app.post('/api/jobs', bodyLimit({ maxSize: MAX_UPLOAD_BYTES, onError: (c) => c.json({ error: `the upload is larger than ${MAX_UPLOAD_BYTES / 1024 / 1024} MB` }, 413) }), async (c) => {
    if (!(c.req.header('content-type') ?? '').startsWith('multipart/form-data')) throw new RequestError('send the job as multipart/form-data: images files plus the option fields');
    let form: FormData;
    try {
      form = await c.req.formData();
    } catch {
      throw new RequestError('the multipart body cannot be read');
    }
    const { staging, record } = await prepareJob(form, jobs.jobsDir, models);
    jobs.add(staging, record);
    return c.json({ id: record.id }, 201);
  });
  app.get('/api/jobs', (c) => c.json({ queue: jobs.queue(), jobs: jobs.list().map((j) => jobs.view(j)) }));
  app.get('/api/jobs/:id', (c) => c.json(jobs.view(job(c.req.param('id')))));
  app.delete('/api/jobs/:id', (c) => {
    jobs.delete(job(c.req.param('id')).id);
    return c.json({ deleted: c.req.param('id') });
  });
  app.post('/api/jobs/:id/stop', (c) => c.json(jobs.view(jobs.stop(job(c.req.param('id')).id))));
  app.post('/api/jobs/:id/resume', (c) => c.json(jobs.view(jobs.resume(job(c.req.param('id')).id))));
  app.get('/api/jobs/:id/log', (c) => {
    const log = jobs.log(job(c.req.param('id')).id);
    return c.json({ step: log.map((l) => l.step), loss: log.map((l) => l.loss), lr: log.map((l) => l.lr) });
  });
  app.get('/api/jobs/:id/images/:n', (c) => {
    const j = job(c.req.param('id'));
    const name = j.images[Number(c.req.param('n'))];
    if (!/^\d+$/.test(c.req.param('n')) || !name) throw new RequestError(`job ${j.id} has no image ${c.req.param('n')}`, 404);
    const ext = name.slice(name.lastIndexOf('.') + 1);
    return fileResponse(c, join(jobs.dir(j.id), 'images', name), `image/${ext === 'jpg' ? 'jpeg' : ext}`);
  });
  app.get('/api/jobs/:id/previews/:step', (c) => {
    const j = job(c.req.param('id'));
    const file = previews(jobs.runDir(j.id)).get(Number(c.req.param('step')));
    if (!/^\d+$/.test(c.req.param('step')) || !file) throw new RequestError(`job ${j.id} has no preview at step ${c.req.param('step')}`, 404);
    return fileResponse(c, file, 'image/png');
  });
  app.get('/api/jobs/:id/embedding', (c) => {
    const j = job(c.req.param('id'));
    const format = c.req.query('format') ?? 'diffusers';
    if (format !== 'diffusers' && format !== 'a1111') throw new RequestError(`format must be diffusers or a1111, got "${format}"`);
    const step = stepParam(c);
    const saved = savedSteps(jobs.runDir(j.id), j.steps);
    const at = step === undefined ? saved.at(-1) : saved.find((s) => s.step === step);
    const file = at?.[format];
    if (!at || !file) throw new RequestError(`job ${j.id} has no saved embedding${step === undefined ? ' yet' : ` at step ${step} (saved: ${saved.map((s) => s.step).join(', ') || 'none'})`}`, 404);
    // The trainer's file names: learned_embeds[-steps-N].safetensors, <name>[-steps-N].safetensors.
    return fileResponse(c, file, 'application/octet-stream', basename(file));
  });
  app.get('/api/jobs/:id/events', (c) => {
    const j = job(c.req.param('id'));
    return streamSSE(c, async (stream) => {
      const queue: JobEvent[] = [];
      let wake: (() => void) | null = null;
      const onEvent = (e: JobEvent) => {
        if (e.job !== j.id) return;
        queue.push(e);
        wake?.();
      };
      jobs.on('event', onEvent);
      stream.onAbort(() => {
        jobs.off('event', onEvent);
        wake?.();
      });
      // The state first, so a client that connects late starts from where the job is.
      await stream.writeSSE({ event: 'state', data: JSON.stringify(jobs.view(j)) });
      while (!stream.aborted) {
        if (queue.length === 0) {
          await Promise.race([new Promise<void>((r) => (wake = r)), stream.sleep(15_000)]);
          wake = null;
          if (queue.length === 0 && !stream.aborted) await stream.write(': keep-alive\n\n');
          continue;
        }
        const e = queue.shift()!;
        await stream.writeSSE({ event: e.event, data: JSON.stringify(e.data) });
      }
    });
  });

  app.post('/api/generate', bodyLimit({ maxSize: MAX_UPLOAD_BYTES * 1.4, onError: (c) => c.json({ error: `the request is larger than ${MAX_UPLOAD_BYTES / 1024 / 1024} MB` }, 413) }), async (c) => {
    let body: unknown;
    try {
      body = await c.req.json();
    } catch {
      throw new RequestError('the request body must be JSON');
    }
    return c.json(await generations.run(body));
  });

  app.all('/api/*', (c) => c.json({ error: `no such route: ${c.req.method} ${c.req.path}` }, 404));
  if (existsSync(PAGE_DIR)) app.use('/*', serveStatic({ root: PAGE_DIR }));
  return app;
}
