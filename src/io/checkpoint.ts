// Stable Diffusion 1.x / 2.x checkpoints on disk → typed configs + lazy weights under
// diffusers' names. Two layouts are understood:
//  * diffusers folders (model_index.json, text_encoder/, unet/, vae/, scheduler/, tokenizer/)
//  * single .safetensors files in the original CompVis/LDM naming (model.diffusion_model.*,
//    first_stage_model.*, cond_stage_model.*), whose configuration is inferred from tensor
//    names and shapes and whose names are mapped onto diffusers' by one table (ldmTensorMap).
// Nothing is read beyond headers and configs until a weight is asked for; fp16/bf16 weights
// are cast to float32 as they are read. Pickles (.ckpt/.pt/.bin) are refused, never opened.
import { existsSync, statSync, readFileSync, readdirSync, openSync, readSync, closeSync, fstatSync } from 'node:fs';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { SafetensorsFile, MAX_HEADER_BYTES, type SafeDType } from './safetensors.ts';
import { OnewordError } from '../errors.ts';
import { assertConfigBounds, CLIP_TEXT_BOUNDS, MAX_CONFIG_BYTES, SCHEDULER_BOUNDS, UNET_BOUNDS, VAE_BOUNDS } from './config-bounds.ts';

export class CheckpointError extends OnewordError {
  constructor(readonly path: string, problem: string) {
    super(`${path}: ${problem}`);
    this.name = 'CheckpointError';
  }
}

// ---------------------------------------------------------------------------------------
// Configurations (diffusers / transformers field names)

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
}

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
}

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

export type Family = 'sd1' | 'sd2';
export type PredictionType = 'epsilon' | 'v_prediction';

// ---------------------------------------------------------------------------------------
// Weights

export interface WeightSet {
  /** Diffusers names of this component's weights (no component prefix), sorted. */
  names(): string[];
  has(name: string): boolean;
  shape(name: string): number[];
  /** dtype as stored on disk (float32() casts F16/BF16/F64). */
  dtype(name: string): SafeDType;
  /** Reads (and casts) on demand; nothing is cached, so read each weight once. */
  float32(name: string): Float32Array;
  /** Where the raw little-endian float32 bytes live in a file (for ONNX external data); null when stored in another dtype. */
  fileLocation(name: string): { path: string; offset: number; length: number } | null;
  /** The weights under `prefix.` with that prefix removed (e.g. scope('text_model')). */
  scope(prefix: string): WeightSet;
}

export type Transform =
  | { kind: 'none' }
  /** same bytes, trailing size-1 dims dropped (LDM VAE attention convs → linears) */
  | { kind: 'reshape' }
  /** part `index` of `count` equal parts along dim 0 (OpenCLIP's fused in_proj → q/k/v) */
  | { kind: 'chunk'; index: number; count: number };

interface Source { file: SafetensorsFile; tensor: string; transform: Transform }
interface Entry { shape: number[]; src: Source }

class MappedWeights implements WeightSet {
  constructor(private readonly label: string, private readonly entries: Map<string, Entry>) {}

  names(): string[] { return [...this.entries.keys()].sort(); }
  has(name: string): boolean { return this.entries.has(name); }
  shape(name: string): number[] { return this.get(name).shape.slice(); }
  dtype(name: string): SafeDType { const s = this.get(name).src; return s.file.info(s.tensor).dtype; }

  float32(name: string): Float32Array {
    const { shape, src } = this.get(name);
    if (src.transform.kind !== 'chunk') return src.file.readFloat32(src.tensor);
    const n = product(shape);
    return src.file.readFloat32(src.tensor, { start: src.transform.index * n, count: n });
  }

  fileLocation(name: string): { path: string; offset: number; length: number } | null {
    const { shape, src } = this.get(name);
    const info = src.file.info(src.tensor);
    if (info.dtype !== 'F32') return null;
    const length = product(shape) * 4;
    const offset = info.offset + (src.transform.kind === 'chunk' ? src.transform.index * length : 0);
    return { path: src.file.path, offset, length };
  }

  scope(prefix: string): WeightSet {
    const p = prefix.endsWith('.') ? prefix : `${prefix}.`;
    const sub = new Map<string, Entry>();
    for (const [k, v] of this.entries) if (k.startsWith(p)) sub.set(k.slice(p.length), v);
    return new MappedWeights(`${this.label} (${p.slice(0, -1)})`, sub);
  }

  private get(name: string): Entry {
    const e = this.entries.get(name);
    if (!e) throw new CheckpointError(this.label, `no weight named "${name}"`);
    return e;
  }
}

// ---------------------------------------------------------------------------------------
// The checkpoint

export interface StableDiffusionCheckpoint {
  source: string;
  layout: 'diffusers' | 'single-file';
  family: Family;
  textEncoderConfig: CLIPTextConfig;
  unetConfig: UNetConfig;
  vaeConfig: VAEConfig;
  /** scheduler/scheduler_config.json as written, or the SD1/SD2 default for single files (see defaultSchedulerConfig). */
  schedulerConfig: Record<string, unknown>;
  predictionType: PredictionType;
  /** The diffusers tokenizer/ folder when present; single files carry no tokenizer. */
  tokenizerDir: string | null;
  textEncoder: WeightSet;
  unet: WeightSet;
  vae: WeightSet;
  /** Non-fatal oddities (ignored tensors, assumed prediction type, missing fp16 variant…). */
  warnings: string[];
}

export interface LoadOptions {
  /** Prefer `*.fp16.safetensors` in diffusers folders (cast to float32 on read). */
  variant?: 'fp16';
  /** Overrides the prediction type from the scheduler config or single-file detection. */
  predictionType?: PredictionType;
}

/**
 * Loads a diffusers folder (or its model_index.json) or a single-file LDM `.safetensors`.
 * Throws CheckpointError (or SafetensorsError for a corrupt file) naming the file and problem.
 */
