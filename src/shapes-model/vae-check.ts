// How faithful is the autoencoder? Renders → encode (mean) → decode → the shapes analyzer,
// per attribute; an upper bound on what the diffusion model can reach through this VAE.
import { Graph } from '../graph/index.ts';
import type { VAEConfig } from '../models/vae.ts';
import { Params, type WeightSet } from '../models/params.ts';
import { vaeDecode, vaeEncode } from '../models/vae.ts';
import { compile } from '../runtime/session.ts';
import { analyze, type Attrs, type RgbImage } from '../shapes/index.ts';
import { renderSet, toImage } from './data.ts';

export interface VaeCheck {
  images: number;
  /** Mean absolute pixel error in 0–255 units. */
  mae: number;
  /** Analyzer agreement with the rendered attributes, per attribute. */
  agreement: Record<keyof Attrs, number>;
  /** Texture agreement per rendered texture (a VAE blurs some textures into others). */
  textureAgreement: Record<string, number>;
  /** Analyzer agreement on the original renders (the analyzer's own ceiling). */
  analyzerOnRenders: Record<keyof Attrs, number>;
  samples: Array<{ original: RgbImage; reconstructed: RgbImage }>;
}

export async function checkVae(vae: WeightSet, cfg: VAEConfig, n = 64, seed = 12345, threads?: number): Promise<VaeCheck> {
  const S = cfg.sample_size;
  const chunk = 16;
  const g = new Graph();
  const px = g.input('pixels', [chunk, 3, S, S]);
  const p = new Params(g, vae, 'vae/');
  const rec = vaeDecode(p, cfg, vaeEncode(p, cfg, px).mean);
  const run = await compile({ rec }, { weights: 'feed', threads });
  const data = renderSet(n, seed, S);
  const keys: Array<keyof Attrs> = ['shape', 'color', 'size', 'position', 'background', 'texture'];
  const agree = Object.fromEntries(keys.map((k) => [k, 0])) as Record<keyof Attrs, number>;
  const base = Object.fromEntries(keys.map((k) => [k, 0])) as Record<keyof Attrs, number>;
  const byTexture = new Map<string, [number, number]>();
  let err = 0;
  const samples: VaeCheck['samples'] = [];
  const per = 3 * S * S;
  for (let i = 0; i < n; i += chunk) {
    const m = Math.min(chunk, n - i);
    const pixels = new Float32Array(chunk * per);
    pixels.set(data.pixels.subarray(i * per, (i + m) * per));
    const out = (await run.run({ pixels })).rec as Float32Array;
    for (let k = 0; k < m; k++) {
      const orig = toImage(data.pixels, S, (i + k) * per);
      const recon = toImage(out, S, k * per);
      for (let j = 0; j < orig.data.length; j++) err += Math.abs(orig.data[j] - recon.data[j]);
      const want = data.attrs[i + k];
      const got = analyze(recon).attrs;
      const ref = analyze(orig).attrs;
      const tex = byTexture.get(want.texture) ?? [0, 0];
      byTexture.set(want.texture, [tex[0] + 1, tex[1] + (got.texture === want.texture ? 1 : 0)]);
      for (const key of keys) {
        if (got[key] === want[key]) agree[key]++;
        if (ref[key] === want[key]) base[key]++;
      }
      if (samples.length < 16) samples.push({ original: orig, reconstructed: recon });
    }
  }
  const frac = (r: Record<keyof Attrs, number>) => Object.fromEntries(keys.map((k) => [k, Number((r[k] / n).toFixed(3))])) as Record<keyof Attrs, number>;
  return { images: n, mae: Number((err / (n * per)).toFixed(2)), agreement: frac(agree),
    textureAgreement: Object.fromEntries([...byTexture].map(([k, [m, c]]) => [k, Number((c / m).toFixed(3))])), analyzerOnRenders: frac(base), samples };
}
