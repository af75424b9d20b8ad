// Configs read off an original-layout (CompVis/LDM, or SGM for SDXL) single file, whose only
// description of its architecture is its tensors' names and shapes. What no weight records
// (attention heads, norm groups, training resolution) follows the released SD 1.x / 2.x / XL
// configs; a file that differs needs its configs given (a diffusers folder's */config.json,
// see pipelines/checkpoint.ts).
import type { SafetensorsFile } from '../io/safetensors.ts';
import { CheckpointError } from '../io/weights.ts';
import {
  LDM_CLIP_PREFIX, LDM_OPENCLIP_PREFIX, LDM_UNET_PREFIX, LDM_VAE_PREFIX, SGM_OPENCLIP_PREFIX, keyIndices, type Family,
} from '../io/ldm-names.ts';
import type { CLIPTextConfig } from './clip-text.ts';
import { SDXL_TIME_IDS, validateUNet, type UNetConfig, type UNetDownBlockType, type UNetUpBlockType } from './unet-config.ts';
import type { VAEConfig } from './vae.ts';

/** One single file's tensors, with the shape lookups every reader below needs. */
export class LdmFile {
  readonly keys: string[];
  constructor(readonly file: SafetensorsFile) {
    this.keys = [...file.tensors.keys()];
  }
  get path(): string { return this.file.path; }
  has(key: string): boolean { return this.file.has(key); }
  some(re: RegExp): boolean { return this.keys.some((k) => re.test(k)); }
  indices(re: RegExp): number[] { return keyIndices(this.keys, re); }

  /** The shape of tensor `key`, which must exist with `rank` dimensions (`why`: what it tells). */
  need(key: string, why: string, rank: number): number[] {
    const t = this.file.tensors.get(key);
    if (!t) throw new CheckpointError(this.path, `missing tensor "${key}" (needed to work out ${why})`);
    if (t.shape.length !== rank) throw new CheckpointError(this.path, `tensor "${key}" has shape [${t.shape.join(', ')}], expected ${rank} dimensions`);
    return t.shape;
  }
}

/**
 * Text-encoder heads are not recorded in the weights. Every released SD text encoder has
 * 64-wide heads (CLIP ViT-L/14: 768/12, OpenCLIP ViT-H: 1024/16); narrower encoders are
 * test-size models, for which diffusers' tiny test pipelines use 4 heads.
 */
function clipHeads(width: number): number {
  if (width >= 256 && width % 64 === 0) return width / 64;
  return width % 4 === 0 ? 4 : 1;
}

/** The CLIP text config of an SD 1.x file, its text model under `clipPrefix`. */
export function clipTextConfigFromLdm(f: LdmFile, clipPrefix: string): CLIPTextConfig {
  const p = clipPrefix;
  const [V_, D] = f.need(`${p}embeddings.token_embedding.weight`, 'the text encoder width', 2);
  const layers = f.indices(new RegExp(`^${escapeRe(p)}encoder\\.layers\\.(\\d+)\\.`));
  if (!layers.length) throw new CheckpointError(f.path, `no text encoder layers under "${p}encoder.layers."`);
  return {
    vocab_size: V_, hidden_size: D,
    intermediate_size: f.need(`${p}encoder.layers.0.mlp.fc1.weight`, 'the text encoder MLP width', 2)[0],
    num_hidden_layers: layers.length, num_attention_heads: clipHeads(D),
    max_position_embeddings: f.need(`${p}embeddings.position_embedding.weight`, 'the text length', 2)[0],
    hidden_act: 'quick_gelu', layer_norm_eps: 1e-5,
    // as in openai/clip-vit-large-patch14's config.json, which SD 1.x diffusers folders ship
    pad_token_id: 1, bos_token_id: 0, eos_token_id: 2,
  };
}

/**
 * The CLIP text config of an OpenCLIP encoder, as diffusers converts it: SD 2.x's under
 * cond_stage_model.model (its last layer unused, so dropped), or SDXL's encoder 2 under
 * conditioner.embedders.1.model (every layer kept: the pooled output reads the last, through
 * ln_final and text_projection).
 */
export function openClipTextConfigFromLdm(f: LdmFile, family: Family = 'sd2'): CLIPTextConfig {
  const O = family === 'sdxl' ? SGM_OPENCLIP_PREFIX : LDM_OPENCLIP_PREFIX;
  const [V_, D] = f.need(`${O}token_embedding.weight`, 'the text encoder width', 2);
  const blocks = f.indices(new RegExp(`^${escapeRe(O)}transformer\\.resblocks\\.(\\d+)\\.`));
  // SD 2.x conditions on the penultimate OpenCLIP layer, so diffusers drops the last one.
  if (blocks.length < 2) throw new CheckpointError(f.path, `OpenCLIP text encoder has ${blocks.length} layers; ${family === 'sdxl' ? 'SDXL' : 'SD 2.x'} needs at least 2`);
  const c: CLIPTextConfig = {
    vocab_size: V_, hidden_size: D,
    intermediate_size: f.need(`${O}transformer.resblocks.0.mlp.c_fc.weight`, 'the text encoder MLP width', 2)[0],
    num_hidden_layers: family === 'sdxl' ? blocks.length : blocks.length - 1, num_attention_heads: clipHeads(D),
    max_position_embeddings: f.need(`${O}positional_embedding`, 'the text length', 2)[0],
    hidden_act: 'gelu', layer_norm_eps: 1e-5, pad_token_id: 1, bos_token_id: 0, eos_token_id: 2,
  };
  if (family === 'sdxl') c.projection_dim = f.need(`${O}text_projection`, 'the pooled text width', 2)[1];
  return c;
}

