// The real Stable Diffusion 1.5 architecture with random weights, written once as a
// diffusers folder (float32 safetensors + configs) so benchmarks load it exactly as a user's
// model: through loadCheckpoint, with external data mapped from the files.
import { existsSync, mkdirSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeSafetensors, type TensorToWrite } from '../src/io/safetensors.ts';
import { SD15_TEXT, SD15_UNET, SD15_VAE } from '../src/models/presets.ts';
import { clipTextWeightSpec } from '../src/models/clip-text.ts';
import { unetWeightSpec } from '../src/models/unet-config.ts';
import { vaeWeightSpec } from '../src/models/vae.ts';
import type { WeightSpec } from '../src/io/weights.ts';
import { initWeight } from '../src/models/random-weights.ts';

const VERSION = 'sd15-random-v1';

/** The folder (created on first use; ~4.3 GB). Override with ONEWORD_BENCH_MODEL_DIR. */
export function sd15Dir(): string {
  return process.env.ONEWORD_BENCH_MODEL_DIR ?? join(tmpdir(), 'oneword-bench-sd15');
}

/** A component's safetensors file with random float32 weights for every name of `spec`. */
export function writeComponent(dir: string, file: string, spec: WeightSpec, seed: number): void {
  mkdirSync(dir, { recursive: true });
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, shape] of spec) tensors[name] = { dtype: 'F32', shape, data: initWeight(name, shape, seed) };
  writeSafetensors(join(dir, file), tensors);
}

const json = (path: string, v: unknown) => writeFileSync(path, JSON.stringify(v, null, 2));

/** Writes the random SD 1.5 diffusers folder unless a complete one is already there. */
export function ensureSd15(log: (s: string) => void = (s) => process.stderr.write(s + '\n')): string {
  const dir = sd15Dir();
  const stamp = join(dir, 'COMPLETE');
  if (existsSync(stamp) && readFileSync(stamp, 'utf8') === VERSION) return dir;
  rmSync(dir, { recursive: true, force: true });
  log(`writing random SD 1.5 weights to ${dir} (once)…`);
  const t0 = performance.now();
  mkdirSync(dir, { recursive: true });
  json(join(dir, 'model_index.json'), {
    _class_name: 'StableDiffusionPipeline',
    _diffusers_version: '0.27.2',
    scheduler: ['diffusers', 'DDIMScheduler'],
    text_encoder: ['transformers', 'CLIPTextModel'],
    tokenizer: ['transformers', 'CLIPTokenizer'],
    unet: ['diffusers', 'UNet2DConditionModel'],
    vae: ['diffusers', 'AutoencoderKL'],
  });
  mkdirSync(join(dir, 'scheduler'));
  json(join(dir, 'scheduler', 'scheduler_config.json'), {
    _class_name: 'DDIMScheduler',
    beta_end: 0.012,
    beta_schedule: 'scaled_linear',
    beta_start: 0.00085,
    clip_sample: false,
    num_train_timesteps: 1000,
    set_alpha_to_one: false,
    steps_offset: 1,
    prediction_type: 'epsilon',
  });
  writeComponent(join(dir, 'text_encoder'), 'model.safetensors', clipTextWeightSpec(SD15_TEXT), 2);
  json(join(dir, 'text_encoder', 'config.json'), { architectures: ['CLIPTextModel'], model_type: 'clip_text_model', ...SD15_TEXT });
  writeComponent(join(dir, 'vae'), 'diffusion_pytorch_model.safetensors', vaeWeightSpec(SD15_VAE), 3);
  json(join(dir, 'vae', 'config.json'), { _class_name: 'AutoencoderKL', ...SD15_VAE });
  writeComponent(join(dir, 'unet'), 'diffusion_pytorch_model.safetensors', unetWeightSpec(SD15_UNET), 1);
  json(join(dir, 'unet', 'config.json'), { _class_name: 'UNet2DConditionModel', ...SD15_UNET, sample_size: 64 });
  writeFileSync(stamp, VERSION);
  log(`  done in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  return dir;
}
