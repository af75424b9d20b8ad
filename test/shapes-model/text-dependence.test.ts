// The text-dependence probe measures what the UNet takes from the prompt: it must read zero
// for a UNet with no path from the text, and non-zero once cross-attention carries the text.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseArch, SD1_DIFFUSION, TINY_ARCH, ZERO_SNR_V_DIFFUSION } from '../../src/shapes-model/config.ts';
import { initText, initUnet } from '../../src/shapes-model/init.ts';
import { SWAPPED_ATTRIBUTES, textDependence } from '../../src/shapes-model/text-dependence.ts';
import { randomAttributes, Rng } from '../../src/shapes/index.ts';

const a = parseArch(TINY_ARCH);
const rng = new Rng('td-test');
const N = 16;
const data = {
  attrs: Array.from({ length: N }, () => randomAttributes(rng)),
  latents: Float32Array.from({ length: N * 4 * a.latentSize ** 2 }, () => rng.normal()),
};

/** A UNet whose zero-initialised output layers are made random, so every path is live. */
function liveUnet() {
  const unet = initUnet(a, 1);
  for (const name of unet.names()) {
    const t = unet.get(name);
    if (t.shape.length > 1 && t.data.every((v) => v === 0)) t.data.forEach((_, i) => (t.data[i] = rng.normal() * 0.2));
  }
  return unet;
}

test('text dependence: zero without a text path, non-zero through cross-attention', async () => {
  const text = initText(a, 1);
  const unet = liveUnet();
  const live = await textDependence(a, text, unet, ZERO_SNR_V_DIFFUSION, data, { batch: 8 });
  assert.ok(live.loss > 0);
  assert.ok(live.gap.shuffled !== 0, JSON.stringify(live));
  assert.ok(SWAPPED_ATTRIBUTES.some((k) => live.gap[k] !== 0), JSON.stringify(live));

  // Cut every cross-attention value projection: the text can no longer reach the output.
  for (const name of unet.names()) if (/attn2\.to_v\.weight$/.test(name)) unet.get(name).data.fill(0);
  const cut = await textDependence(a, text, unet, SD1_DIFFUSION, data, { batch: 8 });
  assert.equal(cut.gap.shuffled, 0);
  for (const k of SWAPPED_ATTRIBUTES) assert.equal(cut.gap[k], 0, k);
});

test('text dependence: a batch that does not divide the samples is refused', async () => {
  await assert.rejects(textDependence(a, initText(a, 1), liveUnet(), SD1_DIFFUSION, data, { batch: 5 }), /do not split into batches of 5/);
});
