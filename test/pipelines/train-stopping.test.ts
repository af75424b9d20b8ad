// Early stopping on the tiny fixture model: the evaluation batch is drawn once, the rule
// really stops a run, a resumed stop-auto run is bit for bit the uninterrupted one,
// --keep leaves what it says, encoder init is the text encoder's output, bad flags exit 2.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { Rng, randomAttributes, render, writePng } from '../../src/shapes/index.ts';
import { SafetensorsFile } from '../../src/io/safetensors.ts';
import { loadEmbedding } from '../../src/io/embeddings.ts';
import { StableDiffusion } from '../../src/pipelines/stable-diffusion.ts';
import { TextualInversionTrainer, TRAIN_DEFAULTS } from '../../src/pipelines/textual-inversion.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const BIN = new URL('../../bin/oneword.js', import.meta.url).pathname;
const MODEL = join(FIX, 'sd1-tiny');
const cli = (args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });

async function conceptImages(dir: string, n = 3): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const rng = new Rng(5);
  for (let i = 0; i < n; i++) await writePng(render(randomAttributes(rng, { shape: 'star', color: 'orange', texture: 'dotted' }), rng), join(dir, `${i}.png`));
  return dir;
}

const train = (images: string, out: string, extra: string[]) => cli([
  'train', '--model', MODEL, '--images', images, '--token', '<ds>', '--init', 'star', '--out', out, '--resolution', '16',
  '--batch', '2', '--seed', '3', '--lr', '5e-3', '--threads', '1', '--progress', 'json', ...extra,
]);
const done = (r: ReturnType<typeof cli>) => JSON.parse(r.stdout.trim().split('\n').pop()!);
const readLog = (out: string) => readFileSync(join(out, 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const withoutTime = (log: Array<Record<string, unknown>>) => log.map(({ seconds: _, ...rest }) => rest);

test('evaluation batch: drawn once from the seed; the same vectors give the same loss steps later; evaluating never changes training', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-evalbatch-'));
  try {
    const opts = { ...TRAIN_DEFAULTS, images: await conceptImages(join(dir, 'images')), token: '<ds>', init: 'star', resolution: 16, batch: 2, lr: 5e-2, seed: 3 };
    const a = await TextualInversionTrainer.create(StableDiffusion.load(MODEL, { threads: 1 }), opts);
    const b = await TextualInversionTrainer.create(StableDiffusion.load(MODEL, { threads: 1 }), opts);
    const start = Float32Array.from(a.state.vectors);
    const l0 = await a.evalLoss();
    assert.equal(await b.evalLoss(), l0);
    for (let i = 0; i < 3; i++) {
      await a.trainStep(performance.now());
      await a.evalLoss();
      await b.trainStep(performance.now());
    }
    // b never evaluated after its first call; the two trained identically.
    assert.deepEqual([...a.state.vectors], [...b.state.vectors]);
    assert.notEqual(await a.evalLoss(), l0);
    a.state.vectors.set(start);
    assert.equal(await a.evalLoss(), l0);
    const other = await TextualInversionTrainer.create(StableDiffusion.load(MODEL, { threads: 1 }), { ...opts, seed: 4 });
    assert.notEqual(await other.evalLoss(), l0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('encoder init: the vectors start as the text encoder\'s final hidden states at the init phrase\'s tokens, cycling', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-crossinit-'));
  try {
    const images = await conceptImages(join(dir, 'images'), 1);
    const opts = { ...TRAIN_DEFAULTS, images, token: '<ds>', init: 'orange star', vectors: 3, resolution: 16 };
    const t = await TextualInversionTrainer.create(StableDiffusion.load(MODEL, { threads: 1 }), { ...opts, initMode: 'encoder' });
    const direct = StableDiffusion.load(MODEL, { threads: 1 });
    const ids = direct.tokenizer.call('orange star').inputIds;
    assert.equal(direct.tokenizer.encode('orange star').length, 2);
    const hidden = await direct.encodeIds(ids, 1);
    const d = direct.hiddenSize;
    const row = (p: number) => [...hidden.subarray(p * d, (p + 1) * d)];
    assert.deepEqual([...t.state.vectors], [...row(1), ...row(2), ...row(1)]);
    // The token rows are a different start.
    const tokens = await TextualInversionTrainer.create(StableDiffusion.load(MODEL, { threads: 1 }), opts);
    const table = direct.ckpt.textEncoder.float32('text_model.embeddings.token_embedding.weight');
    const orange = direct.tokenizer.encode('orange')[0];
    assert.deepEqual([...tokens.state.vectors.subarray(0, d)], [...table.subarray(orange * d, (orange + 1) * d)]);
    assert.notDeepEqual([...tokens.state.vectors], [...t.state.vectors]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('stop auto: the rule ends the run when the ratio first falls below eps; a resumed run stops at the same step, bit for bit', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-stopauto-'));
  try {
    const images = await conceptImages(join(dir, 'images'));
    const auto = ['--stop', 'auto', '--stop-window', '6', '--stop-eps', '0.5', '--eval-every', '1', '--save-every', '0'];
    const straight = join(dir, 'straight');
    const r = train(images, straight, [...auto, '--steps', '200']);
    assert.equal(r.status, 0, r.stderr);
    const end = done(r);
    assert.equal(end.stopped_early, true);
    assert.ok(end.steps >= 6 && end.steps < 200, `stopped at ${end.steps}`);
    const log = readLog(straight);
    assert.equal(log.length, end.steps);
    assert.ok(log.every((l) => typeof l.eval_loss === 'number'), 'every step has its deterministic loss');
    // The ratio exists from the window on; the run ends at its first value below eps.
    assert.ok(log.slice(0, 5).every((l) => l.var_ratio === undefined));
    assert.ok(log.slice(5, -1).every((l) => l.var_ratio >= 0.5), JSON.stringify(log.map((l) => l.var_ratio)));
    assert.ok(log[log.length - 1].var_ratio < 0.5);
    assert.equal(end.recommended_step, end.steps);
    assert.match(end.recommended_because, /stopped here/);
    assert.equal(end.recommended_eval_loss, log[log.length - 1].eval_loss);

    const split = join(dir, 'split');
    assert.equal(train(images, split, [...auto, '--steps', '3']).status, 0);
    const resumed = cli(['train', '--model', MODEL, '--resume', split, '--steps', '200', '--threads', '1', '--progress', 'json']);
    assert.equal(resumed.status, 0, resumed.stderr);
    assert.equal(done(resumed).steps, end.steps);
    const a = SafetensorsFile.open(join(straight, 'train-state.safetensors'));
    const b = SafetensorsFile.open(join(split, 'train-state.safetensors'));
    for (const name of ['vectors', 'adam.m', 'adam.v']) assert.deepEqual([...b.readFloat32(name)], [...a.readFloat32(name)], name);
    assert.equal(b.metadata.rng, a.metadata.rng);
    const sa = JSON.parse(a.metadata.stopping);
    const sb = JSON.parse(b.metadata.stopping);
    assert.deepEqual(sb.history, sa.history);
    assert.deepEqual(sb.stoppedAt, sa.stoppedAt);
    assert.deepEqual(withoutTime(readLog(split)), withoutTime(log));
    // A run that stopped early stays stopped when resumed as it was.
    const again = cli(['train', '--model', MODEL, '--resume', split, '--steps', '200', '--threads', '1', '--progress', 'json']);
    assert.equal(done(again).steps, end.steps);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--keep: last leaves the checkpoints and the last step; all adds the last step\'s own files; best leaves only the recommended step', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-keep-'));
  try {
    const images = await conceptImages(join(dir, 'images'), 4);
    const runs: Record<string, ReturnType<typeof done>> = {};
    for (const keep of ['last', 'all', 'best']) {
      const r = train(images, join(dir, keep), ['--steps', '6', '--save-every', '2', '--keep', keep]);
      assert.equal(r.status, 0, r.stderr);
      runs[keep] = done(r);
    }
    const files = (keep: string) => readdirSync(join(dir, keep)).filter((f) => f.endsWith('.safetensors') && f !== 'train-state.safetensors').sort();
    assert.deepEqual(files('last'), ['ds-steps-2.safetensors', 'ds-steps-4.safetensors', 'ds.safetensors', 'learned_embeds-steps-2.safetensors', 'learned_embeds-steps-4.safetensors', 'learned_embeds.safetensors']);
    assert.deepEqual(files('all'), ['ds-steps-2.safetensors', 'ds-steps-4.safetensors', 'ds-steps-6.safetensors', 'ds.safetensors', 'learned_embeds-steps-2.safetensors', 'learned_embeds-steps-4.safetensors', 'learned_embeds-steps-6.safetensors', 'learned_embeds.safetensors']);
    assert.deepEqual(files('best'), ['ds.safetensors', 'learned_embeds.safetensors']);

    // Each saved step's deterministic loss is in the log and in its files' metadata.
    const log = readLog(join(dir, 'all'));
    const saved = [2, 4, 6].map((step) => ({ step, loss: log[step - 1].eval_loss as number }));
    for (const { step, loss } of saved) {
      assert.equal(typeof loss, 'number');
      for (const f of [`ds-steps-${step}.safetensors`, `learned_embeds-steps-${step}.safetensors`]) {
        const meta = SafetensorsFile.open(join(dir, 'all', f)).metadata;
        assert.equal(Number(meta.eval_loss), loss, f);
        assert.equal(meta.step, String(step), f);
      }
    }
    assert.ok(log.filter((l) => l.eval_loss !== undefined).map((l) => l.step).join() === '2,4,6', 'only saved steps are evaluated with stop fixed');
    const lowest = saved.reduce((m, s) => (s.loss < m.loss ? s : m));
    // With these 4 images the loss creeps up (2: 1.07780, 6: 1.07812), so best must rewrite the final files with an earlier step.
    assert.notEqual(lowest.step, 6);
    for (const keep of ['last', 'all', 'best']) assert.equal(runs[keep].recommended_step, lowest.step, keep);
    assert.match(runs.best.recommended_because, /lowest deterministic loss of the 3 saved steps/);

    // best: the final files hold the recommended step; last: the last step.
    const vectors = (keep: string, f: string) => [...loadEmbedding(join(dir, keep, f)).vectors];
    assert.deepEqual(vectors('best', 'ds.safetensors'), vectors('all', `ds-steps-${lowest.step}.safetensors`));
    assert.deepEqual(vectors('best', 'learned_embeds.safetensors'), vectors('all', `ds-steps-${lowest.step}.safetensors`));
    assert.equal(SafetensorsFile.open(join(dir, 'best', 'ds.safetensors')).metadata.step, String(lowest.step));
    assert.deepEqual(vectors('last', 'ds.safetensors'), vectors('all', 'ds-steps-6.safetensors'));
    assert.ok(existsSync(join(dir, 'best', 'train-state.safetensors')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('train: bad stopping and init flags exit 2 naming the flag and its range', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-stopflags-'));
  try {
    const images = await conceptImages(join(dir, 'images'), 1);
    const cases: Array<[string[], RegExp]> = [
      [['--stop', 'early'], /^oneword train: --stop must be fixed or auto, got "early"$/m],
      [['--stop', 'auto', '--stop-window', '1'], /^oneword train: --stop-window must be a whole number ≥ 2, got 1$/m],
      [['--stop', 'auto', '--stop-eps', '1.5'], /^oneword train: --stop-eps must be between 0 and 1 \(exclusive\), got 1\.5$/m],
      [['--stop', 'auto', '--eval-every', '0'], /^oneword train: --eval-every must be at least 1 with stop auto/m],
      [['--keep', 'first'], /^oneword train: --keep must be best, last or all, got "first"$/m],
      [['--init-mode', 'output'], /^oneword train: --init-mode must be tokens or encoder, got "output"$/m],
      [['--init-pull', 'strong'], /^oneword train: option --init-pull needs a number, got "strong"$/m],
    ];
    for (const [extra, re] of cases) {
      const r = train(images, join(dir, 'out'), extra);
      assert.equal(r.status, 2, `${extra.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re);
    }
    assert.ok(!existsSync(join(dir, 'out')), 'a rejected call wrote output');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
