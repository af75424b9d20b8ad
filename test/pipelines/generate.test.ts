// `oneword generate`: deterministic PNGs with A1111 infotext, embeddings, clear errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { readPngParameters, parseA1111Parameters } from '../../src/io/images.ts';
import { saveDiffusersEmbedding } from '../../src/io/embeddings.ts';
import { StableDiffusion } from '../../src/pipelines/stable-diffusion.ts';
import { generate } from '../../src/pipelines/generate.ts';
import { tokenizeWeighted } from '../../src/pipelines/prompt.ts';
import { createSampler, TorchGenerator } from '../../src/schedulers/index.ts';
import { decodeLatents, denoise, encodePrompt, matchChunks } from '../../src/pipelines/text-to-image.ts';
import { SafetensorsFile } from '../../src/io/safetensors.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const BIN = new URL('../../bin/oneword.js', import.meta.url).pathname;
const run = (args: string[]) => spawnSync(process.execPath, [BIN, 'generate', ...args], { encoding: 'utf8' });

test('generate: the same seed gives byte-identical PNGs, with A1111 parameters', () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-gen-'));
  try {
    const args = ['--model', join(FIX, 'sd1-tiny'), '--prompt', 'a photo of an astronaut', '--negative', 'blurry', '--steps', '6', '--count', '2', '--seed', '7', '--quiet'];
    for (const sub of ['a', 'b']) {
      const r = run([...args, '--out', join(dir, sub)]);
      assert.equal(r.status, 0, r.stderr);
    }
    const files = readdirSync(join(dir, 'a')).sort();
    assert.deepEqual(files, ['00000-7.png', '00001-8.png']);
    for (const f of files) assert.ok(readFileSync(join(dir, 'a', f)).equals(readFileSync(join(dir, 'b', f))), `${f} differs between runs`);
    assert.ok(!readFileSync(join(dir, 'a', files[0])).equals(readFileSync(join(dir, 'a', files[1]))), 'different seeds gave the same image');
    const p = parseA1111Parameters(readPngParameters(join(dir, 'a', files[1]))!);
    assert.equal(p.prompt, 'a photo of an astronaut');
    assert.equal(p.negativePrompt, 'blurry');
    assert.equal(p.params.Seed, '8');
    assert.equal(p.params.Steps, '6');
    assert.equal(p.params.Sampler, 'DPM++ 2M Karras');
    assert.equal(p.params.Size, '64x64');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('generate: image i starts from torch.randn of a CPU generator seeded with seed + i', async () => {
  // torch.randn itself: the reference file's first random draw from seed 0 is unet.latents.
  const ref = SafetensorsFile.open(join(FIX, 'sd1-tiny.ref.seed0.safetensors'));
  assert.deepEqual([...new TorchGenerator(0).randn(ref.info('unet.latents').shape)], [...ref.readFloat32('unet.latents')]);
  // generate() draws each image's latents (and the sampler's noise) from that generator.
  const sd = StableDiffusion.load(join(FIX, 'sd1-tiny'));
  const opts = { prompt: 'a photo of an astronaut', steps: 3, sampler: 'euler-a', seed: 7, count: 2, width: 48, height: 32 };
  const images = await generate(sd, opts);
  const latentShape = [sd.latentChannels, 16, 24] as const;
  const [cond, uncond] = await matchChunks(sd, await encodePrompt(sd, opts.prompt), await encodePrompt(sd, ''));
  for (const [i, img] of images.entries()) {
    assert.equal(img.seed, 7 + i);
    const gen = new TorchGenerator(7 + i);
    const initLatents = gen.randn([1, ...latentShape]);
    const scheduler = createSampler('euler-a', sd.ckpt.schedulerConfig);
    const latents = await denoise(sd, { scheduler, steps: 3, guidance: 7.5, initLatents, latentShape, cond, uncond, noise: gen });
    const { image } = await decodeLatents(sd, latents, latentShape);
    assert.deepEqual([...img.pixels], [...image], `image ${i}`);
  }
  assert.notDeepEqual([...images[0].pixels], [...images[1].pixels]);
});

test('generate: a learned embedding changes the image only where its token is used', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-emb-'));
  try {
    const sd = StableDiffusion.load(join(FIX, 'sd1-tiny'));
    const d = sd.hiddenSize;
    const vec = Float32Array.from({ length: 2 * d }, (_, i) => Math.sin(i) * 0.5);
    const file = join(dir, 'my-thing.safetensors');
    saveDiffusersEmbedding(file, '<my-thing>', vec, 2, d);
    const base = { steps: 4, count: 1, seed: 3, sampler: 'ddim' };
    const plain = await generate(sd, { ...base, prompt: 'a photo of a dog' });
    const r = run(['--model', join(FIX, 'sd1-tiny'), '--prompt', 'a photo of <my-thing>', '--embedding', `${file}:<my-thing>`, '--steps', '4', '--scheduler', 'ddim', '--seed', '3', '--out', join(dir, 'o'), '--quiet']);
    assert.equal(r.status, 0, r.stderr);
    sd.addLearnedToken('<my-thing>', vec, 2);
    const withTok = await generate(sd, { ...base, prompt: 'a photo of <my-thing>' });
    const again = await generate(sd, { ...base, prompt: 'a photo of a dog' });
    assert.deepEqual([...again[0].pixels], [...plain[0].pixels], 'loading an embedding changed an unrelated prompt');
    assert.notDeepEqual([...withTok[0].pixels], [...plain[0].pixels]);
    // Two vectors occupy two token positions.
    const ids = tokenizeWeighted(sd.tokenizer, 'a photo of <my-thing>', { embeddings: new Map([['<my-thing>', 2]]) }).chunks[0].ids;
    const learned = sd.learned.get('<my-thing>')!.ids;
    assert.deepEqual(ids.slice(4, 6), learned);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('generate: bad options are clear errors, exit 2 for a bad call and 1 for a failed one', () => {
  const m = ['--model', join(FIX, 'sd1-tiny'), '--prompt', 'x'];
  const cases: Array<[string[], number, RegExp]> = [
    [['--width', '63'], 2, /--width must be a positive multiple of 2/],
    [['--scheduler', 'heun'], 2, /--scheduler must be one of ddim, .*got "heun"/],
    [['--cfg', '-1'], 2, /--cfg must be ≥ 0, got -1/],
    [['--steps', '0'], 2, /--steps must be a whole number from 1 to 10000, got 0/],
    [['--steps', 'many'], 2, /--steps needs a number/],
    [['--eta', '0.5'], 2, /--eta applies to the ddim sampler only/],
    [['--embedding', join(FIX, 'embeddings', 'nope.safetensors')], 2, /--embedding .*nope\.safetensors: no such file/],
    [['--embedding', join(FIX, 'embeddings', 'not-an-embedding.pt')], 1, /not-an-embedding\.pt: /],
  ];
  for (const [extra, status, re] of cases) {
    const r = run([...m, ...extra, '--quiet']);
    assert.equal(r.status, status, `${extra.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re);
  }
  // A path that is not there is the call's mistake (2); a file that is there but bad fails the run (1).
  const noModel = run(['--model', join(FIX, 'no-such-model'), '--prompt', 'x', '--quiet']);
  assert.equal(noModel.status, 2, noModel.stderr);
  assert.match(noModel.stderr, /--model .*no-such-model: no such file or folder/);
});
