// Schedules (`sched.*` in the reference files): timesteps, sigmas, init_noise_sigma and
// the DDPM tables for every variant and n = 10, 20, 30, built both from the config the
// reference stored for that variant and from the model's own scheduler_config.json plus
// the overrides the reference used (i.e. our from_config emulation).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SafetensorsFile } from '../../src/io/safetensors.ts';
import {
  type RawSchedulerConfig, type SchedulerKind, type SchedulerOverrides, createSampler, createScheduler,
  defaultSchedulerConfig, describeSamplers, parsePythonJson, readSchedulerConfig, SAMPLER_NAMES,
} from '../../src/schedulers/index.ts';
import { resolveConfig } from '../../src/schedulers/config.ts';
import { torchLinspaceF32 } from '../../src/schedulers/common.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const MODELS = ['sd1-tiny', 'sd2-tiny'] as const;

const VARIANTS: Record<string, [SchedulerKind, SchedulerOverrides]> = {
  ddim: ['ddim', {}],
  pndm: ['pndm', {}],
  euler: ['euler', {}],
  euler_karras: ['euler', { useKarrasSigmas: true }],
  euler_a: ['euler_a', {}],
  dpmpp2m: ['dpmpp2m', {}],
  dpmpp2m_karras: ['dpmpp2m', { useKarrasSigmas: true }],
};

function open(model: string) {
  const f = SafetensorsFile.open(`${FIX}${model}.ref.seed0.safetensors`);
  const stored = parsePythonJson(f.metadata.scheduler_configs) as Record<string, RawSchedulerConfig>;
  const modelCfg = readSchedulerConfig(`${FIX}${model}/scheduler/scheduler_config.json`);
  return { f, stored, modelCfg };
}

const rel = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-30);

test('every variant, n = 10/20/30: timesteps, sigmas, init_noise_sigma', (t) => {
  let worstT = 0;
  let worstS = 0;
  let worstI = 0;
  for (const model of MODELS) {
    const { f, stored, modelCfg } = open(model);
    for (const [v, [kind, ov]] of Object.entries(VARIANTS)) {
      for (const n of [10, 20, 30]) {
        // Both routes must give the same schedule.
        for (const [src, sched] of [
          ['stored config', createScheduler(kind, stored[`schedule.${v}`])],
          ['model config', createScheduler(kind, modelCfg, ov)],
        ] as const) {
          const where = `${model} ${v} n=${n} (${src})`;
          sched.setTimesteps(n);
          const tRef = f.read(`sched.${v}.${n}.timesteps`);
          assert.equal(sched.timesteps.length, tRef.length, `${where}: number of timesteps`);
          if (tRef instanceof BigInt64Array) {
            assert.deepEqual(sched.timesteps, Array.from(tRef, Number), `${where}: integer timesteps`);
          } else {
            tRef.forEach((x, i) => {
              worstT = Math.max(worstT, rel(sched.timesteps[i], x));
              assert.ok(rel(sched.timesteps[i], x) <= 1e-5, `${where}: timestep ${i} ${sched.timesteps[i]} vs ${x}`);
            });
          }
          const sName = `sched.${v}.${n}.sigmas`;
          if (f.has(sName)) {
            const sRef = f.read(sName) as Float32Array;
            assert.equal(sched.sigmas!.length, sRef.length, `${where}: number of sigmas`);
            sRef.forEach((x, i) => {
              const e = x === 0 ? Math.abs(sched.sigmas![i]) : rel(sched.sigmas![i], x);
              worstS = Math.max(worstS, e);
              assert.ok(e <= 1e-5, `${where}: sigma ${i} ${sched.sigmas![i]} vs ${x}`);
            });
          } else {
            assert.equal(sched.sigmas, null, `${where}: alpha-based schedulers have no sigmas`);
          }
          const ins = (f.read(`sched.${v}.${n}.init_noise_sigma`) as Float32Array)[0];
          worstI = Math.max(worstI, rel(sched.initNoiseSigma, ins));
          assert.ok(rel(sched.initNoiseSigma, ins) <= 1e-5, `${where}: init_noise_sigma ${sched.initNoiseSigma} vs ${ins}`);
        }
      }
    }
  }
  t.diagnostic(`max relative error: float timesteps ${worstT.toExponential(2)}, sigmas ${worstS}, init_noise_sigma ${worstI}`);
  // Sigmas and init sigmas come out bit-identical; float timesteps of euler_karras are within
  // a few float32 ulps (numpy's float32 log, which diffusers uses for log_sigmas, is not correctly rounded).
  assert.equal(worstS, 0);
  assert.equal(worstI, 0);
});

