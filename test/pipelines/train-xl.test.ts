// Textual inversion on SDXL (sdxl-tiny): one word, vectors for BOTH text encoders trained
// together (as diffusers' SDXL script since PR #9010 and kohya do), written as diffusers'
// pair (learned_embeds + learned_embeds_2) and as clip_l/clip_g; resume continues bit for bit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng, randomAttributes, render, writePng } from '../../src/shapes/index.ts';
import { SafetensorsFile } from '../../src/io/safetensors.ts';
import { loadEmbedding } from '../../src/io/embeddings.ts';
import { StableDiffusion } from '../../src/pipelines/stable-diffusion.ts';
import { trainTextualInversion } from '../../src/pipelines/train-textual-inversion.ts';

const MODEL = new URL('../fixtures/sdxl-tiny', import.meta.url).pathname;
const TOY = 5988; // "toy</w>" in both tokenizers

async function images(dir: string): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const rng = new Rng(7);
  for (let i = 0; i < 3; i++) await writePng(render(randomAttributes(rng, { shape: 'heart', color: 'blue' }), rng), join(dir, `${i}.png`));
  return dir;
}

const options = (imgs: string, out: string, steps: number) => ({
  images: imgs, token: '<blue-heart>', init: 'toy', out, steps, saveEvery: 3, lr: 5e-3, resolution: 32, seed: 3,
});

function row(file: string, tensor: string, id: number, d: number): Float32Array {
  return SafetensorsFile.open(file).readFloat32(tensor).slice(id * d, (id + 1) * d);
}

