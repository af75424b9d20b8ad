// SDXL's model pieces against diffusers / transformers (sdxl-tiny.ref.seed0.safetensors):
// both encoders' hidden_states[-2] (no final LayerNorm), encoder 2's pooled output at
// argmax(ids) (the placeholder's position when a prompt has one) through text_projection,
// the UNet's text_time embedding and predictions, and the VAE with SDXL's scaling factor.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Graph, type Tensor } from '../../src/graph/index.ts';
import * as o from '../../src/graph/index.ts';
import { compile } from '../../src/runtime/session.ts';
import { SafetensorsFile } from '../../src/io/safetensors.ts';
import { loadFolderComponent } from '../../src/io/checkpoint-files.ts';
import { Params } from '../../src/models/params.ts';
import {
  clipPoolingMask, clipPoolingPositions, clipTextEncoder, clipTextHiddenStates, clipTextPooled, clipTextWeightSpec,
  parseCLIPTextConfig,
} from '../../src/models/clip-text.ts';
import {
  parseUNetConfig, unet2DCondition, unetAddedEmbedding, unetTimeEmbedding, unetTimeIdsEmbedding, unetWeightSpec,
} from '../../src/models/unet.ts';
import { parseVAEConfig, vaeDecode, vaeEncode, vaeWeightSpec } from '../../src/models/vae.ts';
import { close } from './close.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const XL = join(FIX, 'sdxl-tiny');
const ref = SafetensorsFile.open(join(FIX, 'sdxl-tiny.ref.seed0.safetensors'));
const F = (n: string) => ref.readFloat32(n);
const I = (n: string) => Array.from(ref.read(n) as BigInt64Array, Number);
const json = (sub: string) => JSON.parse(readFileSync(join(XL, sub, 'config.json'), 'utf8')) as Record<string, unknown>;

const te1Cfg = parseCLIPTextConfig(json('text_encoder'), 'text_encoder');
const te2Cfg = parseCLIPTextConfig(json('text_encoder_2'), 'text_encoder_2');
const unetCfg = parseUNetConfig(json('unet'), 'unet');
const vaeCfg = parseVAEConfig(json('vae'), 'vae');
const warnings: string[] = [];
const te1 = loadFolderComponent(XL, 'text_encoder', 'text encoder', clipTextWeightSpec(te1Cfg), undefined, warnings);
const te2 = loadFolderComponent(XL, 'text_encoder_2', 'text encoder 2', clipTextWeightSpec(te2Cfg), undefined, warnings);
const unetW = loadFolderComponent(XL, 'unet', 'UNet', unetWeightSpec(unetCfg), undefined, warnings);
const vaeW = loadFolderComponent(XL, 'vae', 'VAE', vaeWeightSpec(vaeCfg), undefined, warnings);


async function run(outs: Record<string, Tensor>, feeds: Record<string, Float32Array | BigInt64Array>): Promise<Record<string, Float32Array>> {
  return (await (await compile(outs, { weights: 'feed' })).run(feeds)) as Record<string, Float32Array>;
}