test('betas and alphas_cumprod are bit-identical to diffusers (torch float32 linspace and cumprod)', () => {
  for (const model of MODELS) {
    const { f, stored, modelCfg } = open(model);
    const betas = f.read('sched.betas') as Float32Array;
    const acp = f.read('sched.alphas_cumprod') as Float32Array;
    for (const kind of ['ddpm', 'ddim', 'pndm', 'euler', 'euler_a', 'dpmpp2m'] as const) {
      const s = createScheduler(kind, kind === 'ddpm' ? stored['ti.noise_scheduler'] : modelCfg);
      assert.deepEqual(s.betas, betas, `${model} ${kind} betas`);
      assert.deepEqual(s.alphasCumprod, acp, `${model} ${kind} alphas_cumprod`);
    }
  }
  // A plain float32 recurrence (no vector blocks, no FMA) would not be bit-exact: the test above is not vacuous.
  const naive = new Float32Array(1000);
  const a = Math.fround(Math.sqrt(0.00085));
  const step = Math.fround(Math.fround(Math.fround(Math.sqrt(0.012)) - a) / 999);
  for (let i = 0; i < 1000; i++) naive[i] = Math.fround(a + Math.fround(step * i));
  assert.notDeepEqual(naive, torchLinspaceF32(Math.sqrt(0.00085), Math.sqrt(0.012), 1000));
});

test('from_config rules: unset keys keep the class default, _use_default_values, overrides', () => {
  const { stored, modelCfg } = open('sd1-tiny');
  // The SD 1.5 PNDM config does not name timestep_spacing: Euler keeps linspace, DDIM leading.
  assert.equal(createScheduler('euler', modelCfg).config.timestep_spacing, 'linspace');
  assert.equal(createScheduler('ddim', modelCfg).config.timestep_spacing, 'leading');
  // Keys it does name carry over, even across classes.
  const ddim = createScheduler('ddim', modelCfg);
  assert.equal(ddim.config.steps_offset, 1);
  assert.equal(ddim.config.set_alpha_to_one, false);
  assert.equal(ddim.config.clip_sample, false);
  // A stored DDIM config lists timestep_spacing as a default it used; an Euler built from it
  // must not inherit DDIM's "leading".
  assert.deepEqual(stored.ddim._use_default_values, [
    'clip_sample_range', 'dynamic_thresholding_ratio', 'prediction_type', 'rescale_betas_zero_snr',
    'sample_max_value', 'thresholding', 'timestep_spacing',
  ]);
  assert.equal(createScheduler('euler', stored.ddim).config.timestep_spacing, 'linspace');
  // Overrides win, and the same holds for every knob we expose.
  const e = createScheduler('euler', modelCfg, { timestepSpacing: 'leading', useKarrasSigmas: true });
  assert.equal(e.config.timestep_spacing, 'leading');
  assert.equal(e.config.use_karras_sigmas, true);
  e.setTimesteps(10);
  assert.ok(Math.abs(e.initNoiseSigma - Math.sqrt(e.sigmas[0] ** 2 + 1)) < 1e-5, 'leading: init sigma is sqrt(sigma_max^2 + 1)');
  const dpm = createScheduler('dpmpp2m', { ...stored.dpmpp2m_karras, solver_order: 3, algorithm_type: 'dpmsolver' });
  assert.equal(dpm.config.solver_order, 2, 'dpmpp2m pins the solver order');
  assert.equal(dpm.config.algorithm_type, 'dpmsolver++');
  assert.equal(dpm.config.lambda_min_clipped, -Infinity, 'Python -Infinity in JSON');
  // Misuse fails loudly.
  assert.throws(() => createScheduler('ddim', modelCfg, { useKarrasSigmas: true }), /Karras sigmas/);
  assert.throws(() => createScheduler('euler', modelCfg, { eta: 1 }), /eta applies to ddim/);
  assert.throws(() => createScheduler('ddim', modelCfg, { config: { no_such_key: 1 } }), /unknown config key/);
  assert.throws(() => createScheduler('ddim', { ...modelCfg, steps_offset: 'one' }), /steps_offset/);
  assert.throws(() => createScheduler('ddim', modelCfg, { timestepSpacing: 'bogus' as never }).setTimesteps(5), /bogus/);
});

