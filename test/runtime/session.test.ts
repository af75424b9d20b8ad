// Runtime: the three ways weights reach ORT give identical results, and sessions are cached
// by everything that decides their outputs (graph, inline weights, external files), while
// fed weights stay with each compiled graph.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as o from '../../src/graph/index.ts';
import { compile } from '../../src/runtime/session.ts';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.ts';

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

/** y = x·Wᵀ for a 3×2 weight, compiled with the weights reaching ORT in `mode`. */
function linearModel(values: Float32Array, mode: 'inline' | 'feed') {
  const g = new o.Graph();
  const x = g.input('x', [1, 2]);
  const w = g.weight('w', [3, 2], { kind: 'memory', data: values });
  return compile({ y: o.linear(x, w) }, { weights: mode });
}

const run = async (c: Awaited<ReturnType<typeof compile>>) => [...((await c.run({ x: [1, 2] })).y as Float32Array)];

test('graphs of one structure with different fed weights each compute with their own', async () => {
  const a = await linearModel(Float32Array.from([1, 0, 0, 1, 1, 1]), 'feed');
  const b = await linearModel(Float32Array.from([2, 0, 0, 2, 2, 2]), 'feed');
  // One session serves both: the weights are inputs bound per compiled graph.
  assert.equal(a.session, b.session);
  assert.deepEqual(await run(a), [1, 2, 3]);
  assert.deepEqual(await run(b), [2, 4, 6]);
  assert.deepEqual(await run(a), [1, 2, 3], 'compiling b changed what a computes');
});

test('inline weights are part of the model: different values, different sessions', async () => {
  const a = await linearModel(Float32Array.from([1, 0, 0, 1, 1, 1]), 'inline');
  const b = await linearModel(Float32Array.from([2, 0, 0, 2, 2, 2]), 'inline');
  const again = await linearModel(Float32Array.from([1, 0, 0, 1, 1, 1]), 'inline');
  assert.notEqual(a.session, b.session);
  assert.equal(again.session, a.session);
  assert.deepEqual(await run(a), [1, 2, 3]);
  assert.deepEqual(await run(b), [2, 4, 6]);
});

test('a weight file replaced on disk is read again, not served from the old session', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-rt-'));
  try {
    const file = join(dir, 'w.safetensors');
    const build = () => {
      const st = SafetensorsFile.open(file);
      const info = st.info('w');
      const g = new o.Graph();
      const x = g.input('x', [1, 2]);
      const w = g.weight('w', [3, 2], { kind: 'file', path: file, offset: info.offset, length: info.byteLength, read: () => st.readFloat32('w') });
      return compile({ y: o.linear(x, w) }, { weights: 'external', externalRoot: dir });
    };
    writeSafetensors(file, { w: { dtype: 'F32', shape: [3, 2], data: Float32Array.from([1, 0, 0, 1, 1, 1]) } });
    const a = await build();
    assert.equal((await build()).session, a.session, 'the same file compiled twice should reuse its session');
    writeSafetensors(file, { w: { dtype: 'F32', shape: [3, 2], data: Float32Array.from([2, 0, 0, 2, 2, 2]) } });
    const b = await build();
    assert.notEqual(b.session, a.session);
    assert.deepEqual(await run(b), [2, 4, 6]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('identical graphs share one session; a different graph gets its own', async () => {
  const build = (op: (x: o.Tensor) => o.Tensor) => {
    const g = new o.Graph();
    const x = g.input('x', [4]);
    return { y: op(x) };
  };
  const a = await compile(build(o.exp));
  const b = await compile(build(o.exp));
  const c = await compile(build(o.neg));
  assert.equal(a.session, b.session);
  assert.notEqual(c.session, a.session);
  const y = (await a.run({ x: [0, 1, 2, 3] })).y as Float32Array;
  assert.ok(Math.abs(y[2] - Math.exp(2)) < 1e-5);
  assert.deepEqual([...((await c.run({ x: [0, 1, 2, 3] })).y as Float32Array)], [-0, -1, -2, -3]);
});

test("optimizedModelPath writes the graph ORT runs, with its weights in a side file (session config keys reach ORT)", async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-opt-'));
  try {
    const g = new o.Graph();
    const x = g.input('x', [2, 64]);
    // Above ORT's 1 KiB threshold for moving an initializer to the side file.
    const wt = g.weight('w', [64, 64], { kind: 'memory', data: Float32Array.from({ length: 4096 }, (_, i) => i / 1e4) });
    const path = join(dir, 'optimized.onnx');
    const c = await compile({ y: o.linear(x, wt) }, { optimizedModelPath: path });
    await c.run({ x: new Float32Array(128).fill(1) });
    assert.ok(statSync(path).size > 0);
    // The side file's name is a session config entry: it exists only if the key reached ORT.
    assert.ok(existsSync(`${path}.data`), 'no external-initializer file next to the optimised model');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
