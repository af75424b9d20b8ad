// The training side of the DDPM scheduler: forward noising and the loss target, checked
// against the textual-inversion step diffusers recorded (`ti.*`), and DDPM's own sampler.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SafetensorsFile } from '../../src/io/safetensors.ts';
import {
  DDPMScheduler, type RawSchedulerConfig, TorchGenerator, createScheduler, parsePythonJson, readSchedulerConfig,
} from '../../src/schedulers/index.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;

function load(model: string) {
  const f = SafetensorsFile.open(`${FIX}${model}.ref.seed0.safetensors`);
  const stored = parsePythonJson(f.metadata.scheduler_configs) as Record<string, RawSchedulerConfig>;
  return {
    f,
    stored,
    latents: f.read('ti.latents') as Float32Array,
    noise: f.read('ti.noise') as Float32Array,
    timesteps: Array.from(f.read('ti.timesteps') as BigInt64Array, Number),
  };
}

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

test('addNoise reproduces ti.noisy_latents bit for bit (batch of 3, one timestep each)', (t) => {
  for (const model of ['sd1-tiny', 'sd2-tiny']) {
    const { f, stored, latents, noise, timesteps } = load(model);
    assert.deepEqual(timesteps, [17, 500, 981]);
    // textual_inversion.py: DDPMScheduler.from_pretrained(model, subfolder="scheduler").
    const modelCfg = readSchedulerConfig(`${FIX}${model}/scheduler/scheduler_config.json`);
    const ddpm = createScheduler('ddpm', modelCfg);
    assert.deepEqual(ddpm.config, createScheduler('ddpm', stored['ti.noise_scheduler']).config);
    const ref = f.read('ti.noisy_latents') as Float32Array;
    const noisy = ddpm.addNoise(latents, noise, timesteps);
    t.diagnostic(`${model}: max abs error ${maxAbsDiff(noisy, ref)}`);
    assert.deepEqual(noisy, ref);
    // One item at a time gives the same.
    const per = latents.length / 3;
    timesteps.forEach((ts, c) => {
      const part = ddpm.addNoise(latents.subarray(c * per, (c + 1) * per), noise.subarray(c * per, (c + 1) * per), ts);
      assert.deepEqual(part, ref.subarray(c * per, (c + 1) * per));
    });
  }
});

test('loss target: noise for epsilon (sd1), velocity sqrt(acp) noise - sqrt(1 - acp) x0 for v_prediction (sd2)', (t) => {
  for (const model of ['sd1-tiny', 'sd2-tiny']) {
    const { f, stored, latents, noise, timesteps } = load(model);
    const ddpm = new DDPMScheduler(stored['ti.noise_scheduler']);
    assert.equal(ddpm.predictionType, f.metadata.prediction_type);
    const ref = f.read('ti.target') as Float32Array;
    const target = ddpm.trainingTarget(latents, noise, timesteps);
    t.diagnostic(`${model} (${ddpm.predictionType}): max abs error ${maxAbsDiff(target, ref)}`);
    assert.deepEqual(target, ref);
  }
  // The definition, in float64, for one element.
  const { stored, latents, noise } = load('sd2-tiny');
  const ddpm = new DDPMScheduler(stored['ti.noise_scheduler']);
  const v = ddpm.getVelocity(latents.subarray(0, 8), noise.subarray(0, 8), 500);
  const a = ddpm.alphasCumprod[500];
  for (let i = 0; i < 8; i++) {
    assert.ok(Math.abs(v[i] - (Math.sqrt(a) * noise[i] - Math.sqrt(1 - a) * latents[i])) < 1e-6);
  }
});

test('addNoise argument checks', () => {
  const ddpm = createScheduler('ddpm', {});
  const x = new Float32Array(12);
  assert.throws(() => ddpm.addNoise(x, new Float32Array(11), 5), /noise has 11 values/);
  assert.throws(() => ddpm.addNoise(x, x, [1, 2, 3, 4, 5]), /cannot be split into 5 batch items/);
  assert.throws(() => ddpm.addNoise(x, x, 1000), /not an integer in \[0, 999\]/);
  assert.throws(() => ddpm.addNoise(x, x, 1.5), /not an integer/);
});

test('DDPM sampler: posterior mean + sqrt(posterior variance) * z, no noise at t = 0', () => {
  const cfg = readSchedulerConfig(`${FIX}sd1-tiny/scheduler/scheduler_config.json`);
  const s = createScheduler('ddpm', cfg);
  s.setTimesteps(1000);
  const n = 64;
  const x0 = new TorchGenerator(1).randn(n);
  const eps = new TorchGenerator(2).randn(n);
  const t = 400;
  const a = s.alphasCumprod[t];
  const ap = s.alphasCumprod[t - 1];
  const x = x0.map((v, k) => Math.sqrt(a) * v + Math.sqrt(1 - a) * eps[k]);
  const z = new TorchGenerator(3).randn(n);
  const out = s.step(eps, t, x, { randn: () => z });
  // q(x_{t-1} | x_t, x0): mean sqrt(ap) beta_t / (1 - a) x0 + sqrt(alpha_t) (1 - ap) / (1 - a) x_t, variance (1 - ap)/(1 - a) beta_t.
  const beta = 1 - a / ap;
  const mean = x0.map((v, k) => (Math.sqrt(ap) * beta / (1 - a)) * v + (Math.sqrt(1 - beta) * (1 - ap) / (1 - a)) * x[k]);
  const std = Math.sqrt(((1 - ap) / (1 - a)) * beta);
  assert.ok(maxAbsDiff(out, mean.map((m, k) => m + std * z[k])) < 1e-5);
  // The last step is deterministic and recovers x0 exactly from exact epsilon.
  const a0 = s.alphasCumprod[0];
  const x1 = x0.map((v, k) => Math.sqrt(a0) * v + Math.sqrt(1 - a0) * eps[k]);
  assert.ok(maxAbsDiff(s.step(eps, 0, x1), x0) < 1e-4);
  assert.throws(() => s.step(eps, t, x), /noise source is required/);
  // clip_sample defaults on for DDPM: x0 predictions are clipped to [-1, 1].
  const clipped = createScheduler('ddpm', {});
  clipped.setTimesteps(1000);
  const big = new Float32Array(n).fill(3);
  assert.ok(clipped.step(new Float32Array(n), 0, big).every((v) => Math.abs(v - 1) < 1e-6));
});
