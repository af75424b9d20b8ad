// `oneword train` and `generate` against hostile-but-fair input: they never write outside
// --out, never replace a run or a user's file, stop cleanly on SIGTERM and on divergence,
// and refuse bad input up front (before a model loads) with one line naming the option.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { Rng, randomAttributes, render, writePng } from '../../src/shapes/index.ts';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.ts';
import { LOCK_FILE } from '../../src/io/output-folder.ts';
import { saveA1111Embedding } from '../../src/io/embeddings.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const BIN = new URL('../../bin/oneword.js', import.meta.url).pathname;
const MODEL = join(FIX, 'sd1-tiny');

interface Result { status: number | null; stdout: string; stderr: string }

/** Runs the CLI in `cwd`. */
function cli(args: string[], cwd?: string): Result {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', cwd });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs several CLI calls two at a time (each is mostly process start-up). */
async function cliAll(calls: string[][], cwd?: string): Promise<Result[]> {
  const one = (args: string[]) => new Promise<Result>((res) => {
    const c = spawn(process.execPath, [BIN, ...args], { cwd });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    c.on('exit', (status) => res({ status, stdout, stderr }));
  });
  const out: Result[] = [];
  for (let i = 0; i < calls.length; i += 2) out.push(...(await Promise.all(calls.slice(i, i + 2).map(one))));
  return out;
}

async function conceptImages(dir: string, n = 3): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const rng = new Rng(5);
  for (let i = 0; i < n; i++) await writePng(render(randomAttributes(rng, { shape: 'star', color: 'orange', texture: 'dotted' }), rng), join(dir, `${i}.png`));
  return dir;
}

const train = (images: string, out: string, extra: string[] = []) => [
  'train', '--model', MODEL, '--images', images, '--token', '<dotted-star>', '--init', 'star', '--out', out, '--progress', 'quiet', '--threads', '1', ...extra,
];

/** Every file under `dir` with its bytes, to prove nothing changed. */
function snapshot(dir: string): Map<string, string> {
  const m = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else m.set(p, readFileSync(p).toString('base64'));
    }
  };
  if (existsSync(dir)) walk(dir);
  return m;
}

function withDir(name: string, fn: (dir: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), `oneword-${name}-`));
    try {
      await fn(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

test('a token never becomes a path: refused before training, nothing written anywhere', withDir('token', async (dir) => {
  const images = await conceptImages(join(dir, 'images'));
  const victim = join(dir, 'victim');
  mkdirSync(victim);
  writeFileSync(join(victim, 'my-model.safetensors'), 'a user model');
  const before = snapshot(dir);
  const base = ['train', '--model', MODEL, '--images', images, '--init', 'star', '--progress', 'json'];
  const results = await cliAll([
    [...base, '--token', '<../my-model>', '--out', join(victim, 'run')],
    [...base, '--token', '../../evil', '--out', join(victim, 'run')],
    [...base, '--token', '<my/cat>', '--out', join(dir, 'cat')],
    [...base, '--token', '<a\\b>', '--out', join(dir, 'cat')],
  ]);
  for (const r of results) {
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /^oneword train: --token "[^"]+" cannot name a file: "[/\\]+" is not allowed/);
    assert.equal(r.stdout, '', 'work started before the token was checked');
  }
  assert.deepEqual(snapshot(dir), before);
}));

test('a token saved in a training state is checked on --resume too', withDir('token-resume', async (dir) => {
  const images = await conceptImages(join(dir, 'images'));
  const run = join(dir, 'run');
  mkdirSync(run);
  const options = { images, token: '<../../evil>', init: 'star', vectors: 1, what: 'object', templateFile: null, resolution: 64, centerCrop: false, flipP: 0.5, steps: 2, lr: 5e-4, scaleLr: false, batch: 1, gradAccum: 1, lrSchedule: 'constant', lrWarmup: 0, maxGradNorm: null, seed: 0, saveEvery: 500, adamBeta1: 0.9, adamBeta2: 0.999, adamEps: 1e-8, weightDecay: 1e-2, out: run };
  const zeros = (n: number): TensorToWrite => ({ dtype: 'F32', shape: [n], data: new Float32Array(n) });
  writeSafetensors(join(run, 'train-state.safetensors'), { vectors: { dtype: 'F32', shape: [1, 32], data: new Float32Array(32) }, 'adam.m': zeros(32), 'adam.v': zeros(32) },
    { format: 'oneword-train-state', step: '1', adam_step: '1', rng: '{}', order: '[]', options: JSON.stringify(options), images_hash: 'x', model: MODEL });
  const r = cli(['train', '--resume', run, '--steps', '3', '--progress', 'quiet']);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /--token "<\.\.\/\.\.\/evil>" cannot name a file/);
  assert.ok(!existsSync(join(dir, '..', 'evil.safetensors')));
}));

