// Component benchmark: one UNet forward (256², 512²) and one text-encoder forward on the
// real Stable Diffusion 1.5 architecture with random weights, batch 1.
import { Graph } from '../src/graph/index.ts';
import { Params } from '../src/models/params.ts';
import { unet2DCondition } from '../src/models/unet.ts';
import { clipTextEncoder } from '../src/models/clip-text.ts';
import { SD15_TEXT, SD15_UNET } from '../src/models/presets.ts';
import { unetWeightSpec, clipTextWeightSpec } from '../src/models/weight-spec.ts';
import { randomWeightSet } from '../src/models/random-weights.ts';
import { compile, type CompileOptions } from '../src/runtime/session.ts';
import { median, peakRssMb, report } from './util.ts';

export async function benchComponents(opts: CompileOptions = { weights: 'feed' }): Promise<void> {
  const unetWeights = randomWeightSet(unetWeightSpec(SD15_UNET), 1);
  for (const [name, size] of [['unet-256', 32], ['unet-512', 64]] as const) {
    const g = new Graph();
    const x = g.input('sample', [1, 4, size, size]);
    const t = g.input('t', [1]);
    const ctx = g.input('ctx', [1, 77, 768]);
    const out = unet2DCondition(new Params(g, unetWeights, 'unet/'), SD15_UNET, x, t, ctx);
    const c = await compile({ out }, opts);
    const feeds = { sample: new Float32Array(4 * size * size).fill(0.1), t: [500], ctx: new Float32Array(77 * 768).fill(0.01) };
    const secs = await median(() => c.run(feeds), size === 64 ? 2 : 3);
    report({ case: name, seconds: secs, peak_rss_mb: peakRssMb() });
  }
  const g = new Graph();
  const ids = g.input('ids', [1, 77], 'int64');
  const out = clipTextEncoder(new Params(g, randomWeightSet(clipTextWeightSpec(SD15_TEXT), 2), 'te/').scope('text_model'), SD15_TEXT, ids);
  const c = await compile({ out }, opts);
  const secs = await median(() => c.run({ ids: Array.from({ length: 77 }, (_, i) => (i < 10 ? 320 + i : 49407)) }), 5);
  report({ case: 'text-encoder', seconds: secs, peak_rss_mb: peakRssMb() });
}
