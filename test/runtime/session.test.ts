// Runtime: the three ways weights reach ORT give identical results, and sessions are cached.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as o from '../../src/graph/index.ts';
import { compile } from '../../src/runtime/session.ts';
import { SafetensorsFile } from '../../src/io/safetensors.ts';

function tinySafetensors(path: string, name: string, data: Float32Array, shape: number[]) {
  // A second tensor first, so the weight does not start at the data section's beginning.
  const pad = new Float32Array([7, 7, 7]);
  const header = JSON.stringify({
    pad: { dtype: 'F32', shape: [3], data_offsets: [0, 12] },
    [name]: { dtype: 'F32', shape, data_offsets: [12, 12 + data.byteLength] },
  });
  const hlen = Math.ceil(header.length / 8) * 8;
  const buf = Buffer.alloc(8 + hlen + 12 + data.byteLength, 0x20);
  buf.writeBigUInt64LE(BigInt(hlen), 0);
  buf.write(header, 8, 'utf8');
  Buffer.from(pad.buffer).copy(buf, 8 + hlen);
  Buffer.from(data.buffer).copy(buf, 8 + hlen + 12);
  writeFileSync(path, buf);
}

test('weights inline, fed, or mapped from a .safetensors file give the same outputs', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-rt-'));
  try {
    const wdata = Float32Array.from({ length: 6 }, (_, i) => i - 2.5);
    const file = join(dir, 'sub', 'w.safetensors');
    (await import('node:fs')).mkdirSync(join(dir, 'sub'));
    tinySafetensors(file, 'w', wdata, [3, 2]);
    const st = SafetensorsFile.open(file);
    const info = st.info('w');
    const results: Float32Array[] = [];
    for (const mode of ['inline', 'feed', 'external'] as const) {
      const g = new o.Graph();
      const x = g.input('x', [1, 2]);
      const w = g.weight('w', [3, 2], { kind: 'file', path: file, offset: info.offset, length: info.byteLength, read: () => st.readFloat32('w') });
      const c = await compile({ y: o.linear(x, w) }, { weights: mode, externalRoot: dir, disablePrepacking: true });
      results.push((await c.run({ x: [1, 2] })).y as Float32Array);
    }
    // y = x·Wᵀ with W rows (-2.5,-1.5), (-0.5,0.5), (1.5,2.5).
    for (const r of results) assert.deepEqual([...r], [-5.5, 0.5, 6.5]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('external weights outside the model folder are refused', async () => {
  const g = new o.Graph();
  const w = g.weight('w', [1], { kind: 'file', path: '/etc/passwd', offset: 0, length: 4, read: () => new Float32Array(1) });
  const root = mkdtempSync(join(tmpdir(), 'oneword-root-'));
  try {
    await assert.rejects(() => compile({ y: o.mul(w, 2) }, { weights: 'external', externalRoot: root }), /lies outside the external-data folder/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('identical graphs share one compiled session', async () => {
  const build = () => {
    const g = new o.Graph();
    const x = g.input('x', [4]);
    return { y: o.exp(x) };
  };
  const a = await compile(build());
  const b = await compile(build());
  assert.equal(a, b);
  const y = (await a.run({ x: [0, 1, 2, 3] })).y as Float32Array;
  assert.ok(Math.abs(y[2] - Math.exp(2)) < 1e-5);
});