test('SDXL text encoders: hidden_states[-2] of both, last_hidden_state, pooled output at argmax(ids), text_embeds, prompt embeds', async () => {
  const P = 6;
  const ids1 = ref.read('tok.input_ids_1') as BigInt64Array;
  const ids2 = ref.read('tok.input_ids_2') as BigInt64Array;
  const toy = I('tok.initializer_id_1')[0];
  const row1 = te1.float32('text_model.embeddings.token_embedding.weight').slice(toy * 16, (toy + 1) * 16);
  const row2 = te2.float32('text_model.embeddings.token_embedding.weight').slice(toy * 20, (toy + 1) * 20);
  close('te1.placeholder_row', row1, F('te1.placeholder_row'), 0);
  close('te2.placeholder_row', row2, F('te2.placeholder_row'), 0);

  // Pooling positions: the highest id (the placeholder 49408 in prompts 1 and 2), first occurrence.
  assert.deepEqual(clipPoolingPositions(te2Cfg, ids2, P), I('te2.pooled_index'));
  const firstEos = Array.from({ length: P }, (_, p) => Array.from(ids2.subarray(p * 77, (p + 1) * 77), Number).indexOf(49407));
  assert.deepEqual(clipPoolingPositions({ ...te2Cfg, eos_token_id: 49407 }, ids2, P), firstEos, 'with a real eos id: the first eos');
  assert.notDeepEqual(firstEos, I('te2.pooled_index'));

  const g = new Graph();
  const tIds1 = g.input('ids1', [P, 77], 'int64');
  const tIds2 = g.input('ids2', [P, 77], 'int64');
  const pool = g.input('pool', [P, 77]);
  const h1 = clipTextHiddenStates(new Params(g, te1, 'te/').scope('text_model'), te1Cfg, tIds1, { extraRows: g.input('row1', [1, 16]) });
  const p2 = new Params(g, te2, 'te2/');
  const h2 = clipTextHiddenStates(p2.scope('text_model'), te2Cfg, tIds2, { extraRows: g.input('row2', [1, 20]) });
  const pooledOutput = o.reduceSum(o.mul(h2.last, o.reshape(pool, [P, 77, 1])), [1]);
  const r = await run({
    pen1: h1.penultimate, last1: h1.last, pen2: h2.penultimate, last2: h2.last, pooledOutput,
    textEmbeds: clipTextPooled(p2, te2Cfg, h2.last, pool), prompt: o.concat([h1.penultimate, h2.penultimate], 2),
  }, { ids1, ids2, row1, row2, pool: clipPoolingMask(te2Cfg, ids2, P) });
  close('te1.penultimate_hidden_state', r.pen1, F('te1.penultimate_hidden_state'));
  close('te1.last_hidden_state', r.last1, F('te1.last_hidden_state'));
  close('te2.penultimate_hidden_state', r.pen2, F('te2.penultimate_hidden_state'));
  close('te2.last_hidden_state', r.last2, F('te2.last_hidden_state'));
  close('te2.pooled_output', r.pooledOutput, F('te2.pooled_output'));
  close('te2.text_embeds', r.textEmbeds, F('te2.text_embeds'));
  close('te.prompt_embeds', r.prompt, F('te.prompt_embeds'));

  // hidden_states[-2] is not last_hidden_state with fewer layers: no final LayerNorm.
  const g2 = new Graph();
  const skip = clipTextEncoder(new Params(g2, te1, 'te/').scope('text_model'), te1Cfg, g2.input('ids1', [P, 77], 'int64'), { extraRows: g2.input('row1', [1, 16]), layers: 2 });
  const withNorm = (await run({ skip }, { ids1, row1 })).skip;
  assert.ok(withNorm.some((v, i) => Math.abs(v - r.pen1[i]) > 1e-2), 'clip skip 2 (final LN applied) differs from hidden_states[-2]');
});

