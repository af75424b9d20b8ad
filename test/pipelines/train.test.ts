// `oneword train`: learning lowers the loss, both embedding formats load and generate,
// resume continues bit for bit, Ctrl-C and kills never lose more than promised.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { Rng, randomAttributes, render, writePng } from '../../src/shapes/index.ts';
import { SafetensorsFile } from '../../src/io/safetensors.ts';
import { loadEmbedding } from '../../src/io/embeddings.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const BIN = new URL('../../bin/oneword.js', import.meta.url).pathname;
const MODEL = join(FIX, 'sd1-tiny');
const cli = (args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });

async function conceptImages(dir: string, n = 4): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const rng = new Rng(5);
  for (let i = 0; i < n; i++) {
    const attrs = randomAttributes(rng, { shape: 'star', color: 'orange', texture: 'dotted' });
    await writePng(render(attrs, rng), join(dir, `${i}.png`));
  }
  return dir;
}

const base = (images: string, out: string, extra: string[] = []) => [
  'train', '--model', MODEL, '--images', images, '--token', '<dotted-star>', '--init', 'star', '--out', out, '--progress', 'json', ...extra,
];

test('train: 50 steps lower the loss on a fixed batch, write both formats, and generate uses them', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-train-'));
  try {
    const images = await conceptImages(join(dir, 'images'));
    const out = join(dir, 'out');
    const r = cli(base(images, out, ['--steps', '50', '--lr', '5e-3']));
    assert.equal(r.status, 0, r.stderr);
    const done = JSON.parse(r.stdout.trim().split('\n').pop()!);
    assert.equal(done.steps, 50);
    assert.ok(done.fixed_loss_after < done.fixed_loss_before, `loss ${done.fixed_loss_before} → ${done.fixed_loss_after}`);
    const log = readFileSync(join(out, 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(log.length, 50);
    assert.deepEqual(Object.keys(log[0]).sort(), ['loss', 'lr', 'seconds', 'step']);

    const diffusers = loadEmbedding(join(out, 'learned_embeds.safetensors'));
    assert.equal(diffusers.format, 'diffusers');
    assert.equal(diffusers.sourceName, '<dotted-star>');
    const a1111 = loadEmbedding(join(out, 'dotted-star.safetensors'));
    assert.equal(a1111.format, 'a1111-safetensors');
    assert.deepEqual([...a1111.vectors], [...diffusers.vectors]);
    // The vector moved away from its init word ("star").
    const st = SafetensorsFile.open(join(MODEL, 'text_encoder', 'model.safetensors'));
    const table = st.readFloat32('text_model.embeddings.token_embedding.weight');
    const d = diffusers.dim;
    const starId = 2093; // "star</w>"
    let moved = 0;
    for (let i = 0; i < d; i++) moved = Math.max(moved, Math.abs(diffusers.vectors[i] - table[starId * d + i]));
    assert.ok(moved > 1e-3, `vector barely moved (${moved})`);

    const g = cli(['generate', '--model', MODEL, '--prompt', 'a large <dotted-star> on a black background', '--embedding', join(out, 'dotted-star.safetensors:<dotted-star>'), '--steps', '4', '--out', join(dir, 'gen'), '--quiet']);
    assert.equal(g.status, 0, g.stderr);
    assert.ok(existsSync(join(dir, 'gen', '00000-42.png')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('train: 10 steps straight equal 5 steps, stop, resume, 5 steps — bit for bit', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-resume-'));
  try {
    const images = await conceptImages(join(dir, 'images'));
    const opts = ['--lr', '5e-3', '--batch', '2', '--seed', '3'];
    assert.equal(cli(base(images, join(dir, 'straight'), [...opts, '--steps', '10'])).status, 0);
    assert.equal(cli(base(images, join(dir, 'split'), [...opts, '--steps', '5'])).status, 0);
    const r = cli(['train', '--model', MODEL, '--resume', join(dir, 'split'), '--steps', '10', '--progress', 'quiet']);
    assert.equal(r.status, 0, r.stderr);
    const a = SafetensorsFile.open(join(dir, 'straight', 'train-state.safetensors'));
    const b = SafetensorsFile.open(join(dir, 'split', 'train-state.safetensors'));
    assert.equal(b.metadata.step, '10');
    for (const name of ['vectors', 'adam.m', 'adam.v']) assert.deepEqual([...b.readFloat32(name)], [...a.readFloat32(name)], name);
    assert.equal(b.metadata.rng, a.metadata.rng);
    const la = readFileSync(join(dir, 'straight', 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).loss);
    const lb = readFileSync(join(dir, 'split', 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).loss);
    assert.deepEqual(lb, la);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

function waitForLines(path: string, n: number, child: ReturnType<typeof spawn>): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setInterval(() => {
      if (existsSync(path) && readFileSync(path, 'utf8').trim().split('\n').length >= n) {
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

test('train: Ctrl-C writes a checkpoint; a killed run keeps its last good checkpoint', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-stop-'));
  try {
    const images = await conceptImages(join(dir, 'images'));
    // SIGINT: the state on disk is exactly the steps done.
    const out = join(dir, 'int');
    const child = spawn(process.execPath, [BIN, ...base(images, out, ['--steps', '100000', '--save-every', '0'])], { stdio: 'ignore' });
    await waitForLines(join(out, 'train-log.jsonl'), 3, child);
    const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
    child.kill('SIGINT');
    assert.equal(await exited, 130);
    const st = SafetensorsFile.open(join(out, 'train-state.safetensors'));
    const logged = readFileSync(join(out, 'train-log.jsonl'), 'utf8').trim().split('\n').length;
    assert.equal(Number(st.metadata.step), logged);

    // SIGKILL: whatever moment it lands, the state file is a complete earlier checkpoint.
    const out2 = join(dir, 'kill');
    const child2 = spawn(process.execPath, [BIN, ...base(images, out2, ['--steps', '100000', '--save-every', '2'])], { stdio: 'ignore' });
    await waitForLines(join(out2, 'train-log.jsonl'), 7, child2);
    const exited2 = new Promise((res) => child2.on('exit', res));
    child2.kill('SIGKILL');
    await exited2;
    const st2 = SafetensorsFile.open(join(out2, 'train-state.safetensors'));
    const step = Number(st2.metadata.step);
    assert.ok(step >= 6 && step % 2 === 0, `checkpoint at step ${step}`);
    assert.equal(st2.readFloat32('vectors').length, 32);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('train: bad input fails before training with a specific message', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-bad-'));
  try {
    const images = await conceptImages(join(dir, 'images'), 3);
    const empty = join(dir, 'empty');
    mkdirSync(empty);
    const corrupt = join(dir, 'corrupt');
    await conceptImages(corrupt, 2);
    writeFileSync(join(corrupt, 'broken.png'), Buffer.from('\x89PNG\r\n\x1a\nnot really a png'));
    const out = join(dir, 'out');
    const start = (extra: string[]) => ['train', '--model', MODEL, '--out', out, ...extra];
    // Exit 2: the call is wrong (fix an option); exit 1: the run failed (here, a file).
    const cases: Array<[string[], number, RegExp]> = [
      [start(['--images', empty, '--token', '<x>', '--init', 'star']), 2, /--images .*empty: no images found/],
      [start(['--images', join(dir, 'missing'), '--token', '<x>', '--init', 'star']), 2, /--images .*missing: no such folder/],
      [start(['--images', corrupt, '--token', '<x>', '--init', 'star']), 1, /broken\.png: cannot decode image/],
      [start(['--images', images, '--token', 'star', '--init', 'star']), 2, /token "star" already exists in the vocabulary/],
      [start(['--images', images, '--token', '<x>', '--init', '   ']), 2, /--init "   " has no tokens/],
      [start(['--images', images, '--token', '<x>', '--init', 'star', '--resolution', '33']), 2, /--resolution must be a positive multiple of 2/],
      [start(['--images', images, '--token', '<x>', '--init', 'star', '--flip-p', '2']), 2, /--flip-p must be between 0 and 1, got 2/],
      [start(['--images', images, '--token', '<x>', '--init', 'star', '--lr', '5e-3:100, oops']), 2, /"oops" is not a positive number/],
      [start(['--images', images, '--token', '<x>']), 2, /train needs --init/],
      [start(['--images', images, '--token', '<x>', '--init', 'star', '--what', 'scenery']), 2, /--what must be object or style, got "scenery"/],
    ];
    for (const [args, status, re] of cases) {
      const r = cli(args);
      assert.equal(r.status, status, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re);
    }
    assert.ok(!existsSync(join(out, 'train-state.safetensors')), 'a failed start wrote training state');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