test('an existing run folder is continued only with --resume; a user file in --out is never replaced', withDir('existing', async (dir) => {
  const images = await conceptImages(join(dir, 'images'));
  const out = join(dir, 'out');
  assert.equal(cli(train(images, out, ['--steps', '2'])).status, 0);
  const run = snapshot(out);
  const user = join(dir, 'user');
  mkdirSync(user);
  writeFileSync(join(user, 'dotted-star.safetensors'), 'the user\'s own embedding');
  const [again, other] = await cliAll([train(images, out, ['--steps', '2', '--init', 'sun']), train(images, user, ['--steps', '2'])]);
  assert.equal(again.status, 2, again.stderr);
  assert.match(again.stderr, /--out .*out already holds a training run \(train-state\.safetensors\); pass --resume .*out to continue it, or choose another --out/);
  assert.equal(other.status, 2, other.stderr);
  assert.match(other.stderr, /--out .*user already holds dotted-star\.safetensors, which this run would overwrite/);
  assert.deepEqual(snapshot(out), run, 'the earlier run changed');
  assert.equal(readFileSync(join(user, 'dotted-star.safetensors'), 'utf8'), 'the user\'s own embedding');
  assert.match(cli(['train', '--help']).stdout, /pass --resume DIR to continue it, or another --out/);
}));

function waitFor(check: () => boolean, child: ReturnType<typeof spawn>): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setInterval(() => {
      if (check()) {
        clearInterval(timer);
        resolve();
      }
    }, 50);
    child.on('exit', () => {
      clearInterval(timer);
      reject(new Error('trainer exited early'));
    });
  });
}

test('one trainer per folder (a lock); SIGTERM saves a resumable checkpoint like Ctrl-C', withDir('lock', async (dir) => {
  const images = await conceptImages(join(dir, 'images'));
  const out = join(dir, 'out');
  const first = spawn(process.execPath, [BIN, ...train(images, out, ['--steps', '100000', '--save-every', '0'])], { stdio: 'ignore' });
  const exited = new Promise<number | null>((res) => first.on('exit', (code) => res(code)));
  const log = join(out, 'train-log.jsonl');
  try {
    await waitFor(() => existsSync(log) && readFileSync(log, 'utf8').trim().split('\n').length >= 2, first);
    assert.equal(readFileSync(join(out, LOCK_FILE), 'utf8').trim(), String(first.pid));
    const second = cli(train(images, out, ['--steps', '2']));
    assert.equal(second.status, 2, second.stderr);
    assert.match(second.stderr, new RegExp(`--out .*out is in use by another oneword process \\(pid ${first.pid}\\)`));
    first.kill('SIGTERM');
    assert.equal(await exited, 143);
  } finally {
    if (first.exitCode === null) first.kill('SIGKILL');
  }
  const st = SafetensorsFile.open(join(out, 'train-state.safetensors'));
  assert.equal(Number(st.metadata.step), readFileSync(log, 'utf8').trim().split('\n').length);
  assert.ok(!existsSync(join(out, LOCK_FILE)), 'the lock outlived its run');

  // A lock left by a process that is gone is taken over.
  const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
  writeFileSync(join(out, LOCK_FILE), `${dead}\n`);
  const resumed = cli(['train', '--resume', out, '--steps', String(Number(st.metadata.step) + 1), '--progress', 'quiet']);
  assert.equal(resumed.status, 0, resumed.stderr);
  assert.ok(!existsSync(join(out, LOCK_FILE)));
}));

