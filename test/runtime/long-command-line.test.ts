// A command line of any length: ONNX Runtime must never see it (its Linux telemetry scanned
// /proc/self/cmdline with a recursive regex and overflowed the stack at ~28 KB).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

const SESSION = new URL('../../src/runtime/session.ts', import.meta.url).href;
const GRAPH = new URL('../../src/graph/index.ts', import.meta.url).href;

test('a 49 KB command-line argument does not crash session creation', () => {
  // One line: the crash needs a long run without line breaks in the command line.
  const code = [
    `const { compile } = await import(${JSON.stringify(SESSION)});`,
    `const { Graph, softmax } = await import(${JSON.stringify(GRAPH)});`,
    `const c = await compile({ y: softmax(new Graph().input('x', [2])) }, { threads: 1 });`,
    `console.log((await c.run({ x: new Float32Array([0, 0]) })).y[0]);`,
  ].join(' ');
  const env = { ...process.env };
  delete env.ORT_DISABLE_TELEMETRY;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code, 'x'.repeat(49_000)], { encoding: 'utf8', env });
  assert.equal(r.signal, null, `killed by ${r.signal}`);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), '0.5');
});
