// StableDiffusion on an SDXL model (folder and single file): both tokenizers, a learned token
// with a row for each encoder, encodeIdsXL (penultimate states side by side, pooled output at
// the learned token) and the UNet with pooled embeds and time ids, against diffusers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { StableDiffusion } from '../../src/pipelines/stable-diffusion.ts';
import { SafetensorsFile } from '../../src/io/safetensors.ts';
import { OnewordError } from '../../src/errors.ts';
import { close } from '../models/close.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const XL = join(FIX, 'sdxl-tiny');
const ref = SafetensorsFile.open(join(FIX, 'sdxl-tiny.ref.seed0.safetensors'));
const F = (n: string) => ref.readFloat32(n);
const I = (n: string) => Array.from(ref.read(n) as BigInt64Array, Number);
const prompts = JSON.parse(ref.metadata.prompts) as string[];


for (const [label, model, opts] of [['folder', XL, {}], ['single file + config', join(FIX, 'sdxl-tiny-single-file.safetensors'), { config: XL }]] as const) {
  test(`StableDiffusion (SDXL ${label}): tokenizers with the placeholder, encodeIdsXL and the UNet match diffusers`, async () => {
    const sd = StableDiffusion.load(model, opts);
    const toy = sd.tokenizer.encode('toy')[0];
    const row = (w: { float32(n: string): Float32Array }, d: number) => w.float32('text_model.embeddings.token_embedding.weight').slice(toy * d, (toy + 1) * d);
    const t = sd.addLearnedToken('<cat-toy>', row(sd.ckpt.textEncoder, 16), 1, row(sd.ckpt.textEncoder2!, 20));
    assert.deepEqual(t.ids, [I('tok.placeholder_id_1')[0]]);
    assert.deepEqual(t.ids2, [I('tok.placeholder_id_2')[0]]);
    const ids1 = prompts.flatMap((p) => sd.tokenizer.call(p).inputIds);
    const ids2 = prompts.flatMap((p) => sd.tokenizer2!.call(p).inputIds);
    assert.deepEqual(ids1, I('tok.input_ids_1'));
    assert.deepEqual(ids2, I('tok.input_ids_2'));
    const e = await sd.encodeIdsXL(ids1, ids2, prompts.length);
    close('te.prompt_embeds', e.hidden, F('te.prompt_embeds'));
    close('te2.text_embeds', e.pooled, F('te2.text_embeds'));

    const cond = await sd.encodeIdsXL(I('cfg.cond_input_ids_1'), I('cfg.cond_input_ids_2'), 1);
    close('cfg.cond_embeds', cond.hidden, F('cfg.cond_embeds'));
    close('cfg.cond_pooled', cond.pooled, F('cfg.cond_pooled'));
    const shape = ref.info('unet.latents').shape;
    const pred = await sd.unet(F('unet.latents'), shape, [I('unet.timestep')[0]], cond.hidden, { textEmbeds: cond.pooled, timeIds: F('cfg.add_time_ids') });
    close('unet.noise_pred', pred, F('unet.noise_pred'));
    await assert.rejects(sd.unet(F('unet.latents'), shape, [601], cond.hidden), /SDXL UNet needs the pooled text embeds and time ids/);
  });
}

test('StableDiffusion (SDXL): a learned token needs vectors for both encoders, of their widths', () => {
  const sd = StableDiffusion.load(XL);
  assert.throws(() => sd.addLearnedToken('<a>', new Float32Array(16), 1), (e: unknown) => e instanceof OnewordError && e.usage && /no vectors for text encoder 2, but this SDXL model needs 1 of 20 \(beside 16 for text encoder 1\)/.test(e.message));
  assert.throws(() => sd.addLearnedToken('<a>', new Float32Array(16), 1, new Float32Array(16)), /16 values per vector for text encoder 2/);
  const t = sd.addLearnedToken('<b>', new Float32Array(32).fill(1), 2, new Float32Array(40).fill(2));
  assert.deepEqual(t.ids, t.ids2);
  assert.equal(sd.extraRows2().length, 2 * 20);
  assert.ok(sd.extraRows2().every((v) => v === 2));
  const sd1 = StableDiffusion.load(join(FIX, 'sd1-tiny'));
  assert.equal(sd1.tokenizer2, null);
  assert.throws(() => sd1.extraRows2(), /no second text encoder/);
});