test('resume uses the model the state records and refuses another one', withDir('model', async (dir) => {
  const images = await conceptImages(join(dir, 'images'));
  // The same architecture with one bias changed: only the recorded fingerprint tells them apart.
  const other = join(dir, 'other-model');
  cpSync(MODEL, other, { recursive: true });
  const unetFile = join(other, 'unet', 'diffusion_pytorch_model.safetensors');
  const unet = SafetensorsFile.open(unetFile);
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, info] of unet.tensors) tensors[name] = { dtype: 'F32', shape: info.shape, data: unet.readFloat32(name) };
  (tensors['conv_out.bias'].data as Float32Array)[0] += 0.5;
  writeSafetensors(unetFile, tensors);

  const out = join(dir, 'out');
  assert.equal(cli(train(images, out, ['--steps', '2'])).status, 0);
  // One after the other: the folder's lock would turn the second away.
  const implicit = cli(['train', '--resume', out, '--steps', '3', '--progress', 'quiet']);
  const wrong = cli(['train', '--resume', out, '--model', other, '--steps', '4', '--progress', 'quiet']);
  assert.equal(implicit.status, 0, implicit.stderr);
  assert.equal(SafetensorsFile.open(join(out, 'train-state.safetensors')).metadata.step, '3');
  assert.equal(wrong.status, 2, wrong.stderr);
  assert.match(wrong.stderr, /--resume .*out was trained on .*sd1-tiny, not on .*other-model \(the weights differ\)/);
}));

test('a diverging run stops with an error and keeps its last good checkpoint', withDir('diverge', async (dir) => {
  const images = await conceptImages(join(dir, 'images'));
  const out = join(dir, 'out');
  const r = cli(train(images, out, ['--steps', '20', '--lr', '1e30', '--save-every', '1']));
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /training diverged at step (\d+): .*; the last checkpoint \(step \d+\) is intact/);
  const step = Number(/diverged at step (\d+)/.exec(r.stderr)![1]);
  const st = SafetensorsFile.open(join(out, 'train-state.safetensors'));
  assert.equal(Number(st.metadata.step), step - 1);
  for (const name of ['vectors', 'adam.m', 'adam.v']) assert.ok(st.readFloat32(name).every(Number.isFinite), `${name} is not finite`);
  const logged = readFileSync(join(out, 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(logged.length, step - 1);
  assert.ok(logged.every((l) => Number.isFinite(l.loss)));
}));

test('resume logs each step once (the steps after the checkpoint are not repeated)', withDir('log', async (dir) => {
  const images = await conceptImages(join(dir, 'images'));
  const out = join(dir, 'out');
  assert.equal(cli(train(images, out, ['--steps', '2'])).status, 0);
  // As if the run had logged two more steps and died before its next checkpoint.
  const log = join(out, 'train-log.jsonl');
  writeFileSync(log, `${readFileSync(log, 'utf8')}{"step":3,"loss":1}\n{"step":4,"loss":1}\n`);
  const r = cli(['train', '--resume', out, '--steps', '4', '--progress', 'quiet']);
  assert.equal(r.status, 0, r.stderr);
  const steps = readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l).step);
  assert.deepEqual(steps, [1, 2, 3, 4]);
}));