export function loadCheckpoint(path: string, opts: LoadOptions = {}): StableDiffusionCheckpoint {
  const abs = resolve(path);
  let st;
  try { st = statSync(abs); } catch { throw new CheckpointError(abs, 'no such file or folder'); }
  if (st.isDirectory()) return loadDiffusers(abs, opts);
  if (basename(abs) === 'model_index.json') return loadDiffusers(dirname(abs), opts);
  return loadSingleFile(abs, opts);
}

// ---------------------------------------------------------------------------------------
// Config parsing: fill defaults as diffusers/transformers do, reject what oneword cannot run.

class Fields {
  constructor(readonly json: Record<string, unknown>, readonly path: string) {}
  private fail(key: string, want: string): never {
    throw new CheckpointError(this.path, `"${key}" must be ${want}, got ${JSON.stringify(this.json[key])}`);
  }
  private raw(key: string): unknown { const v = this.json[key]; return v === null ? undefined : v; }
  int(key: string, def: number, min = 0): number {
    const v = this.raw(key) ?? def;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) this.fail(key, `an integer ≥ ${min}`);
    return v;
  }
  num(key: string, def: number): number {
    const v = this.raw(key) ?? def;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(key, 'a number');
    return v;
  }
  nullableNum(key: string): number | null {
    const v = this.raw(key);
    if (v === undefined) return null;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(key, 'a number or null');
    return v;
  }
  bool(key: string, def: boolean): boolean {
    const v = this.raw(key) ?? def;
    if (typeof v !== 'boolean') this.fail(key, 'true or false');
    return v;
  }
  oneOf<T extends string>(key: string, def: T, allowed: readonly T[], what: string): T {
    const v = this.raw(key) ?? def;
    if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
      throw new CheckpointError(this.path, `unsupported ${what} ${JSON.stringify(v)} in "${key}" (oneword supports ${allowed.join(', ')})`);
    }
    return v as T;
  }
  intList(key: string, def: number[], min = 1): number[] {
    const v = this.raw(key) ?? def;
    if (!Array.isArray(v) || v.length === 0 || !v.every((x) => Number.isInteger(x) && x >= min)) this.fail(key, `a non-empty list of integers ≥ ${min}`);
    return (v as number[]).slice();
  }
  intOrList(key: string, def: number | number[]): number | number[] {
    const v = this.raw(key) ?? def;
    if (Array.isArray(v)) {
      if (v.length === 0 || !v.every((x) => Number.isInteger(x) && x >= 1)) this.fail(key, 'a positive integer or a list of them');
      return (v as number[]).slice();
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) this.fail(key, 'a positive integer or a list of them');
    return v;
  }
  blockList<T extends string>(key: string, def: T[], allowed: readonly T[], what: string): T[] {
    const v = this.raw(key) ?? def;
    if (!Array.isArray(v) || v.length === 0) this.fail(key, 'a non-empty list of block types');
    for (const b of v as unknown[]) {
      if (typeof b !== 'string' || !(allowed as readonly string[]).includes(b)) {
        throw new CheckpointError(this.path, `unknown ${what} ${JSON.stringify(b)} in "${key}" (oneword supports ${allowed.join(', ')})`);
      }
    }
    return (v as T[]).slice();
  }
}

export function parseCLIPTextConfig(json: Record<string, unknown>, path: string): CLIPTextConfig {
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
  assertConfigBounds(c, CLIP_TEXT_BOUNDS, (problem) => new CheckpointError(path, problem));
  if (c.hidden_size % c.num_attention_heads !== 0) {
    throw new CheckpointError(path, `hidden_size ${c.hidden_size} is not divisible by num_attention_heads ${c.num_attention_heads}`);
  }
  return c;
}

