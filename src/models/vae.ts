// AutoencoderKL (diffusers naming): encoder → latent distribution, decoder → pixels; its
// config (vae/config.json), parser and weight spec beside the forward functions.
import * as o from '../graph/index.ts';
import type { Tensor } from '../graph/index.ts';
import { CheckpointError, type WeightSpec } from '../io/weights.ts';
import { assertConfigBounds, VAE_BOUNDS } from '../io/config-bounds.ts';
import { Fields, type ConfigJson } from './config-fields.ts';
import type { Params } from './params.ts';
import { conv, fromTokens, groupNormP, linearP, resnetBlock2D, toTokens } from './blocks.ts';

/** diffusers' AutoencoderKL config (field names as in vae/config.json). */
export interface VAEConfig {
  in_channels: number;
  out_channels: number;
  down_block_types: 'DownEncoderBlock2D'[];
  up_block_types: 'UpDecoderBlock2D'[];
  block_out_channels: number[];
  layers_per_block: number;
  act_fn: 'silu';
  latent_channels: number;
  norm_num_groups: number;
  sample_size: number;
  scaling_factor: number;
  shift_factor: number | null;
  force_upcast: boolean;
  use_quant_conv: boolean;
  use_post_quant_conv: boolean;
  mid_block_add_attention: boolean;
}

export function parseVAEConfig(json: ConfigJson, path: string): VAEConfig {
  const f = new Fields(json, path);
  const c: VAEConfig = {
    in_channels: f.int('in_channels', 3, 1),
    out_channels: f.int('out_channels', 3, 1),
    down_block_types: f.blockList('down_block_types', ['DownEncoderBlock2D'], ['DownEncoderBlock2D'] as const, 'VAE down block type'),
    up_block_types: f.blockList('up_block_types', ['UpDecoderBlock2D'], ['UpDecoderBlock2D'] as const, 'VAE up block type'),
    block_out_channels: f.intList('block_out_channels', [64]),
    layers_per_block: f.int('layers_per_block', 1, 1),
    act_fn: f.oneOf('act_fn', 'silu', ['silu'] as const, 'activation'),
    latent_channels: f.int('latent_channels', 4, 1),
    norm_num_groups: f.int('norm_num_groups', 32, 1),
    sample_size: f.int('sample_size', 32, 1),
    scaling_factor: f.num('scaling_factor', 0.18215),
    shift_factor: f.nullableNum('shift_factor'),
    force_upcast: f.bool('force_upcast', true),
    use_quant_conv: f.bool('use_quant_conv', true),
    use_post_quant_conv: f.bool('use_post_quant_conv', true),
    mid_block_add_attention: f.bool('mid_block_add_attention', true),
  };
  assertConfigBounds(c, VAE_BOUNDS, (problem) => new CheckpointError(path, problem));
  const n = c.block_out_channels.length;
  if (c.down_block_types.length !== n || c.up_block_types.length !== n) {
    throw new CheckpointError(path, `VAE has ${n} block_out_channels but ${c.down_block_types.length} down and ${c.up_block_types.length} up blocks`);
  }
  for (const ch of c.block_out_channels) {
    if (ch % c.norm_num_groups !== 0) throw new CheckpointError(path, `${ch} channels do not split into ${c.norm_num_groups} norm groups`);
  }
  return c;
}

/** Every weight (names under the component, shapes) of an AutoencoderKL with config `c`. */
export function vaeWeightSpec(c: VAEConfig): WeightSpec {
  const m: WeightSpec = new Map();
  const boc = c.block_out_channels;
  const n = boc.length;
  const L = c.layers_per_block;
  const lat = c.latent_channels;
  const vec = (p: string, ch: number) => { m.set(`${p}.weight`, [ch]); m.set(`${p}.bias`, [ch]); };
  const conv = (p: string, o: number, i: number, k: number) => { m.set(`${p}.weight`, [o, i, k, k]); m.set(`${p}.bias`, [o]); };
  const resnet = (p: string, cin: number, cout: number) => {
    vec(`${p}.norm1`, cin);
    conv(`${p}.conv1`, cout, cin, 3);
    vec(`${p}.norm2`, cout);
    conv(`${p}.conv2`, cout, cout, 3);
    if (cin !== cout) conv(`${p}.conv_shortcut`, cout, cin, 1);
  };
  const mid = (p: string, C: number) => {
    resnet(`${p}.resnets.0`, C, C);
    if (c.mid_block_add_attention) {
      vec(`${p}.attentions.0.group_norm`, C);
      for (const k of ['to_q', 'to_k', 'to_v', 'to_out.0']) { m.set(`${p}.attentions.0.${k}.weight`, [C, C]); m.set(`${p}.attentions.0.${k}.bias`, [C]); }
    }
    resnet(`${p}.resnets.1`, C, C);
  };
  const Cl = boc[n - 1];
  conv('encoder.conv_in', boc[0], c.in_channels, 3);
  let out = boc[0];
  for (let i = 0; i < n; i++) {
    const inp = out;
    out = boc[i];
    for (let j = 0; j < L; j++) resnet(`encoder.down_blocks.${i}.resnets.${j}`, j === 0 ? inp : out, out);
    if (i < n - 1) conv(`encoder.down_blocks.${i}.downsamplers.0.conv`, out, out, 3);
  }
  mid('encoder.mid_block', Cl);
  vec('encoder.conv_norm_out', Cl);
  conv('encoder.conv_out', 2 * lat, Cl, 3);
  if (c.use_quant_conv) conv('quant_conv', 2 * lat, 2 * lat, 1);
  if (c.use_post_quant_conv) conv('post_quant_conv', lat, lat, 1);
  conv('decoder.conv_in', Cl, lat, 3);
  mid('decoder.mid_block', Cl);
  const rev = boc.slice().reverse();
  out = rev[0];
  for (let i = 0; i < n; i++) {
    const prev = out;
    out = rev[i];
    for (let j = 0; j <= L; j++) resnet(`decoder.up_blocks.${i}.resnets.${j}`, j === 0 ? prev : out, out);
    if (i < n - 1) conv(`decoder.up_blocks.${i}.upsamplers.0.conv`, out, out, 3);
  }
  vec('decoder.conv_norm_out', boc[0]);
  conv('decoder.conv_out', c.out_channels, boc[0], 3);
  return m;
}

