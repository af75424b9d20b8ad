// Original-layout (CompVis/LDM) single-file checkpoints: their key names ↔ diffusers' names.
// One table of block prefixes, each optionally with a table of sub-module renames: a
// diffusers name maps through the longest matching block prefix, then through the first
// matching sub-module rename. The table needs the file's layout (levels, blocks per level,
// text-encoder naming), never the architecture's configs.
import { NO_TRANSFORM, RESHAPE, type Transform, type WeightSpec } from './weights.ts';

export const LDM_UNET_PREFIX = 'model.diffusion_model.';
export const LDM_VAE_PREFIX = 'first_stage_model.';
export const LDM_CLIP_PREFIX = 'cond_stage_model.transformer.';
export const LDM_OPENCLIP_PREFIX = 'cond_stage_model.model.';
/** SDXL (SGM layout): encoder 1 (OpenAI CLIP, transformers' names) and encoder 2 (OpenCLIP bigG, open_clip's names). */
export const SGM_CLIP_PREFIX = 'conditioner.embedders.0.transformer.text_model.';
export const SGM_OPENCLIP_PREFIX = 'conditioner.embedders.1.model.';

type SubRule = [diffusers: string, ldm: string, transform?: Transform];
interface BlockRule { d: string; l: string; sub?: readonly SubRule[] }

const chunk = (index: number): Transform => ({ kind: 'chunk', index, count: 3 });
const TRANSPOSE: Transform = { kind: 'transpose' };

const UNET_RESNET: readonly SubRule[] = [
  ['norm1', 'in_layers.0'], ['conv1', 'in_layers.2'], ['time_emb_proj', 'emb_layers.1'],
  ['norm2', 'out_layers.0'], ['conv2', 'out_layers.3'], ['conv_shortcut', 'skip_connection'],
];
const VAE_RESNET: readonly SubRule[] = [['conv_shortcut', 'nin_shortcut']];
const VAE_ATTENTION: readonly SubRule[] = [
  ['group_norm', 'norm'], ['to_q', 'q', RESHAPE], ['to_k', 'k', RESHAPE], ['to_v', 'v', RESHAPE], ['to_out.0', 'proj_out', RESHAPE],
];
const OPENCLIP_LAYER: readonly SubRule[] = [
  ['layer_norm1', 'ln_1'], ['layer_norm2', 'ln_2'], ['mlp.fc1', 'mlp.c_fc'], ['mlp.fc2', 'mlp.c_proj'],
  ['self_attn.out_proj', 'attn.out_proj'],
  ['self_attn.q_proj.weight', 'attn.in_proj_weight', chunk(0)], ['self_attn.k_proj.weight', 'attn.in_proj_weight', chunk(1)],
  ['self_attn.v_proj.weight', 'attn.in_proj_weight', chunk(2)], ['self_attn.q_proj.bias', 'attn.in_proj_bias', chunk(0)],
  ['self_attn.k_proj.bias', 'attn.in_proj_bias', chunk(1)], ['self_attn.v_proj.bias', 'attn.in_proj_bias', chunk(2)],
];

export type Component = 'textEncoder' | 'textEncoder2' | 'unet' | 'vae';

export interface LdmTensor {
  component: Component;
  /** diffusers name within the component */
  name: string;
  /** key in the single file */
  ldmName: string;
  /** shape under the diffusers name */
  shape: number[];
  transform: Transform;
}

/**
 * Stable Diffusion generation: 1.x (OpenAI CLIP text encoder), 2.x (OpenCLIP) or XL (both,
 * plus pooled text and size conditioning), which decides a file's text-encoder naming.
 */
export type Family = 'sd1' | 'sd2' | 'sdxl';

/** What the key mapping needs to know about a file (all of it readable off its keys). */
export interface LdmLayout {
  /**
   * sd1: OpenAI CLIP under cond_stage_model.transformer; sd2: OpenCLIP under cond_stage_model.model;
   * sdxl: both under conditioner.embedders.{0,1}
   */
  family: Family;
  /** where the CLIP text model lives: `cond_stage_model.transformer.text_model.` (usual) or `cond_stage_model.transformer.` (old transformers) */
  clipPrefix?: string;
  textLayers: number;
  /** sdxl: encoder 2's layers */
  text2Layers?: number;
  unetLevels: number;
  unetLayersPerBlock: number;
  /** per up block (diffusers order): whether it has attention (its upsampler then sits one index later) */
  unetUpAttention: boolean[];
  vaeLevels: number;
  vaeLayersPerBlock: number;
}



