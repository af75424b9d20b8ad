// Loading SDXL: the diffusers folder (text_encoder_2/, tokenizer_2/, fp32 or fp16 files) and
// the single file in SGM naming (encoder 1 in transformers' names, encoder 2 in open_clip's
// with fused q/k/v and a transposed text_projection, label_emb = add_embedding, level 0
// without attention, per-level transformer depths). Every SDXL-specific inconsistency fails
// with its own message.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ldmTensorMap, loadCheckpoint, type StableDiffusionCheckpoint } from '../../src/pipelines/checkpoint.ts';
import { StableDiffusion } from '../../src/pipelines/stable-diffusion.ts';
import { SafetensorsFile, f32ToF16, writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.ts';
import { CheckpointError, type FileWeights } from '../../src/io/weights.ts';
import { randomWeightSet } from '../../src/models/random-weights.ts';
import { clipTextWeightSpec } from '../../src/models/clip-text.ts';
import { unetWeightSpec, type UNetConfig } from '../../src/models/unet-config.ts';
import { vaeWeightSpec } from '../../src/models/vae.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const XL = join(FIX, 'sdxl-tiny');
const XL_SINGLE = join(FIX, 'sdxl-tiny-single-file.safetensors');
const dir = mkdtempSync(join(tmpdir(), 'oneword-ckpt-xl-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const json = (p: string) => JSON.parse(readFileSync(p, 'utf8')) as Record<string, unknown>;
const COMPONENTS = ['textEncoder', 'textEncoder2', 'unet', 'vae'] as const;

function assertSameWeights(a: StableDiffusionCheckpoint, b: StableDiffusionCheckpoint): void {
  for (const c of COMPONENTS) {
    const [wa, wb] = [a[c]!, b[c]!];
    assert.deepEqual(wa.names(), wb.names(), c);
    for (const n of wa.names()) assert.deepEqual(wa.float32(n), wb.float32(n), `${c}: ${n}`);
  }
}

function expectError(path: string, re: RegExp, opts = {}): void {
  assert.throws(() => loadCheckpoint(path, opts), (e: unknown) => {
    assert.ok(e instanceof CheckpointError, `expected CheckpointError, got ${e}`);
    assert.match(e.message, re);
    return true;
  });
}

/** A copy of the SDXL folder with `edit` applied. */
function folder(name: string, edit: (d: string) => void): string {
  const d = join(dir, name);
  cpSync(XL, d, { recursive: true });
  edit(d);
  return d;
}
const setJson = (p: string, f: (j: Record<string, unknown>) => void) => { const j = json(p); f(j); writeFileSync(p, JSON.stringify(j)); };

test('SDXL diffusers folder: family, both encoders, both tokenizers, no warnings', () => {
  const c = loadCheckpoint(XL);
  assert.equal(c.family, 'sdxl');
  assert.equal(c.layout, 'diffusers');
  assert.deepEqual(c.warnings, []);
  assert.equal(c.tokenizer2Dir, join(XL, 'tokenizer_2'));
  assert.equal(c.textEncoder2Config?.projection_dim, 12);
  assert.equal(c.textEncoder2Config?.num_hidden_layers, 4);
  assert.deepEqual(c.textEncoder2!.shape('text_projection.weight'), [12, 20]);
  assert.equal(c.vaeConfig.scaling_factor, 0.13025);
  assert.equal(c.schedulerConfig.timestep_spacing, 'leading');
  const sd = StableDiffusion.load(XL);
  assert.ok(sd.isXL);
  assert.equal(sd.tokenizer2!.padId, 0, 'tokenizer_2 pads with "!"');
  assert.equal(sd.tokenizer.padId, 49407);
  assert.deepEqual([sd.hiddenSize, sd.hiddenSize2, sd.contextSize, sd.pooledSize], [16, 20, 36, 12]);
  assert.ok(!StableDiffusion.load(join(FIX, 'sd1-tiny')).isXL);
});

test('SDXL folder with fp16 variants: chosen with variant fp16, cast to float32', () => {
  const d = folder('xl-fp16', (d) => {
    for (const [sub, base] of [['text_encoder', 'model'], ['text_encoder_2', 'model'], ['unet', 'diffusion_pytorch_model'], ['vae', 'diffusion_pytorch_model']]) {
      const f = SafetensorsFile.open(join(d, sub, `${base}.safetensors`));
      const t: Record<string, TensorToWrite> = {};
      for (const [k, info] of f.tensors) t[k] = { dtype: 'F16', shape: info.shape, data: f32ToF16(f.readFloat32(k)) };
      writeSafetensors(join(d, sub, `${base}.fp16.safetensors`), t);
    }
  });
  const c = loadCheckpoint(d, { variant: 'fp16' });
  assert.deepEqual(c.warnings, []);
  assert.equal(c.textEncoder2!.dtype('text_projection.weight'), 'F16');
  const want = loadCheckpoint(XL).textEncoder2!.float32('text_projection.weight');
  const got = c.textEncoder2!.float32('text_projection.weight');
  assert.ok(got.every((v, i) => Math.abs(v - want[i]) <= 1e-3 * Math.abs(want[i]) + 1e-7), 'fp16 rounding only');
  assert.equal(loadCheckpoint(d).textEncoder2!.dtype('text_projection.weight'), 'F32', 'fp32 files win by default');
});

test('SDXL single file (SGM names) with --config: every tensor mapped, bit for bit the folder', () => {
  const single = loadCheckpoint(XL_SINGLE, { config: XL });
  const ref = loadCheckpoint(XL);
  assert.equal(single.family, 'sdxl');
  assert.equal(single.layout, 'single-file');
  assert.deepEqual(single.warnings, []);
  assert.equal(single.tokenizer2Dir, join(XL, 'tokenizer_2'));
  const map = ldmTensorMap({ family: 'sdxl' }, single.textEncoderConfig, single.unetConfig, single.vaeConfig, single.textEncoder2Config);
  assert.deepEqual([...new Set(map.map((e) => e.ldmName))].sort(), [...SafetensorsFile.open(XL_SINGLE).tensors.keys()].sort(), 'the mapping covers the file exactly');
  assertSameWeights(single, ref);
  const m = new Map(map.map((e) => [`${e.component}:${e.name}`, e]));
  assert.equal(m.get('unet:add_embedding.linear_1.weight')?.ldmName, 'model.diffusion_model.label_emb.0.0.weight');
  assert.equal(m.get('unet:add_embedding.linear_2.bias')?.ldmName, 'model.diffusion_model.label_emb.0.2.bias');
  assert.equal(m.get('unet:down_blocks.1.attentions.0.norm.weight')?.ldmName, 'model.diffusion_model.input_blocks.4.1.norm.weight');
  assert.equal(m.get('unet:up_blocks.1.upsamplers.0.conv.weight')?.ldmName, 'model.diffusion_model.output_blocks.5.2.conv.weight');
  assert.equal(m.get('textEncoder:text_model.encoder.layers.2.mlp.fc1.weight')?.ldmName, 'conditioner.embedders.0.transformer.text_model.encoder.layers.2.mlp.fc1.weight');
  const proj = m.get('textEncoder2:text_projection.weight')!;
  assert.equal(proj.ldmName, 'conditioner.embedders.1.model.text_projection');
  assert.deepEqual(proj.transform, { kind: 'transpose' });
  assert.deepEqual(SafetensorsFile.open(XL_SINGLE).info(proj.ldmName).shape, [20, 12], 'stored [hidden, projection]');
  assert.equal(single.textEncoder2!.fileLocation('text_projection.weight'), null, 'a transposed tensor is read, not mapped');
  const v = m.get('textEncoder2:text_model.encoder.layers.3.self_attn.v_proj.weight')!;
  assert.equal(v.ldmName, 'conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_weight');
  assert.deepEqual(v.transform, { kind: 'chunk', index: 2, count: 3 });
});

test('SDXL single file read alone: what the weights do not record is SDXL base\'s, and the tiny model says it needs --config', () => {
  // The fixture's 8 norm groups are not in its weights; SDXL's are 32.
  expectError(XL_SINGLE, /16 channels do not split into 32 norm groups\. A single file does not record .* pass --config DIR/);
  // A config folder with only the UNet and VAE: both text encoders are read off the file.
  const partial = join(dir, 'partial-config');
  for (const sub of ['unet', 'vae']) cpSync(join(XL, sub, 'config.json'), join(partial, sub, 'config.json'));
  const c = loadCheckpoint(XL_SINGLE, { config: partial });
  const ref = loadCheckpoint(XL);
  const noHeads = (t: object) => ({ ...t, num_attention_heads: 0 });
  // Heads are not in the weights (the fixture has 2; narrow test-size encoders are read as 4).
  assert.deepEqual(noHeads(c.textEncoderConfig), noHeads(ref.textEncoderConfig));
  assert.deepEqual(noHeads(c.textEncoder2Config!), noHeads(ref.textEncoder2Config!), 'all 4 OpenCLIP layers kept, projection_dim off text_projection');
  assert.equal(c.tokenizer2Dir, null);
  const sd = StableDiffusion.load(XL_SINGLE, { config: partial });
  assert.equal(sd.tokenizer2!.padId, 0, 'the bundled tokenizer 2 pads with "!"');
  assert.deepEqual(sd.tokenizer2!.call('a photo!').inputIds, StableDiffusion.load(XL).tokenizer2!.call('a photo!').inputIds);
  // No scheduler config given: SDXL base's, which is the fixture's.
  const { _diffusers_version: _, ...fixtureScheduler } = ref.schedulerConfig;
  assert.deepEqual(c.schedulerConfig, fixtureScheduler);
});

/** An SDXL-shaped model with 32-divisible widths, written as an SGM single file by running the mapping backwards. */
function writeSyntheticXL(path: string): StableDiffusionCheckpoint {
  const base = loadCheckpoint(XL);
  const unetConfig: UNetConfig = { ...base.unetConfig, block_out_channels: [32, 64, 64], norm_num_groups: 32, attention_head_dim: [1, 1, 1], transformer_layers_per_block: [1, 2, 3], sample_size: 128 };
  const cfg = { ...base, unetConfig, vaeConfig: { ...base.vaeConfig, block_out_channels: [32, 64], norm_num_groups: 32, sample_size: 256 } };
  const sets = {
    textEncoder: randomWeightSet(clipTextWeightSpec(cfg.textEncoderConfig), 1), textEncoder2: randomWeightSet(clipTextWeightSpec(cfg.textEncoder2Config!), 2),
    unet: randomWeightSet(unetWeightSpec(unetConfig), 3), vae: randomWeightSet(vaeWeightSpec(cfg.vaeConfig), 4),
  };
  const out: Record<string, TensorToWrite> = {};
  for (const e of ldmTensorMap({ family: 'sdxl' }, cfg.textEncoderConfig, unetConfig, cfg.vaeConfig, cfg.textEncoder2Config)) {
    const data = sets[e.component].float32(e.name);
    if (e.transform.kind === 'chunk') {
      const whole = (out[e.ldmName] ??= { dtype: 'F32', shape: [e.shape[0] * 3, ...e.shape.slice(1)], data: new Float32Array(data.length * 3) });
      (whole.data as Float32Array).set(data, e.transform.index * data.length);
    } else if (e.transform.kind === 'transpose') {
      const [r, c] = e.shape;
      out[e.ldmName] = { dtype: 'F32', shape: [c, r], data: Float32Array.from({ length: data.length }, (_, k) => data[(k % r) * c + Math.floor(k / r)]) };
    } else {
      out[e.ldmName] = { dtype: 'F32', shape: e.transform.kind === 'reshape' && e.shape.length === 2 ? [...e.shape, 1, 1] : e.shape, data };
    }
  }
  out['conditioner.embedders.1.model.logit_scale'] = { dtype: 'F32', shape: [], data: Float32Array.of(4.6) };
  writeSafetensors(path, out);
  const asFile = (w: unknown) => w as FileWeights;
  return { ...cfg, textEncoder: asFile(sets.textEncoder), textEncoder2: asFile(sets.textEncoder2), unet: asFile(sets.unet), vae: asFile(sets.vae) };
}

test('SDXL single file read alone: UNet levels, per-level depths, text_time widths and both encoders come off the tensors', () => {
  const p = join(dir, 'synthetic-xl.safetensors');
  const want = writeSyntheticXL(p);
  const c = loadCheckpoint(p);
  assert.equal(c.family, 'sdxl');
  assert.deepEqual(c.warnings, []);
  assert.equal(c.predictionType, 'epsilon');
  assert.equal(c.schedulerConfig._class_name, 'EulerDiscreteScheduler');
  assert.equal(c.schedulerConfig.timestep_spacing, 'leading');
  assert.equal(c.vaeConfig.scaling_factor, 0.13025);
  assert.deepEqual(c.unetConfig.transformer_layers_per_block, [1, 2, 3]);
  assert.deepEqual(c.unetConfig.down_block_types, ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D']);
  assert.equal(c.unetConfig.addition_embed_type, 'text_time');
  assert.equal(c.unetConfig.addition_time_embed_dim, 8);
  assert.equal(c.unetConfig.projection_class_embeddings_input_dim, 60);
  assert.deepEqual(c.unetConfig.attention_head_dim, [1, 1, 1], '64-wide heads (channels / 64; 1 below 64)');
  assert.equal(c.unetConfig.use_linear_projection, true);
  assert.equal(c.unetConfig.sample_size, 128, 'SDXL: 1024 px');
  assert.deepEqual({ ...c.unetConfig, upcast_attention: false }, { ...want.unetConfig, upcast_attention: false });
  assert.equal(c.textEncoder2Config!.num_hidden_layers, 4);
  for (const comp of COMPONENTS) {
    for (const n of want[comp]!.names()) assert.deepEqual(c[comp]!.float32(n), want[comp]!.float32(n), `${comp}: ${n}`);
  }
});

test('SDXL loader errors: each inconsistency by name', () => {
  expectError(folder('no-tok2', (d) => rmSync(join(d, 'tokenizer_2'), { recursive: true })), /has text_encoder_2\/ but no tokenizer_2\//);
  expectError(folder('cross', (d) => setJson(join(d, 'unet/config.json'), (j) => { j.cross_attention_dim = 32; })), /text encoder widths 16 \+ 20 = 36 do not match the UNet's cross_attention_dim 32/);
  expectError(folder('pooled', (d) => setJson(join(d, 'unet/config.json'), (j) => { j.projection_class_embeddings_input_dim = 64; })), /the UNet takes 16-wide pooled text embeds .* but the second text encoder's projection_dim is 12/);
  expectError(folder('no-proj', (d) => setJson(join(d, 'text_encoder_2/config.json'), (j) => { j.architectures = ['CLIPTextModel']; })), /second text encoder is not a CLIPTextModelWithProjection/);
  expectError(folder('no-time', (d) => setJson(join(d, 'unet/config.json'), (j) => { j.addition_embed_type = null; })), /second text encoder but its UNet has no SDXL conditioning/);
  expectError(folder('no-te2', (d) => {
    rmSync(join(d, 'text_encoder_2'), { recursive: true });
    setJson(join(d, 'model_index.json'), (j) => { j.text_encoder_2 = [null, null]; });
  }), /the UNet takes SDXL's pooled text embeds and time ids .* but there is no second text encoder/);
  expectError(folder('te2-width', (d) => setJson(join(d, 'text_encoder_2/config.json'), (j) => { j.hidden_size = 24; j.num_attention_heads = 2; })), /text encoder widths 16 \+ 24 = 40 do not match/);
  expectError(folder('te2-weights', (d) => unlinkSync(join(d, 'text_encoder_2/model.safetensors'))), /text_encoder_2: no weights found/);

  // Single files: a refiner, a missing encoder, a missing tensor of encoder 2.
  const f = SafetensorsFile.open(XL_SINGLE);
  const edited = (name: string, edit: (t: Record<string, TensorToWrite>) => void) => {
    const t: Record<string, TensorToWrite> = {};
    for (const [k, info] of f.tensors) t[k] = { dtype: info.dtype, shape: info.shape, data: f.read(k) };
    edit(t);
    const p = join(dir, name);
    writeSafetensors(p, t);
    return p;
  };
  const refiner = edited('refiner.safetensors', (t) => {
    for (const k of Object.keys(t)) {
      if (k.startsWith('conditioner.embedders.0.')) delete t[k];
      else if (k.startsWith('conditioner.embedders.1.')) { t[k.replace('embedders.1.', 'embedders.0.')] = t[k]; delete t[k]; }
    }
  });
  expectError(refiner, /SDXL refiner checkpoint .* not supported/);
  const noTe2 = edited('no-te2.safetensors', (t) => { for (const k of Object.keys(t)) if (k.startsWith('conditioner.embedders.1.')) delete t[k]; });
  expectError(noTe2, /SDXL-layout checkpoint without both text encoders/);
  const noProj = edited('no-proj.safetensors', (t) => { delete t['conditioner.embedders.1.model.text_projection']; });
  expectError(noProj, /missing tensor "conditioner\.embedders\.1\.model\.text_projection" \(needed to work out the pooled text width\)/);
  expectError(noProj, /1 of 69 text encoder 2 tensors are missing: "conditioner\.embedders\.1\.model\.text_projection" \(→ text_projection\.weight\)/, { config: XL });
  const badProj = edited('bad-proj.safetensors', (t) => { t['conditioner.embedders.1.model.text_projection'] = { dtype: 'F32', shape: [12, 20], data: new Float32Array(240) }; });
  expectError(badProj, /"conditioner\.embedders\.1\.model\.text_projection" \(→ text_projection\.weight\) has shape \[12, 20\], expected \[20, 12\]/, { config: XL });
});