/** Where the SD 1.x CLIP text model sits: under `text_model.` (usual) or directly (old transformers). */
export function ldmClipPrefix(f: LdmFile): string {
  return f.has(`${LDM_CLIP_PREFIX}text_model.embeddings.token_embedding.weight`) ? `${LDM_CLIP_PREFIX}text_model.` : LDM_CLIP_PREFIX;
}

/** The UNet's levels as the file's flat input_blocks list encodes them. */
function unetLevels(f: LdmFile): { levels: number; layersPerBlock: number } {
  const U = LDM_UNET_PREFIX;
  const inIds = f.indices(/^model\.diffusion_model\.input_blocks\.(\d+)\./);
  const downs = inIds.filter((i) => f.has(`${U}input_blocks.${i}.0.op.weight`));
  const levels = downs.length + 1;
  const L = (inIds.length - 1 - downs.length) / levels;
  if (!Number.isInteger(L) || L < 1 || inIds.length !== inIds[inIds.length - 1] + 1 || downs.some((d, i) => d !== 1 + i * (L + 1) + L)) {
    throw new CheckpointError(f.path, `unrecognised UNet layout: ${inIds.length} input blocks with downsamplers at [${downs.join(', ')}]`);
  }
  return { levels, layersPerBlock: L };
}

/**
 * Transformer depth per level (1 where a level has no attention, as SDXL's config writes it).
 * diffusers gives the mid block the last level's depth, so a file whose mid block differs
 * from an attention-bearing last level has no diffusers config.
 */
function unetDepths(f: LdmFile, levels: number, L: number, down: UNetDownBlockType[]): number | number[] {
  const count = (block: string) => f.indices(new RegExp(`^model\\.diffusion_model\\.${escapeRe(block)}\\.1\\.transformer_blocks\\.(\\d+)\\.`)).length;
  const depth = down.map((t, i) => (t === 'CrossAttnDownBlock2D' ? count(`input_blocks.${1 + i * (L + 1)}`) : 1));
  const mid = count('middle_block');
  if (down[levels - 1] === 'CrossAttnDownBlock2D' && depth[levels - 1] !== mid) {
    throw new CheckpointError(f.path, `UNet middle block has ${mid} transformer layers but the last level has ${depth[levels - 1]}; diffusers' UNet gives both the same depth`);
  }
  depth[levels - 1] = mid;
  return depth.every((d) => d === depth[0]) ? depth[0] : depth;
}

/**
 * SDXL's text_time conditioning off label_emb.0.0 [E, Dp + 6A], with Dp the width of encoder 2's
 * text_projection; all null for SD 1.x/2.x files.
 */
function textTimeFromLdm(f: LdmFile, family: Family): Pick<UNetConfig, 'addition_embed_type' | 'addition_time_embed_dim' | 'projection_class_embeddings_input_dim'> {
  if (family !== 'sdxl') return { addition_embed_type: null, addition_time_embed_dim: null, projection_class_embeddings_input_dim: null };
  const [, input] = f.need(`${LDM_UNET_PREFIX}label_emb.0.0.weight`, "the UNet's pooled-text and time-id conditioning", 2);
  const dp = f.need(`${SGM_OPENCLIP_PREFIX}text_projection`, 'the pooled text width', 2)[1];
  const a = (input - dp) / SDXL_TIME_IDS;
  if (!Number.isInteger(a) || a <= 0 || a % 2 !== 0) {
    throw new CheckpointError(f.path, `UNet label_emb.0.0 takes ${input} inputs, which is not the pooled text width ${dp} plus ${SDXL_TIME_IDS} even-width time-id embeddings`);
  }
  return { addition_embed_type: 'text_time', addition_time_embed_dim: a, projection_class_embeddings_input_dim: input };
}

/**
 * The UNet config of a single file. `sampleSize` (latent pixels) is not recorded in the
 * weights; heads are not either: SD 1.x configs give 8 heads everywhere, SD 2.x and SDXL
 * configs 64-wide heads per level (diffusers' single-file conversion: channels / 64; SDXL
 * base: [5, 10, 20]); nor are norm groups (32 in every release).
 */
