// `oneword verify` on SDXL, the diffusers folder and the SGM single file (with --config, as its
// norm groups and heads are not in its weights): EVERY tensor of the reference file is either
// an input or recomputed within tolerance, none skipped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { formatVerifyTable, verify } from '../../src/pipelines/verify.ts';
import { XL_REFERENCE_INPUTS } from '../../src/pipelines/verify-xl.ts';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const REF = join(FIX, 'sdxl-tiny.ref.seed0.safetensors');
const XL = join(FIX, 'sdxl-tiny');
const SINGLE = join(FIX, 'sdxl-tiny-single-file.safetensors');
const BIN = new URL('../../bin/oneword.js', import.meta.url).pathname;

for (const [label, model, opts] of [['diffusers folder', XL, {}], ['single SGM file + config', SINGLE, { config: XL }]] as const) {
  test(`verify: sdxl-tiny (${label}) recomputes every reference tensor within tolerance`, async () => {
    const rows = await verify(model, REF, opts);
    const checked = new Set(rows.map((r) => r.name));
    assert.equal(checked.size, rows.length, 'each tensor checked once');
    const all = [...SafetensorsFile.open(REF).tensors.keys()];
    const skipped = all.filter((n) => !checked.has(n) && !XL_REFERENCE_INPUTS.has(n));
    assert.deepEqual(skipped, [], 'tensors neither inputs nor checked');
    const unknown = rows.filter((r) => !all.includes(r.name)).map((r) => r.name);
    assert.deepEqual(unknown, [], 'rows for tensors the file does not have');
    const failed = rows.filter((r) => !r.pass);
    assert.equal(failed.length, 0, formatVerifyTable(failed));
  });
}

test('verify (SDXL): the encoding of "" as the negative, where diffusers uses zeros, fails', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-verify-xl-'));
  try {
    const src = SafetensorsFile.open(REF);
    const tensors: Parameters<typeof writeSafetensors>[1] = {};
    for (const [name, info] of src.tensors) if (name.startsWith('cfg.') || name.startsWith('te')) tensors[name] = { dtype: info.dtype, shape: info.shape, data: src.read(name) };
    for (const k of ['embeds', 'pooled']) tensors[`cfg.uncond_${k}`] = tensors[`cfg.empty_${k}`];
    const path = join(dir, 'ref.safetensors');
    writeSafetensors(path, tensors, src.metadata);
    const rows = await verify(XL, path, { only: ['cfg.'] });
    assert.deepEqual(rows.filter((r) => !r.pass).map((r) => r.name), ['cfg.uncond_embeds', 'cfg.uncond_pooled']);

    // The CLI with --config on the single file: exit 1 and the failing rows.
    const res = spawnSync(process.execPath, [BIN, 'verify', '--model', SINGLE, '--config', XL, '--reference', path, '--only', 'cfg.'], { encoding: 'utf8' });
    assert.equal(res.status, 1, res.stderr);
    assert.match(res.stdout, /cfg\.uncond_pooled .* FAIL/);
    assert.match(res.stdout, /10 passed, 2 failed/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
