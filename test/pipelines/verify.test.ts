// `oneword verify` on both fixture models and both layouts of the SD1 one: every
// tensor of the diffusers reference files recomputed within tolerance.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { verify, formatVerifyTable } from '../../src/pipelines/verify.ts';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const cases = [
  ['sd1-tiny (diffusers folder)', 'sd1-tiny', 'sd1-tiny.ref.seed0.safetensors'],
  ['sd1-tiny (single LDM file)', 'sd1-tiny-single-file.safetensors', 'sd1-tiny.ref.seed0.safetensors'],
  ['sd2-tiny (diffusers folder, v-prediction)', 'sd2-tiny', 'sd2-tiny.ref.seed0.safetensors'],
] as const;

for (const [label, model, ref] of cases) {
  test(`verify: ${label} matches every reference tensor`, async () => {
    const rows = await verify(join(FIX, model), join(FIX, ref));
    const names = new Set(rows.map((r) => r.name.split('.')[0]));
    for (const group of ['tok', 'te', 'cfg', 'unet', 'vae', 'sched', 'sample', 'ti']) assert.ok(names.has(group), `no ${group}.* rows`);
    assert.ok(rows.length > 100, `only ${rows.length} tensors checked`);
    const failed = rows.filter((r) => !r.pass);
    assert.equal(failed.length, 0, formatVerifyTable(failed));
  });
}

test('verify: a reference tensor that disagrees is reported and fails', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-verify-'));
  try {
    const src = SafetensorsFile.open(join(FIX, 'sd1-tiny.ref.seed0.safetensors'));
    const tensors: Parameters<typeof writeSafetensors>[1] = {};
    for (const name of ['unet.latents', 'unet.timestep', 'unet.noise_pred', 'unet.cfg.noise_pred_batched', 'unet.cfg.guided', 'unet.cfg.guidance_scale', 'unet.timestep_float', 'unet.noise_pred_float_t', 'cfg.cond_embeds']) {
      const info = src.info(name);
      tensors[name] = { dtype: info.dtype, shape: info.shape, data: src.read(name) };
    }
    const bad = Float32Array.from(src.readFloat32('unet.noise_pred'));
    bad[7] += 0.01;
    tensors['unet.noise_pred'] = { dtype: 'F32', shape: src.info('unet.noise_pred').shape, data: bad };
    const path = join(dir, 'ref.safetensors');
    writeSafetensors(path, tensors, src.metadata);
    const rows = await verify(join(FIX, 'sd1-tiny'), path, { only: ['unet.'] });
    const row = rows.find((r) => r.name === 'unet.noise_pred')!;
    assert.equal(row.pass, false);
    assert.ok(Math.abs(row.maxAbs - 0.01) < 1e-4);
    assert.ok(rows.filter((r) => r.name !== 'unet.noise_pred').every((r) => r.pass));

    // The CLI exits non-zero and prints the failing row.
    const bin = new URL('../../bin/oneword.js', import.meta.url).pathname;
    const res = spawnSync(process.execPath, [bin, 'verify', '--model', join(FIX, 'sd1-tiny'), '--reference', path, '--only', 'unet.'], { encoding: 'utf8' });
    assert.equal(res.status, 1, res.stderr);
    assert.match(res.stdout, /unet\.noise_pred .* FAIL/);
    assert.match(res.stdout, /3 passed, 1 failed/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('verify: CLI usage errors', () => {
  const bin = new URL('../../bin/oneword.js', import.meta.url).pathname;
  const res = spawnSync(process.execPath, [bin, 'verify', '--model'], { encoding: 'utf8' });
  assert.equal(res.status, 2);
  assert.match(res.stderr, /option --model needs a value/);
  const res2 = spawnSync(process.execPath, [bin, 'verify', '--modle', 'x'], { encoding: 'utf8' });
  assert.equal(res2.status, 2);
  assert.match(res2.stderr, /unknown option "--modle"/);
});
