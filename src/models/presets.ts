// Reference architectures (Stable Diffusion 1.5 / 2.x as published in diffusers configs).
import { parseCLIPTextConfig } from './clip-text.ts';
import { parseUNetConfig } from './unet-config.ts';
import { parseVAEConfig } from './vae.ts';

export const SD15_UNET = parseUNetConfig({
  in_channels: 4,
  out_channels: 4,
  block_out_channels: [320, 640, 1280, 1280],
  down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
  layers_per_block: 2,
  attention_head_dim: 8,
  cross_attention_dim: 768,
  use_linear_projection: false,
  norm_num_groups: 32,
  norm_eps: 1e-5,
  flip_sin_to_cos: true,
  freq_shift: 0,
}, 'preset:sd15/unet');

export const SD15_TEXT = parseCLIPTextConfig({
  vocab_size: 49408,
  hidden_size: 768,
  intermediate_size: 3072,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  max_position_embeddings: 77,
  hidden_act: 'quick_gelu',
  layer_norm_eps: 1e-5,
}, 'preset:sd15/text_encoder');

export const SD15_VAE = parseVAEConfig({
  in_channels: 3,
  out_channels: 3,
  latent_channels: 4,
  block_out_channels: [128, 256, 512, 512],
  layers_per_block: 2,
  norm_num_groups: 32,
  scaling_factor: 0.18215,
  down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D'],
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D'],
}, 'preset:sd15/vae');
