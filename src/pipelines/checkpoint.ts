// A Stable Diffusion 1.x / 2.x checkpoint on disk → typed configs + lazy weights under
// diffusers' names, as diffusers' from_pretrained / from_single_file assemble a pipeline.
// Two layouts are understood:
//  * diffusers folders (model_index.json, text_encoder/, unet/, vae/, scheduler/, tokenizer/)
//  * single .safetensors files in the original CompVis/LDM naming (model.diffusion_model.*,
//    first_stage_model.*, cond_stage_model.*), whose configuration is read off tensor names
//    and shapes (models/ldm-configs.ts) and whose names map onto diffusers' (io/ldm-names.ts).
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
  type Component, type Family, type LdmTensor,
} from '../io/ldm-names.ts';
import { clipTextWeightSpec, parseCLIPTextConfig, type CLIPTextConfig } from '../models/clip-text.ts';
import { parseUNetConfig, unetWeightSpec, type UNetConfig } from '../models/unet-config.ts';
import { parseVAEConfig, vaeWeightSpec, type VAEConfig } from '../models/vae.ts';
import {
  clipTextConfigFromLdm, ldmClipPrefix, LdmFile, openClipTextConfigFromLdm, unetConfigFromLdm, vaeConfigFromLdm,
} from '../models/ldm-configs.ts';
import { defaultSchedulerConfig, type PredictionType } from '../schedulers/config.ts';

export { CheckpointError, type Family };

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
  textEncoder: FileWeights;
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

interface ComponentConfigs { text: CLIPTextConfig; unet: UNetConfig; vae: VAEConfig }

function readFolderConfigs(dir: string): ComponentConfigs {
  const textPath = join(dir, 'text_encoder', 'config.json');
  const unetPath = join(dir, 'unet', 'config.json');
  const vaePath = join(dir, 'vae', 'config.json');
  return {
    text: parseCLIPTextConfig(readJson(textPath), textPath),
    unet: parseUNetConfig(readJson(unetPath), unetPath),
    vae: parseVAEConfig(readJson(vaePath), vaePath),
  };
}

/** The folder's scheduler config and prediction type (the caller's override wins). */
function folderScheduler(dir: string, family: Family, opts: LoadOptions, warnings: string[]): { schedulerConfig: Record<string, unknown>; predictionType: PredictionType } {
  const schedPath = join(dir, 'scheduler', 'scheduler_config.json');
  let schedulerConfig: Record<string, unknown>;
  if (existsSync(schedPath)) schedulerConfig = readJson(schedPath);
  else {
    schedulerConfig = defaultSchedulerConfig(family, 'epsilon');
    warnings.push(`${dir}: no scheduler/scheduler_config.json, using the ${family} default`);
  }
  const stored = schedulerConfig.prediction_type;
  if (stored !== undefined && !SUPPORTED_PREDICTION.includes(stored as string)) {
    throw new CheckpointError(schedPath, `prediction_type ${JSON.stringify(stored)} is not supported (epsilon or v_prediction)`);
  }
  const predictionType: PredictionType = opts.predictionType ?? (stored as PredictionType | undefined) ?? 'epsilon';
  if (opts.predictionType) schedulerConfig = { ...schedulerConfig, prediction_type: opts.predictionType };
  return { schedulerConfig, predictionType };
}

function tokenizerIn(dir: string): string | null {
  const tok = join(dir, 'tokenizer');
  return existsSync(tok) && statSync(tok).isDirectory() ? tok : null;
}

function loadDiffusers(dir: string, opts: LoadOptions): StableDiffusionCheckpoint {
  const warnings: string[] = [];
  checkDiffusersFolder(dir);
  const cfg = readFolderConfigs(dir);
  crossCheck(dir, cfg.text, cfg.unet, cfg.vae);
  // OpenAI CLIP (SD 1.x) uses quick_gelu; OpenCLIP ViT-H (SD 2.x) uses gelu.
  const family: Family = cfg.text.hidden_act === 'gelu' ? 'sd2' : 'sd1';
  const textEncoder = loadFolderComponent(dir, 'text_encoder', 'text encoder', clipTextWeightSpec(cfg.text), opts.variant, warnings);
  const unet = loadFolderComponent(dir, 'unet', 'UNet', unetWeightSpec(cfg.unet), opts.variant, warnings);
  const vae = loadFolderComponent(dir, 'vae', 'VAE', vaeWeightSpec(cfg.vae), opts.variant, warnings);
  const { schedulerConfig, predictionType } = folderScheduler(dir, family, opts, warnings);
  return {
    source: dir, layout: 'diffusers', family, textEncoderConfig: cfg.text, unetConfig: cfg.unet, vaeConfig: cfg.vae,
    schedulerConfig, predictionType, tokenizerDir: tokenizerIn(dir),
    textEncoder, unet, vae, warnings,
  };
}

// ---------------------------------------------------------------------------------------
// Single files

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