export function unetConfigFromLdm(f: LdmFile, family: Family, sampleSize: number): UNetConfig {
  const U = LDM_UNET_PREFIX;
  if (family !== 'sdxl' && f.some(/^model\.diffusion_model\.label_emb\./)) throw new CheckpointError(f.path, 'class-conditioned UNet (label_emb, e.g. an upscaler) is not supported');
  const { levels, layersPerBlock: L } = unetLevels(f);
  const [C0, inCh, kIn] = f.need(`${U}input_blocks.0.0.weight`, 'the UNet input channels', 4);
  const boc: number[] = [];
  const downTypes: UNetDownBlockType[] = [];
  const upTypes: UNetUpBlockType[] = [];
  for (let i = 0; i < levels; i++) {
    const k = 1 + i * (L + 1);
    boc.push(f.need(`${U}input_blocks.${k}.0.out_layers.3.weight`, `the channels of UNet level ${i}`, 4)[0]);
    downTypes.push(f.has(`${U}input_blocks.${k}.1.proj_in.weight`) ? 'CrossAttnDownBlock2D' : 'DownBlock2D');
    upTypes.push(f.has(`${U}output_blocks.${i * (L + 1)}.1.proj_in.weight`) ? 'CrossAttnUpBlock2D' : 'UpBlock2D');
  }
  const midProj = f.file.tensors.get(`${U}middle_block.1.proj_in.weight`);
  if (!midProj) throw new CheckpointError(f.path, 'UNet middle block has no transformer (middle_block.1.proj_in.weight): not an SD 1.x/2.x/XL UNet');
  const crossKey = f.keys.find((k) => k.startsWith(U) && k.endsWith('.transformer_blocks.0.attn2.to_k.weight'));
  if (!crossKey) throw new CheckpointError(f.path, 'UNet has no cross-attention (attn2.to_k) weights');
  const [T] = f.need(`${U}time_embed.0.weight`, 'the time embedding width', 2);
  if (T !== 4 * C0) throw new CheckpointError(f.path, `UNet time embedding is ${T} wide; SD UNets use 4 × ${C0}`);
  const [outCh, , kOut] = f.need(`${U}out.2.weight`, 'the UNet output channels', 4);
  const c: UNetConfig = {
    sample_size: sampleSize,
    in_channels: inCh, out_channels: outCh, center_input_sample: false, flip_sin_to_cos: true, freq_shift: 0,
    down_block_types: downTypes, mid_block_type: 'UNetMidBlock2DCrossAttn', up_block_types: upTypes,
    block_out_channels: boc, layers_per_block: L, downsample_padding: 1, mid_block_scale_factor: 1, act_fn: 'silu',
    norm_num_groups: 32, norm_eps: 1e-5, cross_attention_dim: f.file.tensors.get(crossKey)!.shape[1],
    transformer_layers_per_block: unetDepths(f, levels, L, downTypes),
    attention_head_dim: family === 'sd1' ? 8 : boc.map((ch) => (ch % 64 === 0 ? ch / 64 : 1)),
    num_attention_heads: null,
    use_linear_projection: midProj.shape.length === 2,
    // Only changes fp16 numerics (attention computed in fp32); SD 2.1 sets it, and it is harmless in fp32.
    upcast_attention: family === 'sd2',
    resnet_time_scale_shift: 'default', time_embedding_type: 'positional', conv_in_kernel: kIn, conv_out_kernel: kOut,
    ...textTimeFromLdm(f, family),
  };
  validateUNet(c, f.path);
  return c;
}

/** The VAE config of a single file; `sampleSize` (image pixels) is not recorded in the weights, nor is the latent scale (SD 1.x/2.x 0.18215, SDXL 0.13025). */
export function vaeConfigFromLdm(f: LdmFile, sampleSize: number, family: Family = 'sd1'): VAEConfig {
  const V = LDM_VAE_PREFIX;
  const vLevels = f.indices(/^first_stage_model\.encoder\.down\.(\d+)\./);
  if (!vLevels.length) throw new CheckpointError(f.path, 'no VAE encoder levels (first_stage_model.encoder.down.*)');
  const vBoc = vLevels.map((i) => f.need(`${V}encoder.down.${i}.block.0.conv1.weight`, `the channels of VAE level ${i}`, 4)[0]);
  const [, vIn] = f.need(`${V}encoder.conv_in.weight`, 'the VAE input channels', 4);
  const [, lat] = f.need(`${V}decoder.conv_in.weight`, 'the latent channels', 4);
  return {
    in_channels: vIn, out_channels: f.need(`${V}decoder.conv_out.weight`, 'the VAE output channels', 4)[0],
    down_block_types: vBoc.map(() => 'DownEncoderBlock2D' as const), up_block_types: vBoc.map(() => 'UpDecoderBlock2D' as const),
    block_out_channels: vBoc, layers_per_block: f.indices(/^first_stage_model\.encoder\.down\.0\.block\.(\d+)\./).length,
    act_fn: 'silu', latent_channels: lat, norm_num_groups: 32,
    sample_size: sampleSize, scaling_factor: family === 'sdxl' ? 0.13025 : 0.18215, shift_factor: null, force_upcast: true,
    use_quant_conv: f.has(`${V}quant_conv.weight`), use_post_quant_conv: f.has(`${V}post_quant_conv.weight`),
    mid_block_add_attention: f.has(`${V}encoder.mid.attn_1.q.weight`),
  };
}

function escapeRe(s: string): string { return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'); }
