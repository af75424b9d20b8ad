// Caption templates: AUTOMATIC1111 template files with [name] and [filewords], and image
// captions read from .txt files beside the images, reaching the text encoder.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fillTrainingTemplate, readTemplateFile } from '../../src/pipelines/templates.ts';
import { StableDiffusion } from '../../src/pipelines/stable-diffusion.ts';
import { TextualInversionTrainer, TRAIN_DEFAULTS, captionOf } from '../../src/pipelines/textual-inversion.ts';
import { Rng, randomAttributes, render, writePng } from '../../src/shapes/index.ts';

const MODEL = new URL('../fixtures/sd1-tiny', import.meta.url).pathname;

test('template files: [name] or {}, [filewords], comments and blank lines', () => {
  assert.deepEqual(readTemplateFile('t.txt', '# mine\na photo of [name], [filewords]\n\n  [name] \r\n'), ['a photo of [name], [filewords]', '[name]']);
  assert.throws(() => readTemplateFile('t.txt', 'a photo of a cat\n'), /t\.txt: template "a photo of a cat" \(line 1\) has no \[name\]/);
  assert.throws(() => readTemplateFile('t.txt', '# only a comment\n'), /t\.txt: no templates/);
});

test('filling a template: the word, the caption, and no dangling commas when the caption is empty', () => {
  assert.equal(fillTrainingTemplate('a photo of [name], [filewords]', '<w>', 'on a black background'), 'a photo of <w>, on a black background');
  assert.equal(fillTrainingTemplate('a photo of [name], [filewords]', '<w>', ''), 'a photo of <w>');
  assert.equal(fillTrainingTemplate('[filewords], [name], [filewords]', '<w>', ''), '<w>');
  assert.equal(fillTrainingTemplate('a photo of a {}', '<w>'), 'a photo of a <w>');
});

test('captions from .txt files reach the text encoder; missing files mean no caption', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-templates-'));
  try {
    const images = join(dir, 'images');
    mkdirSync(images);
    const rng = new Rng(9);
    for (let i = 0; i < 2; i++) await writePng(render(randomAttributes(rng, { shape: 'star' }), rng), join(images, `${i}.png`));
    const templateFile = join(dir, 'templates.txt');
    writeFileSync(templateFile, 'a [name] [filewords]\n');
    const opts = { ...TRAIN_DEFAULTS, images, token: '<w>', init: 'star', resolution: 32, out: join(dir, 'out'), templateFile, flipP: 0 };
    const loss = async () => (await TextualInversionTrainer.create(StableDiffusion.load(MODEL), opts)).fixedLoss(4);
    const plain = await loss();
    assert.equal(captionOf(join(images, '0.png')), '');
    writeFileSync(join(images, '0.txt'), 'at the top left,\n on a black   background\n');
    writeFileSync(join(images, '1.txt'), 'in the center');
    assert.equal(captionOf(join(images, '0.png')), 'at the top left, on a black background');
    const captioned = await loss();
    assert.notEqual(captioned, plain);
    writeFileSync(templateFile, 'a photo of a cat\n');
    await assert.rejects(TextualInversionTrainer.create(StableDiffusion.load(MODEL), opts), /has no \[name\]/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
