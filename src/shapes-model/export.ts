// Saves the model as a diffusers folder (model_index.json, unet/, vae/, text_encoder/,
// tokenizer/, scheduler/), loadable by diffusers' StableDiffusionPipeline.from_pretrained
// and by oneword's own loader (pipelines/checkpoint.ts).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeSafetensors, type TensorToWrite } from '../io/safetensors.ts';
import { writeClipTokenizer } from '../models/clip-tokenizer-files.ts';
import { type ArchSpec, type DiffusionSpec, SD1_DIFFUSION } from './config.ts';
import { modelIndexJson, schedulerConfigJson, textConfigJson, unetConfigJson, vaeConfigJson } from './config.ts';
import type { ParamStore } from './params.ts';

function tensors(store: ParamStore): Record<string, TensorToWrite> {
  const out: Record<string, TensorToWrite> = {};
  for (const name of store.names()) {
    const t = store.get(name);
    out[name] = { dtype: 'F32', shape: t.shape, data: t.data };
  }
  return out;
}

function writeJson(path: string, v: unknown): void {
  writeFileSync(path, `${JSON.stringify(v, null, 2)}\n`);
}

export interface ExportInput {
  arch: ArchSpec;
  diffusion?: DiffusionSpec;
  scalingFactor: number;
  vae: ParamStore;
  text: ParamStore;
  unet: ParamStore;
}

export function exportDiffusers(dir: string, m: ExportInput): void {
  for (const sub of ['unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler']) mkdirSync(join(dir, sub), { recursive: true });
  const meta = { format: 'pt' };
  writeJson(join(dir, 'model_index.json'), modelIndexJson(m.diffusion ?? SD1_DIFFUSION));
  writeJson(join(dir, 'unet', 'config.json'), unetConfigJson(m.arch));
  writeSafetensors(join(dir, 'unet', 'diffusion_pytorch_model.safetensors'), tensors(m.unet), meta);
  writeJson(join(dir, 'vae', 'config.json'), vaeConfigJson(m.arch, m.scalingFactor));
  writeSafetensors(join(dir, 'vae', 'diffusion_pytorch_model.safetensors'), tensors(m.vae), meta);
  writeJson(join(dir, 'text_encoder', 'config.json'), textConfigJson(m.arch));
  writeSafetensors(join(dir, 'text_encoder', 'model.safetensors'), tensors(m.text), meta);
  writeJson(join(dir, 'scheduler', 'scheduler_config.json'), schedulerConfigJson(m.diffusion ?? SD1_DIFFUSION));
  writeClipTokenizer(join(dir, 'tokenizer'));
}
