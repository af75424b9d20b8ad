// A short identity of a model's weights, recorded with a training state so that a resumed
// run refuses another model (the learned vectors only mean something to the model they
// were trained against). Reading every weight would take minutes for SD 1.5; the biases and
// norm scales change in every fine-tune or merge and are a few megabytes, so they are hashed
// together with the configs and every tensor's name and shape.
import { createHash } from 'node:crypto';
import type { WeightSet } from '../io/weights.ts';
import type { StableDiffusionCheckpoint } from './checkpoint.ts';

/** Rank-1 tensors up to this many values are hashed whole. */
const MAX_HASHED_VECTOR = 16384;

function hashWeights(h: ReturnType<typeof createHash>, label: string, w: WeightSet): void {
  for (const name of w.names()) {
    const shape = w.shape(name);
    h.update(`${label}/${name}:${shape.join('x')}\n`);
    if (shape.length === 1 && shape[0] <= MAX_HASHED_VECTOR) {
      const v = w.float32(name);
      h.update(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
    }
  }
}

/** 16 hex digits identifying the model's architecture and weights. */
export function modelFingerprint(ckpt: StableDiffusionCheckpoint): string {
  const h = createHash('sha256');
  h.update(JSON.stringify([ckpt.textEncoderConfig, ckpt.unetConfig, ckpt.vaeConfig, ckpt.predictionType]));
  // Added only for SDXL, so fingerprints of SD 1.x/2.x states saved before stay valid.
  if (ckpt.textEncoder2Config) h.update(JSON.stringify(ckpt.textEncoder2Config));
  hashWeights(h, 'text_encoder', ckpt.textEncoder);
  if (ckpt.textEncoder2) hashWeights(h, 'text_encoder_2', ckpt.textEncoder2);
  hashWeights(h, 'unet', ckpt.unet);
  hashWeights(h, 'vae', ckpt.vae);
  return h.digest('hex').slice(0, 16);
}
