// UNet2DConditionModel's config (unet/config.json as diffusers writes it): the type, the
// parser with diffusers' defaults, the per-level settings read from it, and the weight spec.
import { CheckpointError, type WeightSpec } from '../io/weights.ts';
import { assertConfigBounds, UNET_BOUNDS } from '../io/config-bounds.ts';
import { Fields, perBlock, type ConfigJson } from './config-fields.ts';

export type UNetDownBlockType = 'CrossAttnDownBlock2D' | 'DownBlock2D';
export type UNetUpBlockType = 'CrossAttnUpBlock2D' | 'UpBlock2D';

export interface UNetConfig {
  sample_size: number | null;
  in_channels: number;
  out_channels: number;
  center_input_sample: boolean;
  flip_sin_to_cos: boolean;
  freq_shift: number;
  down_block_types: UNetDownBlockType[];
  mid_block_type: 'UNetMidBlock2DCrossAttn';
  up_block_types: UNetUpBlockType[];
  block_out_channels: number[];
  layers_per_block: number;
  downsample_padding: number;
  mid_block_scale_factor: number;
  act_fn: 'silu';
  norm_num_groups: number;
  norm_eps: number;
  cross_attention_dim: number;
  transformer_layers_per_block: number | number[];
  /** diffusers reads this as the number of heads (a historical misnomer), unless num_attention_heads is set. */
  attention_head_dim: number | number[];
  num_attention_heads: number | number[] | null;
  use_linear_projection: boolean;
  upcast_attention: boolean;
  resnet_time_scale_shift: 'default';
  time_embedding_type: 'positional';
  conv_in_kernel: number;
  conv_out_kernel: number;
  /**
   * 'text_time' (SDXL): the time embedding also gets add_embedding(concat(pooled text embeds,
   * sinusoidal embeddings of the time ids)); null: none (SD 1.x/2.x).
   */
  addition_embed_type?: 'text_time' | null;
  /** Width of each time id's sinusoidal embedding (SDXL base: 256). */
  addition_time_embed_dim?: number | null;
  /** add_embedding's input width: pooled text width + time ids × addition_time_embed_dim (SDXL base: 1280 + 6 × 256). */
  projection_class_embeddings_input_dim?: number | null;
}

/** The number of time ids SDXL conditions on: original size (h, w), crop top-left (y, x), target size (h, w). */
export const SDXL_TIME_IDS = 6;

/** UNet2DConditionModel options that select architectures oneword does not implement, with their defaults. */
const UNET_UNSUPPORTED: [key: string, def: unknown, what: string][] = [
  ['class_embed_type', null, 'class embeddings'],
  ['num_class_embeds', null, 'class embeddings'],
  ['class_embeddings_concat', false, 'class embeddings'],
  ['encoder_hid_dim', null, 'encoder hidden projection'],
  ['encoder_hid_dim_type', null, 'encoder hidden projection'],
  ['time_cond_proj_dim', null, 'timestep conditioning projection (LCM-style)'],
  ['time_embedding_dim', null, 'a custom time embedding width'],
  ['time_embedding_act_fn', null, 'a time embedding activation'],
  ['timestep_post_act', null, 'a timestep post-activation'],
  ['dual_cross_attention', false, 'dual cross-attention'],
  ['only_cross_attention', false, 'cross-attention-only blocks'],
  ['mid_block_only_cross_attention', null, 'cross-attention-only mid block'],
  ['attention_type', 'default', 'gated attention'],
  ['cross_attention_norm', null, 'cross-attention norm'],
  ['resnet_skip_time_act', false, 'resnet time-activation skipping'],
  ['resnet_out_scale_factor', 1, 'a resnet output scale'],
  ['reverse_transformer_layers_per_block', null, 'asymmetric transformer depths'],
];