test('single-file defaults equal the diffusers-format SD configs', () => {
  for (const model of MODELS) {
    const modelCfg = readSchedulerConfig(`${FIX}${model}/scheduler/scheduler_config.json`);
    const family = model === 'sd1-tiny' ? 'sd1' : 'sd2';
    const def = defaultSchedulerConfig(family);
    for (const kind of ['ddim', 'pndm', 'euler', 'euler_a', 'dpmpp2m', 'ddpm'] as const) {
      const a = createScheduler(kind, def);
      const b = createScheduler(kind, modelCfg);
      assert.deepEqual(a.config, b.config, `${family} ${kind}`);
    }
  }
  assert.equal(createScheduler('ddim', defaultSchedulerConfig('sd2', 'epsilon')).predictionType, 'epsilon');
});

test('CLI sampler names map to the documented schedulers', () => {
  const { modelCfg } = open('sd1-tiny');
  assert.deepEqual(SAMPLER_NAMES, ['ddim', 'pndm', 'euler', 'euler-karras', 'euler-a', 'dpmpp2m', 'dpmpp2m-karras']);
  const expect: Record<string, [string, boolean]> = {
    'ddim': ['ddim', false], 'pndm': ['pndm', false], 'euler': ['euler', false], 'euler-karras': ['euler', true],
    'euler-a': ['euler_a', false], 'dpmpp2m': ['dpmpp2m', false], 'dpmpp2m-karras': ['dpmpp2m', true],
  };
  for (const name of SAMPLER_NAMES) {
    const s = createSampler(name, modelCfg);
    assert.equal(s.kind, expect[name][0], name);
    const karras = 'use_karras_sigmas' in s.config ? (s.config as { use_karras_sigmas: boolean }).use_karras_sigmas : false;
    assert.equal(karras, expect[name][1], name);
    assert.match(describeSamplers(), new RegExp(`^  ${name} `, 'm'));
  }
  assert.throws(() => createSampler('heun', modelCfg), /unknown sampler "heun".*dpmpp2m-karras/);
});

test('timestep spacings (leading / linspace / trailing) as in diffusers', () => {
  const base = { beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012, steps_offset: 1 };
  const grid = (spacing: string, kind: SchedulerKind = 'ddim') => {
    const s = createScheduler(kind, { ...base, timestep_spacing: spacing });
    s.setTimesteps(10);
    return s.timesteps;
  };
  assert.deepEqual(grid('leading'), [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]);
  assert.deepEqual(grid('linspace'), [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]);
  assert.deepEqual(grid('trailing'), [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]);
  assert.deepEqual(grid('linspace', 'euler'), [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]);
  assert.deepEqual(grid('leading', 'euler'), [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]);
  // DPM spaces n + 1 points and drops the last; 499.5 rounds half to even (500), 599.4 to 599.
  assert.deepEqual(grid('linspace', 'dpmpp2m'), [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]);
  const s = createScheduler('ddim', { ...base, timestep_spacing: 'linspace' });
  s.setTimesteps(3);
  assert.deepEqual(s.timesteps, [999, 500, 0]); // 499.5 -> 500
  s.setTimesteps(7);
  assert.deepEqual(s.timesteps, [999, 832, 666, 500, 333, 166, 0]); // 166.5 -> 166 and 832.5 -> 832 (half to even)
});

test('resolveConfig ignores keys the class does not have (PNDM keys for Euler)', () => {
  const r = resolveConfig('X', { a: 1, b: 'x' }, { a: 2, skip_prk_steps: true, _class_name: 'PNDMScheduler' });
  assert.deepEqual(r, { a: 2, b: 'x' });
});
