// The architecture of oneword's own small latent diffusion model ("shapes"), written as the
// exact config.json files diffusers / transformers use, plus the training recipe.
import { parseCLIPTextConfig, type CLIPTextConfig } from '../models/clip-text.ts';
import { parseUNetConfig, type UNetConfig } from '../models/unet-config.ts';
import { parseVAEConfig, type VAEConfig } from '../models/vae.ts';

export interface ArchSpec {
  /** VAE channels per level; the number of levels sets the down factor 2^(n-1). */
  vaeChannels: number[];
  vaeGroups: number;
  vaeLayers: number;
  textHidden: number;
  textLayers: number;
  textHeads: number;
  textIntermediate: number;
  unetChannels: number[];
  unetDown: Array<'CrossAttnDownBlock2D' | 'DownBlock2D'>;
  unetUp: Array<'CrossAttnUpBlock2D' | 'UpBlock2D'>;
  unetLayers: number;
  unetGroups: number;
  /** Attention heads per level (diffusers' "attention_head_dim", a head count for SD 1.x). */
  unetHeads: number;
  imageSize: number;
}

/** The shipped model. */
export const SHAPES_ARCH: ArchSpec = {
  vaeChannels: [16, 32, 64],
  vaeGroups: 4,
  vaeLayers: 1,
  textHidden: 64,
  textLayers: 2,
  textHeads: 2,
  textIntermediate: 256,
  unetChannels: [64, 96, 96],
  unetDown: ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
  unetUp: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
  unetLayers: 1,
  unetGroups: 16,
  unetHeads: 4,
  imageSize: 64,
};

/** A very small variant for tests (same code paths, seconds to compile and run). */
export const TINY_ARCH: ArchSpec = {
  vaeChannels: [8, 16],
  vaeGroups: 4,
  vaeLayers: 1,
  textHidden: 16,
  textLayers: 1,
  textHeads: 2,
  textIntermediate: 32,
  unetChannels: [16, 32],
  unetDown: ['CrossAttnDownBlock2D', 'DownBlock2D'],
  unetUp: ['UpBlock2D', 'CrossAttnUpBlock2D'],
  unetLayers: 1,
  unetGroups: 8,
  unetHeads: 2,
  imageSize: 16,
};

export const DIFFUSERS_VERSION = '0.27.2';
export const TRANSFORMERS_VERSION = '4.40.2';

export function vaeConfigJson(a: ArchSpec, scalingFactor: number): Record<string, unknown> {
  const n = a.vaeChannels.length;
  return {
    _class_name: 'AutoencoderKL',
    _diffusers_version: DIFFUSERS_VERSION,
    act_fn: 'silu',
    block_out_channels: a.vaeChannels,
    down_block_types: new Array(n).fill('DownEncoderBlock2D'),
    force_upcast: true,
    in_channels: 3,
    latent_channels: 4,
    latents_mean: null,
    latents_std: null,
    layers_per_block: a.vaeLayers,
    norm_num_groups: a.vaeGroups,
    out_channels: 3,
    sample_size: a.imageSize,
    scaling_factor: scalingFactor,
    up_block_types: new Array(n).fill('UpDecoderBlock2D'),
  };
}

export function textConfigJson(a: ArchSpec): Record<string, unknown> {
  return {
    architectures: ['CLIPTextModel'],
    attention_dropout: 0.0,
    bos_token_id: 0,
    dropout: 0.0,
    eos_token_id: 2,
    hidden_act: 'quick_gelu',
    hidden_size: a.textHidden,
    initializer_factor: 1.0,
    initializer_range: 0.02,
    intermediate_size: a.textIntermediate,
    layer_norm_eps: 1e-5,
    max_position_embeddings: 77,
    model_type: 'clip_text_model',
    num_attention_heads: a.textHeads,
    num_hidden_layers: a.textLayers,
    pad_token_id: 1,
    projection_dim: a.textHidden,
    torch_dtype: 'float32',
    transformers_version: TRANSFORMERS_VERSION,
    vocab_size: 49408,
  };
}

