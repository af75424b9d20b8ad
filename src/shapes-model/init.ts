// Deterministic initial weights for training from scratch. Each tensor's values depend only
// on (seed, name), never on the order tensors are created in.
import { initWeight } from '../models/random-weights.ts';
import { Rng } from '../shapes/random.ts';
import { ParamStore } from './params.ts';
import { clipTextWeightSpec } from '../models/clip-text.ts';
import { unetWeightSpec } from '../models/unet-config.ts';
import { vaeWeightSpec } from '../models/vae.ts';
import type { ParsedArch } from './config.ts';

function normal(name: string, n: number, std: number, seed: number): Float32Array {
  const rng = new Rng(`${seed}:${name}`);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.normal() * std;
  return out;
}

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/**
 * Conv/linear layers as PyTorch's default (uniform ±1/√fan_in), biases 0, norms 1/0; the
 * last layer of each residual branch and the UNet's output conv start at zero (as in
 * guided-diffusion), so every block starts as the identity and training starts stable.
 */
function convNetInit(name: string, shape: number[], seed: number, zeroed: RegExp): Float32Array {
  if (shape.length === 1) {
    const out = new Float32Array(shape[0]);
    if (/norm/.test(name) && name.endsWith('.weight')) out.fill(1);
    return out;
  }
  if (zeroed.test(name)) return new Float32Array(numel(shape));
  return initWeight(name, shape, seed);
}

export function initVae(a: ParsedArch, seed: number): ParamStore {
  return ParamStore.fromSpec(vaeWeightSpec(a.vae), (n, s) => convNetInit(n, s, seed, /^$/));
}

export function initUnet(a: ParsedArch, seed: number): ParamStore {
  const zeroed = /(resnets\.\d+\.conv2\.weight|attentions\.\d+\.proj_out\.weight|^conv_out\.weight)$/;
  return ParamStore.fromSpec(unetWeightSpec(a.unet), (n, s) => convNetInit(n, s, seed, zeroed));
}

/** transformers' CLIP init: embeddings N(0, 0.02), projections N(0, D^-½·(2L)^-½), fc N(0, (2D)^-½). */
export function initText(a: ParsedArch, seed: number): ParamStore {
  const D = a.text.hidden_size;
  const L = a.text.num_hidden_layers;
  return ParamStore.fromSpec(clipTextWeightSpec(a.text), (n, s) => {
    const size = numel(s);
    if (n.endsWith('embedding.weight')) return normal(n, size, 0.02, seed);
    if (s.length === 1) {
      const out = new Float32Array(size);
      if (/norm/.test(n) && n.endsWith('.weight')) out.fill(1);
      return out;
    }
    if (/_proj\.weight$/.test(n)) return normal(n, size, D ** -0.5 * (2 * L) ** -0.5, seed);
    if (/fc1\.weight$/.test(n)) return normal(n, size, (2 * D) ** -0.5, seed);
    if (/fc2\.weight$/.test(n)) return normal(n, size, D ** -0.5 * (2 * L) ** -0.5, seed);
    return normal(n, size, 0.02, seed);
  });
}
