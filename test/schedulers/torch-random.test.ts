// TorchGenerator must reproduce torch's CPU generator: published values for small
// draws, and bit-identical tensors against the reference files, which diffusers' run
// drew from torch.Generator("cpu").manual_seed(...) in a known order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SafetensorsFile } from '../../src/io/safetensors.ts';
import { TorchGenerator, fmaf } from '../../src/schedulers/torch-random.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const round4 = (a: ArrayLike<number>) => Array.from(a, (v) => Math.round(v * 1e4) / 1e4);

test('randn/rand/randint match published torch values (manual_seed 0 and 42)', () => {
  // < 16 elements: torch's scalar double Box-Muller path.
  assert.deepEqual(round4(new TorchGenerator(0).randn(4)), [1.541, -0.2934, -2.1788, 0.5684]);
  assert.deepEqual(round4(new TorchGenerator(42).randn(4)), [0.3367, 0.1288, 0.2345, 0.2303]);
  // >= 16 elements: the vectorised float path.
  assert.deepEqual(round4(new TorchGenerator(0).randn(16)), [
    -1.1258, -1.1524, -0.2506, -0.4339, 0.8487, 0.692, -0.316, -2.1152,
    0.3223, -1.2633, 0.35, 0.3081, 0.1198, 1.2377, 1.1168, -0.2473,
  ]);
  assert.deepEqual(round4(new TorchGenerator(0).rand(3)), [0.4963, 0.7682, 0.0885]);
  assert.deepEqual(round4(new TorchGenerator(42).rand(3)), [0.8823, 0.915, 0.3829]);
  assert.deepEqual(new TorchGenerator(0).randint(0, 10, 10), [4, 9, 3, 0, 3, 9, 7, 3, 7, 3]);
});

test('the reference files were drawn from seed 0 in sequence; we reproduce every bit', () => {
  for (const model of ['sd1-tiny', 'sd2-tiny']) {
    const f = SafetensorsFile.open(`${FIX}${model}.ref.seed0.safetensors`);
    const g = new TorchGenerator(0);
    // The order the reference script drew them: randn, rand*2-1, randn, randn, rand*2-1, randn.
    const draws: [string, 'randn' | 'rand'][] = [
      ['unet.latents', 'randn'], ['vae.pixels', 'rand'], ['vae.dec.latents', 'randn'],
      ['sample.init_latents', 'randn'], ['ti.pixels', 'rand'], ['ti.noise', 'randn'],
    ];
    for (const [name, kind] of draws) {
      const ref = f.read(name) as Float32Array;
      const ours = kind === 'randn' ? g.randn(f.info(name).shape) : g.rand(ref.length).map((u) => u * 2 - 1);
      let differing = 0;
      for (let i = 0; i < ref.length; i++) if (ours[i] !== ref[i]) differing++;
      assert.equal(differing, 0, `${model} ${name}: ${differing} of ${ref.length} values differ`);
    }
    // The VAE sampling noise of training case c was drawn after manual_seed(timestep[c]).
    const eps = f.read('ti.vae_eps') as Float32Array;
    const per = eps.length / 3;
    [17, 500, 981].forEach((seed, c) => {
      const ours = new TorchGenerator(seed).randn([1, 4, 32, 24]);
      assert.deepEqual(ours, eps.subarray(c * per, (c + 1) * per), `${model} ti.vae_eps[${c}]`);
    });
  }
});

test('sizes not divisible by 16 redraw and transform the last 16 values, as torch does', () => {
  const a = new TorchGenerator(3).randn(20);
  // The first 16 uniforms are the same as for randn(16), so the first 4 outputs agree.
  assert.deepEqual(a.subarray(0, 4), new TorchGenerator(3).randn(16).subarray(0, 4));
  // The last 16 come from uniforms 20..35: skip 20, then a 16-block transform.
  const g = new TorchGenerator(3);
  g.rand(20);
  assert.deepEqual(a.subarray(4), g.randn(16));
});

test('state save/restore (JSON round trip) continues the exact stream, including the cached normal', () => {
  const g = new TorchGenerator(1234);
  g.randn(7); // odd count: one Box-Muller value is now cached in the generator
  g.randn(100);
  g.randn(3);
  const saved = JSON.parse(JSON.stringify(g.getState()));
  const expected = [g.randn(5), g.randn(64), g.rand(9), g.randint(0, 1000, 4)];
  const h = new TorchGenerator(99).setState(saved);
  assert.deepEqual([h.randn(5), h.randn(64), h.rand(9), h.randint(0, 1000, 4)], expected);
  assert.equal(h.initialSeed(), 1234n);
  // manualSeed resets the cache: a re-seeded generator matches a fresh one.
  g.randn(1);
  g.manualSeed(0);
  assert.deepEqual(g.randn(4), new TorchGenerator(0).randn(4));
  assert.throws(() => h.setState({ ...saved, mt: [1, 2, 3] }), /not a torch-cpu-mt19937 state/);
});

test('same seed, same stream; different seeds, different streams', () => {
  assert.deepEqual(new TorchGenerator(7).randn([2, 4, 8, 8]), new TorchGenerator(7).randn([2, 4, 8, 8]));
  assert.notDeepEqual(new TorchGenerator(7).randn(64), new TorchGenerator(8).randn(64));
  // 64-bit seeds: torch seeds the engine with the low 32 bits.
  assert.deepEqual(new TorchGenerator(2n ** 32n + 5n).randn(16), new TorchGenerator(5).randn(16));
});

test('randn is standard normal in distribution (both transform paths)', () => {
  for (const n of [100000, 15]) {
    const g = new TorchGenerator(11);
    const xs: number[] = [];
    while (xs.length < 100000) xs.push(...g.randn(n));
    const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
    const varc = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length;
    assert.ok(Math.abs(mean) < 0.02, `mean ${mean}`);
    assert.ok(Math.abs(varc - 1) < 0.02, `variance ${varc}`);
    const tail = xs.filter((v) => Math.abs(v) > 1.96).length / xs.length;
    assert.ok(Math.abs(tail - 0.05) < 0.005, `P(|z| > 1.96) = ${tail}`);
  }
});

test('fmaf rounds a*b + c once', () => {
  // Exact product 1 + 2^-11 + 2^-24: a separate multiply would drop the 2^-24.
  const a = 1 + 2 ** -12;
  assert.equal(fmaf(a, a, -1), 2 ** -11 + 2 ** -24);
  // Exact sum lies just below the midpoint between 1 + 2^-23 and 1 + 2^-22. Rounding to
  // double first lands on the midpoint and ties-to-even then picks the wrong float.
  const [x, y, z] = [1 + 2 ** -15, (1 - 2 ** -15) * 2 ** -24, 1 + 2 ** -23];
  assert.equal(Math.fround(x * y + z), 1 + 2 ** -22);
  assert.equal(fmaf(x, y, z), 1 + 2 ** -23);
  assert.equal(fmaf(-x, y, -z), -(1 + 2 ** -23));
  assert.equal(fmaf(2, 3, 4), 10);
});
