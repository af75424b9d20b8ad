// The HTTP API against a real server on loopback, with the tiny fixture model: a job
// trains and saves, its embedding downloads in both formats and at any saved step, the
// word generates; bad requests are refused with one line and leave no trace; the token.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadEmbedding } from '../../src/index.ts';
import { startServer, type RunningServer } from '../../src/server/server.ts';
import { conceptImages, FIXTURES, getJson, postJob, readEvents, untilState } from './helpers.ts';

const TINY = { model: 'sd1-tiny', init: 'star', resolution: 16, lr: 5e-2 };
let dir: string;
let server: RunningServer;
let images: string[];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'oneword-serve-'));
  images = await conceptImages(join(dir, 'images'));
  server = await startServer({ port: 0, data: join(dir, 'data'), models: FIXTURES, threads: 1 });
});
after(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('serve: models are the bundled one plus the fixtures folder, by id only', async () => {
  const { status, body } = await getJson<Array<Record<string, unknown>>>(server.url, '/api/models');
  assert.equal(status, 200);
  assert.deepEqual(body.map((m) => m.id), ['shapes', 'sd1-tiny', 'sd1-tiny-single-file.safetensors', 'sd2-tiny', 'sdxl-tiny']);
  assert.ok(body.every((m) => !('path' in m)), 'no server path is shown');
  assert.deepEqual(body.find((m) => m.id === 'sd1-tiny'), { id: 'sd1-tiny', name: 'sd1-tiny', layout: 'diffusers', family: 'sd1', resolution: 64, sampler: 'dpmpp2m-karras', hidden_size: 32 });
});

test('serve: a job trains with events, lists every saved step, downloads both formats, and its word generates', async () => {
  const { status, body } = await postJob(server.url, { ...TINY, token: '<srv-star>', steps: 4, 'save-every': 2, 'preview-every': 2 }, images);
  assert.equal(status, 201, body.error);
  const id = body.id!;
  const events = await readEvents(server.url, id, untilState('done', 'failed'));
  const kinds = new Set(events.map((e) => e.event));
  for (const k of ['state', 'step', 'loss', 'preview', 'checkpoint']) assert.ok(kinds.has(k), `no ${k} event`);
  assert.deepEqual(events.filter((e) => e.event === 'loss').map((e) => e.data.step), [1, 2, 3, 4]);

  const job = (await getJson(server.url, `/api/jobs/${id}`)).body as Record<string, any>;
  assert.equal(job.state, 'done', job.error);
  assert.equal(job.step, 4);
  assert.equal(job.options.steps, 4);
  assert.equal(job.options['save-every'], 2);
  assert.deepEqual(job.checkpoints.map((c: any) => [c.step, c.final, Boolean(c.preview)]), [[2, false, true], [4, true, true]]);
  assert.deepEqual((await getJson(server.url, `/api/jobs/${id}/log`)).body.step, [1, 2, 3, 4]);
  const preview = await fetch(new URL(job.previews[0].url, server.url));
  assert.equal(preview.headers.get('content-type'), 'image/png');

  const download = async (query: string) => {
    const r = await fetch(new URL(`/api/jobs/${id}/embedding?${query}`, server.url));
    assert.equal(r.status, 200, query);
    const file = join(dir, `dl-${query.replace(/\W+/g, '_')}.safetensors`);
    writeFileSync(file, Buffer.from(await r.arrayBuffer()));
    return { e: loadEmbedding(file, { token: '<srv-star>' }), name: /filename="([^"]+)"/.exec(r.headers.get('content-disposition') ?? '')?.[1] };
  };
  const last = await download('format=diffusers');
  assert.equal(last.e.format, 'diffusers');
  assert.equal(last.name, 'learned_embeds.safetensors');
  const lastA1111 = await download('format=a1111');
  assert.equal(lastA1111.e.format, 'a1111-safetensors');
  assert.equal(lastA1111.name, 'srv-star.safetensors');
  assert.deepEqual([...lastA1111.e.vectors], [...last.e.vectors]);
  const step2 = await download('format=a1111&step=2');
  assert.equal(step2.name, 'srv-star-steps-2.safetensors');
  assert.notDeepEqual([...step2.e.vectors], [...last.e.vectors], 'step 2 and step 4 are different embeddings');
  assert.equal((await fetch(new URL(`/api/jobs/${id}/embedding?format=diffusers&step=3`, server.url))).status, 404);

  const gen = async (embeddings: unknown[]) => {
    const r = await getJson<{ images: string[]; infotexts: string[]; seeds: number[]; error?: string }>(server.url, '/api/generate', {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'sd1-tiny', prompt: 'a photo of <srv-star>', steps: 2, width: 16, height: 16, count: 2, seed: 7, embeddings }),
    });
    assert.equal(r.status, 200, r.body.error);
    return r.body;
  };
  const withWord = await gen([id]);
  assert.equal(withWord.images.length, 2);
  assert.deepEqual(withWord.seeds, [7, 8]);
  const png = Buffer.from(withWord.images[0], 'base64');
  assert.equal(png.subarray(1, 4).toString(), 'PNG');
  assert.equal(png.readUInt32BE(16), 16, 'width 16');
  assert.match(withWord.infotexts[0], /^a photo of <srv-star>\nSteps: 2, Sampler: DPM\+\+ 2M Karras, CFG scale: 7.5, Seed: 7, Size: 16x16, Model: sd1-tiny, Version: oneword, TI hashes: "<srv-star>: [0-9a-f]{12}"$/);
  // The word is used: the same prompt and seed without it draw another image; an uploaded copy of the file draws the same one.
  const withoutWord = await gen([]);
  assert.notEqual(withoutWord.images[0], withWord.images[0]);
  const a1111File = Buffer.from(await (await fetch(new URL(`/api/jobs/${id}/embedding?format=a1111`, server.url))).arrayBuffer());
  const uploaded = await gen([{ name: 'srv-star.safetensors', token: '<srv-star>', data: a1111File.toString('base64') }]);
  // (The infotext differs: A1111's TI hash is the file's.)
  const pixels = (b64: string) => { const b = Buffer.from(b64, 'base64'); return b.subarray(b.indexOf('IDAT')).toString('hex'); };
  assert.equal(pixels(uploaded.images[0]), pixels(withWord.images[0]));
  assert.ok(readdirSync(join(dir, 'data', 'outputs')).some((f) => /^\d{5}-7\.png$/.test(f)), 'images are kept in <data>/outputs');
});