export function unetConfigJson(a: ArchSpec): Record<string, unknown> {
  const f = 2 ** (a.vaeChannels.length - 1);
  return {
    _class_name: 'UNet2DConditionModel',
    _diffusers_version: DIFFUSERS_VERSION,
    act_fn: 'silu',
    addition_embed_type: null,
    addition_embed_type_num_heads: 64,
    addition_time_embed_dim: null,
    attention_head_dim: a.unetHeads,
    attention_type: 'default',
    block_out_channels: a.unetChannels,
    center_input_sample: false,
    class_embed_type: null,
    class_embeddings_concat: false,
    conv_in_kernel: 3,
    conv_out_kernel: 3,
    cross_attention_dim: a.textHidden,
    cross_attention_norm: null,
    down_block_types: a.unetDown,
    downsample_padding: 1,
    dropout: 0.0,
    dual_cross_attention: false,
    encoder_hid_dim: null,
    encoder_hid_dim_type: null,
    flip_sin_to_cos: true,
    freq_shift: 0,
    in_channels: 4,
    layers_per_block: a.unetLayers,
    mid_block_only_cross_attention: null,
    mid_block_scale_factor: 1,
    mid_block_type: 'UNetMidBlock2DCrossAttn',
    norm_eps: 1e-5,
    norm_num_groups: a.unetGroups,
    num_attention_heads: null,
    num_class_embeds: null,
    only_cross_attention: false,
    out_channels: 4,
    projection_class_embeddings_input_dim: null,
    resnet_out_scale_factor: 1.0,
    resnet_skip_time_act: false,
    resnet_time_scale_shift: 'default',
    reverse_transformer_layers_per_block: null,
    sample_size: a.imageSize / f,
    time_cond_proj_dim: null,
    time_embedding_act_fn: null,
    time_embedding_dim: null,
    time_embedding_type: 'positional',
    timestep_post_act: null,
    transformer_layers_per_block: 1,
    up_block_types: a.unetUp,
    upcast_attention: false,
    use_linear_projection: false,
  };
}

/** What the UNet predicts, and whether the noise schedule ends at zero signal. */
export interface DiffusionSpec {
  prediction: 'epsilon' | 'v_prediction';
  /**
   * Rescale SD's betas so that the last timestep has exactly zero signal (Lin et al. 2024,
   * "Common diffusion noise schedules and sample steps are flawed"); needs v-prediction and
   * trailing timestep spacing, and a DDIM scheduler (PNDM has no such option).
   */
  zeroTerminalSnr: boolean;
}

/** Stable Diffusion 1.x: epsilon prediction on SD's own schedule. */
export const SD1_DIFFUSION: DiffusionSpec = { prediction: 'epsilon', zeroTerminalSnr: false };

/** v-prediction on SD's betas rescaled to zero terminal SNR (the shapes model). */
export const ZERO_SNR_V_DIFFUSION: DiffusionSpec = { prediction: 'v_prediction', zeroTerminalSnr: true };

/**
 * The scheduler config: SD 1.5's (PNDM, scaled_linear betas 0.00085–0.012 over 1000 steps)
 * for epsilon models; for zero-terminal-SNR v-prediction models the same betas rescaled,
 * with DDIM and trailing spacing (diffusers' recommended settings for such models).
 */
export function schedulerConfigJson(d: DiffusionSpec = SD1_DIFFUSION): Record<string, unknown> {
  const common = {
    _diffusers_version: DIFFUSERS_VERSION,
    beta_end: 0.012,
    beta_schedule: 'scaled_linear',
    beta_start: 0.00085,
    clip_sample: false,
    num_train_timesteps: 1000,
    prediction_type: d.prediction,
    set_alpha_to_one: false,
    trained_betas: null,
  };
  if (!d.zeroTerminalSnr) {
    return { _class_name: 'PNDMScheduler', ...common, skip_prk_steps: true, steps_offset: 1, timestep_spacing: 'leading' };
  }
  return { _class_name: 'DDIMScheduler', ...common, rescale_betas_zero_snr: true, steps_offset: 0, timestep_spacing: 'trailing' };
}

export function modelIndexJson(d: DiffusionSpec = SD1_DIFFUSION): Record<string, unknown> {
  return {
    _class_name: 'StableDiffusionPipeline',
    _diffusers_version: DIFFUSERS_VERSION,
    feature_extractor: [null, null],
    image_encoder: [null, null],
    requires_safety_checker: false,
    safety_checker: [null, null],
    scheduler: ['diffusers', schedulerConfigJson(d)._class_name],
    text_encoder: ['transformers', 'CLIPTextModel'],
    tokenizer: ['transformers', 'CLIPTokenizer'],
    unet: ['diffusers', 'UNet2DConditionModel'],
    vae: ['diffusers', 'AutoencoderKL'],
  };
}

export interface ParsedArch {
  arch: ArchSpec;
  vae: VAEConfig;
  text: CLIPTextConfig;
  unet: UNetConfig;
  /** Latent side length. */
  latentSize: number;
}

export function parseArch(a: ArchSpec, scalingFactor = 1): ParsedArch {
  return {
    arch: a,
    vae: parseVAEConfig(vaeConfigJson(a, scalingFactor), 'shapes:vae'),
    text: parseCLIPTextConfig(textConfigJson(a), 'shapes:text_encoder'),
    unet: parseUNetConfig(unetConfigJson(a), 'shapes:unet'),
    latentSize: a.imageSize / 2 ** (a.vaeChannels.length - 1),
  };
}