/** Opens a single file and tells its generation from its text encoder's naming. */
function openSingleFile(path: string): { f: LdmFile; family: Family } {
  refusePickle(path);
  const f = new LdmFile(SafetensorsFile.open(path)); // specific SafetensorsError for truncated/corrupt files
  if (!f.has(`${LDM_UNET_PREFIX}input_blocks.0.0.weight`)) throw new CheckpointError(path, unknownFileProblem(f.file, f.keys));
  let family: Family;
  if (f.keys.some((k) => k.startsWith(LDM_OPENCLIP_PREFIX))) family = 'sd2';
  else if (f.keys.some((k) => k.startsWith(LDM_CLIP_PREFIX))) family = 'sd1';
  else throw new CheckpointError(path, 'no text encoder in this checkpoint (no cond_stage_model.transformer.* or cond_stage_model.model.* tensors)');
  if (!f.keys.some((k) => k.startsWith(LDM_VAE_PREFIX))) throw new CheckpointError(path, 'no VAE in this checkpoint (no first_stage_model.* tensors)');
  return { f, family };
}

function singleFilePrediction(f: LdmFile, family: Family, opts: LoadOptions, warnings: string[]): PredictionType {
  const detected = detectPredictionType(f.file);
  if (family === 'sd2' && !opts.predictionType && !detected) {
    warnings.push(`${f.path}: SD 2.x checkpoint without a prediction-type marker; assuming epsilon (2.x-base). For 768-v models pass predictionType "v_prediction".`);
  }
  return opts.predictionType ?? detected ?? 'epsilon';
}

/** The three configs as the file's tensors tell them (heads and resolution per the released models). */
function singleFileConfigs(f: LdmFile, family: Family, predictionType: PredictionType): ComponentConfigs {
  const text = family === 'sd1' ? clipTextConfigFromLdm(f, ldmClipPrefix(f)) : openClipTextConfigFromLdm(f);
  // Not recorded in the weights: SD 1.x and 2.x-base are trained at 512 px, 768-v at 768.
  const unet = unetConfigFromLdm(f, family, family === 'sd2' && predictionType === 'v_prediction' ? 96 : 64);
  const vae = vaeConfigFromLdm(f, unet.sample_size! * 2 ** (vaeLevelsOf(f) - 1));
  return { text, unet, vae };
}

function vaeLevelsOf(f: LdmFile): number {
  return f.indices(/^first_stage_model\.encoder\.down\.(\d+)\./).length;
}

/** Every diffusers tensor of the three components with the single-file key it comes from. */
export function ldmTensorMap(
  layout: { family: Family; clipPrefix?: string }, text: CLIPTextConfig, unet: UNetConfig, vae: VAEConfig,
): LdmTensor[] {
  const specs = { textEncoder: clipTextWeightSpec(text), unet: unetWeightSpec(unet), vae: vaeWeightSpec(vae) };
  return mapLdmNames({
    family: layout.family, clipPrefix: layout.clipPrefix, textLayers: text.num_hidden_layers,
    unetLevels: unet.block_out_channels.length, unetLayersPerBlock: unet.layers_per_block,
    unetUpAttention: unet.up_block_types.map((t) => t === 'CrossAttnUpBlock2D'),
    vaeLevels: vae.block_out_channels.length, vaeLayersPerBlock: vae.layers_per_block,
  }, specs);
}

/** Maps each component's weights onto the file's tensors; tensors left over become a warning. */
function singleFileWeights(f: LdmFile, family: Family, cfg: ComponentConfigs, warnings: string[]): Record<Component, FileWeights> {
  const clipPrefix = family === 'sd1' ? ldmClipPrefix(f) : undefined;
  const map = ldmTensorMap({ family, clipPrefix }, cfg.text, cfg.unet, cfg.vae);
  const byComp = new Map<Component, Map<string, LdmTensor>>([['textEncoder', new Map()], ['unet', new Map()], ['vae', new Map()]]);
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
  const weights = { textEncoder: resolveLdm('textEncoder', 'text encoder'), unet: resolveLdm('unet', 'UNet'), vae: resolveLdm('vae', 'VAE') };

  const dropped = family === 'sd2' ? `${LDM_OPENCLIP_PREFIX}transformer.resblocks.${cfg.text.num_hidden_layers}.` : null;
  const extra = f.keys.filter((k) => !used.has(k) && !IGNORED_LDM.some((re) => re.test(k)) && !(dropped && k.startsWith(dropped)));
  if (extra.length) warnings.push(`${f.path}: ignored ${extra.length} tensors that oneword does not use: ${listSome(extra, 5)}`);
  return weights;
}

function loadSingleFile(path: string, opts: LoadOptions): StableDiffusionCheckpoint {
  const { f, family } = openSingleFile(path);
  const warnings: string[] = [];
  const predictionType = singleFilePrediction(f, family, opts, warnings);
  const cfg = singleFileConfigs(f, family, predictionType);
  crossCheck(path, cfg.text, cfg.unet, cfg.vae);
  const { textEncoder, unet, vae } = singleFileWeights(f, family, cfg, warnings);
  return {
    source: path, layout: 'single-file', family, textEncoderConfig: cfg.text, unetConfig: cfg.unet, vaeConfig: cfg.vae,
    schedulerConfig: defaultSchedulerConfig(family, predictionType), predictionType, tokenizerDir: null,
    textEncoder, unet, vae, warnings,
  };
}
