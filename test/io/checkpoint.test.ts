import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, cpSync, readFileSync, writeFileSync, unlinkSync, openSync, readSync, closeSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCheckpoint, ldmTensorMap, CheckpointError, type StableDiffusionCheckpoint } from '../../src/pipelines/checkpoint.ts';
import { unetAttentionHeads } from '../../src/models/unet-config.ts';
import type { FileWeights } from '../../src/io/weights.ts';
import { defaultPredictionType, defaultSchedulerConfig } from '../../src/schedulers/config.ts';
import {
  SafetensorsFile, SafetensorsError, writeSafetensors, f32ToF16, f16ToF32, f32ToBf16, bf16ToF32, type TensorToWrite,
} from '../../src/io/safetensors.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const SD1 = join(FIX, 'sd1-tiny');
const SD2 = join(FIX, 'sd2-tiny');
const SD1_SINGLE = join(FIX, 'sd1-tiny-single-file.safetensors');
const dir = mkdtempSync(join(tmpdir(), 'oneword-ckpt-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
const json = (p: string) => JSON.parse(readFileSync(p, 'utf8'));
const components = (c: StableDiffusionCheckpoint): [string, FileWeights][] => [['textEncoder', c.textEncoder], ['unet', c.unet], ['vae', c.vae]];
const withoutVersion = (o: Record<string, unknown>) => { const { _diffusers_version: _, ...rest } = o; return rest; };

/** Asserts both checkpoints hold the same tensors under the same names, bit for bit. */
function assertSameWeights(a: StableDiffusionCheckpoint, b: StableDiffusionCheckpoint): void {
  for (const [[label, wa], [, wb]] of components(a).map((x, i) => [x, components(b)[i]] as const)) {
    assert.deepEqual(wa.names(), wb.names(), label);
    for (const n of wa.names()) {
      assert.deepEqual(wa.shape(n), wb.shape(n), `${label} ${n}`);
      if (!bytes(wa.float32(n)).equals(bytes(wb.float32(n)))) assert.fail(`${label} ${n} differs`);
    }
  }
}

function expectCheckpointError(path: string, re: RegExp, opts = {}): void {
  assert.throws(() => loadCheckpoint(path, opts), (e: unknown) => {
    assert.ok(e instanceof CheckpointError, `expected CheckpointError, got ${e}`);
    assert.ok(e.message.includes(e.path) && e.path.length > 0, 'names the file');
    assert.match(e.message, re);
    return true;
  });
}

/** The sd1 single file with some tensors replaced or removed. */
function editedSingleFile(name: string, edit: (t: Record<string, TensorToWrite>) => void): string {
  const f = SafetensorsFile.open(SD1_SINGLE);
  const t: Record<string, TensorToWrite> = {};
  for (const [k, info] of f.tensors) t[k] = { dtype: info.dtype, shape: info.shape, data: f.read(k) };
  edit(t);
  const p = join(dir, name);
  writeSafetensors(p, t, f.metadata);
  return p;
}

test('diffusers folder (SD1): configs, scheduler, tokenizer, lazy weights and file locations', () => {
  const c = loadCheckpoint(SD1);
  assert.equal(c.layout, 'diffusers');
  assert.equal(c.family, 'sd1');
  assert.equal(c.predictionType, 'epsilon');
  assert.equal(c.tokenizerDir, join(SD1, 'tokenizer'));
  assert.deepEqual(c.schedulerConfig, json(join(SD1, 'scheduler/scheduler_config.json')));
  assert.deepEqual(c.warnings, []);
  // Every field the config files set comes through unchanged.
  for (const [cfg, file] of [[c.textEncoderConfig, 'text_encoder'], [c.unetConfig, 'unet'], [c.vaeConfig, 'vae']] as const) {
    const raw = json(join(SD1, file, 'config.json'));
    for (const [k, v] of Object.entries(cfg)) if (k in raw && v !== null) assert.deepEqual(v, raw[k], `${file}.${k}`);
  }
  assert.deepEqual(unetAttentionHeads(c.unetConfig), [8, 8]);
  // Each component exposes exactly the tensors of its file.
  for (const [sub, file, ws] of [['text_encoder', 'model', c.textEncoder], ['unet', 'diffusion_pytorch_model', c.unet], ['vae', 'diffusion_pytorch_model', c.vae]] as const) {
    const f = SafetensorsFile.open(join(SD1, sub, `${file}.safetensors`));
    assert.deepEqual(ws.names(), [...f.tensors.keys()].sort());
    const name = ws.names()[3];
    assert.deepEqual(ws.shape(name), f.info(name).shape);
    assert.deepEqual(ws.float32(name), f.readFloat32(name));
    const loc = ws.fileLocation(name)!;
    assert.equal(loc.path, f.path);
    const buf = Buffer.alloc(loc.length);
    const fd = openSync(loc.path, 'r');
    readSync(fd, buf, 0, loc.length, loc.offset);
    closeSync(fd);
    assert.ok(buf.equals(bytes(ws.float32(name))), 'fileLocation points at the raw float32 bytes');
  }
  const te = c.textEncoder.scope('text_model');
  assert.deepEqual(te.shape('embeddings.token_embedding.weight'), [49408, 32]);
  assert.throws(() => c.unet.float32('nope'), (e: unknown) => e instanceof CheckpointError && /no weight named "nope"/.test(e.message));
});

test('diffusers folder (SD2): v-prediction, linear projections, per-block heads', () => {
  const c = loadCheckpoint(join(SD2, 'model_index.json'));
  assert.equal(c.family, 'sd2');
  assert.equal(c.predictionType, 'v_prediction');
  assert.equal(c.textEncoderConfig.hidden_act, 'gelu');
  assert.equal(c.unetConfig.use_linear_projection, true);
  assert.equal(c.unetConfig.upcast_attention, true);
  assert.deepEqual(unetAttentionHeads(c.unetConfig), [2, 4]);
  assert.deepEqual(c.unet.shape('mid_block.attentions.0.proj_in.weight'), [64, 64]);
  const eps = loadCheckpoint(SD2, { predictionType: 'epsilon' });
  assert.equal(eps.predictionType, 'epsilon');
  assert.equal(eps.schedulerConfig.prediction_type, 'epsilon');
});

test('SD1 single file: every tensor maps onto a diffusers name and equals the folder’s, bit for bit', () => {
  const single = loadCheckpoint(SD1_SINGLE);
  const folder = loadCheckpoint(SD1);
  assert.equal(single.layout, 'single-file');
  assert.equal(single.family, 'sd1');
  assert.equal(single.tokenizerDir, null);
  assert.deepEqual(single.warnings, []);
  // The mapping covers the file exactly: no tensor left over, none invented.
  const map = ldmTensorMap({ family: 'sd1' }, single.textEncoderConfig, single.unetConfig, single.vaeConfig);
  const fileKeys = [...SafetensorsFile.open(SD1_SINGLE).tensors.keys()].sort();
  assert.deepEqual(map.map((e) => e.ldmName).sort(), fileKeys);
  assertSameWeights(single, folder);
  // Configs agree, except the training resolution, which no weight records (SD default 512 px).
  assert.deepEqual(single.textEncoderConfig, folder.textEncoderConfig);
  assert.deepEqual({ ...single.unetConfig, sample_size: 0 }, { ...folder.unetConfig, sample_size: 0 });
  assert.deepEqual({ ...single.vaeConfig, sample_size: 0 }, { ...folder.vaeConfig, sample_size: 0 });
  assert.equal(single.unetConfig.sample_size, 64);
  assert.equal(single.vaeConfig.sample_size, 128); // 64 latents × VAE factor 2
  assert.deepEqual(single.schedulerConfig, withoutVersion(folder.schedulerConfig));
  // VAE attention convs [C, C, 1, 1] become linears [C, C] with the same bytes in place.
  const loc = single.vae.fileLocation('encoder.mid_block.attentions.0.to_q.weight')!;
  const info = SafetensorsFile.open(SD1_SINGLE).info('first_stage_model.encoder.mid.attn_1.q.weight');
  assert.deepEqual(info.shape, [64, 64, 1, 1]);
  assert.deepEqual(single.vae.shape('encoder.mid_block.attentions.0.to_q.weight'), [64, 64]);
  assert.deepEqual(loc, { path: SD1_SINGLE, offset: info.offset, length: info.byteLength });
});

test('the LDM mapping table: representative names', () => {
  const c = loadCheckpoint(SD1);
  const m = new Map(ldmTensorMap({ family: 'sd1' }, c.textEncoderConfig, c.unetConfig, c.vaeConfig).map((e) => [`${e.component}:${e.name}`, e]));
  const ldm = (k: string) => m.get(k)?.ldmName;
  assert.equal(ldm('unet:conv_in.weight'), 'model.diffusion_model.input_blocks.0.0.weight');
  assert.equal(ldm('unet:time_embedding.linear_2.bias'), 'model.diffusion_model.time_embed.2.bias');
  assert.equal(ldm('unet:down_blocks.0.resnets.1.time_emb_proj.weight'), 'model.diffusion_model.input_blocks.2.0.emb_layers.1.weight');
  assert.equal(ldm('unet:down_blocks.0.downsamplers.0.conv.weight'), 'model.diffusion_model.input_blocks.3.0.op.weight');
  assert.equal(ldm('unet:down_blocks.1.resnets.0.conv_shortcut.weight'), 'model.diffusion_model.input_blocks.4.0.skip_connection.weight');
  assert.equal(ldm('unet:down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight'), 'model.diffusion_model.input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight');
  assert.equal(ldm('unet:mid_block.resnets.1.norm2.bias'), 'model.diffusion_model.middle_block.2.out_layers.0.bias');
  assert.equal(ldm('unet:up_blocks.0.upsamplers.0.conv.weight'), 'model.diffusion_model.output_blocks.2.2.conv.weight'); // after an attention
  assert.equal(ldm('unet:up_blocks.1.resnets.2.conv2.weight'), 'model.diffusion_model.output_blocks.5.0.out_layers.3.weight');
  assert.equal(ldm('unet:conv_norm_out.weight'), 'model.diffusion_model.out.0.weight');
  assert.equal(ldm('vae:encoder.conv_norm_out.bias'), 'first_stage_model.encoder.norm_out.bias');
  assert.equal(ldm('vae:decoder.up_blocks.0.upsamplers.0.conv.weight'), 'first_stage_model.decoder.up.1.upsample.conv.weight'); // levels reversed
  assert.equal(ldm('vae:decoder.up_blocks.1.resnets.0.conv_shortcut.weight'), 'first_stage_model.decoder.up.0.block.0.nin_shortcut.weight');
  assert.equal(ldm('vae:decoder.mid_block.attentions.0.to_out.0.weight'), 'first_stage_model.decoder.mid.attn_1.proj_out.weight');
  assert.deepEqual(m.get('vae:decoder.mid_block.attentions.0.to_out.0.weight')?.transform, { kind: 'reshape' });
  assert.equal(ldm('textEncoder:text_model.final_layer_norm.weight'), 'cond_stage_model.transformer.text_model.final_layer_norm.weight');
  // An up block without attention has its upsampler at index 1.
  const noAttn = { ...c.unetConfig, up_block_types: ['UpBlock2D', 'UpBlock2D'] as ('UpBlock2D')[] };
  const m2 = ldmTensorMap({ family: 'sd1' }, c.textEncoderConfig, noAttn, c.vaeConfig);
  assert.equal(m2.find((e) => e.name === 'up_blocks.0.upsamplers.0.conv.weight')?.ldmName, 'model.diffusion_model.output_blocks.2.1.conv.weight');
  // OpenCLIP: fused in_proj split in three along dim 0.
  const s2 = loadCheckpoint(SD2);
  const m3 = ldmTensorMap({ family: 'sd2' }, s2.textEncoderConfig, s2.unetConfig, s2.vaeConfig);
  const k = m3.find((e) => e.name === 'text_model.encoder.layers.3.self_attn.k_proj.bias')!;
  assert.equal(k.ldmName, 'cond_stage_model.model.transformer.resblocks.3.attn.in_proj_bias');
  assert.deepEqual(k.transform, { kind: 'chunk', index: 1, count: 3 });
  assert.equal(m3.find((e) => e.name === 'text_model.embeddings.position_embedding.weight')?.ldmName, 'cond_stage_model.model.positional_embedding');
  assert.equal(m3.find((e) => e.name === 'text_model.encoder.layers.0.mlp.fc2.weight')?.ldmName, 'cond_stage_model.model.transformer.resblocks.0.mlp.c_proj.weight');
});

/** Writes an sd2 checkpoint in LDM/OpenCLIP naming by running the mapping backwards. */
function writeSd2SingleFile(path: string, metadata: Record<string, string> | undefined): StableDiffusionCheckpoint {
  const src = loadCheckpoint(SD2);
  const map = ldmTensorMap({ family: 'sd2' }, src.textEncoderConfig, src.unetConfig, src.vaeConfig);
  const out: Record<string, TensorToWrite> = {};
  const ws: Record<string, { float32(name: string): Float32Array }> = { textEncoder: src.textEncoder, unet: src.unet, vae: src.vae };
  for (const e of map) {
    const data = ws[e.component].float32(e.name);
    if (e.transform.kind === 'chunk') {
      const whole = (out[e.ldmName] ??= { dtype: 'F32', shape: [e.shape[0] * 3, ...e.shape.slice(1)], data: new Float32Array(data.length * 3) });
      (whole.data as Float32Array).set(data, e.transform.index * data.length);
    } else {
      // LDM stores the VAE attention projections as 1×1 convs.
      const shape = e.transform.kind === 'reshape' && e.shape.length === 2 ? [...e.shape, 1, 1] : e.shape;
      out[e.ldmName] = { dtype: 'F32', shape, data };
    }
  }
  // The last OpenCLIP layer (unused by SD 2.x) and other extras real files carry.
  const D = src.textEncoderConfig.hidden_size;
  const n = src.textEncoderConfig.num_hidden_layers;
  for (const [k, v] of Object.entries(out)) {
    const m = /^cond_stage_model\.model\.transformer\.resblocks\.0\.(.*)$/.exec(k);
    if (m) out[`cond_stage_model.model.transformer.resblocks.${n}.${m[1]}`] = { ...v, data: (v.data as Float32Array).map((x) => x * 2) };
  }
  out['cond_stage_model.model.text_projection'] = { dtype: 'F32', shape: [D, D], data: new Float32Array(D * D) };
  out['cond_stage_model.model.logit_scale'] = { dtype: 'F32', shape: [], data: Float32Array.from([4.6]) };
  out['alphas_cumprod'] = { dtype: 'F32', shape: [3], data: Float32Array.from([0.9, 0.5, 0.1]) };
  writeSafetensors(path, out, metadata);
  return src;
}

test('SD2 single file (OpenCLIP naming, fused qkv, extra final layer) round-trips to the diffusers folder', () => {
  const p = join(dir, 'sd2-single.safetensors');
  const folder = writeSd2SingleFile(p, { 'modelspec.prediction_type': 'v' });
  const single = loadCheckpoint(p);
  assert.equal(single.family, 'sd2');
  assert.equal(single.predictionType, 'v_prediction');
  assert.deepEqual(single.warnings, []);
  assertSameWeights(single, folder);
  assert.deepEqual(single.textEncoderConfig, folder.textEncoderConfig); // 5 layers: the 6th is dropped
  // Heads and training resolution are not recorded in weights (see checkpoint.ts for the rules).
  const strip = (c: object) => ({ ...c, sample_size: 0, attention_head_dim: 0 });
  assert.deepEqual(strip(single.unetConfig), strip(folder.unetConfig));
  assert.deepEqual({ ...single.vaeConfig, sample_size: 0 }, { ...folder.vaeConfig, sample_size: 0 });
  assert.equal(single.unetConfig.sample_size, 96); // 768-v
  assert.deepEqual(single.schedulerConfig, withoutVersion(folder.schedulerConfig));
  // q/k/v are slices of in_proj_weight, still addressable in place as float32.
  const f = SafetensorsFile.open(p);
  const fused = f.info('cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight');
  const v = single.textEncoder.fileLocation('text_model.encoder.layers.2.self_attn.v_proj.weight')!;
  assert.deepEqual(v, { path: p, offset: fused.offset + 2 * 64 * 64 * 4, length: 64 * 64 * 4 });

  // Without a marker the weights cannot tell 768-v from base: 768-v as diffusers assumes
  // (stabilityai/stable-diffusion-2-1), with a warning; or the caller says.
  const q = join(dir, 'sd2-single-nomark.safetensors');
  writeSd2SingleFile(q, undefined);
  const unmarked = loadCheckpoint(q);
  assert.equal(unmarked.predictionType, 'v_prediction');
  assert.deepEqual(unmarked.schedulerConfig, defaultSchedulerConfig('sd2'));
  assert.equal(unmarked.schedulerConfig._class_name, 'DDIMScheduler');
  assert.equal(unmarked.unetConfig.sample_size, 96);
  assert.match(unmarked.warnings.join('\n'), /assuming v_prediction at 768 px/);
  const base = loadCheckpoint(q, { predictionType: 'epsilon' });
  assert.equal(base.predictionType, 'epsilon');
  assert.equal(base.schedulerConfig.prediction_type, 'epsilon');
  assert.equal(base.unetConfig.sample_size, 64);
  assert.deepEqual(base.warnings, []);

  // A config folder describes the file instead: its scheduler decides, no warning.
  const cfgDir = join(dir, 'sd2-base-config');
  cpSync(SD2, cfgDir, { recursive: true, filter: (s) => !s.endsWith('.safetensors') });
  const sched = join(cfgDir, 'scheduler', 'scheduler_config.json');
  writeFileSync(sched, JSON.stringify({ ...json(sched), prediction_type: 'epsilon' }));
  const described = loadCheckpoint(q, { config: cfgDir });
  assert.equal(described.predictionType, 'epsilon');
  assert.deepEqual(described.schedulerConfig, json(sched));
  assert.deepEqual(described.unetConfig, folder.unetConfig, 'heads and sample size from unet/config.json');
  assert.deepEqual(described.warnings, []);
  assertSameWeights(described, folder);
  // With only a UNet config, its resolution decides: SD 2.x below 768 px is a base model.
  const unetOnly = join(dir, 'sd2-unet-config');
  cpSync(join(cfgDir, 'unet'), join(unetOnly, 'unet'), { recursive: true });
  assert.equal(loadCheckpoint(q, { config: unetOnly }).predictionType, folder.unetConfig.sample_size! >= 96 ? 'v_prediction' : 'epsilon');
});

test('one rule for defaults a model does not state: SD 1.x epsilon; SD 2.x v at 768 px, epsilon at 512', () => {
  assert.equal(defaultPredictionType('sd1'), 'epsilon');
  assert.equal(defaultPredictionType('sd1', 96), 'epsilon');
  assert.equal(defaultPredictionType('sd2'), 'v_prediction');
  assert.equal(defaultPredictionType('sd2', 96), 'v_prediction');
  assert.equal(defaultPredictionType('sd2', 64), 'epsilon');
  assert.equal(defaultSchedulerConfig('sd2').prediction_type, 'v_prediction');
  assert.equal(defaultSchedulerConfig('sd2', 'epsilon').prediction_type, 'epsilon');
  assert.equal(defaultSchedulerConfig('sd1').prediction_type, undefined);
  // A diffusers folder without scheduler/ follows the same rule from its UNet's sample_size.
  const d = join(dir, 'sd2-no-scheduler');
  cpSync(SD2, d, { recursive: true });
  rmSync(join(d, 'scheduler'), { recursive: true });
  const c = loadCheckpoint(d);
  assert.equal(c.predictionType, defaultPredictionType('sd2', c.unetConfig.sample_size));
  assert.match(c.warnings.join('\n'), /no scheduler\/scheduler_config\.json, using the sd2 default/);
});

test('fp16 and bf16 weights are cast to float32 on read', () => {
  // diffusers folder holding only *.fp16.safetensors
  const d = join(dir, 'sd1-fp16');
  cpSync(SD1, d, { recursive: true });
  const originals = new Map<string, Float32Array>();
  for (const [sub, base] of [['text_encoder', 'model'], ['unet', 'diffusion_pytorch_model'], ['vae', 'diffusion_pytorch_model']]) {
    const f = SafetensorsFile.open(join(d, sub, `${base}.safetensors`));
    const t: Record<string, TensorToWrite> = {};
    for (const [k, info] of f.tensors) {
      const x = f.readFloat32(k);
      originals.set(`${sub}/${k}`, x);
      t[k] = { dtype: 'F16', shape: info.shape, data: f32ToF16(x) };
    }
    writeSafetensors(join(d, sub, `${base}.fp16.safetensors`), t, f.metadata);
    unlinkSync(join(d, sub, `${base}.safetensors`));
  }
  const c = loadCheckpoint(d);
  assert.deepEqual(c.warnings, []);
  const n = 'down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight';
  assert.equal(c.unet.dtype(n), 'F16');
  assert.equal(c.unet.fileLocation(n), null);
  const orig = originals.get(`unet/${n}`)!;
  const got = c.unet.float32(n);
  assert.deepEqual(got, f16ToF32(f32ToF16(orig)));
  assert.ok(got.every((x, i) => Math.abs(x - orig[i]) <= Math.abs(orig[i]) * 2 ** -11 + 2 ** -24));
  // With both present the fp32 files win unless the fp16 variant is asked for.
  cpSync(join(SD1, 'unet', 'diffusion_pytorch_model.safetensors'), join(d, 'unet', 'diffusion_pytorch_model.safetensors'));
  assert.equal(loadCheckpoint(d).unet.dtype(n), 'F32');
  assert.equal(loadCheckpoint(d, { variant: 'fp16' }).unet.dtype(n), 'F16');
  assert.match(loadCheckpoint(SD1, { variant: 'fp16' }).warnings.join('\n'), /no fp16 variant/);

  // a bf16 single file
  const p = editedSingleFile('sd1-bf16.safetensors', (t) => {
    for (const v of Object.values(t)) { v.data = f32ToBf16(v.data as Float32Array); v.dtype = 'BF16'; }
  });
  const s = loadCheckpoint(p);
  const k = 'text_model.encoder.layers.1.mlp.fc1.weight';
  assert.equal(s.textEncoder.dtype(k), 'BF16');
  assert.deepEqual(s.textEncoder.float32(k), bf16ToF32(f32ToBf16(loadCheckpoint(SD1).textEncoder.float32(k))));
});

test('broken single files: truncated, missing or wrong-shaped tensors, unknown layouts', () => {
  const whole = readFileSync(SD1_SINGLE);
  const cut = join(dir, 'truncated.safetensors');
  writeFileSync(cut, whole.subarray(0, whole.length - 1000));
  assert.throws(() => loadCheckpoint(cut), (e: unknown) => e instanceof SafetensorsError && e.code === 'TRUNCATED' && e.message.startsWith(cut));
  const cutHeader = join(dir, 'truncated-header.safetensors');
  writeFileSync(cutHeader, whole.subarray(0, 500));
  assert.throws(() => loadCheckpoint(cutHeader), (e: unknown) => e instanceof SafetensorsError && e.code === 'HEADER_LENGTH' && e.message.startsWith(cutHeader));

  const missing = editedSingleFile('missing.safetensors', (t) => { delete t['model.diffusion_model.input_blocks.1.0.in_layers.2.weight']; });
  expectCheckpointError(missing, /1 of 304 UNet tensors are missing: "model\.diffusion_model\.input_blocks\.1\.0\.in_layers\.2\.weight" \(→ down_blocks\.0\.resnets\.0\.conv1\.weight\)/);
  const noVae = editedSingleFile('novae.safetensors', (t) => { for (const k of Object.keys(t)) if (k.startsWith('first_stage_model.')) delete t[k]; });
  expectCheckpointError(noVae, /no VAE/);
  const wrong = editedSingleFile('wrong.safetensors', (t) => {
    t['model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_v.weight'] = { dtype: 'F32', shape: [64, 31], data: new Float32Array(64 * 31) };
  });
  expectCheckpointError(wrong, /attn2\.to_v\.weight" \(→ mid_block\.attentions\.0\.transformer_blocks\.0\.attn2\.to_v\.weight\) has shape \[64, 31\], expected \[64, 32\]/);
  const mixed = editedSingleFile('mixed.safetensors', (t) => {
    const k = 'cond_stage_model.transformer.text_model.embeddings.token_embedding.weight';
    t[k] = { dtype: 'F32', shape: [49408, 16], data: new Float32Array(49408 * 16) };
  });
  expectCheckpointError(mixed, /text encoder width 16 does not match the UNet's cross_attention_dim 32/);
  const ints = editedSingleFile('ints.safetensors', (t) => {
    t['model.diffusion_model.out.2.bias'] = { dtype: 'I32', shape: [4], data: new Int32Array(4) };
  });
  expectCheckpointError(ints, /out\.2\.bias" \(→ conv_out\.bias\) has dtype I32/);

  const random = join(dir, 'random.safetensors');
  writeSafetensors(random, { 'foo.bar': { dtype: 'F32', shape: [1], data: new Float32Array(1) } });
  expectCheckpointError(random, /unknown checkpoint layout.*"foo\.bar"/);
  expectCheckpointError(join(SD1, 'unet', 'diffusion_pytorch_model.safetensors'), /diffusers UNet weights file/);
  const xl = join(dir, 'xl.safetensors');
  writeSafetensors(xl, { 'conditioner.embedders.0.transformer.text_model.final_layer_norm.weight': { dtype: 'F32', shape: [1], data: new Float32Array(1) } });
  expectCheckpointError(xl, /SDXL/);
  expectCheckpointError(join(dir, 'does-not-exist.safetensors'), /no such file or folder/);
});

test('pickles are refused with a conversion recipe, whatever their extension', () => {
  const zip = join(dir, 'model.ckpt');
  writeFileSync(zip, Buffer.concat([Buffer.from('PK\x03\x04'), Buffer.alloc(60)]));
  expectCheckpointError(zip, /PyTorch zip\/pickle checkpoint; oneword does not load pickles because unpickling can run arbitrary code\. Convert it to \.safetensors first[\s\S]*torch\.load\("model\.ckpt"[\s\S]*save_file[\s\S]*"model\.safetensors"/);
  const pkl = join(dir, 'weights.pt');
  writeFileSync(pkl, Buffer.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8]));
  expectCheckpointError(pkl, /PyTorch pickle checkpoint/);
  const disguised = join(dir, 'disguised.safetensors');
  writeFileSync(disguised, Buffer.from([0x80, 0x04, 0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7d, 0x94]));
  expectCheckpointError(disguised, /PyTorch pickle checkpoint/);
  // a diffusers folder that ships only pytorch_model.bin-style weights
  const d = join(dir, 'bin-folder');
  cpSync(SD1, d, { recursive: true });
  unlinkSync(join(d, 'vae', 'diffusion_pytorch_model.safetensors'));
  writeFileSync(join(d, 'vae', 'diffusion_pytorch_model.bin'), Buffer.from('PK\x03\x04rest'));
  expectCheckpointError(d, /diffusion_pytorch_model\.bin: a PyTorch pickle checkpoint/);
});

test('broken diffusers folders: unknown blocks, unsupported features, missing tensors, wrong places', () => {
  const make = (name: string, edit: (d: string) => void) => { const d = join(dir, name); cpSync(SD1, d, { recursive: true }); edit(d); return d; };
  const setJson = (p: string, f: (j: Record<string, unknown>) => void) => { const j = json(p); f(j); writeFileSync(p, JSON.stringify(j)); };

  const blocks = make('bad-blocks', (d) => setJson(join(d, 'unet/config.json'), (j) => { j.down_block_types = ['DownBlock2D', 'FooBlock2D']; }));
  expectCheckpointError(blocks, /unet\/config\.json: unknown UNet down block type "FooBlock2D" in "down_block_types"/);
  const xl = make('xl-unet', (d) => setJson(join(d, 'unet/config.json'), (j) => { j.addition_embed_type = 'text_time'; }));
  expectCheckpointError(xl, /unet\/config\.json: "addition_embed_type" is "text_time" but "addition_time_embed_dim" is not set/);
  const heads = make('bad-heads', (d) => setJson(join(d, 'unet/config.json'), (j) => { j.attention_head_dim = [8, 8, 8]; }));
  expectCheckpointError(heads, /"attention_head_dim" lists 3 values for 2 blocks/);
  const act = make('bad-act', (d) => setJson(join(d, 'text_encoder/config.json'), (j) => { j.hidden_act = 'relu'; }));
  expectCheckpointError(act, /unsupported activation "relu"/);
  const inpaint = make('inpaint', (d) => setJson(join(d, 'unet/config.json'), (j) => { j.in_channels = 9; }));
  expectCheckpointError(inpaint, /inpainting/);
  const noUnet = make('no-unet-weights', (d) => unlinkSync(join(d, 'unet/diffusion_pytorch_model.safetensors')));
  expectCheckpointError(noUnet, /unet: no weights found/);
  const gap = make('missing-tensor', (d) => {
    const p = join(d, 'vae/diffusion_pytorch_model.safetensors');
    const f = SafetensorsFile.open(p);
    const t: Record<string, TensorToWrite> = {};
    for (const [k, info] of f.tensors) if (k !== 'decoder.conv_out.bias') t[k] = { dtype: info.dtype, shape: info.shape, data: f.read(k) };
    writeSafetensors(p, t);
  });
  expectCheckpointError(gap, /vae: 1 of 124 VAE tensors are missing: "decoder\.conv_out\.bias"/);
  const oldNames = make('old-vae-names', (d) => {
    const p = join(d, 'vae/diffusion_pytorch_model.safetensors');
    const f = SafetensorsFile.open(p);
    const t: Record<string, TensorToWrite> = {};
    const ren: Record<string, string> = { to_q: 'query', to_k: 'key', to_v: 'value', 'to_out.0': 'proj_attn' };
    for (const [k, info] of f.tensors) {
      const nk = k.replace(/attentions\.0\.(to_q|to_k|to_v|to_out\.0)\./, (_, a: string) => `attentions.0.${ren[a]}.`);
      t[nk] = { dtype: info.dtype, shape: info.shape, data: f.read(k) };
    }
    writeSafetensors(p, t);
  });
  assertSameWeights(loadCheckpoint(oldNames), loadCheckpoint(SD1));

  expectCheckpointError(join(SD1, 'unet'), /single component \("UNet2DConditionModel"\).*model_index\.json/);
  const empty = join(dir, 'empty-folder');
  mkdirSync(empty);
  writeFileSync(join(empty, 'model.safetensors'), '');
  expectCheckpointError(empty, /unknown checkpoint layout.*model\.safetensors; pass that file instead/);
  const badJson = make('bad-json', (d) => writeFileSync(join(d, 'vae/config.json'), '{"block_out_channels": [32, 64],'));
  expectCheckpointError(badJson, /vae\/config\.json: invalid JSON/);
});
