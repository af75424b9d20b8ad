// Where the learned vectors start.
//   tokens   the init phrase's token embeddings, token by token, cycling (as kohya and
//            AUTOMATIC1111 do).
//   encoder  Cross Initialization (Pang et al., CVPR 2024): the text encoder's final hidden
//            states for the init phrase, at its tokens' positions. They already sit where the
//            encoder's outputs live, which the learned embedding drifts towards in training,
//            so far fewer steps are needed.
// An optional L2 pull (loss + λ‖v − v₀‖²) keeps the vectors near their start, as
// Cross Initialization regularises them.
import type { InitMode } from './early-stopping.ts';
import type { StableDiffusion } from './stable-diffusion.ts';

/**
 * The starting vectors [vectors, D] for an init phrase whose token ids are `initIds`; for SDXL
 * models followed by [vectors, D2] from text encoder 2's table (both tokenizers share the BPE,
 * so the ids are the same), as the textual-inversion trainer lays them out.
 */
export async function initialVectors(sd: StableDiffusion, init: { text: string; ids: number[]; vectors: number; mode: InitMode }): Promise<Float32Array> {
  const d = sd.hiddenSize;
  const out = new Float32Array(init.vectors * d);
  let source: Float32Array;
  let row: (k: number) => number;
  if (init.mode === 'encoder') {
    // bos, the phrase's tokens, eos, padding: as a prompt of the phrase alone is encoded.
    const ids = sd.tokenizer.call(init.text).inputIds;
    source = await sd.encodeIds(ids, 1);
    const n = Math.min(init.ids.length, ids.length - 2);
    row = (k) => 1 + (k % n);
  } else {
    source = sd.ckpt.textEncoder.float32('text_model.embeddings.token_embedding.weight');
    row = (k) => init.ids[k % init.ids.length];
  }
  for (let k = 0; k < init.vectors; k++) out.set(source.subarray(row(k) * d, (row(k) + 1) * d), k * d);
  if (!sd.isXL) return out;
  const d2 = sd.hiddenSize2;
  const table2 = sd.ckpt.textEncoder2!.float32('text_model.embeddings.token_embedding.weight');
  const both = new Float32Array(out.length + init.vectors * d2);
  both.set(out);
  for (let k = 0; k < init.vectors; k++) both.set(table2.subarray(row(k) * d2, (row(k) + 1) * d2), out.length + k * d2);
  return both;
}

/** Adds the gradient of λ‖v − v₀‖² to `grad`. */
export function addInitPull(grad: Float32Array, vectors: Float32Array, start: Float32Array, lambda: number): void {
  if (lambda === 0) return;
  for (let i = 0; i < grad.length; i++) grad[i] += 2 * lambda * (vectors[i] - start[i]);
}
