// Upper bounds on every size a model's config files decide. A config value becomes loop
// counts, tensor-name tables and array lengths before any weight is read, so a hostile or
// corrupt number (1e9 layers) must be refused here, by name, instead of exhausting memory
// later. The limits sit well above every SD 1.x/2.x (and SDXL) release.

/** Largest value accepted per field; list-valued fields bound each entry. */
export type ConfigBounds = Readonly<Record<string, number>>;

/** transformers' CLIPTextConfig (OpenCLIP bigG: 32 layers of width 1280). */
export const CLIP_TEXT_BOUNDS: ConfigBounds = {
  vocab_size: 1_000_000,
  hidden_size: 8192,
  intermediate_size: 32768,
  num_hidden_layers: 64,
  num_attention_heads: 256,
  max_position_embeddings: 4096,
  pad_token_id: 1_000_000,
  bos_token_id: 1_000_000,
  eos_token_id: 1_000_000,
  projection_dim: 8192,
};

/** diffusers' UNet2DConditionModel (SDXL: 10 transformer layers, 2048-wide context). */
export const UNET_BOUNDS: ConfigBounds = {
  sample_size: 1024,
  in_channels: 64,
  out_channels: 64,
  block_out_channels: 8192,
  layers_per_block: 16,
  downsample_padding: 16,
  norm_num_groups: 8192,
  cross_attention_dim: 8192,
  transformer_layers_per_block: 64,
  attention_head_dim: 1024,
  num_attention_heads: 1024,
  conv_in_kernel: 15,
  conv_out_kernel: 15,
  addition_time_embed_dim: 8192,
  projection_class_embeddings_input_dim: 65536,
};

/** diffusers' AutoencoderKL. */
export const VAE_BOUNDS: ConfigBounds = {
  in_channels: 64,
  out_channels: 64,
  block_out_channels: 8192,
  layers_per_block: 16,
  latent_channels: 64,
  norm_num_groups: 8192,
  sample_size: 16384,
};

/** diffusers' scheduler_config.json (every SD release trains on 1000 timesteps). */
export const SCHEDULER_BOUNDS: ConfigBounds = {
  num_train_timesteps: 100_000,
  steps_offset: 100_000,
  trained_betas: 1,
};

/** Most entries in a list-valued field (UNet/VAE levels; a trained_betas table). */
const MAX_LIST_LENGTH: Readonly<Record<string, number>> = { trained_betas: 100_000 };
const DEFAULT_MAX_LIST_LENGTH = 8;

/**
 * The first field of `config` outside `bounds`, as one line ("<field>" is <value>; …), or
 * null when all are within. Fields that are absent, null or not numbers are left to the
 * parser's own type checks.
 */
export function configBoundsProblem(config: object, bounds: ConfigBounds): string | null {
  const c = config as Record<string, unknown>;
  for (const [key, max] of Object.entries(bounds)) {
    const v = c[key];
    if (Array.isArray(v)) {
      const most = MAX_LIST_LENGTH[key] ?? DEFAULT_MAX_LIST_LENGTH;
      if (v.length > most) return `"${key}" lists ${v.length} values; oneword accepts at most ${most}`;
      const i = v.findIndex((x) => typeof x === 'number' && !(Math.abs(x) <= max));
      if (i >= 0) return `"${key}"[${i}] is ${v[i]}; oneword accepts at most ${max}`;
    } else if (typeof v === 'number' && !(v <= max)) {
      return `"${key}" is ${v}; oneword accepts at most ${max}`;
    }
  }
  return null;
}

/** Throws `fail(problem)` for the first field of `config` outside `bounds`. */
export function assertConfigBounds(config: object, bounds: ConfigBounds, fail: (problem: string) => Error): void {
  const problem = configBoundsProblem(config, bounds);
  if (problem) throw fail(problem);
}

/** Largest config file read whole (real ones are a few kB; sharded weight indexes under 1 MB). */
export const MAX_CONFIG_BYTES = 16 << 20;
