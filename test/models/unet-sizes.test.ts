// Latent sizes the UNet's down-sampling does not divide evenly: each upsampler resizes
// to its skip connection's size (diffusers' forward_upsample_size), so any size works.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Graph, evaluate } from '../../src/graph/index.ts';
import { compile } from '../../src/runtime/session.ts';
import { loadCheckpoint } from '../../src/pipelines/checkpoint.ts';
import { Params } from '../../src/models/params.ts';
import { unet2DCondition } from '../../src/models/unet.ts';
import { randn } from '../graph/helpers.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;

test('unet: odd latent sizes (9×7) run, keep their size, and ORT agrees with the float64 interpreter', async () => {
  const ck = loadCheckpoint(join(FIX, 'sd2-tiny'));
  const g = new Graph();
  const x = g.input('x', [1, 4, 9, 7]);
  const t = g.input('t', [1]);
  const ctx = g.input('ctx', [1, 77, ck.textEncoderConfig.hidden_size]);
  const out = unet2DCondition(new Params(g, ck.unet, 'unet/'), ck.unetConfig, x, t, ctx);
  assert.deepEqual(out.shape, [1, 4, 9, 7]);
  const feeds = { x: Float32Array.from(randn(4 * 63, 1)), t: [321.5], ctx: Float32Array.from(randn(77 * ck.textEncoderConfig.hidden_size, 2)) };
  const got = (await (await compile({ out }, { weights: 'feed' })).run(feeds)).out as Float32Array;
  const [want] = evaluate([out], feeds);
  let err = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    err = Math.max(err, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  assert.ok(err <= 1e-4 * (1 + scale), `max error ${err}`);
});
