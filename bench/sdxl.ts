// The real SDXL base 1.0 architecture with random weights, written once as a diffusers folder
// (float32 safetensors, configs as stabilityai/stable-diffusion-xl-base-1.0 publishes them,
// the CLIP BPE tokenizers of the test fixture) so benchmarks load it as a user's model.
// About 14 GB on disk; ONEWORD_BENCH_SDXL_DIR relocates it.
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clipTextWeightSpec, parseCLIPTextConfig } from '../src/models/clip-text.ts';
import { parseUNetConfig, unetWeightSpec } from '../src/models/unet-config.ts';
import { parseVAEConfig, vaeWeightSpec } from '../src/models/vae.ts';
import { writeComponent } from './sd15.ts';

const VERSION = 'sdxl-base-random-v1';
const FIXTURE = new URL('../test/fixtures/sdxl-tiny/', import.meta.url).pathname;

export const SDXL_UNET_JSON = {
  _class_name: 'UNet2DConditionModel',
  act_fn: 'silu',
  addition_embed_type: 'text_time',
  addition_embed_type_num_heads: 64,
  addition_time_embed_dim: 256,
  attention_head_dim: [5, 10, 20],
  block_out_channels: [320, 640, 1280],
  cross_attention_dim: 2048,
  down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
  flip_sin_to_cos: true,
  freq_shift: 0,
  in_channels: 4,
  layers_per_block: 2,
  norm_eps: 1e-5,
  norm_num_groups: 32,
  out_channels: 4,
  projection_class_embeddings_input_dim: 2816,
  sample_size: 128,
  transformer_layers_per_block: [1, 2, 10],
  up_block_types: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
  use_linear_projection: true,
};

const CLIP_COMMON = { vocab_size: 49408, max_position_embeddings: 77, layer_norm_eps: 1e-5, bos_token_id: 0, eos_token_id: 2, pad_token_id: 1, model_type: 'clip_text_model' };
export const SDXL_TEXT_JSON = { ...CLIP_COMMON, architectures: ['CLIPTextModel'], hidden_size: 768, intermediate_size: 3072, num_hidden_layers: 12, num_attention_heads: 12, hidden_act: 'quick_gelu', projection_dim: 768 };
export const SDXL_TEXT2_JSON = { ...CLIP_COMMON, architectures: ['CLIPTextModelWithProjection'], hidden_size: 1280, intermediate_size: 5120, num_hidden_layers: 32, num_attention_heads: 20, hidden_act: 'gelu', projection_dim: 1280 };
export const SDXL_VAE_JSON = {
  _class_name: 'AutoencoderKL', in_channels: 3, out_channels: 3, latent_channels: 4, block_out_channels: [128, 256, 512, 512], layers_per_block: 2,
  norm_num_groups: 32, scaling_factor: 0.13025, sample_size: 1024, act_fn: 'silu',
  down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D'],
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D'],
};

export function sdxlDir(): string {
  return process.env.ONEWORD_BENCH_SDXL_DIR ?? join(tmpdir(), 'oneword-bench-sdxl');
}

const json = (path: string, v: unknown) => writeFileSync(path, JSON.stringify(v, null, 2));

/** Writes the random SDXL base folder unless a complete one is already there. */
export function ensureSdxl(log: (s: string) => void = (s) => process.stderr.write(s + '\n')): string {
  const dir = sdxlDir();
  const stamp = join(dir, 'COMPLETE');
  if (existsSync(stamp) && readFileSync(stamp, 'utf8') === VERSION) return dir;
  rmSync(dir, { recursive: true, force: true });
  log(`writing random SDXL base weights to ${dir} (once, ~14 GB)…`);
  const t0 = performance.now();
  mkdirSync(dir, { recursive: true });
  cpSync(join(FIXTURE, 'model_index.json'), join(dir, 'model_index.json'));
  for (const sub of ['scheduler', 'tokenizer', 'tokenizer_2']) cpSync(join(FIXTURE, sub), join(dir, sub), { recursive: true });
  const text = parseCLIPTextConfig(SDXL_TEXT_JSON, 'preset:sdxl/text_encoder');
  const text2 = parseCLIPTextConfig(SDXL_TEXT2_JSON, 'preset:sdxl/text_encoder_2');
  writeComponent(join(dir, 'text_encoder'), 'model.safetensors', clipTextWeightSpec(text), 2);
  json(join(dir, 'text_encoder', 'config.json'), SDXL_TEXT_JSON);
  writeComponent(join(dir, 'text_encoder_2'), 'model.safetensors', clipTextWeightSpec(text2), 4);
  json(join(dir, 'text_encoder_2', 'config.json'), SDXL_TEXT2_JSON);
  writeComponent(join(dir, 'vae'), 'diffusion_pytorch_model.safetensors', vaeWeightSpec(parseVAEConfig(SDXL_VAE_JSON, 'preset:sdxl/vae')), 3);
  json(join(dir, 'vae', 'config.json'), SDXL_VAE_JSON);
  writeComponent(join(dir, 'unet'), 'diffusion_pytorch_model.safetensors', unetWeightSpec(parseUNetConfig(SDXL_UNET_JSON, 'preset:sdxl/unet')), 1);
  json(join(dir, 'unet', 'config.json'), SDXL_UNET_JSON);
  writeFileSync(stamp, VERSION);
  log(`  done in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  return dir;
}