function unetBlockRules(layout: LdmLayout): BlockRule[] {
  const U = LDM_UNET_PREFIX;
  const L = layout.unetLayersPerBlock;
  const n = layout.unetLevels;
  const r: BlockRule[] = [
    { d: 'conv_in.', l: `${U}input_blocks.0.0.` },
    { d: 'time_embedding.linear_1.', l: `${U}time_embed.0.` },
    { d: 'time_embedding.linear_2.', l: `${U}time_embed.2.` },
    // SDXL's text_time conditioning: a Sequential(Linear, SiLU, Linear) inside label_emb
    { d: 'add_embedding.linear_1.', l: `${U}label_emb.0.0.` },
    { d: 'add_embedding.linear_2.', l: `${U}label_emb.0.2.` },
    { d: 'conv_norm_out.', l: `${U}out.0.` },
    { d: 'conv_out.', l: `${U}out.2.` },
    { d: 'mid_block.resnets.0.', l: `${U}middle_block.0.`, sub: UNET_RESNET },
    { d: 'mid_block.attentions.0.', l: `${U}middle_block.1.` },
    { d: 'mid_block.resnets.1.', l: `${U}middle_block.2.`, sub: UNET_RESNET },
  ];
  for (let i = 0; i < n; i++) {
    // LDM numbers every block in one flat list: input_blocks.0 is conv_in, then per level
    // L (resnet[, attention]) blocks and one downsampler; output_blocks have L+1 per level.
    for (let j = 0; j < L; j++) {
      const k = 1 + i * (L + 1) + j;
      r.push({ d: `down_blocks.${i}.resnets.${j}.`, l: `${U}input_blocks.${k}.0.`, sub: UNET_RESNET });
      r.push({ d: `down_blocks.${i}.attentions.${j}.`, l: `${U}input_blocks.${k}.1.` });
    }
    r.push({ d: `down_blocks.${i}.downsamplers.0.conv.`, l: `${U}input_blocks.${1 + i * (L + 1) + L}.0.op.` });
    for (let j = 0; j <= L; j++) {
      const k = i * (L + 1) + j;
      r.push({ d: `up_blocks.${i}.resnets.${j}.`, l: `${U}output_blocks.${k}.0.`, sub: UNET_RESNET });
      r.push({ d: `up_blocks.${i}.attentions.${j}.`, l: `${U}output_blocks.${k}.1.` });
    }
    const up = layout.unetUpAttention[i] ? 2 : 1;
    r.push({ d: `up_blocks.${i}.upsamplers.0.conv.`, l: `${U}output_blocks.${i * (L + 1) + L}.${up}.conv.` });
  }
  return r;
}

function vaeBlockRules(layout: LdmLayout): BlockRule[] {
  const V = LDM_VAE_PREFIX;
  const n = layout.vaeLevels;
  const L = layout.vaeLayersPerBlock;
  const r: BlockRule[] = [
    { d: 'encoder.conv_norm_out.', l: `${V}encoder.norm_out.` },
    { d: 'decoder.conv_norm_out.', l: `${V}decoder.norm_out.` },
    { d: 'encoder.', l: `${V}encoder.` }, // conv_in, conv_out
    { d: 'decoder.', l: `${V}decoder.` },
    { d: 'quant_conv.', l: `${V}quant_conv.` },
    { d: 'post_quant_conv.', l: `${V}post_quant_conv.` },
  ];
  for (const part of ['encoder', 'decoder']) {
    r.push({ d: `${part}.mid_block.resnets.0.`, l: `${V}${part}.mid.block_1.`, sub: VAE_RESNET });
    r.push({ d: `${part}.mid_block.resnets.1.`, l: `${V}${part}.mid.block_2.`, sub: VAE_RESNET });
    r.push({ d: `${part}.mid_block.attentions.0.`, l: `${V}${part}.mid.attn_1.`, sub: VAE_ATTENTION });
  }
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < L; j++) {
      r.push({ d: `encoder.down_blocks.${i}.resnets.${j}.`, l: `${V}encoder.down.${i}.block.${j}.`, sub: VAE_RESNET });
    }
    r.push({ d: `encoder.down_blocks.${i}.downsamplers.0.`, l: `${V}encoder.down.${i}.downsample.` });
    // the LDM decoder numbers its levels from the highest resolution, diffusers from the lowest
    for (let j = 0; j <= L; j++) {
      r.push({ d: `decoder.up_blocks.${i}.resnets.${j}.`, l: `${V}decoder.up.${n - 1 - i}.block.${j}.`, sub: VAE_RESNET });
    }
    r.push({ d: `decoder.up_blocks.${i}.upsamplers.0.`, l: `${V}decoder.up.${n - 1 - i}.upsample.` });
  }
  return r;
}

