// The library as the README shows it: load, train a word (from files and from memory),
// save it, load it into another model, generate. Tiny model, tiny images, 2 steps.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadEmbedding, OnewordError, StableDiffusion, trainTextualInversion, type RgbImage } from '../../src/index.ts';
import { Rng, randomAttributes, render, writePng } from '../../src/shapes/index.ts';

const MODEL = new URL('../fixtures/sd1-tiny/', import.meta.url).pathname;
const TRAIN = { token: '<dotted-star>', init: 'star', steps: 2, resolution: 16, lr: 5e-2 };

function conceptImages(n = 3): RgbImage[] {
  const rng = new Rng(5);
  return Array.from({ length: n }, () => render(randomAttributes(rng, { shape: 'star', color: 'orange', texture: 'dotted' }), rng));
}

test('library: train from image files, save, load into another model, generate', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-lib-'));
  try {
    const images = conceptImages();
    const paths = await Promise.all(images.map(async (img, i) => {
      const p = join(dir, 'images', `${i}.png`);
      mkdirSync(join(dir, 'images'), { recursive: true });
      await writePng(img, p);
      return p;
    }));
    const cwdBefore = readdirSync('.').sort();

    const sd = await StableDiffusion.load(MODEL, { threads: 1 });
    const steps: number[] = [];
    const run = await trainTextualInversion(sd, { ...TRAIN, images: paths, onStep: (l) => steps.push(l.step) });
    assert.deepEqual(steps, [1, 2]);
    assert.equal(run.steps, 2);
    assert.equal(run.stopped, false);
    assert.equal(run.embedding.token, '<dotted-star>');
    assert.equal(run.embedding.vectors.length, sd.hiddenSize);
    // Training alone wrote nothing: no output folder appeared, the images folder is unchanged.
    assert.deepEqual(readdirSync('.').sort(), cwdBefore);
    assert.deepEqual(readdirSync(join(dir, 'images')).sort(), ['0.png', '1.png', '2.png']);

    // The word moved away from its init word ("star</w>" = 2093).
    const initRow = sd.ckpt.textEncoder.float32('text_model.embeddings.token_embedding.weight').subarray(2093 * sd.hiddenSize, 2094 * sd.hiddenSize);
    assert.ok(run.embedding.vectors.some((v, i) => Math.abs(v - initRow[i]) > 1e-3), 'the embedding did not move');

    const saved = await run.save(join(dir, 'ti'));
    assert.deepEqual(Object.keys(saved).sort(), ['a1111', 'diffusers']);
    assert.deepEqual(readdirSync(join(dir, 'ti')).sort(), ['dotted-star.safetensors', 'learned_embeds.safetensors']);
    assert.deepEqual([...loadEmbedding(saved.diffusers!).vectors], [...run.embedding.vectors]);
    const onlyA1111 = await run.save(join(dir, 'ti-a1111'), { formats: ['a1111'] });
    assert.deepEqual(Object.keys(onlyA1111), ['a1111']);

    // The trained model already knows the word; a second model learns it from the file.
    const prompt = { prompt: 'a photo of <dotted-star>', steps: 3, sampler: 'ddim', seed: 1, width: 16, height: 16 };
    const [fromRun] = await sd.generate(prompt);
    const sd2 = await StableDiffusion.load(MODEL, { threads: 1 });
    const [without] = await sd2.generate(prompt);
    const learned = sd2.loadTextualInversion(join(dir, 'ti', 'learned_embeds.safetensors'));
    assert.equal(learned.token, '<dotted-star>');
    const [withWord] = await sd2.generate(prompt);
    assert.deepEqual([...withWord.pixels], [...fromRun.pixels]);
    // The A1111 file holds the same vectors; its word is the file name unless given.
    const sd3 = await StableDiffusion.load(MODEL, { threads: 1 });
    assert.equal(sd3.loadTextualInversion(join(dir, 'ti', 'dotted-star.safetensors'), { token: '<dotted-star>' }).token, '<dotted-star>');
    assert.deepEqual([...(await sd3.generate(prompt))[0].pixels], [...fromRun.pixels]);
    assert.notDeepEqual([...withWord.pixels], [...without.pixels]);
    assert.equal(withWord.width, 16);
    assert.ok(withWord.pixels.every((v) => v >= 0 && v <= 1));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('library: in-memory images train exactly as the same images from files; a model learns two words', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-lib-'));
  try {
    const images = conceptImages();
    const paths = await Promise.all(images.map(async (img, i) => {
      const p = join(dir, `${i}.png`);
      await writePng(img, p);
      return p;
    }));
    const fromFiles = await trainTextualInversion(await StableDiffusion.load(MODEL), { ...TRAIN, images: paths });
    const sd = await StableDiffusion.load(MODEL);
    const fromMemory = await trainTextualInversion(sd, { ...TRAIN, images });
    assert.deepEqual([...fromMemory.embedding.vectors], [...fromFiles.embedding.vectors]);

    // A second word on the same model: both stay usable, the first unchanged.
    const first = Float32Array.from(sd.learned.get('<dotted-star>')!.vectors);
    const second = await trainTextualInversion(sd, { ...TRAIN, images, token: '<other>', seed: 3 });
    assert.equal(second.steps, 2);
    assert.deepEqual([...sd.learned.get('<dotted-star>')!.vectors], [...first]);
    assert.notDeepEqual([...second.embedding.vectors], [...first]);
    const [a] = await sd.generate({ prompt: '<dotted-star>', steps: 2, width: 16, height: 16 });
    const [b] = await sd.generate({ prompt: '<other>', steps: 2, width: 16, height: 16 });
    assert.notDeepEqual([...a.pixels], [...b.pixels]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('library: bad calls are usage errors naming the option', async () => {
  const sd = await StableDiffusion.load(MODEL);
  const images = conceptImages(1);
  const usage = (option: string | undefined, re: RegExp) => (e: unknown) => {
    assert.ok(e instanceof OnewordError && e.usage, String(e));
    assert.equal(e.option, option);
    assert.match(e.message, re);
    return true;
  };
  await assert.rejects(trainTextualInversion(sd, { ...TRAIN, images, saveEvery: 10 }), usage('saveEvery', /^saveEvery needs out/));
  await assert.rejects(trainTextualInversion(sd, { ...TRAIN, images, flipP: 3 }), usage('flipP', /^flipP must be between 0 and 1, got 3/));
  await assert.rejects(trainTextualInversion(sd, { ...TRAIN, images: [] }), usage('images', /^images must be a folder, or a non-empty list/));
  await assert.rejects(trainTextualInversion(sd, { ...TRAIN, images: [{ data: new Uint8Array(5), width: 2, height: 2 }] }), usage('images', /needs 12 bytes, got 5/));
  await assert.rejects(trainTextualInversion(sd, { ...TRAIN, images, learningRate: 1 } as never), usage(undefined, /unknown option "learningRate"/));
  await assert.rejects(sd.generate({ prompt: 'x', guidance: -1 }), usage('guidance', /^guidance must be ≥ 0, got -1/));
  assert.throws(() => sd.loadTextualInversion({ token: '<w>', vectors: new Float32Array(5), count: 1, dim: 5 }), usage(undefined, /5-dimensional vectors but this model's text encoder uses 32/));
  // An SDXL word whose clip_l happens to match is still refused: its clip_g half would be dropped.
  assert.throws(() => sd.loadTextualInversion({ token: '<x>', vectors: new Float32Array(32), count: 1, dim: 32, vectors2: new Float32Array(12), dim2: 12 }), usage(undefined, /an SDXL embedding \(clip_l 32, clip_g 12\) cannot be used with an SD 1\.x\/2\.x model \(32\)/));
  // An image that fails to decode is a failed run, not a usage error, and leaves no word behind.
  const dir = mkdtempSync(join(tmpdir(), 'oneword-lib-'));
  try {
    const broken = join(dir, 'broken.png');
    writeFileSync(broken, 'not a png');
    await assert.rejects(trainTextualInversion(sd, { ...TRAIN, images: [broken] }), (e: unknown) => e instanceof OnewordError && !e.usage && /broken\.png: cannot decode image/.test(e.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  // Nothing was learned by the failed calls.
  assert.equal(sd.learned.size, 0);
});
