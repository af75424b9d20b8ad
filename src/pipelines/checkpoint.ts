// A Stable Diffusion 1.x / 2.x / XL checkpoint on disk → typed configs + lazy weights under
// diffusers' names, as diffusers' from_pretrained / from_single_file assemble a pipeline.
// Two layouts are understood:
//  * diffusers folders (model_index.json, text_encoder/, unet/, vae/, scheduler/, tokenizer/;
//    SDXL also text_encoder_2/ and tokenizer_2/)
//  * single .safetensors files in the original CompVis/LDM naming (model.diffusion_model.*,
//    first_stage_model.*, cond_stage_model.*; SDXL: conditioner.embedders.{0,1}.*), whose
//    configuration is read off tensor names and shapes (models/ldm-configs.ts) and whose names
//    map onto diffusers' (io/ldm-names.ts).
// Each model's config parser and weight spec live with the model (models/); the files and
// names live in io/. Nothing is read beyond headers and configs until a weight is asked for.
import { existsSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { SafetensorsFile } from '../io/safetensors.ts';
import { CheckpointError, listSome, resolveComponent, type FileWeights, type WeightSpec } from '../io/weights.ts';
import {
  checkDiffusersFolder, loadFolderComponent, readJson, refusePickle, unknownFileProblem,
} from '../io/checkpoint-files.ts';
import {
  IGNORED_LDM, LDM_CLIP_PREFIX, LDM_OPENCLIP_PREFIX, LDM_UNET_PREFIX, LDM_VAE_PREFIX, mapLdmNames,
  SGM_CLIP_PREFIX, SGM_OPENCLIP_PREFIX, type Component, type Family, type LdmTensor,
} from '../io/ldm-names.ts';
import { clipTextWeightSpec, parseCLIPTextConfig, type CLIPTextConfig } from '../models/clip-text.ts';
import { parseUNetConfig, unetPooledTextWidth, unetWeightSpec, type UNetConfig } from '../models/unet-config.ts';
import { parseVAEConfig, vaeWeightSpec, type VAEConfig } from '../models/vae.ts';
import {
  clipTextConfigFromLdm, ldmClipPrefix, LdmFile, openClipTextConfigFromLdm, unetConfigFromLdm, vaeConfigFromLdm,
} from '../models/ldm-configs.ts';
import { defaultPredictionType, defaultSchedulerConfig, type PredictionType } from '../schedulers/config.ts';
import { OnewordError } from '../errors.ts';
import { assertConfigBounds, SCHEDULER_BOUNDS } from '../io/config-bounds.ts';

export { CheckpointError, type Family };

export interface StableDiffusionCheckpoint {
  source: string;
  layout: 'diffusers' | 'single-file';
  family: Family;
  textEncoderConfig: CLIPTextConfig;
  /** SDXL: the second text encoder (CLIPTextModelWithProjection), whose pooled output the UNet also takes. */
  textEncoder2Config?: CLIPTextConfig;
  unetConfig: UNetConfig;
  vaeConfig: VAEConfig;
  /** scheduler/scheduler_config.json as written, or the family's default for single files (see defaultSchedulerConfig). */
  schedulerConfig: Record<string, unknown>;
  predictionType: PredictionType;
  /** The diffusers tokenizer/ folder when present; single files carry no tokenizer. */
  tokenizerDir: string | null;
  /** SDXL: the diffusers tokenizer_2/ folder (pad `!`); single files carry none. */
  tokenizer2Dir?: string | null;
  /** For a single file loaded with LoadOptions.config: that folder (absolute), so a training state can record it. */
  configDir?: string;
  textEncoder: FileWeights;
  textEncoder2?: FileWeights;
  /**
   * SDXL: model_index.json's force_zeros_for_empty_prompt (StableDiffusionXLPipeline's default,
   * true, for single files): with no negative prompt, the negative conditioning is all zeros.
   */
  forceZerosForEmptyPrompt?: boolean;
  unet: FileWeights;
  vae: FileWeights;
  /** Non-fatal oddities (ignored tensors, assumed prediction type, missing fp16 variant…). */
  warnings: string[];
}

export interface LoadOptions {
  /** Prefer `*.fp16.safetensors` in diffusers folders (cast to float32 on read). */
  variant?: 'fp16';
  /** Overrides the prediction type from the scheduler config or single-file detection. */
  predictionType?: PredictionType;
  /**
   * For single files: a diffusers folder whose `text_encoder/`, `unet/`, `vae/` (SDXL: also
   * `text_encoder_2/`) config.json describe the file's components (as diffusers'
   * `from_single_file(config=...)`), for files that differ from the released SD 1.x / 2.x / XL
   * models in what weights do not record (attention heads, norm groups, training resolution).
   * Its `scheduler/scheduler_config.json`, `tokenizer/` and `tokenizer_2/` are used when
   * present; components without a config.json are read off the file as usual.
   */
  config?: string;
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

const SUPPORTED_PREDICTION = ['epsilon', 'v_prediction'];

function crossCheck(where: string, { text: t, text2: t2, unet: u, vae: v }: ComponentConfigs): void {
  if (t2) {
    crossCheckXL(where, t, t2, u);
  } else if (u.addition_embed_type === 'text_time') {
    throw new CheckpointError(where, 'the UNet takes SDXL\'s pooled text embeds and time ids ("addition_embed_type": "text_time") but there is no second text encoder (text_encoder_2/)');
  } else if (u.cross_attention_dim !== t.hidden_size) {
    throw new CheckpointError(where, `text encoder width ${t.hidden_size} does not match the UNet's cross_attention_dim ${u.cross_attention_dim} (components from different models?)`);
  }
  if (u.in_channels !== v.latent_channels || u.out_channels !== v.latent_channels) {
    const kind = u.in_channels === 9 ? ' (an inpainting model)' : u.in_channels === 5 ? ' (a depth-conditioned model)' : '';
    throw new CheckpointError(where, `UNet takes ${u.in_channels} and returns ${u.out_channels} channels but the VAE has ${v.latent_channels} latent channels${kind}; oneword supports text-to-image UNets only`);
  }
}

/** SDXL: the UNet attends to both encoders' states side by side and takes encoder 2's pooled output. */
function crossCheckXL(where: string, t: CLIPTextConfig, t2: CLIPTextConfig, u: UNetConfig): void {
  if (t2.projection_dim === undefined) {
    throw new CheckpointError(where, 'the second text encoder is not a CLIPTextModelWithProjection (no projection_dim / text_projection), so it has no pooled output for SDXL');
  }
  const pooled = unetPooledTextWidth(u);
  if (pooled === null) {
    throw new CheckpointError(where, 'the model has a second text encoder but its UNet has no SDXL conditioning ("addition_embed_type" is not "text_time")');
  }
  if (u.cross_attention_dim !== t.hidden_size + t2.hidden_size) {
    throw new CheckpointError(where, `text encoder widths ${t.hidden_size} + ${t2.hidden_size} = ${t.hidden_size + t2.hidden_size} do not match the UNet's cross_attention_dim ${u.cross_attention_dim} (components from different models?)`);
  }
  if (pooled !== t2.projection_dim) {
    throw new CheckpointError(where, `the UNet takes ${pooled}-wide pooled text embeds (projection_class_embeddings_input_dim ${u.projection_class_embeddings_input_dim} − 6 × addition_time_embed_dim ${u.addition_time_embed_dim}) but the second text encoder's projection_dim is ${t2.projection_dim}`);
  }
}

// ---------------------------------------------------------------------------------------
// diffusers folders

interface ComponentConfigs { text: CLIPTextConfig; text2?: CLIPTextConfig; unet: UNetConfig; vae: VAEConfig }

function readFolderConfigs(dir: string): ComponentConfigs {
  const textPath = join(dir, 'text_encoder', 'config.json');
  const text2Path = join(dir, 'text_encoder_2', 'config.json');
  const unetPath = join(dir, 'unet', 'config.json');
  const vaePath = join(dir, 'vae', 'config.json');
  return {
    text: parseCLIPTextConfig(readJson(textPath), textPath),
    text2: hasComponent(dir, 'text_encoder_2') ? parseCLIPTextConfig(readJson(text2Path), text2Path) : undefined,
    unet: parseUNetConfig(readJson(unetPath), unetPath),
    vae: parseVAEConfig(readJson(vaePath), vaePath),
  };
}

/** The folder's scheduler config and prediction type (the caller's override wins). */
function folderScheduler(dir: string, family: Family, unet: UNetConfig, opts: LoadOptions, warnings: string[]): { schedulerConfig: Record<string, unknown>; predictionType: PredictionType } {
  const schedPath = join(dir, 'scheduler', 'scheduler_config.json');
  let schedulerConfig: Record<string, unknown>;
  if (existsSync(schedPath)) {
    schedulerConfig = readJson(schedPath);
    assertConfigBounds(schedulerConfig, SCHEDULER_BOUNDS, (problem) => new CheckpointError(schedPath, problem));
  } else {
    schedulerConfig = defaultSchedulerConfig(family, defaultPredictionType(family, unet.sample_size));
    warnings.push(`${dir}: no scheduler/scheduler_config.json, using the ${family} default (${schedulerConfig.prediction_type ?? 'epsilon'})`);
  }
  const stored = schedulerConfig.prediction_type;
  if (stored !== undefined && !SUPPORTED_PREDICTION.includes(stored as string)) {
    throw new CheckpointError(schedPath, `prediction_type ${JSON.stringify(stored)} is not supported (epsilon or v_prediction)`);
  }
  const predictionType: PredictionType = opts.predictionType ?? (stored as PredictionType | undefined) ?? 'epsilon';
  if (opts.predictionType) schedulerConfig = { ...schedulerConfig, prediction_type: opts.predictionType };
  return { schedulerConfig, predictionType };
}

function tokenizerIn(dir: string, sub = 'tokenizer'): string | null {
  const tok = join(dir, sub);
  return existsSync(tok) && statSync(tok).isDirectory() ? tok : null;
}

/** Whether a folder has component `sub`: listed (not null) in model_index.json, or present as a folder. */
function hasComponent(dir: string, sub: string): boolean {
  const indexPath = join(dir, 'model_index.json');
  if (existsSync(indexPath)) {
    const entry = readJson(indexPath)[sub];
    if (entry !== undefined) return !(entry === null || (Array.isArray(entry) && entry[0] === null));
  }
  return existsSync(join(dir, sub));
}

/** model_index.json's force_zeros_for_empty_prompt; true (the SDXL pipeline's default) when absent. */
function forceZerosIn(dir: string): boolean {
  const indexPath = join(dir, 'model_index.json');
  const v = existsSync(indexPath) ? readJson(indexPath).force_zeros_for_empty_prompt : undefined;
  if (v !== undefined && typeof v !== 'boolean') throw new CheckpointError(indexPath, `"force_zeros_for_empty_prompt" must be true or false, got ${JSON.stringify(v)}`);
  return v ?? true;
}

/** SDXL folders ship their second tokenizer: its pad token (`!`) differs from the first's. */
function tokenizer2In(dir: string): string {
  const tok = tokenizerIn(dir, 'tokenizer_2');
  if (!tok) throw new CheckpointError(dir, 'has text_encoder_2/ but no tokenizer_2/ (an SDXL folder needs both tokenizers)');
  return tok;
}

function loadDiffusers(dir: string, opts: LoadOptions): StableDiffusionCheckpoint {
  if (opts.config) {
    throw OnewordError.badOption('config', `applies to single-file checkpoints only; ${dir} is a diffusers folder with its own config.json files`);
  }
  const warnings: string[] = [];
  checkDiffusersFolder(dir);
  const cfg = readFolderConfigs(dir);
  crossCheck(dir, cfg);
  // OpenAI CLIP (SD 1.x) uses quick_gelu; OpenCLIP ViT-H (SD 2.x) uses gelu; SDXL has both encoders.
  const family: Family = cfg.text2 ? 'sdxl' : cfg.text.hidden_act === 'gelu' ? 'sd2' : 'sd1';
  const tokenizer2Dir = cfg.text2 ? tokenizer2In(dir) : undefined;
  const textEncoder = loadFolderComponent(dir, 'text_encoder', 'text encoder', clipTextWeightSpec(cfg.text), opts.variant, warnings);
  const textEncoder2 = cfg.text2 && loadFolderComponent(dir, 'text_encoder_2', 'text encoder 2', clipTextWeightSpec(cfg.text2), opts.variant, warnings);
  const unet = loadFolderComponent(dir, 'unet', 'UNet', unetWeightSpec(cfg.unet), opts.variant, warnings);
  const vae = loadFolderComponent(dir, 'vae', 'VAE', vaeWeightSpec(cfg.vae), opts.variant, warnings);
  const { schedulerConfig, predictionType } = folderScheduler(dir, family, cfg.unet, opts, warnings);
  return {
    source: dir, layout: 'diffusers', family, textEncoderConfig: cfg.text, unetConfig: cfg.unet, vaeConfig: cfg.vae,
    schedulerConfig, predictionType, tokenizerDir: tokenizerIn(dir),
    textEncoder, unet, vae, warnings,
    ...(cfg.text2 ? { textEncoder2Config: cfg.text2, textEncoder2, tokenizer2Dir, forceZerosForEmptyPrompt: forceZerosIn(dir) } : {}),
  };
}

// ---------------------------------------------------------------------------------------
// Single files

/**
 * Prediction type of a single file, when it says: Stability's model-spec metadata
 * (`modelspec.prediction_type`), or a `v_pred` marker tensor (ComfyUI/A1111 convention).
 * Otherwise null, and the loader takes the family default (defaultPredictionType: SD 2.x
 * files are taken as 768-v); 512-px SD 2.x-base files need LoadOptions.predictionType =
 * 'epsilon' or a config folder — the weights alone cannot tell.
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

/** Opens a single file and tells its generation from its text encoder's naming. */
function openSingleFile(path: string): { f: LdmFile; family: Family } {
  refusePickle(path);
  const f = new LdmFile(SafetensorsFile.open(path)); // specific SafetensorsError for truncated/corrupt files
  if (!f.has(`${LDM_UNET_PREFIX}input_blocks.0.0.weight`)) throw new CheckpointError(path, unknownFileProblem(f.file, f.keys));
  let family: Family;
  if (f.keys.some((k) => k.startsWith('conditioner.embedders.'))) family = sgmFamily(f);
  else if (f.keys.some((k) => k.startsWith(LDM_OPENCLIP_PREFIX))) family = 'sd2';
  else if (f.keys.some((k) => k.startsWith(LDM_CLIP_PREFIX))) family = 'sd1';
  else throw new CheckpointError(path, 'no text encoder in this checkpoint (no cond_stage_model.transformer.*, cond_stage_model.model.* or conditioner.embedders.* tensors)');
  if (!f.keys.some((k) => k.startsWith(LDM_VAE_PREFIX))) throw new CheckpointError(path, 'no VAE in this checkpoint (no first_stage_model.* tensors)');
  return { f, family };
}

/** An SGM-layout file (conditioner.embedders.*) is SDXL base's when it has both of its encoders. */
function sgmFamily(f: LdmFile): Family {
  const has = (prefix: string) => f.keys.some((k) => k.startsWith(prefix));
  if (has(SGM_CLIP_PREFIX) && has(SGM_OPENCLIP_PREFIX)) return 'sdxl';
  if (has('conditioner.embedders.0.model.')) {
    throw new CheckpointError(f.path, 'an SDXL refiner checkpoint (one OpenCLIP encoder, aesthetic-score conditioning) is not supported; oneword runs SDXL base models');
  }
  throw new CheckpointError(f.path, `an SDXL-layout checkpoint without both text encoders (expected ${SGM_CLIP_PREFIX}* and ${SGM_OPENCLIP_PREFIX}* tensors)`);
}

/** What a `config` folder says about a single file's components (each part only when present). */
interface GivenConfigs {
  text?: CLIPTextConfig;
  text2?: CLIPTextConfig;
  unet?: UNetConfig;
  vae?: VAEConfig;
  scheduler?: Record<string, unknown>;
  tokenizerDir: string | null;
  tokenizer2Dir: string | null;
}

function readGivenConfigs(dir: string): GivenConfigs {
  const abs = resolve(dir);
  if (!existsSync(abs) || !statSync(abs).isDirectory()) {
    throw OnewordError.badOption('config', `must be a diffusers model folder (text_encoder/, unet/, vae/ with config.json); ${abs} is not a folder`);
  }
  const json = (sub: string, file = 'config.json') => {
    const p = join(abs, sub, file);
    return existsSync(p) ? { json: readJson(p), path: p } : null;
  };
  const text = json('text_encoder');
  const text2 = json('text_encoder_2');
  const unet = json('unet');
  const vae = json('vae');
  const scheduler = json('scheduler', 'scheduler_config.json');
  if (!text && !unet && !vae) {
    throw OnewordError.badOption('config', `must be a diffusers model folder; ${abs} has none of text_encoder/config.json, unet/config.json, vae/config.json`);
  }
  if (scheduler) assertConfigBounds(scheduler.json, SCHEDULER_BOUNDS, (problem) => new CheckpointError(scheduler.path, problem));
  const stored = scheduler?.json.prediction_type;
  if (stored !== undefined && !SUPPORTED_PREDICTION.includes(stored as string)) {
    throw new CheckpointError(scheduler!.path, `prediction_type ${JSON.stringify(stored)} is not supported (epsilon or v_prediction)`);
  }
  return {
    text: text ? parseCLIPTextConfig(text.json, text.path) : undefined,
    text2: text2 ? parseCLIPTextConfig(text2.json, text2.path) : undefined,
    unet: unet ? parseUNetConfig(unet.json, unet.path) : undefined,
    vae: vae ? parseVAEConfig(vae.json, vae.path) : undefined,
    scheduler: scheduler?.json,
    tokenizerDir: tokenizerIn(abs),
    tokenizer2Dir: tokenizerIn(abs, 'tokenizer_2'),
  };
}

/**
 * The caller's prediction type, else the config folder's scheduler, else the file's marker,
 * else the family default for the config folder's resolution (or for none).
 */
function singleFilePrediction(f: LdmFile, family: Family, opts: LoadOptions, given: GivenConfigs | null, warnings: string[]): PredictionType {
  const fromConfig = given?.scheduler ? (given.scheduler.prediction_type ?? 'epsilon') as PredictionType : undefined;
  const detected = opts.predictionType ?? fromConfig ?? detectPredictionType(f.file);
  if (detected) return detected;
  const assumed = defaultPredictionType(family, given?.unet?.sample_size);
  if (family === 'sd2' && !given?.unet) {
    warnings.push(`${f.path}: SD 2.x checkpoint without a prediction-type marker; assuming v_prediction at 768 px (2.x-768-v, as diffusers does). For 512-px base models pass predictionType "epsilon" (or a config folder).`);
  }
  return assumed;
}

/**
 * The three configs: those the config folder gives, the rest as the file's tensors tell
 * them (heads and resolution per the released models).
 */
function singleFileConfigs(f: LdmFile, family: Family, predictionType: PredictionType, given: GivenConfigs | null): ComponentConfigs {
  const fromFile = {
    sd1: () => clipTextConfigFromLdm(f, ldmClipPrefix(f)), sd2: () => openClipTextConfigFromLdm(f), sdxl: () => clipTextConfigFromLdm(f, SGM_CLIP_PREFIX),
  }[family];
  const text = given?.text ?? fromFile();
  const text2 = family === 'sdxl' ? given?.text2 ?? openClipTextConfigFromLdm(f, 'sdxl') : undefined;
  // Not recorded in the weights: SD 1.x and 2.x-base are trained at 512 px, 768-v at 768, SDXL at 1024.
  const sampleSize = family === 'sdxl' ? 128 : family === 'sd2' && predictionType === 'v_prediction' ? 96 : 64;
  const unet = given?.unet ?? unetConfigFromLdm(f, family, sampleSize);
  const vae = given?.vae ?? vaeConfigFromLdm(f, (unet.sample_size ?? 64) * 2 ** (vaeLevelsOf(f) - 1), family);
  return { text, text2, unet, vae };
}

/** The config folder's scheduler config (the caller's prediction type written in), else the family default. */
function singleFileScheduler(family: Family, predictionType: PredictionType, given: GivenConfigs | null): Record<string, unknown> {
  if (!given?.scheduler) return defaultSchedulerConfig(family, predictionType);
  const stored = given.scheduler.prediction_type ?? 'epsilon';
  return stored === predictionType ? given.scheduler : { ...given.scheduler, prediction_type: predictionType };
}

function vaeLevelsOf(f: LdmFile): number {
  return f.indices(/^first_stage_model\.encoder\.down\.(\d+)\./).length;
}

/** Every diffusers tensor of the components (SDXL: four) with the single-file key it comes from. */
export function ldmTensorMap(
  layout: { family: Family; clipPrefix?: string }, text: CLIPTextConfig, unet: UNetConfig, vae: VAEConfig, text2?: CLIPTextConfig,
): LdmTensor[] {
  const specs = {
    textEncoder: clipTextWeightSpec(text), unet: unetWeightSpec(unet), vae: vaeWeightSpec(vae),
    textEncoder2: text2 && clipTextWeightSpec(text2),
  };
  return mapLdmNames({
    family: layout.family, clipPrefix: layout.clipPrefix, textLayers: text.num_hidden_layers, text2Layers: text2?.num_hidden_layers,
    unetLevels: unet.block_out_channels.length, unetLayersPerBlock: unet.layers_per_block,
    unetUpAttention: unet.up_block_types.map((t) => t === 'CrossAttnUpBlock2D'),
    vaeLevels: vae.block_out_channels.length, vaeLayersPerBlock: vae.layers_per_block,
  }, specs);
}

/** Maps each component's weights onto the file's tensors; tensors left over become a warning. */
function singleFileWeights(f: LdmFile, family: Family, cfg: ComponentConfigs, warnings: string[]): Record<Exclude<Component, 'textEncoder2'>, FileWeights> & { textEncoder2?: FileWeights } {
  const clipPrefix = family === 'sd1' ? ldmClipPrefix(f) : undefined;
  const map = ldmTensorMap({ family, clipPrefix }, cfg.text, cfg.unet, cfg.vae, cfg.text2);
  const byComp = new Map<Component, Map<string, LdmTensor>>([['textEncoder', new Map()], ['textEncoder2', new Map()], ['unet', new Map()], ['vae', new Map()]]);
  for (const e of map) byComp.get(e.component)!.set(e.name, e);
  const used = new Set<string>();
  const resolveLdm = (component: Component, label: string) => {
    const entries = byComp.get(component)!;
    const shapes: WeightSpec = new Map([...entries].map(([n, e]) => [n, e.shape]));
    return resolveComponent(f.path, label, shapes, (name) => {
      const e = entries.get(name)!;
      if (!f.has(e.ldmName)) return { missing: `"${e.ldmName}" (→ ${name})` };
      used.add(e.ldmName);
      return { src: { file: f.file, tensor: e.ldmName, transform: e.transform }, srcLabel: `"${e.ldmName}" (→ ${name})` };
    });
  };
  const weights = {
    textEncoder: resolveLdm('textEncoder', 'text encoder'), unet: resolveLdm('unet', 'UNet'), vae: resolveLdm('vae', 'VAE'),
    ...(cfg.text2 ? { textEncoder2: resolveLdm('textEncoder2', 'text encoder 2') } : {}),
  };

  const dropped = family === 'sd2' ? `${LDM_OPENCLIP_PREFIX}transformer.resblocks.${cfg.text.num_hidden_layers}.` : null;
  const extra = f.keys.filter((k) => !used.has(k) && !IGNORED_LDM.some((re) => re.test(k)) && !(dropped && k.startsWith(dropped)));
  if (extra.length) warnings.push(`${f.path}: ignored ${extra.length} tensors that oneword does not use: ${listSome(extra, 5)}`);
  return weights;
}

/**
 * Runs the config inference of a single file; when it fails without a config folder, the
 * error says how to describe what the weights do not record.
 */
function withConfigHint<T>(given: GivenConfigs | null, infer: () => T): T {
  try {
    return infer();
  } catch (e) {
    if (given || !(e instanceof CheckpointError)) throw e;
    const problem = e.message.slice(e.path.length + 2);
    throw new CheckpointError(e.path, `${problem}. A single file does not record norm groups, attention heads or resolution, so oneword assumed the released models' values; for another model pass --config DIR (library: { config }), a diffusers folder whose */config.json describe it`);
  }
}

function loadSingleFile(path: string, opts: LoadOptions): StableDiffusionCheckpoint {
  const { f, family } = openSingleFile(path);
  const given = opts.config ? readGivenConfigs(opts.config) : null;
  const warnings: string[] = [];
  const predictionType = singleFilePrediction(f, family, opts, given, warnings);
  const cfg = withConfigHint(given, () => {
    const c = singleFileConfigs(f, family, predictionType, given);
    crossCheck(path, c);
    return c;
  });
  const { textEncoder, textEncoder2, unet, vae } = singleFileWeights(f, family, cfg, warnings);
  return {
    source: path, layout: 'single-file', family, textEncoderConfig: cfg.text, unetConfig: cfg.unet, vaeConfig: cfg.vae,
    schedulerConfig: singleFileScheduler(family, predictionType, given), predictionType, tokenizerDir: given?.tokenizerDir ?? null,
    textEncoder, unet, vae, warnings,
    ...(opts.config ? { configDir: resolve(opts.config) } : {}),
    ...(cfg.text2 ? { textEncoder2Config: cfg.text2, textEncoder2, tokenizer2Dir: given?.tokenizer2Dir ?? null, forceZerosForEmptyPrompt: opts.config ? forceZerosIn(resolve(opts.config)) : true } : {}),
  };
}