function textBlockRules(layout: LdmLayout): BlockRule[] {
  if (layout.family === 'sd1') return [{ d: 'text_model.', l: layout.clipPrefix ?? `${LDM_CLIP_PREFIX}text_model.` }];
  if (layout.family === 'sdxl') return [{ d: 'text_model.', l: SGM_CLIP_PREFIX }];
  return openClipRules(LDM_OPENCLIP_PREFIX, layout.textLayers);
}

/** An OpenCLIP text tower under `O` in transformers' names; `text_projection` is stored [D, Dp], i.e. transposed. */
function openClipRules(O: string, layers: number): BlockRule[] {
  const r: BlockRule[] = [
    { d: 'text_model.embeddings.token_embedding.weight', l: `${O}token_embedding.weight` },
    { d: 'text_model.embeddings.position_embedding.weight', l: `${O}positional_embedding` },
    { d: 'text_model.final_layer_norm.', l: `${O}ln_final.` },
    { d: 'text_projection.weight', l: `${O}text_projection`, sub: [['', '', TRANSPOSE]] },
  ];
  for (let i = 0; i < layers; i++) {
    r.push({ d: `text_model.encoder.layers.${i}.`, l: `${O}transformer.resblocks.${i}.`, sub: OPENCLIP_LAYER });
  }
  return r;
}

function mapName(rules: BlockRule[], name: string): { ldmName: string; transform: Transform } | null {
  let best: BlockRule | null = null;
  for (const r of rules) if (name.startsWith(r.d) && (!best || r.d.length > best.d.length)) best = r;
  if (!best) return null;
  const rest = name.slice(best.d.length);
  for (const [d, l, t] of best.sub ?? []) {
    if (rest === d || rest.startsWith(`${d}.`)) return { ldmName: best.l + l + rest.slice(d.length), transform: t ?? NO_TRANSFORM };
  }
  return { ldmName: best.l + rest, transform: NO_TRANSFORM };
}


/** Every tensor of the components' weight specs with the single-file key it comes from (textEncoder2: SDXL only). */
export function mapLdmNames(layout: LdmLayout, specs: Record<Exclude<Component, 'textEncoder2'>, WeightSpec> & { textEncoder2?: WeightSpec }): LdmTensor[] {
  const out: LdmTensor[] = [];
  const rules: Record<Component, BlockRule[]> = {
    textEncoder: textBlockRules(layout), unet: unetBlockRules(layout), vae: vaeBlockRules(layout),
    textEncoder2: openClipRules(SGM_OPENCLIP_PREFIX, layout.text2Layers ?? 0),
  };
  for (const component of ['textEncoder', 'textEncoder2', 'unet', 'vae'] as const) {
    for (const [name, shape] of specs[component] ?? []) {
      const m = mapName(rules[component], name);
      if (!m) throw new Error(`internal: no LDM mapping for ${component} tensor "${name}"`);
      out.push({ component, name, shape, ...m });
    }
  }
  return out;
}

/** Keys single files commonly carry that oneword has no use for (EMA copies, schedule buffers…). */
export const IGNORED_LDM = [
  /^model_ema\./,
  /^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|posterior_variance|posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2|logvar|v_pred)$/,
  /^cond_stage_model\.transformer\.(text_model\.)?embeddings\.position_ids$/,
  /^cond_stage_model\.model\.(text_projection|logit_scale|attn_mask)$/,
  /^conditioner\.embedders\.0\.transformer\.text_model\.embeddings\.position_ids$/,
  /^conditioner\.embedders\.1\.model\.(logit_scale|attn_mask)$/,
  /^first_stage_model\.loss\./,
];

/** The numbers n of the keys matching `re` (its first group), sorted, each once. */
export function keyIndices(keys: string[], re: RegExp): number[] {
  const s = new Set<number>();
  for (const k of keys) { const m = re.exec(k); if (m) s.add(Number(m[1])); }
  return [...s].sort((a, b) => a - b);
}