const EPS = 1e-6;

/** The single-head self-attention of the VAE's mid block, with its residual. */
function vaeAttention(p: Params, x: Tensor, groups: number): Tensor {
  const [, c, h, w] = x.shape;
  const t = toTokens(groupNormP(p.scope('group_norm'), x, groups, EPS));
  const q = linearP(p.scope('to_q'), t, c);
  const k = linearP(p.scope('to_k'), t, c);
  const v = linearP(p.scope('to_v'), t, c);
  const out = linearP(p.scope('to_out.0'), o.attention(q, k, v), c);
  return o.add(fromTokens(out, h, w), x);
}

function midBlock(p: Params, cfg: VAEConfig, x: Tensor): Tensor {
  const groups = cfg.norm_num_groups;
  let h = resnetBlock2D(p.scope('resnets.0'), x, null, groups, EPS);
  if (cfg.mid_block_add_attention) h = vaeAttention(p.scope('attentions.0'), h, groups);
  return resnetBlock2D(p.scope('resnets.1'), h, null, groups, EPS);
}

export interface LatentDist {
  mean: Tensor;
  logvar: Tensor;
  std: Tensor;
}

/** Encodes pixels [B, 3, H, W] in [-1, 1] into the (unscaled) latent distribution. */
export function vaeEncode(p: Params, cfg: VAEConfig, pixels: Tensor): LatentDist {
  const g = cfg.norm_num_groups;
  const e = p.scope('encoder');
  let h = conv(e.scope('conv_in'), pixels, { padding: 1 });
  const n = cfg.block_out_channels.length;
  for (let i = 0; i < n; i++) {
    const bp = e.scope(`down_blocks.${i}`);
    for (let j = 0; j < cfg.layers_per_block; j++) h = resnetBlock2D(bp.scope(`resnets.${j}`), h, null, g, EPS);
    if (i < n - 1) {
      // diffusers pads right/bottom by one, then convolves with stride 2 and no padding.
      h = conv(bp.scope('downsamplers.0.conv'), o.pad(h, [[0, 0], [0, 0], [0, 1], [0, 1]]), { stride: 2 });
    }
  }
  h = midBlock(e.scope('mid_block'), cfg, h);
  h = o.silu(groupNormP(e.scope('conv_norm_out'), h, g, EPS));
  h = conv(e.scope('conv_out'), h, { padding: 1 });
  if (cfg.use_quant_conv) h = conv(p.scope('quant_conv'), h);
  const l = cfg.latent_channels;
  const mean = o.slice(h, [1], [0], [l]);
  // logvar.clamp(-30, 20), written with max only: min(x, 20) = -max(-x, -20).
  const raw = o.slice(h, [1], [l], [2 * l]);
  const logvar = o.maximum(o.neg(o.maximum(o.neg(raw), -20)), -30);
  return { mean, logvar, std: o.exp(o.mul(logvar, 0.5)) };
}

/** Decodes (unscaled) latents [B, C, h, w] into pixels (raw, not clamped). */
export function vaeDecode(p: Params, cfg: VAEConfig, latents: Tensor): Tensor {
  const g = cfg.norm_num_groups;
  let h = cfg.use_post_quant_conv ? conv(p.scope('post_quant_conv'), latents) : latents;
  const d = p.scope('decoder');
  h = conv(d.scope('conv_in'), h, { padding: 1 });
  h = midBlock(d.scope('mid_block'), cfg, h);
  const n = cfg.block_out_channels.length;
  for (let i = 0; i < n; i++) {
    const bp = d.scope(`up_blocks.${i}`);
    for (let j = 0; j <= cfg.layers_per_block; j++) h = resnetBlock2D(bp.scope(`resnets.${j}`), h, null, g, EPS);
    if (i < n - 1) h = conv(bp.scope('upsamplers.0.conv'), o.upsampleNearest2x(h), { padding: 1 });
  }
  h = o.silu(groupNormP(d.scope('conv_norm_out'), h, g, EPS));
  return conv(d.scope('conv_out'), h, { padding: 1 });
}