test('serve: one job at a time; the next waits in the queue, a queued job can be stopped, a finished one deleted', async () => {
  // Long enough to still be running while the others are posted (it is stopped below).
  const first = (await postJob(server.url, { ...TINY, token: '<q-one>', steps: 5000, 'save-every': 0 }, images)).body.id!;
  const second = (await postJob(server.url, { ...TINY, token: '<q-two>', steps: 2, 'save-every': 0 }, images)).body.id!;
  const third = (await postJob(server.url, { ...TINY, token: '<q-three>', steps: 2, 'save-every': 0 }, images)).body.id!;
  const listed = (await getJson<{ queue: string[]; jobs: Array<Record<string, any>> }>(server.url, '/api/jobs')).body;
  assert.deepEqual(listed.queue, [first, second, third]);
  const byId = new Map(listed.jobs.map((j) => [j.id, j]));
  assert.equal(byId.get(first)!.state, 'running');
  assert.equal(byId.get(second)!.state, 'queued');
  assert.equal(byId.get(third)!.queue_position, 2);
  assert.equal((await getJson(server.url, `/api/jobs/${first}`, { method: 'DELETE' })).status, 409, 'a running job is not deleted');
  assert.equal((await getJson<Record<string, any>>(server.url, `/api/jobs/${third}/stop`, { method: 'POST' })).body.state, 'stopped');
  await getJson(server.url, `/api/jobs/${first}/stop`, { method: 'POST' });
  await readEvents(server.url, second, untilState('done', 'failed'));
  const jobs = (await getJson<{ queue: string[]; jobs: Array<Record<string, any>> }>(server.url, '/api/jobs')).body;
  assert.deepEqual(jobs.jobs.filter((j) => [first, second, third].includes(j.id)).map((j) => j.state), ['stopped', 'done', 'stopped']);
  assert.ok(jobs.jobs.find((j) => j.id === first)!.finished_at <= jobs.jobs.find((j) => j.id === second)!.started_at, 'the second started after the first ended');
  assert.deepEqual(jobs.queue, []);

  assert.equal((await getJson(server.url, `/api/jobs/${third}`, { method: 'DELETE' })).status, 200);
  assert.equal((await getJson(server.url, `/api/jobs/${third}`)).status, 404);
  assert.ok(!readdirSync(join(dir, 'data', 'jobs')).includes(third), 'its folder is gone');
});

