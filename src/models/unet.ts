// UNet2DConditionModel as Stable Diffusion 1.x / 2.x use it (diffusers naming). Its structure
// (levels, heads, transformer depths) comes from the config (unet-config.ts), never from
// which weights happen to exist, so a weight set that does not fit fails by name.
import * as o from '../graph/index.ts';
import { GraphError, type Tensor } from '../graph/index.ts';
import type { Params } from './params.ts';
import { attentionP, conv, fromTokens, groupNormP, layerNormP, linearP, resnetBlock2D, toTokens } from './blocks.ts';

import { unetAttentionHeads, unetMidBlockLayers, unetTransformerLayers, type UNetConfig } from './unet-config.ts';

export * from './unet-config.ts';

interface Ctx {
  cfg: UNetConfig;
  groups: number;
  eps: number;
  context: Tensor;
  temb: Tensor;
}

/** Sinusoidal timestep embedding (diffusers Timesteps), computed in float32 like torch. */
function timestepEmbedding(t: Tensor, dim: number, flip: boolean, shift: number): Tensor {
  const half = Math.floor(dim / 2);
  const freqs = new Float32Array(half);
  for (let i = 0; i < half; i++) freqs[i] = Math.exp(Math.fround((-Math.log(10000) * i) / (half - shift)));
  const args = o.mul(o.reshape(t, [t.shape[0], 1]), t.graph.constant(freqs, [1, half]));
  const [s, c] = [o.sin(args), o.cos(args)];
  return o.concat(flip ? [c, s] : [s, c], 1);
}

/** SDXL's added conditioning (diffusers' added_cond_kwargs): pooled text embeds [B, Dp] and time ids [B, 6]. */
export interface UNetAddedConditions {
  textEmbeds: Tensor;
  timeIds: Tensor;
}

/** t_emb [B, 4·C0]: time_embedding(sinusoidal(t)). */
export function unetTimeEmbedding(p: Params, cfg: UNetConfig, t: Tensor): Tensor {
  const c0 = cfg.block_out_channels[0];
  const tdim = 4 * c0;
  const temb = linearP(p.scope('time_embedding.linear_1'), timestepEmbedding(t, c0, cfg.flip_sin_to_cos ?? true, cfg.freq_shift ?? 0), tdim);
  return linearP(p.scope('time_embedding.linear_2'), o.silu(temb), tdim);
}

/** time_embeds [B, n·A]: each of the n time ids embedded on its own (diffusers' add_time_proj), side by side. */
export function unetTimeIdsEmbedding(cfg: UNetConfig, timeIds: Tensor): Tensor {
  const [b, n] = timeIds.shape;
  const a = cfg.addition_time_embed_dim!;
  return o.reshape(timestepEmbedding(o.reshape(timeIds, [b * n]), a, cfg.flip_sin_to_cos ?? true, cfg.freq_shift ?? 0), [b, n * a]);
}

/** aug_emb [B, 4·C0] = add_embedding(concat(text_embeds, time_embeds)), what text_time adds to t_emb. */
export function unetAddedEmbedding(p: Params, cfg: UNetConfig, added: UNetAddedConditions): Tensor {
  const tdim = 4 * cfg.block_out_channels[0];
  const x = o.concat([added.textEmbeds, unetTimeIdsEmbedding(cfg, added.timeIds)], 1);
  return linearP(p.scope('add_embedding.linear_2'), o.silu(linearP(p.scope('add_embedding.linear_1'), x, tdim)), tdim);
}

/** diffusers Transformer2DModel: `depth` blocks of self-attention, cross-attention and a GEGLU feed-forward. */
function transformer2D(p: Params, x: Tensor, heads: number, depth: number, ctx: Ctx): Tensor {
  const [, c, h, w] = x.shape;
  const linear = ctx.cfg.use_linear_projection ?? false;
  let t = groupNormP(p.scope('norm'), x, ctx.groups, 1e-6);
  if (!linear) {
    t = toTokens(conv(p.scope('proj_in'), t));
  } else {
    t = linearP(p.scope('proj_in'), toTokens(t), c);
  }
  const inner = t.shape[2];
  for (let i = 0; i < depth; i++) {
    const b = p.scope(`transformer_blocks.${i}`);
    t = o.add(t, attentionP(b.scope('attn1'), layerNormP(b.scope('norm1'), t, 1e-5), null, heads));
    t = o.add(t, attentionP(b.scope('attn2'), layerNormP(b.scope('norm2'), t, 1e-5), ctx.context, heads));
    // GEGLU feed-forward: the projection's first half is the value, the second the gate.
    const n3 = layerNormP(b.scope('norm3'), t, 1e-5);
    const ffInner = 4 * inner;
    const proj = linearP(b.scope('ff.net.0.proj'), n3, 2 * ffInner);
    const gated = o.mul(o.slice(proj, [2], [0], [ffInner]), o.gelu(o.slice(proj, [2], [ffInner], [2 * ffInner])));
    t = o.add(t, linearP(b.scope('ff.net.2'), gated, inner));
  }
  const out = linear ? fromTokens(linearP(p.scope('proj_out'), t, c), h, w) : conv(p.scope('proj_out'), fromTokens(t, h, w));
  return o.add(out, x);
}

