// SDXL's configs as diffusers / transformers write them: the UNet's text_time conditioning
// and per-level transformer depths, CLIPTextModelWithProjection's projection. Each weight
// spec names exactly the tensors the fixture's files hold, with their shapes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsFile } from '../../src/io/safetensors.ts';
import { CheckpointError, type WeightSpec } from '../../src/io/weights.ts';
import { clipTextWeightSpec, hasTextProjection, parseCLIPTextConfig } from '../../src/models/clip-text.ts';
import {
  parseUNetConfig, unetMidBlockLayers, unetPooledTextWidth, unetTransformerLayers, unetWeightSpec,
} from '../../src/models/unet-config.ts';

const XL = new URL('../fixtures/sdxl-tiny/', import.meta.url).pathname;
const json = (sub: string) => JSON.parse(readFileSync(join(XL, sub, 'config.json'), 'utf8')) as Record<string, unknown>;

/** The spec equals the file's tensors: same names, same shapes. */
function assertSpecIsFile(spec: WeightSpec, file: string): void {
  const f = SafetensorsFile.open(file);
  const inFile = [...f.tensors.keys()].sort();
  assert.deepEqual([...spec.keys()].sort(), inFile);
  for (const [name, shape] of spec) assert.deepEqual(f.info(name).shape, shape, name);
}

test('SDXL UNet config: text_time conditioning, per-level and mid-block transformer depths, add_embedding weights', () => {
  const c = parseUNetConfig(json('unet'), 'unet/config.json');
  assert.equal(c.addition_embed_type, 'text_time');
  assert.equal(c.addition_time_embed_dim, 8);
  assert.equal(c.projection_class_embeddings_input_dim, 60);
  assert.equal(unetPooledTextWidth(c), 12);
  assert.deepEqual(unetTransformerLayers(c), [1, 1, 2]);
  assert.equal(unetMidBlockLayers(c), 2);
  const spec = unetWeightSpec(c);
  assert.deepEqual(spec.get('add_embedding.linear_1.weight'), [64, 60]);
  assert.deepEqual(spec.get('add_embedding.linear_2.weight'), [64, 64]);
  assert.ok(spec.has('mid_block.attentions.0.transformer_blocks.1.attn2.to_k.weight'), 'mid block has depth 2');
  assert.ok(!spec.has('down_blocks.0.attentions.0.norm.weight'), 'level 0 has no attention');
  assertSpecIsFile(spec, join(XL, 'unet', 'diffusion_pytorch_model.safetensors'));
});

test('SDXL text encoders: encoder 2 has text_projection [projection_dim, hidden] without bias; encoder 1 none', () => {
  const t2 = parseCLIPTextConfig(json('text_encoder_2'), 'text_encoder_2/config.json');
  assert.equal(t2.projection_dim, 12);
  assert.ok(hasTextProjection(json('text_encoder_2')));
  assert.ok(!hasTextProjection(json('text_encoder')));
  const spec2 = clipTextWeightSpec(t2);
  assert.deepEqual(spec2.get('text_projection.weight'), [12, 20]);
  assert.ok(!spec2.has('text_projection.bias'));
  assertSpecIsFile(spec2, join(XL, 'text_encoder_2', 'model.safetensors'));
  const t1 = parseCLIPTextConfig(json('text_encoder'), 'text_encoder/config.json');
  assert.equal(t1.projection_dim, undefined, 'CLIPTextModel: its projection_dim describes no weight');
  assertSpecIsFile(clipTextWeightSpec(t1), join(XL, 'text_encoder', 'model.safetensors'));
});

test('SDXL configs: unsupported added conditioning, missing widths and out-of-bounds values fail by name', () => {
  const unet = json('unet');
  const parse = (patch: Record<string, unknown>) => () => parseUNetConfig({ ...unet, ...patch }, 'unet/config.json');
  assert.throws(parse({ addition_embed_type: 'text' }), (e) => e instanceof CheckpointError && /"addition_embed_type": "text".*only SDXL's "text_time"/.test(e.message));
  assert.throws(parse({ addition_time_embed_dim: null }), /"addition_embed_type" is "text_time" but "addition_time_embed_dim" is not set/);
  assert.throws(parse({ projection_class_embeddings_input_dim: null }), /"projection_class_embeddings_input_dim" is not set/);
  assert.throws(parse({ addition_time_embed_dim: 9 }), /"addition_time_embed_dim" must be even/);
  assert.throws(parse({ projection_class_embeddings_input_dim: 48 }), /"projection_class_embeddings_input_dim" 48 leaves no room/);
  assert.throws(parse({ addition_time_embed_dim: 1e6 }), /unet\/config\.json: "addition_time_embed_dim" is 1000000; oneword accepts at most 8192/);
  assert.throws(parse({ projection_class_embeddings_input_dim: 1e9 }), /"projection_class_embeddings_input_dim" is 1000000000; oneword accepts at most 65536/);
  assert.throws(parse({ class_embed_type: 'timestep' }), /class embeddings/);
  // SD 1.x/2.x configs: no added conditioning, nothing extra in the spec.
  const sd = parseUNetConfig({ ...unet, addition_embed_type: null }, 'unet/config.json');
  assert.equal(unetPooledTextWidth(sd), null);
  assert.ok(!unetWeightSpec(sd).has('add_embedding.linear_1.weight'));
  const te2 = json('text_encoder_2');
  assert.throws(() => parseCLIPTextConfig({ ...te2, projection_dim: 1e5 }, 'text_encoder_2/config.json'), /"projection_dim" is 100000; oneword accepts at most 8192/);
});