test('serve: bad requests get a 4xx with one line and change nothing', async () => {
  const jobsBefore = readdirSync(join(dir, 'data', 'jobs')).sort();
  const notImage = join(dir, 'not-an-image.png');
  writeFileSync(notImage, '{"hello": "world"}');
  const text = join(dir, 'notes.txt');
  writeFileSync(text, 'hello');
  const ok = { ...TINY, token: '<fine>', steps: 2 };
  const cases: Array<[string, () => Promise<{ status: number; body: { error?: string } }>, number, RegExp]> = [
    ['steps not a number', () => postJob(server.url, { ...ok, steps: 'abc' }, images), 400, /^steps needs a number, got "abc"$/],
    ['steps not whole', () => postJob(server.url, { ...ok, steps: 2.5 }, images), 400, /^steps must be a whole number/],
    ['unknown field', () => postJob(server.url, { ...ok, stepz: 3 }, images), 400, /^unknown field "stepz"/],
    ['unknown model', () => postJob(server.url, { ...ok, model: 'sd15' }, images), 400, /^model "sd15" is not one of this server's models/],
    ['a path as model', () => postJob(server.url, { ...ok, model: '../fixtures/sd1-tiny' }, images), 400, /is not one of this server's models/],
    ['no images', () => postJob(server.url, ok, []), 400, /^images: upload/],
    ['a non-image upload', () => postJob(server.url, ok, [images[0], notImage]), 400, /^images: "not-an-image.png" is not an image/],
    ['a text file', () => postJob(server.url, ok, [text]), 400, /^images: "notes.txt" is not a .jpg/],
    ['more than 100 files', () => postJob(server.url, ok, Array(101).fill(images[0])), 413, /at most 100 files/],
    ['an existing word as token', () => postJob(server.url, { ...ok, token: 'star' }, images), 400, /^token "star" already exists in the vocabulary/],
    ['a token that is a path', () => postJob(server.url, { ...ok, token: '../../escape' }, images), 400, /^token must be/],
    ['bad resolution', () => postJob(server.url, { ...ok, resolution: 15 }, images), 400, /^resolution must be a positive multiple of 2/],
    ['bad lr schedule', () => postJob(server.url, { ...ok, lr: '1e-3:abc, 1' }, images), 400, /^lr "1e-3:abc, 1": step "abc" must be a whole number/],
    ['bad flag name in library error', () => postJob(server.url, { ...ok, 'grad-accum': 0 }, images), 400, /^grad-accum must be a whole number from 1 to 10000, got 0$/],
    ['over 50 MB', async () => {
      const r = await fetch(new URL('/api/jobs', server.url), { method: 'POST', headers: { 'content-type': 'multipart/form-data; boundary=x' }, body: new Uint8Array(51 * 1024 * 1024) });
      return { status: r.status, body: await r.json() };
    }, 413, /larger than 50 MB/],
    ['not multipart', () => getJson(server.url, '/api/jobs', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' }), 400, /multipart/],
    ['no such job', () => getJson(server.url, '/api/jobs/nope'), 404, /^no job "nope"$/],
    ['a path as job id', () => getJson(server.url, '/api/jobs/..%2F..%2Fetc/embedding'), 404, /no job/],
    ['bad embedding format', async () => getJson(server.url, `/api/jobs/${jobsBefore[0]}/embedding?format=ckpt`), 400, /^format must be diffusers or a1111/],
    ['bad step', async () => getJson(server.url, `/api/jobs/${jobsBefore[0]}/embedding?step=..`), 400, /^step must be a whole number/],
    ['generate: wrong type', () => getJson(server.url, '/api/generate', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'sd1-tiny', prompt: 'x', steps: '3' }) }), 400, /^steps must be a whole number, got "3"$/],
    ['generate: unknown sampler', () => getJson(server.url, '/api/generate', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'sd1-tiny', prompt: 'x', sampler: 'lms' }) }), 400, /^sampler must be one of/],
    ['generate: library names become fields', () => getJson(server.url, '/api/generate', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'sd1-tiny', prompt: 'x', cfg: -1 }) }), 400, /^cfg must be ≥ 0/],
    ['generate: unknown job', () => getJson(server.url, '/api/generate', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'sd1-tiny', prompt: 'x', embeddings: ['nope'] }) }), 400, /^embeddings\[0\]: no job "nope"$/],
    ['generate: a broken embedding file', () => getJson(server.url, '/api/generate', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'sd1-tiny', prompt: 'x', embeddings: [{ name: 'x.pt', data: Buffer.from('junk').toString('base64') }] }) }), 400, /^embeddings\[0\]: "x.pt" /],
    ['generate: wrong width embedding', () => getJson(server.url, '/api/generate', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'sd1-tiny', prompt: 'x', embeddings: [{ name: 'sd2.safetensors', data: Buffer.from(readFileSync(join(FIXTURES, 'embeddings', 'sd2-1024.safetensors'))).toString('base64') }] }) }), 400, /1024-dimensional vectors but this model's text encoder uses 32/],
    ['generate: an SDXL word on an SD 1.x model', () => getJson(server.url, '/api/generate', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'sd1-tiny', prompt: 'x', embeddings: [{ name: 'xl.safetensors', data: Buffer.from(readFileSync(join(FIXTURES, 'embeddings', 'sdxl.safetensors'))).toString('base64') }] }) }), 400, /an SDXL embedding \(clip_l \d+, clip_g \d+\) cannot be used with an .* model \(32\)/],
    ['generate: not JSON', () => getJson(server.url, '/api/generate', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{' }), 400, /must be JSON/],
    ['another site', () => getJson(server.url, '/api/jobs/x/stop', { method: 'POST', headers: { origin: 'http://evil.example' } }), 403, /not allowed/],
    ['another host name (DNS rebinding)', () => new Promise((resolve, reject) => {
      // fetch() sets Host itself; a raw request can name another.
      const { hostname, port } = new URL(server.url);
      request({ hostname, port, path: '/api/models', headers: { host: 'evil.example' } }, (res) => {
        let text = '';
        res.on('data', (d) => (text += d)).on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(text) }));
      }).on('error', reject).end();
    }), 403, /localhost only/],
  ];
  for (const [name, call, status, error] of cases) {
    const r = await call();
    assert.equal(r.status, status, `${name}: ${JSON.stringify(r.body)}`);
    assert.match(r.body.error ?? '', error, name);
    assert.ok(!r.body.error!.includes('\n'), `${name}: one line`);
  }
  assert.deepEqual(readdirSync(join(dir, 'data', 'jobs')).sort(), jobsBefore, 'no job, staging folder or upload was left');
});

