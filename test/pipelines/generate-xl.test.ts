// Generation on SDXL: prompts through both encoders (diffusers' prompt embeds and pooled embeds
// for a plain prompt), all-zero negative conditioning for an empty negative prompt, time ids from
// the image size or the size options, guidance 5 by default, long prompts and emphasis on both
// encoders, embeddings with vectors for both encoders, and the CLI's size flags and infotext.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { StableDiffusion } from '../../src/pipelines/stable-diffusion.ts';
import { defaultSampler, generate } from '../../src/pipelines/generate.ts';
import { tokenizeWeighted } from '../../src/pipelines/prompt.ts';
import { createSampler, TorchGenerator } from '../../src/schedulers/index.ts';
import { decodeLatents, denoise, encodePrompt, sdxlTimeIds, zeroPrompt } from '../../src/pipelines/text-to-image.ts';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.ts';
import { readPngParameters, parseA1111Parameters } from '../../src/io/images.ts';
import { EmbeddingError } from '../../src/io/embeddings.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const XL = join(FIX, 'sdxl-tiny');
const BIN = new URL('../../bin/oneword.js', import.meta.url).pathname;
const ref = SafetensorsFile.open(join(FIX, 'sdxl-tiny.ref.seed0.safetensors'));
const prompts = JSON.parse(ref.metadata.prompts) as string[];
const dir = mkdtempSync(join(tmpdir(), 'oneword-gen-xl-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

function maxErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let e = 0;
  for (let i = 0; i < a.length; i++) e = Math.max(e, Math.abs(a[i] - b[i]));
  return e;
}

test('SDXL encodePrompt: a plain prompt gives diffusers\' prompt embeds and pooled embeds; "" its encoding of ""', async () => {
  const sd = StableDiffusion.load(XL);
  const cond = await encodePrompt(sd, prompts[0]);
  assert.equal(cond.chunks, 1);
  assert.ok(maxErr(cond.hidden, ref.readFloat32('cfg.cond_embeds')) < 1e-4);
  assert.ok(maxErr(cond.pooled!, ref.readFloat32('cfg.cond_pooled')) < 1e-4);
  const empty = await encodePrompt(sd, '');
  assert.ok(maxErr(empty.hidden, ref.readFloat32('cfg.empty_embeds')) < 1e-4);
  assert.ok(maxErr(empty.pooled!, ref.readFloat32('cfg.empty_pooled')) < 1e-4);
});

test('SDXL generate: zero negative, default time ids [H, W, 0, 0, H, W], guidance 5 — and the size options change the image', async () => {
  const sd = StableDiffusion.load(XL);
  const [width, height] = [48, 64];
  const opts = { prompt: prompts[0], steps: 3, sampler: 'euler', seed: 3, width, height };
  const [img] = await generate(sd, opts);
  // The default sampler is the model's own Euler ("leading" spacing), as StableDiffusionXLPipeline.
  assert.equal(defaultSampler(sd), 'euler');
  const { sampler: _s, ...noSampler } = opts;
  void _s;
  assert.deepEqual((await generate(sd, noSampler))[0].pixels, img.pixels);
  const latentShape = [4, 32, 24] as const;
  const manual = async (timeIds: Float32Array) => {
    const cond = await encodePrompt(sd, prompts[0]);
    const gen = new TorchGenerator(3);
    const initLatents = gen.randn([1, ...latentShape]);
    const latents = await denoise(sd, {
      scheduler: createSampler('euler', sd.ckpt.schedulerConfig), steps: 3, guidance: 5, initLatents, latentShape, cond, uncond: zeroPrompt(sd, cond), noise: gen, timeIds,
    });
    return (await decodeLatents(sd, latents, latentShape)).image;
  };
  const defaults = sdxlTimeIds({ originalSize: [height, width], cropsCoordsTopLeft: [0, 0], targetSize: [height, width] });
  assert.deepEqual([...defaults], [...ref.readFloat32('cfg.add_time_ids')], 'the pipeline\'s defaults for this size');
  assert.deepEqual(img.pixels, await manual(defaults));

  const sized = { ...opts, originalSize: [128, 96] as [number, number], cropsCoordsTopLeft: [8, 16] as [number, number], targetSize: [64, 48] as [number, number] };
  const [img2] = await generate(sd, sized);
  assert.deepEqual(img2.pixels, await manual(Float32Array.of(128, 96, 8, 16, 64, 48)));
  assert.ok(maxErr(img2.pixels, img.pixels) > 0, 'size conditioning reaches the UNet');
  const [explicitEmpty] = await generate(sd, { ...opts, negativePrompt: 'blurry' });
  assert.ok(maxErr(explicitEmpty.pixels, img.pixels) > 0, 'a negative prompt replaces the zeros');
  await assert.rejects(generate(StableDiffusion.load(join(FIX, 'sd1-tiny')), { prompt: 'x', originalSize: [64, 64] }), /originalSize applies to SDXL models only/);
  await assert.rejects(generate(sd, { prompt: 'x', cropsCoordsTopLeft: [-1, 0] }), /cropsCoordsTopLeft must be two whole numbers from 0 to 8192/);
});

test('SDXL long prompts and emphasis: chunks on both encoders (padded to the same count), pooled from the first chunk, emphasis per encoder', async () => {
  const sd = StableDiffusion.load(XL);
  const long = prompts[5] + ' ' + prompts[5];
  const e = await encodePrompt(sd, long);
  const c1 = tokenizeWeighted(sd.tokenizer, long).chunks;
  const c2 = tokenizeWeighted(sd.tokenizer2!, long).chunks;
  assert.ok(c1.length >= 2);
  assert.equal(e.chunks, Math.max(c1.length, c2.length));
  const first = await sd.encodeIdsXL(c1[0].ids, c2[0].ids, 1);
  assert.deepEqual(e.pooled, first.pooled, 'pooled embeds of the first chunk');
  assert.deepEqual(e.hidden.subarray(0, 77 * 36), first.hidden);
  const second = await sd.encodeIdsXL(c1[1].ids, c2[1].ids, 1);
  assert.deepEqual(e.hidden.subarray(77 * 36, 2 * 77 * 36), second.hidden);

  // Tokenizer 2 splits every "!" out: more chunks there; tokenizer 1's extra chunk is "".
  const bangs = 'wow!!! '.repeat(30);
  const [n1, n2] = [tokenizeWeighted(sd.tokenizer, bangs).chunks.length, tokenizeWeighted(sd.tokenizer2!, bangs).chunks.length];
  assert.ok(n2 > n1, `${n2} > ${n1}`);
  const eb = await encodePrompt(sd, bangs);
  assert.equal(eb.chunks, n2);
  const emptyChunk = await sd.encodeIdsXL(tokenizeWeighted(sd.tokenizer, '').chunks[0].ids, tokenizeWeighted(sd.tokenizer2!, bangs).chunks[n2 - 1].ids, 1);
  assert.deepEqual(eb.hidden.subarray((n2 - 1) * 77 * 36), emptyChunk.hidden);

  // Emphasis: each encoder's half keeps its own mean (A1111's "Original"); the pooled embeds do not change.
  const plain = await encodePrompt(sd, 'a photo of an astronaut');
  const weighted = await encodePrompt(sd, 'a photo of an (astronaut:1.5)');
  assert.deepEqual(weighted.pooled, plain.pooled);
  const mean = (h: Float32Array, off: number, w: number) => { let s = 0; for (let t = 0; t < 77; t++) for (let k = 0; k < w; k++) s += h[t * 36 + off + k]; return s / (77 * w); };
  for (const [off, w] of [[0, 16], [16, 20]]) {
    assert.ok(Math.abs(mean(weighted.hidden, off, w) - mean(plain.hidden, off, w)) < 1e-5, `mean of the half at ${off}`);
    assert.ok(maxErr(weighted.hidden, plain.hidden) > 1e-3);
  }
});

test('SDXL embeddings: vectors for both encoders are used; SD 1.x/2.x words and misfit SDXL words fail naming both widths', async () => {
  const sd = StableDiffusion.load(XL);
  const ramp = (n: number, s: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * s));
  const file = join(dir, 'xl-word.safetensors');
  writeSafetensors(file, { clip_l: { dtype: 'F32', shape: [2, 16], data: ramp(32, 0.3) }, clip_g: { dtype: 'F32', shape: [2, 20], data: ramp(40, 0.7) } });
  const t = sd.loadTextualInversion(file, { token: '<xl-word>' });
  assert.deepEqual(t.vectors2, ramp(40, 0.7));
  const e = await encodePrompt(sd, 'a photo of <xl-word>');
  const embeddings = new Map([['<xl-word>', 2]]);
  const ids1 = tokenizeWeighted(sd.tokenizer, 'a photo of <xl-word>', { embeddings }).chunks[0].ids;
  const ids2 = tokenizeWeighted(sd.tokenizer2!, 'a photo of <xl-word>', { embeddings }).chunks[0].ids;
  assert.deepEqual(ids1.slice(4, 6), t.ids, 'both vectors in the prompt');
  assert.deepEqual(ids2.slice(4, 6), t.ids2);
  const direct = await sd.encodeIdsXL(ids1, ids2, 1);
  assert.deepEqual(e.hidden, direct.hidden);
  const other = StableDiffusion.load(XL);
  other.addLearnedToken('<xl-word>', ramp(32, 0.3), 2, ramp(40, 0.1));
  const changed = await encodePrompt(other, 'a photo of <xl-word>');
  assert.ok(maxErr(changed.pooled!, e.pooled!) > 1e-4, 'clip_g vectors reach the pooled embeds (pooled at the learned token)');

  const usage = (f: () => unknown, re: RegExp) => assert.throws(f, (x: unknown) => x instanceof EmbeddingError && x.usage === true && re.test(x.message));
  usage(() => sd.loadTextualInversion(join(FIX, 'embeddings', 'learned_embeds.safetensors')), /SD 1\.x\/2\.x embedding \(\d+ wide\) but the model is SDXL \(clip_l 16, clip_g 20\)/);
  usage(() => sd.loadTextualInversion(join(FIX, 'embeddings', 'sdxl-kohya.safetensors')), /SDXL embedding \(clip_l 8, clip_g 12\) does not fit the model \(clip_l 16, clip_g 20\)/);
  usage(() => StableDiffusion.load(join(FIX, 'sd1-tiny')).loadTextualInversion(file), /an SDXL embedding \(clip_l 16, clip_g 20\) cannot be used with an SD 1\.x\/2\.x model \(32\)/);
});

