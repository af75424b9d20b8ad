// CLIP text transformer (transformers' CLIPTextModel), as Stable Diffusion uses it:
// token + position embeddings, pre-LN blocks with causal self-attention, final LayerNorm.
// New token rows (textual inversion's v*) are spliced in without touching the table. Its
// config (text_encoder/config.json), parser and weight spec sit beside the forward function.
import * as o from '../graph/index.ts';
import type { Tensor } from '../graph/index.ts';
import { CheckpointError, type WeightSpec } from '../io/weights.ts';
import { assertConfigBounds, CLIP_TEXT_BOUNDS } from '../io/config-bounds.ts';
import { Fields, type ConfigJson } from './config-fields.ts';
import type { Params } from './params.ts';

/** transformers' CLIPTextConfig (field names as in text_encoder/config.json). */
export interface CLIPTextConfig {
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  max_position_embeddings: number;
  hidden_act: 'quick_gelu' | 'gelu';
  layer_norm_eps: number;
  pad_token_id: number;
  bos_token_id: number;
  eos_token_id: number;
  /** Width of `text_projection`: set only for CLIPTextModelWithProjection (SDXL's second encoder). */
  projection_dim?: number;
}

export function parseCLIPTextConfig(json: ConfigJson, path: string): CLIPTextConfig {
  const f = new Fields(json, path);
  if (json.model_type !== undefined && json.model_type !== 'clip_text_model') {
    throw new CheckpointError(path, `text encoder model_type ${JSON.stringify(json.model_type)} is not supported (expected a CLIP text model)`);
  }
  const arch = json.architectures;
  if (Array.isArray(arch) && arch.length && !arch.some((a) => a === 'CLIPTextModel' || a === 'CLIPTextModelWithProjection')) {
    throw new CheckpointError(path, `text encoder architecture ${JSON.stringify(arch)} is not supported (expected CLIPTextModel)`);
  }
  // Defaults are transformers' CLIPTextConfig defaults.
  const c: CLIPTextConfig = {
    vocab_size: f.int('vocab_size', 49408, 1),
    hidden_size: f.int('hidden_size', 512, 1),
    intermediate_size: f.int('intermediate_size', 2048, 1),
    num_hidden_layers: f.int('num_hidden_layers', 12, 1),
    num_attention_heads: f.int('num_attention_heads', 8, 1),
    max_position_embeddings: f.int('max_position_embeddings', 77, 1),
    hidden_act: f.oneOf('hidden_act', 'quick_gelu', ['quick_gelu', 'gelu'] as const, 'activation'),
    layer_norm_eps: f.num('layer_norm_eps', 1e-5),
    pad_token_id: f.int('pad_token_id', 1),
    bos_token_id: f.int('bos_token_id', 49406),
    eos_token_id: f.int('eos_token_id', 49407),
  };
  if (hasTextProjection(json)) c.projection_dim = f.int('projection_dim', 512, 1);
  assertConfigBounds(c, CLIP_TEXT_BOUNDS, (problem) => new CheckpointError(path, problem));
  if (c.hidden_size % c.num_attention_heads !== 0) {
    throw new CheckpointError(path, `hidden_size ${c.hidden_size} is not divisible by num_attention_heads ${c.num_attention_heads}`);
  }
  return c;
}

/** Whether a text_encoder config.json names transformers' CLIPTextModelWithProjection. */
export function hasTextProjection(json: ConfigJson): boolean {
  return Array.isArray(json.architectures) && json.architectures.includes('CLIPTextModelWithProjection');
}

/**
 * Every weight (names under the component, shapes) of a CLIP text encoder with config `c`;
 * with a projection_dim (CLIPTextModelWithProjection) also `text_projection` [projection_dim, D], no bias.
 */
export function clipTextWeightSpec(c: CLIPTextConfig): WeightSpec {
  const m: WeightSpec = new Map();
  const D = c.hidden_size;
  const I = c.intermediate_size;
  const lin = (p: string, o: number, i: number) => { m.set(`${p}.weight`, [o, i]); m.set(`${p}.bias`, [o]); };
  const norm = (p: string) => { m.set(`${p}.weight`, [D]); m.set(`${p}.bias`, [D]); };
  m.set('text_model.embeddings.token_embedding.weight', [c.vocab_size, D]);
  m.set('text_model.embeddings.position_embedding.weight', [c.max_position_embeddings, D]);
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `text_model.encoder.layers.${i}`;
    for (const x of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) lin(`${p}.self_attn.${x}`, D, D);
    norm(`${p}.layer_norm1`);
    lin(`${p}.mlp.fc1`, I, D);
    lin(`${p}.mlp.fc2`, D, I);
    norm(`${p}.layer_norm2`);
  }
  norm('text_model.final_layer_norm');
  if (c.projection_dim !== undefined) m.set('text_projection.weight', [c.projection_dim, D]);
  return m;
}

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

/** Token + position embeddings: hidden_states[0]. */
function embed(p: Params, cfg: CLIPTextConfig, ids: Tensor, extraRows?: Tensor): Tensor {
  const d = cfg.hidden_size;
  const [, l] = ids.shape;
  const emb = p.scope('embeddings');
  const pos = o.slice(emb.get('position_embedding.weight', [cfg.max_position_embeddings, d]), [0], [0], [l]);
  return o.add(tokenEmbeddings(emb, cfg, ids, extraRows), pos);
}

