// Building blocks shared by the UNet and the VAE, named like diffusers' modules so a
// checkpoint's keys map 1:1 onto the Params scopes used here.
import * as o from '../graph/index.ts';
import type { Tensor } from '../graph/index.ts';
import type { Params } from './params.ts';

export function conv(p: Params, x: Tensor, opts: { stride?: number; padding?: number } = {}): Tensor {
  const w = p.get('weight');
  return o.conv2d(x, w, p.has('bias') ? p.get('bias', [w.shape[0]]) : null, opts);
}

export function linearP(p: Params, x: Tensor, outF: number, bias = true): Tensor {
  const inF = x.shape[x.rank - 1];
  return o.linear(x, p.get('weight', [outF, inF]), bias && p.has('bias') ? p.get('bias', [outF]) : null);
}

export function groupNormP(p: Params, x: Tensor, groups: number, eps: number): Tensor {
  const c = x.shape[1];
  return o.groupNorm(x, groups, p.get('weight', [c]), p.get('bias', [c]), eps);
}

export function layerNormP(p: Params, x: Tensor, eps: number): Tensor {
  const d = x.shape[x.rank - 1];
  return o.layerNorm(x, p.get('weight', [d]), p.get('bias', [d]), eps);
}

/** diffusers ResnetBlock2D (time_embedding_norm "default", output_scale_factor 1). */
export function resnetBlock2D(p: Params, x: Tensor, temb: Tensor | null, groups: number, eps: number): Tensor {
  let h = o.silu(groupNormP(p.scope('norm1'), x, groups, eps));
  h = conv(p.scope('conv1'), h, { padding: 1 });
  const cOut = h.shape[1];
  if (temb) {
    const t = linearP(p.scope('time_emb_proj'), o.silu(temb), cOut);
    h = o.add(h, o.reshape(t, [t.shape[0], cOut, 1, 1]));
  }
  h = o.silu(groupNormP(p.scope('norm2'), h, groups, eps));
  h = conv(p.scope('conv2'), h, { padding: 1 });
  // diffusers adds a 1×1 shortcut conv exactly when the channel count changes.
  const skip = x.shape[1] !== cOut ? conv(p.scope('conv_shortcut'), x) : x;
  return o.add(skip, h);
}

/** Multi-head attention (diffusers Attention): q from x, k/v from `context` (or x). */
export function attentionP(p: Params, x: Tensor, context: Tensor | null, heads: number): Tensor {
  const d = x.shape[2];
  const ctx = context ?? x;
  const q = linearP(p.scope('to_q'), x, d);
  const k = linearP(p.scope('to_k'), ctx, d);
  const v = linearP(p.scope('to_v'), ctx, d);
  return linearP(p.scope('to_out.0'), o.multiHeadAttention(q, k, v, { heads }), d);
}

/** NCHW → [B, H·W, C] and back. */
export function toTokens(x: Tensor): Tensor {
  const [b, c, h, w] = x.shape;
  return o.transpose(o.reshape(x, [b, c, h * w]), [0, 2, 1]);
}
export function fromTokens(t: Tensor, h: number, w: number): Tensor {
  const [b, , c] = t.shape;
  return o.reshape(o.transpose(t, [0, 2, 1]), [b, c, h, w]);
}