test('serve: off loopback only with a token; then every API call needs it', async () => {
  await assert.rejects(startServer({ port: 0, host: '0.0.0.0', data: join(dir, 'other') }), /token is required to listen on 0\.0\.0\.0/);
  const secured = await startServer({ port: 0, data: join(dir, 'secured'), token: 's3cret' });
  try {
    assert.equal((await getJson(secured.url, '/api/models')).status, 401);
    assert.equal((await getJson(secured.url, '/api/models', { headers: { authorization: 'Bearer wrong' } })).status, 401);
    assert.equal((await getJson(secured.url, '/api/models', { headers: { authorization: 'Bearer s3cret' } })).status, 200);
    assert.equal((await getJson(secured.url, '/api/jobs', { headers: { cookie: 'oneword_token=s3cret' } })).status, 200);
    // The page itself loads without the token (it asks for it).
    assert.equal((await fetch(secured.url)).status, 200);
  } finally {
    await secured.close();
  }
});

test('serve: an SDXL job trains both encoders\' vectors, downloads clip_l/clip_g, and its word generates', async () => {
  const { status, body } = await postJob(server.url, { model: 'sdxl-tiny', init: 'toy', resolution: 32, lr: 5e-3, token: '<srv-xl>', steps: 2, 'save-every': 2 }, images);
  assert.equal(status, 201, body.error);
  const id = body.id!;
  await readEvents(server.url, id, untilState('done', 'failed'));
  const job = (await getJson(server.url, `/api/jobs/${id}`)).body as Record<string, any>;
  assert.equal(job.state, 'done', job.error);
  const r = await fetch(new URL(`/api/jobs/${id}/embedding?format=a1111`, server.url));
  assert.equal(r.status, 200);
  const file = join(dir, 'dl-xl.safetensors');
  writeFileSync(file, Buffer.from(await r.arrayBuffer()));
  const e = loadEmbedding(file);
  assert.deepEqual([e.format, e.dim, e.dim2], ['sdxl-safetensors', 16, 20]);
  const gen = await getJson<{ images: string[]; error?: string }>(server.url, '/api/generate', {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'sdxl-tiny', prompt: 'a photo of <srv-xl>', steps: 2, width: 32, height: 32, seed: 3, embeddings: [id] }),
  });
  assert.equal(gen.status, 200, gen.body.error);
  assert.equal(gen.body.images.length, 1);
  // An SDXL word is not offered to an SD 1.x model.
  const wrong = await getJson<{ error?: string }>(server.url, '/api/generate', {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'sd1-tiny', prompt: 'a photo of <srv-xl>', steps: 2, width: 16, height: 16, embeddings: [id] }),
  });
  assert.equal(wrong.status, 400);
  assert.match(wrong.body.error ?? '', /SDXL embedding \(clip_l 16, clip_g 20\)/);
});
