// Checkpoint files on disk: which files a diffusers folder's components are in (plain or
// fp16 variant, whole or sharded), what kind of file a single checkpoint is (safetensors,
// or a pickle that is refused, never opened), and messages for layouts that are not a model.
import { existsSync, readFileSync, readdirSync, openSync, readSync, closeSync, fstatSync, statSync } from 'node:fs';
import { MAX_CONFIG_BYTES } from './config-bounds.ts';
import { basename, extname, join } from 'node:path';
import { SafetensorsFile, MAX_HEADER_BYTES } from './safetensors.ts';
import { CheckpointError, listSome, NO_TRANSFORM, RESHAPE, resolveComponent, type FileWeights, type WeightSpec } from './weights.ts';

export const PICKLE_EXTS = new Set(['.ckpt', '.pt', '.pth', '.bin', '.pkl']);

/** A JSON object file of a model folder. */
export function readJson(path: string): Record<string, unknown> {
  let text: string;
  if (existsSync(path) && statSync(path).size > MAX_CONFIG_BYTES) throw new CheckpointError(path, `is ${statSync(path).size} bytes; a config file may have at most ${MAX_CONFIG_BYTES}`);
  try { text = readFileSync(path, 'utf8'); } catch { throw new CheckpointError(path, 'missing (expected in a diffusers model folder)'); }
  let v: unknown;
  try { v = JSON.parse(text); } catch (e) { throw new CheckpointError(path, `invalid JSON (${(e as Error).message})`); }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new CheckpointError(path, 'expected a JSON object');
  return v as Record<string, unknown>;
}


/**
 * A diffusers folder's model_index.json (when present) names an SD 1.x/2.x/XL pipeline with a
 * text encoder, UNet and VAE; without it, the folder must at least hold unet/config.json.
 */
export function checkDiffusersFolder(dir: string): void {
  const indexPath = join(dir, 'model_index.json');
  if (existsSync(indexPath)) {
    const idx = readJson(indexPath);
    for (const part of ['text_encoder', 'unet', 'vae']) {
      if (idx[part] === undefined || (Array.isArray(idx[part]) && idx[part][0] === null)) {
        throw new CheckpointError(indexPath, `the pipeline has no ${part} component`);
      }
    }
  } else if (!existsSync(join(dir, 'unet', 'config.json'))) {
    throw new CheckpointError(dir, unknownFolderProblem(dir));
  }
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

/** A component of a diffusers folder (`text_encoder`, `text_encoder_2`, `unet`, `vae`) checked against its weight spec; unused tensors become warnings. */
export function loadFolderComponent(
  dir: string, sub: 'text_encoder' | 'text_encoder_2' | 'unet' | 'vae', label: string, spec: WeightSpec,
  variant: 'fp16' | undefined, warnings: string[],
): FileWeights {
  const compDir = join(dir, sub);
  const files = componentFiles(compDir, sub.startsWith('text_encoder') ? 'model' : 'diffusion_pytorch_model', variant, warnings);
  const used = new Set<string>();
  const ws = resolveComponent(compDir, label, spec, (name) => {
    for (const cand of [name, ...(sub === 'vae' ? deprecatedVaeNames(name) : [])]) {
      const f = files.get(cand);
      if (f) {
        used.add(cand);
        return { src: { file: f, tensor: cand, transform: cand === name ? NO_TRANSFORM : RESHAPE }, srcLabel: `"${cand}" (${basename(f.path)})` };
      }
    }
    return { missing: `"${name}"` };
  });
  const extra = [...files.keys()].filter((k) => !used.has(k) && !IGNORED_DIFFUSERS_TENSORS.has(k));
  if (extra.length) warnings.push(`${compDir}: ignored ${extra.length} tensors the configuration does not use: ${listSome(extra, 5)}`);
  return ws;
}

function deprecatedVaeNames(name: string): string[] {
  const m = /^((?:en|de)coder\.mid_block\.attentions\.0\.)(to_q|to_k|to_v|to_out\.0)(\.(?:weight|bias))$/.exec(name);
  if (!m) return [];
  return [m[1] + DEPRECATED_VAE_ATTENTION.find(([a]) => a === m[2])![1] + m[3]];
}

export function unknownFolderProblem(dir: string): string {
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

export type Sniffed = 'safetensors' | 'zip' | 'pickle' | 'unknown';

export function sniff(path: string): Sniffed {
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

export function pickleProblem(path: string, kind?: Sniffed): string {
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


/** Refuses pickles (by content, or by extension when the content says nothing) with a conversion recipe. */
export function refusePickle(path: string): void {
  const kind = sniff(path);
  if (kind === 'zip' || kind === 'pickle' || (kind === 'unknown' && PICKLE_EXTS.has(extname(path).toLowerCase()))) {
    throw new CheckpointError(path, pickleProblem(path, kind));
  }
}

/** Why a safetensors file is not a whole SD checkpoint in the original layout, as precisely as its keys tell. */
export function unknownFileProblem(f: SafetensorsFile, keys: string[]): string {
  const any = (re: RegExp) => keys.some((k) => re.test(k));
  if (any(/^conditioner\.embedders\./)) return 'SDXL text encoders without a UNet (no model.diffusion_model.* tensors), not a whole checkpoint';
  if (f.has('conv_in.weight') && any(/^down_blocks\./)) return 'this is a diffusers UNet weights file, not a whole checkpoint; pass the model folder (the one with model_index.json)';
  if (f.has('encoder.conv_in.weight') && f.has('decoder.conv_in.weight')) return 'this is a VAE weights file, not a whole checkpoint';
  if (any(/^text_model\./)) return 'this is a text encoder weights file, not a whole checkpoint';
  if (any(/lora/i)) return 'this looks like a LoRA, not a whole checkpoint';
  if (any(/^(emb_params|string_to_param|clip_[lg])/)) return 'this is a textual-inversion embedding, not a model checkpoint';
  if (keys.length === 0) return 'this .safetensors file holds no tensors';
  return `unknown checkpoint layout: expected the original Stable Diffusion key names (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*); found e.g. ${listSome(keys.slice(0, 3).map((k) => `"${k}"`), 3)}`;
}