/**
 * Predicted noise (or v) [B, C, h, w] for latents `sample` [B, C, h, w], timesteps `t`
 * [B] (float: integer and fractional timesteps alike) and text context [B, L, D]; an SDXL
 * (text_time) UNet also takes `added` (pooled text embeds and time ids).
 * Any latent size works: each upsampler resizes to the matching skip's size, which is
 * what diffusers does when the size is not divisible by the UNet's total down factor.
 */
export function unet2DCondition(p: Params, cfg: UNetConfig, sample: Tensor, t: Tensor, context: Tensor, added?: UNetAddedConditions): Tensor {
  let temb = unetTimeEmbedding(p, cfg, t);
  if (cfg.addition_embed_type === 'text_time') {
    if (!added) throw new GraphError('UNet: an SDXL (text_time) UNet needs the pooled text embeds and time ids');
    temb = o.add(temb, unetAddedEmbedding(p, cfg, added));
  }
  const ctx: Ctx = { cfg, groups: cfg.norm_num_groups, eps: cfg.norm_eps, context, temb };
  const heads = unetAttentionHeads(cfg);
  const depth = unetTransformerLayers(cfg);
  const nBlocks = cfg.block_out_channels.length;

  let h = conv(p.scope('conv_in'), sample, { padding: 1 });
  const skips: Tensor[] = [h];
  cfg.down_block_types.forEach((type, i) => {
    const bp = p.scope(`down_blocks.${i}`);
    const cross = type === 'CrossAttnDownBlock2D';
    if (!cross && type !== 'DownBlock2D') throw new GraphError(`UNet: unsupported down block type "${type}"`);
    for (let j = 0; j < cfg.layers_per_block; j++) {
      h = resnetBlock2D(bp.scope(`resnets.${j}`), h, temb, ctx.groups, ctx.eps);
      if (cross) h = transformer2D(bp.scope(`attentions.${j}`), h, heads[i], depth[i], ctx);
      skips.push(h);
    }
    if (i < nBlocks - 1) {
      h = conv(bp.scope('downsamplers.0.conv'), h, { stride: 2, padding: 1 });
      skips.push(h);
    }
  });

  const mid = p.scope('mid_block');
  h = resnetBlock2D(mid.scope('resnets.0'), h, temb, ctx.groups, ctx.eps);
  h = transformer2D(mid.scope('attentions.0'), h, heads[nBlocks - 1], unetMidBlockLayers(cfg), ctx);
  h = resnetBlock2D(mid.scope('resnets.1'), h, temb, ctx.groups, ctx.eps);

  cfg.up_block_types.forEach((type, i) => {
    const bp = p.scope(`up_blocks.${i}`);
    const cross = type === 'CrossAttnUpBlock2D';
    if (!cross && type !== 'UpBlock2D') throw new GraphError(`UNet: unsupported up block type "${type}"`);
    const level = nBlocks - 1 - i;
    for (let j = 0; j <= cfg.layers_per_block; j++) {
      h = o.concat([h, skips.pop()!], 1);
      h = resnetBlock2D(bp.scope(`resnets.${j}`), h, temb, ctx.groups, ctx.eps);
      if (cross) h = transformer2D(bp.scope(`attentions.${j}`), h, heads[level], depth[level], ctx);
    }
    if (i < nBlocks - 1) {
      const next = skips[skips.length - 1];
      h = conv(bp.scope('upsamplers.0.conv'), o.resizeNearest(h, [next.shape[2], next.shape[3]]), { padding: 1 });
    }
  });

  h = o.silu(groupNormP(p.scope('conv_norm_out'), h, ctx.groups, ctx.eps));
  return conv(p.scope('conv_out'), h, { padding: 1 });
}