test('bad input is refused up front: exit 2, one line naming the option and its range, nothing loaded or written', withDir('usage', async (dir) => {
  const images = await conceptImages(join(dir, 'images'));
  const empty = join(dir, 'empty');
  mkdirSync(empty);
  const file = join(dir, 'a-file');
  writeFileSync(file, 'x');
  const embedding = join(dir, 'my-emb.safetensors');
  saveA1111Embedding(embedding, 'my-emb', new Float32Array(32), 1, 32);
  const t = (extra: string[], token = '<x>') => ['train', '--model', MODEL, '--images', images, '--token', token, '--init', 'star', '--out', join(dir, 'out'), ...extra];
  const g = (extra: string[]) => ['generate', '--model', MODEL, '--prompt', 'a cat', '--steps', '2', '--quiet', '--out', join(dir, 'gen'), ...extra];
  const cases: Array<[string[], RegExp]> = [
    [t(['--threads', '999']), /^oneword train: --threads must be a whole number from 1 to \d+ \(this machine's cores\), got 999$/m],
    [t(['--threads', '-3']), /--threads must be a whole number from 1 to \d+ .*got -3/],
    [t(['--seed', '9007199254740992']), /--seed must be a whole number from 0 to 9007199254740991, got 9007199254740992/],
    [t(['--lr', '-1']), /--lr must be a positive number or an A1111 schedule, got "-1"/],
    [t(['--lr', '0']), /--lr must be a positive number or an A1111 schedule, got "0"/],
    [t(['--lr', 'NaN']), /--lr must be a positive number or an A1111 schedule, got "NaN"/],
    [t(['--steps', '1e12']), /--steps must be a whole number from 1 to 10000000, got 1000000000000/],
    [t(['--out', file]), /--out .*a-file is a file, not a folder/],
    // Where mkdir fails (/proc takes no new entries), the reason is named; Node's own recursive mkdir hung here.
    ...(process.platform === 'linux' ? [[t(['--out', '/proc/oneword-out']), /--out \/proc\/oneword-out: cannot write to \/proc \(the file system takes no new files there\)/] as [string[], RegExp]] : []),
    [t(['--lr', '1e-3'], 'star'), /token "star" already exists in the vocabulary/],
    [['train', '--model', MODEL, '--images', empty, '--token', '<x>', '--init', 'star'], /--images .*empty: no images found/],
    [['train', '--model', MODEL, '--images', join(dir, 'missing'), '--token', '<x>', '--init', 'star'], /--images .*missing: no such folder/],
    [g(['--width', '100000']), /--width must be a whole number from 1 to 8192, got 100000/],
    [g(['--seed', '9007199254740992']), /--seed must be a whole number from 0 to 9007199254740991/],
    [g(['--threads', '0']), /--threads must be a whole number from 1 to/],
    [g(['--out', file]), /--out .*a-file is a file, not a folder/],
    [g(['--steps', '1500', '--scheduler', 'ddim']), /--steps must be at most 1000 for the ddim sampler/],
    [g(['--embedding', `${embedding}:cat`]), /--embedding .*my-emb\.safetensors:cat: "cat" already exists in the vocabulary .*"<cat>"/],
    [g(['--prompt', `${'('.repeat(10000)}cat`]), /prompt: brackets nested more than 256 deep/],
    [g(['--prompt', `${'('.repeat(80)}cat`]), /prompt: the emphasis on "cat" is 2048\.\d+ .*weights must be from -1000 to 1000/],
    [g(['--prompt', '(x:1.2.3)']), /prompt: cannot read the weight "1\.2\.3"/],
  ];
  const results = await cliAll(cases.map(([args]) => args));
  results.forEach((r, i) => {
    const [args, re] = cases[i];
    assert.equal(r.status, 2, `${args.slice(-4).join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re);
    assert.equal(r.stderr.trim().split('\n').length, 2, `more than the error and the --help hint: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /←/, 'the banner came before the check');
  });
  assert.ok(!existsSync(join(dir, 'out')) && !existsSync(join(dir, 'gen')), 'a refused call left an output folder');
}));

test('a damaged training state is named (exit 1)', withDir('damaged', async (dir) => {
  const run = join(dir, 'run');
  mkdirSync(run);
  writeSafetensors(join(run, 'train-state.safetensors'), { vectors: { dtype: 'F32', shape: [1], data: new Float32Array(1) } }, { format: 'oneword-train-state', options: '{"token": "<x>", ' });
  const r = cli(['train', '--model', MODEL, '--resume', run, '--progress', 'quiet']);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /run\/train-state\.safetensors: the saved options are not valid JSON .*the state is damaged/);
}));

test('a 7,000-word prompt generates (a 49 KB argument)', withDir('long-prompt', async (dir) => {
  const prompt = new Array(7000).fill('kitten').join(' ');
  const r = cli(['generate', '--model', MODEL, '--prompt', prompt, '--steps', '1', '--cfg', '1', '--width', '16', '--height', '16', '--threads', '1', '--quiet', '--out', dir]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(readdirSync(dir), ['00000-42.png']);
}));