test('oneword generate on SDXL: size flags, PNG with infotext; bad size flags and SDXL flags on SD 1.x exit 2', () => {
  const out = join(dir, 'cli');
  const run = (args: string[]) => spawnSync(process.execPath, [BIN, 'generate', '--quiet', '--steps', '2', '--out', out, ...args], { encoding: 'utf8' });
  const r = run(['--model', XL, '--prompt', 'a lighthouse', '--original-size', '128,96', '--crops-coords-top-left', '0,8', '--target-size', '64,64']);
  assert.equal(r.status, 0, r.stderr);
  const [png] = readdirSync(out);
  const p = parseA1111Parameters(readPngParameters(join(out, png))!);
  assert.equal(p.prompt, 'a lighthouse');
  assert.equal(p.params.Size, '64x64', 'default size: sample_size × VAE factor');
  assert.equal(p.params['CFG scale'], '5', 'SDXL default guidance');
  const bad = run(['--model', XL, '--prompt', 'x', '--original-size', '128x96']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--original-size must be two whole numbers separated by a comma \(H,W, height first\), got "128x96"/);
  const range = run(['--model', XL, '--prompt', 'x', '--target-size', '0,64']);
  assert.equal(range.status, 2);
  assert.match(range.stderr, /--target-size must be two whole numbers from 1 to 8192 \(height, width\)/);
  const sd1 = run(['--model', join(FIX, 'sd1-tiny'), '--prompt', 'x', '--original-size', '64,64']);
  assert.equal(sd1.status, 2);
  assert.match(sd1.stderr, /--original-size applies to SDXL models only/);
});
