// Two checkpoints of one architecture in one process: each must compute with its own
// weights. fp16 checkpoints reach ORT as fed (cast) weights, the case where compiled
// sessions are shared between the two models.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { f32ToF16, SafetensorsFile, writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.ts';
import { StableDiffusion } from '../../src/pipelines/stable-diffusion.ts';
import { generate } from '../../src/pipelines/generate.ts';

const FIXTURE = new URL('../fixtures/sd1-tiny/', import.meta.url).pathname;

/** A copy of the fixture whose weights are fp16 files (`*.fp16.safetensors`), values scaled by `scale`. */
function fp16Copy(dir: string, scale: number): string {
  cpSync(FIXTURE, dir, { recursive: true });
  for (const component of ['text_encoder', 'unet', 'vae']) {
    for (const name of readdirSync(join(dir, component)).filter((f) => f.endsWith('.safetensors'))) {
      const path = join(dir, component, name);
      const src = SafetensorsFile.open(path);
      const tensors: Record<string, TensorToWrite> = {};
      for (const [key, info] of src.tensors) {
        tensors[key] = { dtype: 'F16', shape: info.shape, data: f32ToF16(src.readFloat32(key).map((v) => v * scale)) };
      }
      writeSafetensors(path.replace(/\.safetensors$/, '.fp16.safetensors'), tensors);
      rmSync(path);
    }
  }
  return dir;
}

test('two fp16 checkpoints of one architecture each generate with their own weights', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-two-models-'));
  try {
    const pathA = fp16Copy(join(dir, 'a'), 1);
    const pathB = fp16Copy(join(dir, 'b'), 1.25);
    const opts = { prompt: 'a photo of an astronaut', steps: 2, sampler: 'ddim', seed: 5 };
    const pixels = async (sd: StableDiffusion) => (await generate(sd, opts))[0].pixels;
    const a = await pixels(StableDiffusion.load(pathA, { variant: 'fp16' }));
    const b = await pixels(StableDiffusion.load(pathB, { variant: 'fp16' }));
    // Ground truth for B: inline weights make its graphs (and sessions) its own.
    const bAlone = await pixels(StableDiffusion.load(pathB, { variant: 'fp16', weights: 'inline' }));
    const maxDiff = (x: Float32Array, y: Float32Array) => x.reduce((m, v, i) => Math.max(m, Math.abs(v - y[i])), 0);
    assert.ok(maxDiff(a, b) > 1e-2, `the two models gave the same image (max difference ${maxDiff(a, b)})`);
    assert.ok(maxDiff(b, bAlone) < 1e-4, `model B computed with other weights (max difference ${maxDiff(b, bAlone)} from B alone)`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