/** UNet2DConditionModel options that select architectures oneword does not implement, with their defaults. */
const UNET_UNSUPPORTED: [key: string, def: unknown, what: string][] = [
  ['addition_embed_type', null, 'added conditioning (SDXL-style)'],
  ['addition_time_embed_dim', null, 'added time conditioning (SDXL-style)'],
  ['class_embed_type', null, 'class embeddings'],
  ['num_class_embeds', null, 'class embeddings'],
  ['projection_class_embeddings_input_dim', null, 'class embeddings'],
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

export function parseUNetConfig(json: Record<string, unknown>, path: string): UNetConfig {
  const f = new Fields(json, path);
  for (const [key, def, what] of UNET_UNSUPPORTED) {
    const v = json[key];
    // null and false both mean "off" to diffusers for the boolean-ish options
    const isDefault = v === undefined || v === def || v === null ||
      ((def === false || def === null) && (v === false || (Array.isArray(v) && v.every((x) => x === false))));
    if (!isDefault) throw new CheckpointError(path, `UNet uses ${what} ("${key}": ${JSON.stringify(v)}), which oneword does not support (it runs Stable Diffusion 1.x/2.x UNets)`);
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
  };
  assertConfigBounds(c, UNET_BOUNDS, (problem) => new CheckpointError(path, problem));
  validateUNet(c, path);
  return c;
}

function validateUNet(c: UNetConfig, path: string): void {
  const n = c.block_out_channels.length;
  if (c.down_block_types.length !== n || c.up_block_types.length !== n) {
    throw new CheckpointError(path, `UNet has ${n} block_out_channels but ${c.down_block_types.length} down and ${c.up_block_types.length} up blocks`);
  }
  for (const [k, v] of [['attention_head_dim', c.attention_head_dim], ['num_attention_heads', c.num_attention_heads], ['transformer_layers_per_block', c.transformer_layers_per_block]] as const) {
    if (Array.isArray(v) && v.length !== n) throw new CheckpointError(path, `"${k}" lists ${v.length} values for ${n} blocks`);
  }
  if (c.conv_in_kernel % 2 === 0 || c.conv_out_kernel % 2 === 0) throw new CheckpointError(path, 'conv_in_kernel and conv_out_kernel must be odd');
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

export function parseVAEConfig(json: Record<string, unknown>, path: string): VAEConfig {
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

/** Heads per UNet level (down-block order; up blocks use it reversed, the mid block the last entry). */
export function unetAttentionHeads(c: UNetConfig): number[] {
  return perBlock(c.num_attention_heads ?? c.attention_head_dim, c.block_out_channels.length);
}

/** Transformer depth per UNet level (down-block order). */
export function unetTransformerLayers(c: UNetConfig): number[] {
  return perBlock(c.transformer_layers_per_block, c.block_out_channels.length);
}

function perBlock(v: number | number[], n: number): number[] {
  return Array.isArray(v) ? v.slice() : new Array<number>(n).fill(v);
}

/** SD 1.x: PNDM as in runwayml/stable-diffusion-v1-5; SD 2.x: DDIM as in stabilityai/stable-diffusion-2-1. */
export function defaultSchedulerConfig(family: Family, predictionType: PredictionType): Record<string, unknown> {
  const common = {
    beta_end: 0.012, beta_schedule: 'scaled_linear', beta_start: 0.00085, clip_sample: false, num_train_timesteps: 1000,
    set_alpha_to_one: false, skip_prk_steps: true, steps_offset: 1, trained_betas: null,
  };
  if (family === 'sd1') {
    return { _class_name: 'PNDMScheduler', ...common, ...(predictionType === 'epsilon' ? {} : { prediction_type: predictionType }) };
  }
  return { _class_name: 'DDIMScheduler', ...common, prediction_type: predictionType };
}

// ---------------------------------------------------------------------------------------
// Expected tensors (diffusers names → shapes) for a configuration

export function clipTextTensorShapes(c: CLIPTextConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
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
  return m;
}

export function unetTensorShapes(c: UNetConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
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
  transformer('mid_block.attentions.0', Cl, depth[n - 1]);
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

export function vaeTensorShapes(c: VAEConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
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

// ---------------------------------------------------------------------------------------
// LDM (single-file) names ↔ diffusers names: one table of block prefixes, each optionally
// with a table of sub-module renames. A diffusers name maps through the longest matching
// block prefix, then through the first matching sub-module rename.

export const LDM_UNET_PREFIX = 'model.diffusion_model.';
export const LDM_VAE_PREFIX = 'first_stage_model.';
export const LDM_CLIP_PREFIX = 'cond_stage_model.transformer.';
export const LDM_OPENCLIP_PREFIX = 'cond_stage_model.model.';

type SubRule = [diffusers: string, ldm: string, transform?: Transform];
interface BlockRule { d: string; l: string; sub?: readonly SubRule[] }

const NONE: Transform = { kind: 'none' };
const RESHAPE: Transform = { kind: 'reshape' };
const chunk = (index: number): Transform => ({ kind: 'chunk', index, count: 3 });

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

export type Component = 'textEncoder' | 'unet' | 'vae';

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

export interface LdmLayout {
  family: Family;
  /** where the SD1 CLIP text model lives: `cond_stage_model.transformer.text_model.` (usual) or `cond_stage_model.transformer.` (old transformers) */
  clipPrefix?: string;
}

function unetBlockRules(c: UNetConfig): BlockRule[] {
  const U = LDM_UNET_PREFIX;
  const L = c.layers_per_block;
  const n = c.block_out_channels.length;
  const r: BlockRule[] = [
    { d: 'conv_in.', l: `${U}input_blocks.0.0.` },
    { d: 'time_embedding.linear_1.', l: `${U}time_embed.0.` },
    { d: 'time_embedding.linear_2.', l: `${U}time_embed.2.` },
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
    const up = c.up_block_types[i] === 'CrossAttnUpBlock2D' ? 2 : 1;
    r.push({ d: `up_blocks.${i}.upsamplers.0.conv.`, l: `${U}output_blocks.${i * (L + 1) + L}.${up}.conv.` });
  }
  return r;
}

function vaeBlockRules(c: VAEConfig): BlockRule[] {
  const V = LDM_VAE_PREFIX;
  const n = c.block_out_channels.length;
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
    for (let j = 0; j < c.layers_per_block; j++) {
      r.push({ d: `encoder.down_blocks.${i}.resnets.${j}.`, l: `${V}encoder.down.${i}.block.${j}.`, sub: VAE_RESNET });
    }
    r.push({ d: `encoder.down_blocks.${i}.downsamplers.0.`, l: `${V}encoder.down.${i}.downsample.` });
    // the LDM decoder numbers its levels from the highest resolution, diffusers from the lowest
    for (let j = 0; j <= c.layers_per_block; j++) {
      r.push({ d: `decoder.up_blocks.${i}.resnets.${j}.`, l: `${V}decoder.up.${n - 1 - i}.block.${j}.`, sub: VAE_RESNET });
    }
    r.push({ d: `decoder.up_blocks.${i}.upsamplers.0.`, l: `${V}decoder.up.${n - 1 - i}.upsample.` });
  }
  return r;
}

function textBlockRules(layout: LdmLayout, c: CLIPTextConfig): BlockRule[] {
  if (layout.family === 'sd1') return [{ d: 'text_model.', l: layout.clipPrefix ?? `${LDM_CLIP_PREFIX}text_model.` }];
  const O = LDM_OPENCLIP_PREFIX;
  const r: BlockRule[] = [
    { d: 'text_model.embeddings.token_embedding.weight', l: `${O}token_embedding.weight` },
    { d: 'text_model.embeddings.position_embedding.weight', l: `${O}positional_embedding` },
    { d: 'text_model.final_layer_norm.', l: `${O}ln_final.` },
  ];
  for (let i = 0; i < c.num_hidden_layers; i++) {
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
    if (rest === d || rest.startsWith(`${d}.`)) return { ldmName: best.l + l + rest.slice(d.length), transform: t ?? NONE };
  }
  return { ldmName: best.l + rest, transform: NONE };
}

/** Every diffusers tensor of the three components with the single-file key it comes from. */
export function ldmTensorMap(layout: LdmLayout, text: CLIPTextConfig, unet: UNetConfig, vae: VAEConfig): LdmTensor[] {
  const out: LdmTensor[] = [];
  const parts: [Component, BlockRule[], Map<string, number[]>][] = [
    ['textEncoder', textBlockRules(layout, text), clipTextTensorShapes(text)],
    ['unet', unetBlockRules(unet), unetTensorShapes(unet)],
    ['vae', vaeBlockRules(vae), vaeTensorShapes(vae)],
  ];
  for (const [component, rules, shapes] of parts) {
    for (const [name, shape] of shapes) {
      const m = mapName(rules, name);
      if (!m) throw new Error(`internal: no LDM mapping for ${component} tensor "${name}"`);
      out.push({ component, name, shape, ...m });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Resolving expected tensors against files, with one error listing every problem

const FLOAT_DTYPES = new Set<SafeDType>(['F32', 'F16', 'BF16', 'F64']);

function shapeFits(src: number[], want: number[], t: Transform): boolean {
  if (t.kind === 'chunk') return src.length === want.length && src[0] === want[0] * t.count && src.slice(1).every((d, i) => d === want[i + 1]);
  if (t.kind === 'reshape') return src.length >= want.length && want.every((d, i) => d === src[i]) && src.slice(want.length).every((d) => d === 1);
  return src.length === want.length && src.every((d, i) => d === want[i]);
}

function listSome(xs: string[], max = 8): string {
  return xs.slice(0, max).join('; ') + (xs.length > max ? `; … and ${xs.length - max} more` : '');
}

function resolveComponent(
  where: string, label: string, expected: Map<string, number[]>,
  lookup: (name: string) => { src: Source; srcLabel: string } | { missing: string },
): MappedWeights {
  const entries = new Map<string, Entry>();
  const missing: string[] = [];
  const wrong: string[] = [];
  for (const [name, shape] of expected) {
    const r = lookup(name);
    if ('missing' in r) { missing.push(r.missing); continue; }
    const info = r.src.file.info(r.src.tensor);
    if (!FLOAT_DTYPES.has(info.dtype)) { wrong.push(`${r.srcLabel} has dtype ${info.dtype}, expected a float type`); continue; }
    if (!shapeFits(info.shape, shape, r.src.transform)) {
      const want = r.src.transform.kind === 'chunk' ? [shape[0] * r.src.transform.count, ...shape.slice(1)] : shape;
      wrong.push(`${r.srcLabel} has shape [${info.shape.join(', ')}], expected [${want.join(', ')}]`);
      continue;
    }
    entries.set(name, { shape, src: r.src });
  }
  const problems: string[] = [];
  if (missing.length) problems.push(`${missing.length} of ${expected.size} ${label} tensors are missing: ${listSome(missing)}`);
  if (wrong.length) problems.push(`${wrong.length} ${label} tensors do not fit the configuration: ${listSome(wrong)}`);
  if (problems.length) throw new CheckpointError(where, problems.join('. '));
  return new MappedWeights(`${where} [${label}]`, entries);
}

function crossCheck(where: string, t: CLIPTextConfig, u: UNetConfig, v: VAEConfig): void {
  if (u.cross_attention_dim !== t.hidden_size) {
    throw new CheckpointError(where, `text encoder width ${t.hidden_size} does not match the UNet's cross_attention_dim ${u.cross_attention_dim} (components from different models?)`);
  }
  if (u.in_channels !== v.latent_channels || u.out_channels !== v.latent_channels) {
    const kind = u.in_channels === 9 ? ' (an inpainting model)' : u.in_channels === 5 ? ' (a depth-conditioned model)' : '';
    throw new CheckpointError(where, `UNet takes ${u.in_channels} and returns ${u.out_channels} channels but the VAE has ${v.latent_channels} latent channels${kind}; oneword supports text-to-image UNets only`);
  }
}

// ---------------------------------------------------------------------------------------
// diffusers folders

const PICKLE_EXTS = new Set(['.ckpt', '.pt', '.pth', '.bin', '.pkl']);

function readJson(path: string): Record<string, unknown> {
  let text: string;
  if (existsSync(path) && statSync(path).size > MAX_CONFIG_BYTES) throw new CheckpointError(path, `is ${statSync(path).size} bytes; a config file may have at most ${MAX_CONFIG_BYTES}`);
  try { text = readFileSync(path, 'utf8'); } catch { throw new CheckpointError(path, 'missing (expected in a diffusers model folder)'); }
  let v: unknown;
  try { v = JSON.parse(text); } catch (e) { throw new CheckpointError(path, `invalid JSON (${(e as Error).message})`); }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new CheckpointError(path, 'expected a JSON object');
  return v as Record<string, unknown>;
}

/** Picks a component's weights: plain or fp16 variant, single file or sharded index. */
function componentFiles(dir: string, base: string, variant: 'fp16' | undefined, warnings: string[]): Map<string, SafetensorsFile> {
  const plain = [`${base}.safetensors`, `${base}.safetensors.index.json`];
  const fp16 = [`${base}.fp16.safetensors`, `${base}.safetensors.index.fp16.json`];
  const order = variant === 'fp16' ? [...fp16, ...plain] : [...plain, ...fp16];
  const chosen = order.find((f) => existsSync(join(dir, f)));
  if (!chosen) {
    const here = existsSync(dir) ? readdirSync(dir) : [];
    const pickle = here.find((f) => PICKLE_EXTS.has(extname(f)));
    if (pickle) throw new CheckpointError(join(dir, pickle), pickleProblem(join(dir, pickle)));
    throw new CheckpointError(dir, `no weights found (looked for ${order.join(', ')})`);
  }
  if (variant === 'fp16' && plain.includes(chosen)) warnings.push(`${dir}: no fp16 variant, using ${chosen}`);
  const map = new Map<string, SafetensorsFile>();
  if (chosen.endsWith('.json')) {
    const idxPath = join(dir, chosen);
    const wm = readJson(idxPath).weight_map;
    if (typeof wm !== 'object' || wm === null) throw new CheckpointError(idxPath, 'no "weight_map" object');
    const files = new Map<string, SafetensorsFile>();
    for (const [name, file] of Object.entries(wm as Record<string, unknown>)) {
      if (typeof file !== 'string' || file.includes('/') || file.includes('\\')) throw new CheckpointError(idxPath, `bad shard name for "${name}"`);
      let f = files.get(file);
      if (!f) { f = SafetensorsFile.open(join(dir, file)); files.set(file, f); }
      if (!f.has(name)) throw new CheckpointError(f.path, `index ${chosen} places "${name}" in this shard, but it is not there`);
      map.set(name, f);
    }
  } else {
    const f = SafetensorsFile.open(join(dir, chosen));
    for (const name of f.tensors.keys()) map.set(name, f);
  }
  return map;
}

/** Older diffusers saved the VAE mid-block attention under these names; diffusers still loads them. */
const DEPRECATED_VAE_ATTENTION: [string, string][] = [['to_q', 'query'], ['to_k', 'key'], ['to_v', 'value'], ['to_out.0', 'proj_attn']];
const IGNORED_DIFFUSERS_TENSORS = new Set(['text_model.embeddings.position_ids']);

function loadDiffusers(dir: string, opts: LoadOptions): StableDiffusionCheckpoint {
  const warnings: string[] = [];
  const indexPath = join(dir, 'model_index.json');
  if (existsSync(indexPath)) {
    const idx = readJson(indexPath);
    const cls = idx._class_name;
    if (typeof cls === 'string' && /XL/.test(cls)) {
      throw new CheckpointError(indexPath, `${cls} is an SDXL pipeline; oneword supports Stable Diffusion 1.x and 2.x`);
    }
    for (const part of ['text_encoder', 'unet', 'vae']) {
      if (idx[part] === undefined || (Array.isArray(idx[part]) && idx[part][0] === null)) {
        throw new CheckpointError(indexPath, `the pipeline has no ${part} component`);
      }
    }
  } else if (!existsSync(join(dir, 'unet', 'config.json'))) {
    throw new CheckpointError(dir, unknownFolderProblem(dir));
  }

  const textPath = join(dir, 'text_encoder', 'config.json');
  const unetPath = join(dir, 'unet', 'config.json');
  const vaePath = join(dir, 'vae', 'config.json');
  const textCfg = parseCLIPTextConfig(readJson(textPath), textPath);
  const unetCfg = parseUNetConfig(readJson(unetPath), unetPath);
  const vaeCfg = parseVAEConfig(readJson(vaePath), vaePath);
  crossCheck(dir, textCfg, unetCfg, vaeCfg);
  // OpenAI CLIP (SD 1.x) uses quick_gelu; OpenCLIP ViT-H (SD 2.x) uses gelu.
  const family: Family = textCfg.hidden_act === 'gelu' ? 'sd2' : 'sd1';

  const load = (sub: string, base: string, label: string, expected: Map<string, number[]>, aliases: (n: string) => string[]) => {
    const compDir = join(dir, sub);
    const files = componentFiles(compDir, base, opts.variant, warnings);
    const used = new Set<string>();
    const ws = resolveComponent(compDir, label, expected, (name) => {
      for (const cand of [name, ...aliases(name)]) {
        const f = files.get(cand);
        if (f) {
          used.add(cand);
          return { src: { file: f, tensor: cand, transform: cand === name ? NONE : RESHAPE }, srcLabel: `"${cand}" (${basename(f.path)})` };
        }
      }
      return { missing: `"${name}"` };
    });
    const extra = [...files.keys()].filter((k) => !used.has(k) && !IGNORED_DIFFUSERS_TENSORS.has(k));
    if (extra.length) warnings.push(`${compDir}: ignored ${extra.length} tensors the configuration does not use: ${listSome(extra, 5)}`);
    return ws;
  };
  const textEncoder = load('text_encoder', 'model', 'text encoder', clipTextTensorShapes(textCfg), () => []);
  const unet = load('unet', 'diffusion_pytorch_model', 'UNet', unetTensorShapes(unetCfg), () => []);
  const vae = load('vae', 'diffusion_pytorch_model', 'VAE', vaeTensorShapes(vaeCfg), (name) => {
    const m = /^((?:en|de)coder\.mid_block\.attentions\.0\.)(to_q|to_k|to_v|to_out\.0)(\.(?:weight|bias))$/.exec(name);
    if (!m) return [];
    return [m[1] + DEPRECATED_VAE_ATTENTION.find(([a]) => a === m[2])![1] + m[3]];
  });

  const schedPath = join(dir, 'scheduler', 'scheduler_config.json');
  let schedulerConfig: Record<string, unknown>;
  if (existsSync(schedPath)) {
    schedulerConfig = readJson(schedPath);
    assertConfigBounds(schedulerConfig, SCHEDULER_BOUNDS, (problem) => new CheckpointError(schedPath, problem));
  } else {
    schedulerConfig = defaultSchedulerConfig(family, 'epsilon');
    warnings.push(`${dir}: no scheduler/scheduler_config.json, using the ${family} default`);
  }
  const stored = schedulerConfig.prediction_type;
  if (stored !== undefined && stored !== 'epsilon' && stored !== 'v_prediction') {
    throw new CheckpointError(schedPath, `prediction_type ${JSON.stringify(stored)} is not supported (epsilon or v_prediction)`);
  }
  const predictionType: PredictionType = opts.predictionType ?? (stored as PredictionType | undefined) ?? 'epsilon';
  if (opts.predictionType) schedulerConfig = { ...schedulerConfig, prediction_type: opts.predictionType };
  const tok = join(dir, 'tokenizer');
  return {
    source: dir, layout: 'diffusers', family, textEncoderConfig: textCfg, unetConfig: unetCfg, vaeConfig: vaeCfg,
    schedulerConfig, predictionType, tokenizerDir: existsSync(tok) && statSync(tok).isDirectory() ? tok : null,
    textEncoder, unet, vae, warnings,
  };
}

function unknownFolderProblem(dir: string): string {
  const cfg = join(dir, 'config.json');
  if (existsSync(cfg)) {
    let cls: unknown;
    try { const j = JSON.parse(readFileSync(cfg, 'utf8')); cls = j._class_name ?? j.architectures; } catch { /* named generically below */ }
    return `this looks like a single component (${JSON.stringify(cls ?? 'config.json')}) of a diffusers model; pass the model folder that holds model_index.json`;
  }
  const files = readdirSync(dir).filter((f) => f.endsWith('.safetensors') || PICKLE_EXTS.has(extname(f)));
  const hint = files.length === 1 ? ` It holds ${files[0]}; pass that file instead.` : files.length ? ` It holds ${listSome(files, 3)}; pass one of those files instead.` : '';
  return `unknown checkpoint layout: not a diffusers folder (no model_index.json, no unet/config.json).${hint}`;
}

// ---------------------------------------------------------------------------------------
// Single files

type Sniffed = 'safetensors' | 'zip' | 'pickle' | 'unknown';

function sniff(path: string): Sniffed {
  let fd: number;
  try { fd = openSync(path, 'r'); } catch (e) { throw new CheckpointError(path, `cannot open: ${(e as Error).message}`); }
  try {
    const size = fstatSync(fd).size;
    const b = Buffer.alloc(9);
    const got = readSync(fd, b, 0, 9, 0);
    if (got === 9) {
      const n = b.readBigUInt64LE(0);
      // A safetensors header length is small and its JSON starts with '{'; checked first
      // because a header length can happen to begin with a pickle's 0x80 byte.
      if (n <= BigInt(MAX_HEADER_BYTES) && 8 + Number(n) <= size && b[8] === 0x7b) return 'safetensors';
    }
    if (got >= 4 && b[0] === 0x50 && b[1] === 0x4b && b[2] === 0x03 && b[3] === 0x04) return 'zip';
    if (got >= 2 && b[0] === 0x80 && b[1] >= 2 && b[1] <= 5) return 'pickle';
    return 'unknown';
  } finally {
    closeSync(fd);
  }
}

function pickleProblem(path: string, kind?: Sniffed): string {
  const what = kind === 'zip' ? 'a PyTorch zip/pickle checkpoint' : 'a PyTorch pickle checkpoint';
  const name = basename(path);
  const out = `${name.slice(0, name.length - extname(name).length) || name}.safetensors`;
  return `${what}; oneword does not load pickles because unpickling can run arbitrary code. ` +
    `Convert it to .safetensors first, e.g. with Python (torch and safetensors installed):\n` +
    `  import torch, safetensors.torch as st\n` +
    `  sd = torch.load("${name}", map_location="cpu", weights_only=True)\n` +
    `  sd = sd.get("state_dict", sd)\n` +
    `  st.save_file({k: v.detach().clone().contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}, "${out}")\n` +
    `then pass ${out}. (If torch refuses weights_only=True, the file holds more than tensors; drop that flag only for files you trust.)`;
}

/** Keys single files commonly carry that oneword has no use for (EMA copies, schedule buffers…). */
const IGNORED_LDM = [
  /^model_ema\./,
  /^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|posterior_variance|posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2|logvar|v_pred)$/,
  /^cond_stage_model\.transformer\.(text_model\.)?embeddings\.position_ids$/,
  /^cond_stage_model\.model\.(text_projection|logit_scale|attn_mask)$/,
  /^first_stage_model\.loss\./,
];

/**
 * Prediction type of a single file, when it says: Stability's model-spec metadata
 * (`modelspec.prediction_type`), or a `v_pred` marker tensor (ComfyUI/A1111 convention).
 * Otherwise null, and the loader assumes epsilon (SD 1.x, SD 2.x-base); 768-v SD 2.x files
 * need LoadOptions.predictionType = 'v_prediction' — the weights alone cannot tell.
 */
export function detectPredictionType(f: SafetensorsFile): PredictionType | null {
  const m = f.metadata['modelspec.prediction_type'];
  if (m) {
    if (/^v/i.test(m)) return 'v_prediction';
    if (/^eps/i.test(m)) return 'epsilon';
  }
  if (f.has('v_pred')) return 'v_prediction';
  return null;
}

function indices(keys: string[], re: RegExp): number[] {
  const s = new Set<number>();
  for (const k of keys) { const m = re.exec(k); if (m) s.add(Number(m[1])); }
  return [...s].sort((a, b) => a - b);
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

function loadSingleFile(path: string, opts: LoadOptions): StableDiffusionCheckpoint {
  const kind = sniff(path);
  if (kind === 'zip' || kind === 'pickle' || (kind === 'unknown' && PICKLE_EXTS.has(extname(path).toLowerCase()))) {
    throw new CheckpointError(path, pickleProblem(path, kind));
  }
  const f = SafetensorsFile.open(path); // specific SafetensorsError for truncated/corrupt files
  const keys = [...f.tensors.keys()];
  const U = LDM_UNET_PREFIX;
  const V = LDM_VAE_PREFIX;
  const need = (k: string, why: string, rank: number): number[] => {
    const t = f.tensors.get(k);
    if (!t) throw new CheckpointError(path, `missing tensor "${k}" (needed to work out ${why})`);
    if (t.shape.length !== rank) throw new CheckpointError(path, `tensor "${k}" has shape [${t.shape.join(', ')}], expected ${rank} dimensions`);
    return t.shape;
  };

  if (!f.has(`${U}input_blocks.0.0.weight`)) throw new CheckpointError(path, unknownFileProblem(f, keys));
  let family: Family;
  let clipPrefix: string | undefined;
  if (keys.some((k) => k.startsWith(LDM_OPENCLIP_PREFIX))) family = 'sd2';
  else if (keys.some((k) => k.startsWith(LDM_CLIP_PREFIX))) {
    family = 'sd1';
    clipPrefix = f.has(`${LDM_CLIP_PREFIX}text_model.embeddings.token_embedding.weight`) ? `${LDM_CLIP_PREFIX}text_model.` : LDM_CLIP_PREFIX;
  } else throw new CheckpointError(path, 'no text encoder in this checkpoint (no cond_stage_model.transformer.* or cond_stage_model.model.* tensors)');
  if (!keys.some((k) => k.startsWith(V))) throw new CheckpointError(path, 'no VAE in this checkpoint (no first_stage_model.* tensors)');

  const warnings: string[] = [];
  const detected = detectPredictionType(f);
  const predictionType = opts.predictionType ?? detected ?? 'epsilon';
  if (family === 'sd2' && !opts.predictionType && !detected) {
    warnings.push(`${path}: SD 2.x checkpoint without a prediction-type marker; assuming epsilon (2.x-base). For 768-v models pass predictionType "v_prediction".`);
  }

  // --- text encoder
  let textCfg: CLIPTextConfig;
  if (family === 'sd1') {
    const p = clipPrefix!;
    const [V_, D] = need(`${p}embeddings.token_embedding.weight`, 'the text encoder width', 2);
    const layers = indices(keys, new RegExp(`^${escapeRe(p)}encoder\\.layers\\.(\\d+)\\.`));
    if (!layers.length) throw new CheckpointError(path, `no text encoder layers under "${p}encoder.layers."`);
    textCfg = {
      vocab_size: V_, hidden_size: D,
      intermediate_size: need(`${p}encoder.layers.0.mlp.fc1.weight`, 'the text encoder MLP width', 2)[0],
      num_hidden_layers: layers.length, num_attention_heads: clipHeads(D),
      max_position_embeddings: need(`${p}embeddings.position_embedding.weight`, 'the text length', 2)[0],
      hidden_act: 'quick_gelu', layer_norm_eps: 1e-5,
      // as in openai/clip-vit-large-patch14's config.json, which SD 1.x diffusers folders ship
      pad_token_id: 1, bos_token_id: 0, eos_token_id: 2,
    };
  } else {
    const O = LDM_OPENCLIP_PREFIX;
    const [V_, D] = need(`${O}token_embedding.weight`, 'the text encoder width', 2);
    const blocks = indices(keys, /^cond_stage_model\.model\.transformer\.resblocks\.(\d+)\./);
    // SD 2.x conditions on the penultimate OpenCLIP layer, so diffusers drops the last one.
    if (blocks.length < 2) throw new CheckpointError(path, `OpenCLIP text encoder has ${blocks.length} layers; SD 2.x needs at least 2 (the last is unused)`);
    textCfg = {
      vocab_size: V_, hidden_size: D,
      intermediate_size: need(`${O}transformer.resblocks.0.mlp.c_fc.weight`, 'the text encoder MLP width', 2)[0],
      num_hidden_layers: blocks.length - 1, num_attention_heads: clipHeads(D),
      max_position_embeddings: need(`${O}positional_embedding`, 'the text length', 2)[0],
      hidden_act: 'gelu', layer_norm_eps: 1e-5, pad_token_id: 1, bos_token_id: 0, eos_token_id: 2,
    };
  }

  // --- UNet
  if (keys.some((k) => k.startsWith(`${U}label_emb.`))) throw new CheckpointError(path, 'class-conditioned UNet (label_emb, e.g. an upscaler or SDXL) is not supported');
  const inIds = indices(keys, /^model\.diffusion_model\.input_blocks\.(\d+)\./);
  const downs = inIds.filter((i) => f.has(`${U}input_blocks.${i}.0.op.weight`));
  const levels = downs.length + 1;
  const L = (inIds.length - 1 - downs.length) / levels;
  if (!Number.isInteger(L) || L < 1 || inIds.length !== inIds[inIds.length - 1] + 1 || downs.some((d, i) => d !== 1 + i * (L + 1) + L)) {
    throw new CheckpointError(path, `unrecognised UNet layout: ${inIds.length} input blocks with downsamplers at [${downs.join(', ')}]`);
  }
  const [C0, inCh, kIn] = need(`${U}input_blocks.0.0.weight`, 'the UNet input channels', 4);
  const boc: number[] = [];
  const downTypes: UNetDownBlockType[] = [];
  const upTypes: UNetUpBlockType[] = [];
  for (let i = 0; i < levels; i++) {
    const k = 1 + i * (L + 1);
    boc.push(need(`${U}input_blocks.${k}.0.out_layers.3.weight`, `the channels of UNet level ${i}`, 4)[0]);
    downTypes.push(f.has(`${U}input_blocks.${k}.1.proj_in.weight`) ? 'CrossAttnDownBlock2D' : 'DownBlock2D');
    upTypes.push(f.has(`${U}output_blocks.${i * (L + 1)}.1.proj_in.weight`) ? 'CrossAttnUpBlock2D' : 'UpBlock2D');
  }
  const midProj = f.tensors.get(`${U}middle_block.1.proj_in.weight`);
  if (!midProj) throw new CheckpointError(path, 'UNet middle block has no transformer (middle_block.1.proj_in.weight): not an SD 1.x/2.x UNet');
  const crossKey = keys.find((k) => k.startsWith(U) && k.endsWith('.transformer_blocks.0.attn2.to_k.weight'));
  if (!crossKey) throw new CheckpointError(path, 'UNet has no cross-attention (attn2.to_k) weights');
  const depth = indices(keys, /^model\.diffusion_model\.middle_block\.1\.transformer_blocks\.(\d+)\./).length;
  const [T] = need(`${U}time_embed.0.weight`, 'the time embedding width', 2);
  if (T !== 4 * C0) throw new CheckpointError(path, `UNet time embedding is ${T} wide; SD UNets use 4 × ${C0}`);
  const [outCh, , kOut] = need(`${U}out.2.weight`, 'the UNet output channels', 4);
  const vPred = predictionType === 'v_prediction';
  const unetCfg: UNetConfig = {
    // Not recorded in the weights: SD 1.x and 2.x-base are trained at 512 px, 768-v at 768.
    sample_size: family === 'sd2' && vPred ? 96 : 64,
    in_channels: inCh, out_channels: outCh, center_input_sample: false, flip_sin_to_cos: true, freq_shift: 0,
    down_block_types: downTypes, mid_block_type: 'UNetMidBlock2DCrossAttn', up_block_types: upTypes,
    block_out_channels: boc, layers_per_block: L, downsample_padding: 1, mid_block_scale_factor: 1, act_fn: 'silu',
    norm_num_groups: 32, norm_eps: 1e-5, cross_attention_dim: f.tensors.get(crossKey)!.shape[1],
    transformer_layers_per_block: depth,
    // SD 1.x configs give 8 heads everywhere; SD 2.x configs give 64-wide heads per level.
    attention_head_dim: family === 'sd1' ? 8 : boc.map((c) => (c % 64 === 0 ? c / 64 : 1)),
    num_attention_heads: null,
    use_linear_projection: midProj.shape.length === 2,
    // Only changes fp16 numerics (attention computed in fp32); SD 2.1 sets it, and it is harmless in fp32.
    upcast_attention: family === 'sd2',
    resnet_time_scale_shift: 'default', time_embedding_type: 'positional', conv_in_kernel: kIn, conv_out_kernel: kOut,
  };
  validateUNet(unetCfg, path);

  // --- VAE
  const vLevels = indices(keys, /^first_stage_model\.encoder\.down\.(\d+)\./);
  if (!vLevels.length) throw new CheckpointError(path, 'no VAE encoder levels (first_stage_model.encoder.down.*)');
  const vBoc = vLevels.map((i) => need(`${V}encoder.down.${i}.block.0.conv1.weight`, `the channels of VAE level ${i}`, 4)[0]);
  const [, vIn] = need(`${V}encoder.conv_in.weight`, 'the VAE input channels', 4);
  const [, lat] = need(`${V}decoder.conv_in.weight`, 'the latent channels', 4);
  const vaeCfg: VAEConfig = {
    in_channels: vIn, out_channels: need(`${V}decoder.conv_out.weight`, 'the VAE output channels', 4)[0],
    down_block_types: vBoc.map(() => 'DownEncoderBlock2D' as const), up_block_types: vBoc.map(() => 'UpDecoderBlock2D' as const),
    block_out_channels: vBoc, layers_per_block: indices(keys, /^first_stage_model\.encoder\.down\.0\.block\.(\d+)\./).length,
    act_fn: 'silu', latent_channels: lat, norm_num_groups: 32,
    sample_size: unetCfg.sample_size! * 2 ** (vBoc.length - 1), scaling_factor: 0.18215, shift_factor: null, force_upcast: true,
    use_quant_conv: f.has(`${V}quant_conv.weight`), use_post_quant_conv: f.has(`${V}post_quant_conv.weight`),
    mid_block_add_attention: f.has(`${V}encoder.mid.attn_1.q.weight`),
  };
  crossCheck(path, textCfg, unetCfg, vaeCfg);

  // --- map every expected tensor to its key in the file
  const map = ldmTensorMap({ family, clipPrefix }, textCfg, unetCfg, vaeCfg);
  const byComp = new Map<Component, Map<string, LdmTensor>>([['textEncoder', new Map()], ['unet', new Map()], ['vae', new Map()]]);
  for (const e of map) byComp.get(e.component)!.set(e.name, e);
  const used = new Set<string>();
  const resolveLdm = (component: Component, label: string) => {
    const entries = byComp.get(component)!;
    const shapes = new Map([...entries].map(([n, e]) => [n, e.shape]));
    return resolveComponent(path, label, shapes, (name) => {
      const e = entries.get(name)!;
      if (!f.has(e.ldmName)) return { missing: `"${e.ldmName}" (→ ${name})` };
      used.add(e.ldmName);
      return { src: { file: f, tensor: e.ldmName, transform: e.transform }, srcLabel: `"${e.ldmName}" (→ ${name})` };
    });
  };
  const textEncoder = resolveLdm('textEncoder', 'text encoder');
  const unet = resolveLdm('unet', 'UNet');
  const vae = resolveLdm('vae', 'VAE');

  const dropped = family === 'sd2' ? `${LDM_OPENCLIP_PREFIX}transformer.resblocks.${textCfg.num_hidden_layers}.` : null;
  const extra = keys.filter((k) => !used.has(k) && !IGNORED_LDM.some((re) => re.test(k)) && !(dropped && k.startsWith(dropped)));
  if (extra.length) warnings.push(`${path}: ignored ${extra.length} tensors that oneword does not use: ${listSome(extra, 5)}`);

  return {
    source: path, layout: 'single-file', family, textEncoderConfig: textCfg, unetConfig: unetCfg, vaeConfig: vaeCfg,
    schedulerConfig: defaultSchedulerConfig(family, predictionType), predictionType, tokenizerDir: null,
    textEncoder, unet, vae, warnings,
  };
}

function unknownFileProblem(f: SafetensorsFile, keys: string[]): string {
  const any = (re: RegExp) => keys.some((k) => re.test(k));
  if (any(/^conditioner\.embedders\./)) return 'this is an SDXL checkpoint; oneword supports Stable Diffusion 1.x and 2.x';
  if (f.has('conv_in.weight') && any(/^down_blocks\./)) return 'this is a diffusers UNet weights file, not a whole checkpoint; pass the model folder (the one with model_index.json)';
  if (f.has('encoder.conv_in.weight') && f.has('decoder.conv_in.weight')) return 'this is a VAE weights file, not a whole checkpoint';
  if (any(/^text_model\./)) return 'this is a text encoder weights file, not a whole checkpoint';
  if (any(/lora/i)) return 'this looks like a LoRA, not a whole checkpoint';
  if (any(/^(emb_params|string_to_param|clip_[lg])/)) return 'this is a textual-inversion embedding, not a model checkpoint';
  if (keys.length === 0) return 'this .safetensors file holds no tensors';
  return `unknown checkpoint layout: expected the original Stable Diffusion key names (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*); found e.g. ${listSome(keys.slice(0, 3).map((k) => `"${k}"`), 3)}`;
}

function escapeRe(s: string): string { return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'); }
function product(s: number[]): number { return s.reduce((a, b) => a * b, 1); }