test('SDXL UNet: t_emb, time ids embedding, add_embedding, predictions (batched CFG, float t, other time ids)', async () => {
  const shape = ref.info('unet.latents').shape;
  const g = new Graph();
  const b = 2;
  const x = g.input('x', [b, ...shape.slice(1)]);
  const t = g.input('t', [b]);
  const ctx = g.input('ctx', [b, 77, 36]);
  const textEmbeds = g.input('textEmbeds', [b, 12]);
  const timeIds = g.input('timeIds', [b, 6]);
  const p = new Params(g, unetW, 'unet/');
  const outs = {
    tEmb: unetTimeEmbedding(p, unetCfg, t), timeEmbeds: unetTimeIdsEmbedding(unetCfg, timeIds),
    augEmb: unetAddedEmbedding(p, unetCfg, { textEmbeds, timeIds }),
    pred: unet2DCondition(p, unetCfg, x, t, ctx, { textEmbeds, timeIds }),
  };
  const compiled = await compile(outs, { weights: 'feed' });
  const lat = F('unet.latents');
  const two = (a: Float32Array, c = a) => { const out = new Float32Array(a.length + c.length); out.set(a); out.set(c, a.length); return out; };
  const cond = F('cfg.cond_embeds');
  const pooled = F('cfg.cond_pooled');
  const ids = F('cfg.add_time_ids');
  const t0 = I('unet.timestep')[0];
  // Row 0: the reference call; row 1: the other time ids at the fractional timestep.
  const r = await compiled.run({
    x: two(lat), t: Float32Array.of(t0, F('unet.timestep_float')[0]), ctx: two(cond), textEmbeds: two(pooled), timeIds: two(ids, F('unet.time_ids_alt')),
  }) as Record<string, Float32Array>;
  const n = lat.length;
  close('unet.add.t_emb', r.tEmb.subarray(0, 64), F('unet.add.t_emb'));
  close('unet.add.time_embeds', r.timeEmbeds.subarray(0, 48), F('unet.add.time_embeds'));
  close('unet.add.aug_emb', r.augEmb.subarray(0, 64), F('unet.add.aug_emb'));
  close('unet.noise_pred', r.pred.subarray(0, n), F('unet.noise_pred'));

  const alt = await compiled.run({ x: two(lat), t: Float32Array.of(t0, F('unet.timestep_float')[0]), ctx: two(cond), textEmbeds: two(pooled), timeIds: two(F('unet.time_ids_alt'), ids) }) as Record<string, Float32Array>;
  close('unet.noise_pred_time_ids_alt', alt.pred.subarray(0, n), F('unet.noise_pred_time_ids_alt'));
  close('unet.noise_pred_float_t', alt.pred.subarray(n), F('unet.noise_pred_float_t'));
  const altIds = F('unet.time_ids_alt');
  assert.ok(altIds.slice(0, 4).every((v, i) => v !== ids[i]), 'the alternative time ids differ in original size and crop');

  const batched = await compiled.run({ x: two(lat), t: Float32Array.of(t0, t0), ctx: two(F('cfg.uncond_embeds'), cond), textEmbeds: two(F('cfg.uncond_pooled'), pooled), timeIds: two(ids) }) as Record<string, Float32Array>;
  close('unet.cfg.noise_pred_batched', batched.pred, F('unet.cfg.noise_pred_batched'));
  const s = F('unet.cfg.guidance_scale')[0];
  close('unet.cfg.guided', Float32Array.from({ length: n }, (_, k) => batched.pred[k] + s * (batched.pred[n + k] - batched.pred[k])), F('unet.cfg.guided'));
});

test('SDXL UNet: without the pooled embeds and time ids it refuses to build', () => {
  const g = new Graph();
  assert.throws(() => unet2DCondition(new Params(g, unetW, 'unet/'), unetCfg, g.input('x', [1, 4, 8, 8]), g.input('t', [1]), g.input('c', [1, 77, 36])), /needs the pooled text embeds and time ids/);
});

test('SDXL VAE: encoder distribution and decoder (scaling factor 0.13025)', async () => {
  const g = new Graph();
  const enc = vaeEncode(new Params(g, vaeW, 'vae/'), vaeCfg, g.input('pixels', ref.info('vae.pixels').shape));
  const dec = vaeDecode(new Params(g, vaeW, 'vae/'), vaeCfg, g.input('latents', ref.info('vae.dec.latents').shape));
  const r = await run({ mean: enc.mean, std: enc.std, logvar: enc.logvar, dec }, { pixels: F('vae.pixels'), latents: F('vae.dec.latents') });
  close('vae.enc.mean', r.mean, F('vae.enc.mean'));
  close('vae.enc.std', r.std, F('vae.enc.std'));
  close('vae.enc.logvar', r.logvar, F('vae.enc.logvar'));
  close('vae.dec.sample', r.dec, F('vae.dec.sample'));
  assert.equal(vaeCfg.scaling_factor, F('vae.scaling_factor')[0] === Math.fround(0.13025) ? 0.13025 : NaN);
});
