// AutoencoderKL (diffusers naming): encoder → latent distribution, decoder → pixels.
import * as o from '../graph/index.ts';
import type { Tensor } from '../graph/index.ts';
import type { Params } from './params.ts';
import { conv, fromTokens, groupNormP, linearP, resnetBlock2D, toTokens } from './blocks.ts';

export type { VAEConfig } from '../io/checkpoint.ts';
import type { VAEConfig } from '../io/checkpoint.ts';

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

function midBlock(p: Params, x: Tensor, groups: number): Tensor {
  let h = resnetBlock2D(p.scope('resnets.0'), x, null, groups, EPS);
  if (p.has('attentions.0.to_q.weight')) h = vaeAttention(p.scope('attentions.0'), h, groups);
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
  cfg.block_out_channels.forEach((_, i) => {
    const bp = e.scope(`down_blocks.${i}`);
    for (let j = 0; j < cfg.layers_per_block; j++) h = resnetBlock2D(bp.scope(`resnets.${j}`), h, null, g, EPS);
    if (bp.has('downsamplers.0.conv.weight')) {
      // diffusers pads right/bottom by one, then convolves with stride 2 and no padding.
      h = conv(bp.scope('downsamplers.0.conv'), o.pad(h, [[0, 0], [0, 0], [0, 1], [0, 1]]), { stride: 2 });
    }
  });
  h = midBlock(e.scope('mid_block'), h, g);
  h = o.silu(groupNormP(e.scope('conv_norm_out'), h, g, EPS));
  h = conv(e.scope('conv_out'), h, { padding: 1 });
  if (p.has('quant_conv.weight')) h = conv(p.scope('quant_conv'), h);
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
  let h = p.has('post_quant_conv.weight') ? conv(p.scope('post_quant_conv'), latents) : latents;
  const d = p.scope('decoder');
  h = conv(d.scope('conv_in'), h, { padding: 1 });
  h = midBlock(d.scope('mid_block'), h, g);
  cfg.block_out_channels.forEach((_, i) => {
    const bp = d.scope(`up_blocks.${i}`);
    for (let j = 0; j <= cfg.layers_per_block; j++) h = resnetBlock2D(bp.scope(`resnets.${j}`), h, null, g, EPS);
    if (bp.has('upsamplers.0.conv.weight')) h = conv(bp.scope('upsamplers.0.conv'), o.upsampleNearest2x(h), { padding: 1 });
  });
  h = o.silu(groupNormP(d.scope('conv_norm_out'), h, g, EPS));
  return conv(d.scope('conv_out'), h, { padding: 1 });
}
