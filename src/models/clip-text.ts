// CLIP text transformer (transformers' CLIPTextModel), as Stable Diffusion uses it:
// token + position embeddings, pre-LN blocks with causal self-attention, final LayerNorm.
// New token rows (textual inversion's v*) are spliced in without touching the table.
import * as o from '../graph/index.ts';
import type { Tensor } from '../graph/index.ts';
import type { Params } from './params.ts';

export type { CLIPTextConfig } from '../io/checkpoint.ts';
import type { CLIPTextConfig } from '../io/checkpoint.ts';

export interface ClipTextOptions {
  /** Extra embedding rows [N, D] for ids vocab_size … vocab_size+N-1 (learned tokens). */
  extraRows?: Tensor;
  /** Stop after this many layers (A1111's "clip skip"); the final LayerNorm is still applied. */
  layers?: number;
}

/** Token embeddings for `ids` [B, L] (int64), reading ids ≥ vocab_size from `extraRows`. */
export function tokenEmbeddings(p: Params, cfg: CLIPTextConfig, ids: Tensor, extraRows?: Tensor): Tensor {
  const table = p.get('token_embedding.weight', [cfg.vocab_size, cfg.hidden_size]);
  if (!extraRows) return o.gather(table, ids);
  const g = ids.graph;
  const v = cfg.vocab_size;
  const isNew = o.greater(ids, g.scalar(v - 1, 'int64'));
  const zero = g.scalar(0, 'int64');
  const base = o.gather(table, o.where(isNew, zero, ids));
  const extra = o.gather(extraRows, o.where(isNew, o.sub(ids, g.scalar(v, 'int64')), zero));
  return o.where(o.reshape(isNew, [...ids.shape, 1]), extra, base);
}

function selfAttention(p: Params, x: Tensor, heads: number, d: number): Tensor {
  const proj = (n: string, t: Tensor) => o.linear(t, p.get(`${n}.weight`, [d, d]), p.get(`${n}.bias`, [d]));
  const out = o.multiHeadAttention(proj('q_proj', x), proj('k_proj', x), proj('v_proj', x), { heads, causal: true });
  return proj('out_proj', out);
}

/** last_hidden_state [B, L, D] for int64 `ids` [B, L]. `p` is scoped at `text_model`. */
export function clipTextEncoder(p: Params, cfg: CLIPTextConfig, ids: Tensor, opts: ClipTextOptions = {}): Tensor {
  const d = cfg.hidden_size;
  const [, l] = ids.shape;
  const emb = p.scope('embeddings');
  const pos = o.slice(emb.get('position_embedding.weight', [cfg.max_position_embeddings, d]), [0], [0], [l]);
  let h = o.add(tokenEmbeddings(emb, cfg, ids, opts.extraRows), pos);
  const act = cfg.hidden_act === 'quick_gelu' ? o.quickGelu : o.gelu;
  const eps = cfg.layer_norm_eps;
  const n = opts.layers ?? cfg.num_hidden_layers;
  for (let i = 0; i < n; i++) {
    const lp = p.scope(`encoder.layers.${i}`);
    const ln = (name: string, x: Tensor) => o.layerNorm(x, lp.get(`${name}.weight`, [d]), lp.get(`${name}.bias`, [d]), eps);
    h = o.add(h, selfAttention(lp.scope('self_attn'), ln('layer_norm1', h), cfg.num_attention_heads, d));
    const mlp = lp.scope('mlp');
    const f = cfg.intermediate_size;
    const up = act(o.linear(ln('layer_norm2', h), mlp.get('fc1.weight', [f, d]), mlp.get('fc1.bias', [f])));
    h = o.add(h, o.linear(up, mlp.get('fc2.weight', [d, f]), mlp.get('fc2.bias', [d])));
  }
  return o.layerNorm(h, p.get('final_layer_norm.weight', [d]), p.get('final_layer_norm.bias', [d]), eps);
}
