// The model folder is a diffusers folder: oneword's checkpoint loader reads it back with the
// same configs and weights, and the tokenizer is the real CLIP one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCheckpoint } from '../../src/pipelines/checkpoint.ts';
import { CLIPTokenizer } from '../../src/models/clip-tokenizer.ts';
import { parseArch, TINY_ARCH, unetConfigJson } from '../../src/shapes-model/config.ts';
import { exportDiffusers } from '../../src/shapes-model/export.ts';
import { initText, initUnet, initVae } from '../../src/shapes-model/init.ts';
import { samplerModelFromStores, sampleImages, loadSamplerModel } from '../../src/shapes-model/sample.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;

test('export → loadCheckpoint round trip keeps configs and every weight', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-shapes-export-'));
  try {
    const a = parseArch(TINY_ARCH, 0.5);
    const m = { arch: TINY_ARCH, scalingFactor: 0.5, vae: initVae(a, 1), text: initText(a, 1), unet: initUnet(a, 1) };
    exportDiffusers(dir, m);
    const ck = loadCheckpoint(dir);
    assert.equal(ck.layout, 'diffusers');
    assert.equal(ck.family, 'sd1');
    assert.equal(ck.predictionType, 'epsilon');
    assert.deepEqual(ck.unetConfig, a.unet);
    assert.deepEqual(ck.vaeConfig, a.vae);
    assert.deepEqual(ck.textEncoderConfig, a.text);
    assert.equal(ck.vaeConfig.scaling_factor, 0.5);
    for (const [set, store] of [[ck.unet, m.unet], [ck.vae, m.vae], [ck.textEncoder, m.text]] as const) {
      assert.deepEqual(set.names().sort(), store.names().sort());
      for (const n of store.names()) assert.deepEqual(set.float32(n), store.get(n).data, n);
    }
    assert.deepEqual(JSON.parse(readFileSync(join(dir, 'unet', 'config.json'), 'utf8')), unetConfigJson(TINY_ARCH));
    // The tokenizer folder is written from oneword's own assets, byte for byte what transformers saves.
    for (const f of ['vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json']) {
      assert.ok(readFileSync(join(dir, 'tokenizer', f)).equals(readFileSync(join(FIX, 'sd1-tiny', 'tokenizer', f))), f);
    }
    const tok = CLIPTokenizer.fromDir(join(dir, 'tokenizer'));
    assert.equal(tok.vocabSize, 49408);
    assert.deepEqual(tok.call('a red star').inputIds.slice(0, 5), CLIPTokenizer.bundled().call('a red star').inputIds.slice(0, 5));
    // Sampling from the folder and from the in-memory weights gives the same image.
    const fromDisk = await sampleImages(loadSamplerModel(dir), ['a red star'], [3], { steps: 3, threads: 1 });
    const fromMemory = await sampleImages(samplerModelFromStores({
      text: m.text, unet: m.unet, vae: m.vae, textConfig: a.text, unetConfig: a.unet, vaeConfig: a.vae,
    }), ['a red star'], [3], { steps: 3, threads: 1 });
    assert.deepEqual(fromDisk[0].data, fromMemory[0].data);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