export function parseUNetConfig(json: ConfigJson, path: string): UNetConfig {
  const f = new Fields(json, path);
  for (const [key, def, what] of UNET_UNSUPPORTED) {
    const v = json[key];
    // null and false both mean "off" to diffusers for the boolean-ish options
    const isDefault = v === undefined || v === def || v === null ||
      ((def === false || def === null) && (v === false || (Array.isArray(v) && v.every((x) => x === false))));
    if (!isDefault) throw new CheckpointError(path, `UNet uses ${what} ("${key}": ${JSON.stringify(v)}), which oneword does not support (it runs Stable Diffusion 1.x/2.x and SDXL UNets)`);
  }
  const addition = json.addition_embed_type ?? null;
  if (addition !== null && addition !== 'text_time') {
    throw new CheckpointError(path, `UNet uses added conditioning "addition_embed_type": ${JSON.stringify(addition)}, which oneword does not support (only SDXL's "text_time", or null)`);
  }
  const c: UNetConfig = {
    sample_size: f.nullableNum('sample_size'),
    in_channels: f.int('in_channels', 4, 1),
    out_channels: f.int('out_channels', 4, 1),
    center_input_sample: f.bool('center_input_sample', false),
    flip_sin_to_cos: f.bool('flip_sin_to_cos', true),
    freq_shift: f.num('freq_shift', 0),
    down_block_types: f.blockList('down_block_types', ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'], ['CrossAttnDownBlock2D', 'DownBlock2D'] as const, 'UNet down block type'),
    mid_block_type: f.oneOf('mid_block_type', 'UNetMidBlock2DCrossAttn', ['UNetMidBlock2DCrossAttn'] as const, 'UNet mid block type'),
    up_block_types: f.blockList('up_block_types', ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'], ['CrossAttnUpBlock2D', 'UpBlock2D'] as const, 'UNet up block type'),
    block_out_channels: f.intList('block_out_channels', [320, 640, 1280, 1280]),
    layers_per_block: f.int('layers_per_block', 2, 1),
    downsample_padding: f.int('downsample_padding', 1),
    mid_block_scale_factor: f.num('mid_block_scale_factor', 1),
    act_fn: f.oneOf('act_fn', 'silu', ['silu'] as const, 'activation'),
    norm_num_groups: f.int('norm_num_groups', 32, 1),
    norm_eps: f.num('norm_eps', 1e-5),
    cross_attention_dim: f.int('cross_attention_dim', 1280, 1),
    transformer_layers_per_block: f.intOrList('transformer_layers_per_block', 1),
    attention_head_dim: f.intOrList('attention_head_dim', 8),
    num_attention_heads: json.num_attention_heads == null ? null : f.intOrList('num_attention_heads', 8),
    use_linear_projection: f.bool('use_linear_projection', false),
    upcast_attention: f.bool('upcast_attention', false),
    resnet_time_scale_shift: f.oneOf('resnet_time_scale_shift', 'default', ['default'] as const, 'resnet time scale shift'),
    time_embedding_type: f.oneOf('time_embedding_type', 'positional', ['positional'] as const, 'time embedding type'),
    conv_in_kernel: f.int('conv_in_kernel', 3, 1),
    conv_out_kernel: f.int('conv_out_kernel', 3, 1),
    addition_embed_type: addition,
    addition_time_embed_dim: json.addition_time_embed_dim == null ? null : f.int('addition_time_embed_dim', 256, 1),
    projection_class_embeddings_input_dim: json.projection_class_embeddings_input_dim == null ? null : f.int('projection_class_embeddings_input_dim', 2816, 1),
  };
  assertConfigBounds(c, UNET_BOUNDS, (problem) => new CheckpointError(path, problem));
  validateUNet(c, path);
  return c;
}

export function validateUNet(c: UNetConfig, path: string): void {
  const n = c.block_out_channels.length;
  if (c.down_block_types.length !== n || c.up_block_types.length !== n) {
    throw new CheckpointError(path, `UNet has ${n} block_out_channels but ${c.down_block_types.length} down and ${c.up_block_types.length} up blocks`);
  }
  for (const [k, v] of [['attention_head_dim', c.attention_head_dim], ['num_attention_heads', c.num_attention_heads], ['transformer_layers_per_block', c.transformer_layers_per_block]] as const) {
    if (Array.isArray(v) && v.length !== n) throw new CheckpointError(path, `"${k}" lists ${v.length} values for ${n} blocks`);
  }
  if (c.conv_in_kernel % 2 === 0 || c.conv_out_kernel % 2 === 0) throw new CheckpointError(path, 'conv_in_kernel and conv_out_kernel must be odd');
  validateTextTime(c, path);
  const heads = unetAttentionHeads(c);
  const check = (ch: number, h: number, where: string) => {
    if (ch % h !== 0) throw new CheckpointError(path, `${where}: ${ch} channels do not split into ${h} attention heads`);
  };
  c.block_out_channels.forEach((ch, i) => { if (c.down_block_types[i] === 'CrossAttnDownBlock2D') check(ch, heads[i], `down block ${i}`); });
  check(c.block_out_channels[n - 1], heads[n - 1], 'mid block');
  for (const ch of c.block_out_channels) {
    if (ch % c.norm_num_groups !== 0) throw new CheckpointError(path, `${ch} channels do not split into ${c.norm_num_groups} norm groups`);
  }
}

/** SDXL's text_time conditioning needs both widths, and its input must hold the six time embeddings. */
function validateTextTime(c: UNetConfig, path: string): void {
  if (c.addition_embed_type !== 'text_time') return;
  const a = c.addition_time_embed_dim;
  const input = c.projection_class_embeddings_input_dim;
  if (a == null) throw new CheckpointError(path, '"addition_embed_type" is "text_time" but "addition_time_embed_dim" is not set');
  if (input == null) throw new CheckpointError(path, '"addition_embed_type" is "text_time" but "projection_class_embeddings_input_dim" is not set');
  if (a % 2 !== 0) throw new CheckpointError(path, `"addition_time_embed_dim" must be even (sin and cos halves), got ${a}`);
  if (input <= SDXL_TIME_IDS * a) {
    throw new CheckpointError(path, `"projection_class_embeddings_input_dim" ${input} leaves no room for the pooled text embeds beside ${SDXL_TIME_IDS} time ids × "addition_time_embed_dim" ${a}`);
  }
}

/** Width of the pooled text embeds a text_time UNet expects (projection_class_embeddings_input_dim − 6 × addition_time_embed_dim), else null. */
export function unetPooledTextWidth(c: UNetConfig): number | null {
  if (c.addition_embed_type !== 'text_time') return null;
  return c.projection_class_embeddings_input_dim! - SDXL_TIME_IDS * c.addition_time_embed_dim!;
}

/** Heads per UNet level (down-block order; up blocks use it reversed, the mid block the last entry). */
export function unetAttentionHeads(c: UNetConfig): number[] {
  return perBlock(c.num_attention_heads ?? c.attention_head_dim, c.block_out_channels.length);
}

/** Transformer depth per UNet level (down-block order; up blocks use it reversed). */
export function unetTransformerLayers(c: UNetConfig): number[] {
  return perBlock(c.transformer_layers_per_block, c.block_out_channels.length);
}

/** The mid block's transformer depth: diffusers gives it the last level's (SDXL base: 10). */
export function unetMidBlockLayers(c: UNetConfig): number {
  const depth = unetTransformerLayers(c);
  return depth[depth.length - 1];
}

/** Every weight (names under the component, shapes) of a UNet2DConditionModel with config `c`. */
export function unetWeightSpec(c: UNetConfig): WeightSpec {
  const m: WeightSpec = new Map();
  const boc = c.block_out_channels;
  const n = boc.length;
  const L = c.layers_per_block;
  const C0 = boc[0];
  const T = C0 * 4;
  const X = c.cross_attention_dim;
  const depth = unetTransformerLayers(c);
  const vec = (p: string, ch: number) => { m.set(`${p}.weight`, [ch]); m.set(`${p}.bias`, [ch]); };
  const conv = (p: string, o: number, i: number, k: number) => { m.set(`${p}.weight`, [o, i, k, k]); m.set(`${p}.bias`, [o]); };
  const lin = (p: string, o: number, i: number, bias = true) => { m.set(`${p}.weight`, [o, i]); if (bias) m.set(`${p}.bias`, [o]); };
  const resnet = (p: string, cin: number, cout: number) => {
    vec(`${p}.norm1`, cin);
    conv(`${p}.conv1`, cout, cin, 3);
    lin(`${p}.time_emb_proj`, cout, T);
    vec(`${p}.norm2`, cout);
    conv(`${p}.conv2`, cout, cout, 3);
    if (cin !== cout) conv(`${p}.conv_shortcut`, cout, cin, 1);
  };
  const transformer = (p: string, C: number, layers: number) => {
    vec(`${p}.norm`, C);
    const proj = (q: string) => (c.use_linear_projection ? lin(q, C, C) : conv(q, C, C, 1));
    proj(`${p}.proj_in`);
    for (let t = 0; t < layers; t++) {
      const b = `${p}.transformer_blocks.${t}`;
      for (const k of ['norm1', 'norm2', 'norm3']) vec(`${b}.${k}`, C);
      for (const [a, kv] of [['attn1', C], ['attn2', X]] as const) {
        lin(`${b}.${a}.to_q`, C, C, false);
        lin(`${b}.${a}.to_k`, C, kv, false);
        lin(`${b}.${a}.to_v`, C, kv, false);
        lin(`${b}.${a}.to_out.0`, C, C);
      }
      lin(`${b}.ff.net.0.proj`, 8 * C, C); // GEGLU: value and gate halves of 4C each
      lin(`${b}.ff.net.2`, C, 4 * C);
    }
    proj(`${p}.proj_out`);
  };

  conv('conv_in', C0, c.in_channels, c.conv_in_kernel);
  lin('time_embedding.linear_1', T, C0);
  lin('time_embedding.linear_2', T, T);
  if (c.addition_embed_type === 'text_time') {
    lin('add_embedding.linear_1', T, c.projection_class_embeddings_input_dim!);
    lin('add_embedding.linear_2', T, T);
  }
  let out = C0;
  for (let i = 0; i < n; i++) {
    const inp = out;
    out = boc[i];
    for (let j = 0; j < L; j++) {
      resnet(`down_blocks.${i}.resnets.${j}`, j === 0 ? inp : out, out);
      if (c.down_block_types[i] === 'CrossAttnDownBlock2D') transformer(`down_blocks.${i}.attentions.${j}`, out, depth[i]);
    }
    if (i < n - 1) conv(`down_blocks.${i}.downsamplers.0.conv`, out, out, 3);
  }
  const Cl = boc[n - 1];
  resnet('mid_block.resnets.0', Cl, Cl);
  transformer('mid_block.attentions.0', Cl, unetMidBlockLayers(c));
  resnet('mid_block.resnets.1', Cl, Cl);
  const rev = boc.slice().reverse();
  const revDepth = depth.slice().reverse();
  out = rev[0];
  for (let i = 0; i < n; i++) {
    const prev = out;
    out = rev[i];
    const inp = rev[Math.min(i + 1, n - 1)];
    for (let j = 0; j <= L; j++) {
      const skip = j === L ? inp : out;
      resnet(`up_blocks.${i}.resnets.${j}`, (j === 0 ? prev : out) + skip, out);
      if (c.up_block_types[i] === 'CrossAttnUpBlock2D') transformer(`up_blocks.${i}.attentions.${j}`, out, revDepth[i]);
    }
    if (i < n - 1) conv(`up_blocks.${i}.upsamplers.0.conv`, out, out, 3);
  }
  vec('conv_norm_out', C0);
  conv('conv_out', c.out_channels, C0, c.conv_out_kernel);
  return m;
}