/** Encoder layer `i` (pre-LN self-attention and MLP, each residual): hidden_states[i] → hidden_states[i + 1]. */
function encoderLayer(p: Params, cfg: CLIPTextConfig, i: number, h: Tensor): Tensor {
  const d = cfg.hidden_size;
  const act = cfg.hidden_act === 'quick_gelu' ? o.quickGelu : o.gelu;
  const lp = p.scope(`encoder.layers.${i}`);
  const ln = (name: string, x: Tensor) => o.layerNorm(x, lp.get(`${name}.weight`, [d]), lp.get(`${name}.bias`, [d]), cfg.layer_norm_eps);
  h = o.add(h, selfAttention(lp.scope('self_attn'), ln('layer_norm1', h), cfg.num_attention_heads, d));
  const mlp = lp.scope('mlp');
  const f = cfg.intermediate_size;
  const up = act(o.linear(ln('layer_norm2', h), mlp.get('fc1.weight', [f, d]), mlp.get('fc1.bias', [f])));
  return o.add(h, o.linear(up, mlp.get('fc2.weight', [d, f]), mlp.get('fc2.bias', [d])));
}

function finalLayerNorm(p: Params, cfg: CLIPTextConfig, h: Tensor): Tensor {
  const d = cfg.hidden_size;
  return o.layerNorm(h, p.get('final_layer_norm.weight', [d]), p.get('final_layer_norm.bias', [d]), cfg.layer_norm_eps);
}

/** last_hidden_state [B, L, D] for int64 `ids` [B, L]. `p` is scoped at `text_model`. */
export function clipTextEncoder(p: Params, cfg: CLIPTextConfig, ids: Tensor, opts: ClipTextOptions = {}): Tensor {
  let h = embed(p, cfg, ids, opts.extraRows);
  const n = opts.layers ?? cfg.num_hidden_layers;
  for (let i = 0; i < n; i++) h = encoderLayer(p, cfg, i, h);
  return finalLayerNorm(p, cfg, h);
}

/**
 * What SDXL reads from an encoder: `penultimate` = hidden_states[-2] [B, L, D], the output
 * of the second-to-last layer WITHOUT the final LayerNorm, and `last` = last_hidden_state
 * (every layer, then the final LayerNorm), which only the pooled output uses. A graph that
 * outputs `penultimate` alone never computes the last layer. `p` is scoped at `text_model`.
 */
export function clipTextHiddenStates(p: Params, cfg: CLIPTextConfig, ids: Tensor, opts: Pick<ClipTextOptions, 'extraRows'> = {}): { penultimate: Tensor; last: Tensor } {
  let h = embed(p, cfg, ids, opts.extraRows);
  const n = cfg.num_hidden_layers;
  for (let i = 0; i < n - 1; i++) h = encoderLayer(p, cfg, i, h);
  return { penultimate: h, last: finalLayerNorm(p, cfg, encoderLayer(p, cfg, n - 1, h)) };
}

/**
 * CLIPTextModelWithProjection's text_embeds [B, Dp]: `last` [B, L, D] at one position per
 * row, times `text_projection` (no bias). `pool` [B, L] is that position one-hot
 * (clipPoolingMask), so the selection is exact and differentiable. `p` is the component's root.
 */
export function clipTextPooled(p: Params, cfg: CLIPTextConfig, last: Tensor, pool: Tensor): Tensor {
  const d = cfg.hidden_size;
  const dp = cfg.projection_dim;
  if (dp === undefined) throw new CheckpointError('text encoder', 'has no text_projection (not a CLIPTextModelWithProjection)');
  const [b, l] = pool.shape;
  const pooled = o.reduceSum(o.mul(last, o.reshape(pool, [b, l, 1])), [1]);
  return o.linear(pooled, p.get('text_projection.weight', [dp, d]));
}

/**
 * The position transformers' CLIPTextTransformer pools at, per row of `ids` [B·L]: with the
 * legacy `eos_token_id` 2 (SDXL base's configs) argmax(ids), the HIGHEST id, which is a learned
 * token's position when the prompt has one (ids ≥ vocab_size), else the eos; otherwise the
 * first `eos_token_id`. First occurrence wins, as torch.argmax does.
 */
export function clipPoolingPositions(cfg: CLIPTextConfig, ids: ArrayLike<number | bigint>, batch: number): number[] {
  const l = ids.length / batch;
  const out: number[] = [];
  for (let b = 0; b < batch; b++) {
    let best = 0;
    for (let i = 0; i < l; i++) {
      const v = Number(ids[b * l + i]);
      if (cfg.eos_token_id === 2 ? v > Number(ids[b * l + best]) : v === cfg.eos_token_id) {
        best = i;
        if (cfg.eos_token_id !== 2) break;
      }
    }
    out.push(best);
  }
  return out;
}

/** clipPoolingPositions as the one-hot [B, L] clipTextPooled takes. */
export function clipPoolingMask(cfg: CLIPTextConfig, ids: ArrayLike<number | bigint>, batch: number): Float32Array {
  const l = ids.length / batch;
  const mask = new Float32Array(ids.length);
  clipPoolingPositions(cfg, ids, batch).forEach((pos, b) => { mask[b * l + pos] = 1; });
  return mask;
}