test('SDXL textual inversion trains both encoders\' vectors and writes the diffusers pair and clip_l/clip_g', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-train-xl-'));
  try {
    const imgs = await images(join(dir, 'images'));
    const out = join(dir, 'out');
    const run = await trainTextualInversion(StableDiffusion.load(MODEL), options(imgs, out, 6));
    assert.equal(run.steps, 6);
    // The library's save writes the same three files (diffusers2 = learned_embeds_2.safetensors).
    const saved = await run.save(join(dir, 'saved'));
    assert.deepEqual(Object.keys(saved).sort(), ['a1111', 'diffusers', 'diffusers2']);
    assert.equal(loadEmbedding(saved.diffusers!).format, 'diffusers-sdxl-pair');
    for (const f of ['learned_embeds.safetensors', 'learned_embeds_2.safetensors', 'blue-heart.safetensors',
      'learned_embeds-steps-3.safetensors', 'learned_embeds_2-steps-3.safetensors', 'blue-heart-steps-3.safetensors']) {
      assert.ok(existsSync(join(out, f)), f);
    }
    const kohya = loadEmbedding(join(out, 'blue-heart.safetensors'));
    assert.equal(kohya.format, 'sdxl-safetensors');
    assert.deepEqual([kohya.count, kohya.dim, kohya.dim2], [1, 16, 20]);
    const pair = loadEmbedding(join(out, 'learned_embeds.safetensors'));
    assert.equal(pair.format, 'diffusers-sdxl-pair');
    assert.equal(pair.token, '<blue-heart>');
    assert.deepEqual([...pair.vectors], [...kohya.vectors]);
    assert.deepEqual([...pair.vectors2!], [...kohya.vectors2!]);
    // Each file of the pair is the plain diffusers layout: one tensor named by the token.
    for (const [f, d] of [['learned_embeds.safetensors', 16], ['learned_embeds_2.safetensors', 20]] as const) {
      const st = SafetensorsFile.open(join(out, f));
      assert.deepEqual([...st.tensors.keys()], ['<blue-heart>']);
      assert.deepEqual(st.info('<blue-heart>').shape, [1, d]);
    }
    // Both halves moved away from their encoder's "toy" row: the loss reaches encoder 2's
    // vector through its penultimate states and through the pooled output.
    const moved = (v: Float32Array, init: Float32Array) => Math.max(...v.map((x, i) => Math.abs(x - init[i])));
    const toy1 = row(join(MODEL, 'text_encoder', 'model.safetensors'), 'text_model.embeddings.token_embedding.weight', TOY, 16);
    const toy2 = row(join(MODEL, 'text_encoder_2', 'model.safetensors'), 'text_model.embeddings.token_embedding.weight', TOY, 20);
    assert.ok(moved(kohya.vectors, toy1) > 1e-3, `clip_l moved ${moved(kohya.vectors, toy1)}`);
    assert.ok(moved(kohya.vectors2!, toy2) > 1e-3, `clip_g moved ${moved(kohya.vectors2!, toy2)}`);

    // Resume: 3 steps, then 3 more from the checkpoint, equal the 6 straight steps bit for bit.
    const out2 = join(dir, 'out2');
    await trainTextualInversion(StableDiffusion.load(MODEL), options(imgs, out2, 3));
    const state = SafetensorsFile.open(join(out2, 'train-state.safetensors'));
    assert.deepEqual(state.info('vectors').shape, [1, 16]);
    assert.deepEqual(state.info('vectors2').shape, [1, 20]);
    await trainTextualInversion(StableDiffusion.load(MODEL), { ...options(imgs, out2, 6), resume: out2 });
    for (const f of ['learned_embeds.safetensors', 'learned_embeds_2.safetensors', 'blue-heart.safetensors']) {
      const a = SafetensorsFile.open(join(out, f));
      const b = SafetensorsFile.open(join(out2, f));
      for (const name of a.tensors.keys()) assert.deepEqual([...b.readFloat32(name)], [...a.readFloat32(name)], `${f} ${name}`);
    }
    assert.equal(readFileSync(join(out2, 'train-log.jsonl'), 'utf8').trim().split('\n').length, 6);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SDXL multi-vector words: N vectors per encoder, in both files, and they generate', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-train-xl-n-'));
  try {
    const imgs = await images(join(dir, 'images'));
    const out = join(dir, 'out');
    await trainTextualInversion(StableDiffusion.load(MODEL), { ...options(imgs, out, 2), vectors: 2, init: 'blue toy' });
    const kohya = loadEmbedding(join(out, 'blue-heart.safetensors'));
    assert.deepEqual([kohya.count, kohya.dim, kohya.dim2, kohya.vectors.length, kohya.vectors2!.length], [2, 16, 20, 32, 40]);
    const pair = loadEmbedding(join(out, 'learned_embeds.safetensors'));
    assert.deepEqual([...pair.vectors2!], [...kohya.vectors2!]);
    // The word generates on a fresh model, and its vectors matter: a zeroed word draws something else.
    const sd = StableDiffusion.load(MODEL);
    sd.loadTextualInversion(join(out, 'blue-heart.safetensors'));
    const opts = { prompt: 'a photo of <blue-heart>', steps: 2, width: 32, height: 32, seed: 1 };
    const [img] = await sd.generate(opts);
    const zeroed = StableDiffusion.load(MODEL);
    zeroed.loadTextualInversion({ ...kohya, vectors: new Float32Array(32), vectors2: new Float32Array(40) });
    const [other] = await zeroed.generate(opts);
    assert.notDeepEqual(img.pixels, other.pixels);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SDXL training refuses Cross Initialization and a token either tokenizer knows', async () => {
  const sd = StableDiffusion.load(MODEL);
  await assert.rejects(trainTextualInversion(sd, { images: [], token: '<x>', init: 'toy', initMode: 'encoder', steps: 1 }), /images|initMode/);
  await assert.rejects(trainTextualInversion(sd, { images: [{ width: 8, height: 8, data: new Uint8Array(192) }], token: '<x>', init: 'toy', initMode: 'encoder', steps: 1, resolution: 32 }), /initMode.*SDXL/);
  await assert.rejects(trainTextualInversion(sd, { images: [{ width: 8, height: 8, data: new Uint8Array(192) }], token: 'toy', init: 'toy', steps: 1, resolution: 32 }), /already exists in the vocabulary/);
});

test('a run on a single file loaded with --config resumes with that config folder (recorded in the state)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-train-xl-config-'));
  try {
    const imgs = await images(join(dir, 'images'));
    const out = join(dir, 'out');
    const bin = new URL('../../bin/oneword.js', import.meta.url).pathname;
    const cli = (args: string[]) => spawnSync(process.execPath, [bin, 'train', ...args, '--progress', 'quiet'], { encoding: 'utf8' });
    const single = new URL('../fixtures/sdxl-tiny-single-file.safetensors', import.meta.url).pathname;
    const first = cli(['--model', single, '--config', MODEL, '--images', imgs, '--token', '<xl-cfg>', '--init', 'toy', '--steps', '2', '--resolution', '32', '--out', out]);
    assert.equal(first.status, 0, first.stderr);
    assert.equal(SafetensorsFile.open(join(out, 'train-state.safetensors')).metadata.model_config, MODEL.replace(/\/$/, ''));
    const resumed = cli(['--resume', out, '--steps', '4']);
    assert.equal(resumed.status, 0, resumed.stderr);
    assert.equal(readFileSync(join(out, 'train-log.jsonl'), 'utf8').trim().split('\n').length, 4);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
