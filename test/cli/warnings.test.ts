// The loader's warnings reach the user: a model folder without a scheduler config loads with
// the family default, and `generate` says so (stderr line; a JSON event in --progress json).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const BIN = new URL('../../bin/oneword.js', import.meta.url).pathname;

test('generate shows the loader warnings (bar: stderr; json: warning events; quiet: nothing)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ow-warn-'));
  try {
    const model = join(dir, 'model');
    cpSync(join(FIX, 'sd1-tiny'), model, { recursive: true });
    rmSync(join(model, 'scheduler'), { recursive: true });
    const run = (progress: string) => spawnSync(process.execPath, [
      BIN, 'generate', '--model', model, '--prompt', 'a cat', '--steps', '2', '--width', '16', '--height', '16',
      '--out', join(dir, `out-${progress}`), '--progress', progress,
    ], { encoding: 'utf8' });
    const bar = run('bar');
    assert.equal(bar.status, 0, bar.stderr);
    assert.match(bar.stderr, /^warning: .*no scheduler\/scheduler_config\.json, using the sd1 default/m);
    const json = run('json');
    assert.equal(json.status, 0, json.stderr);
    const events = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as { event: string; message?: string });
    const warnings = events.filter((e) => e.event === 'warning');
    assert.equal(warnings.length, 1);
    assert.match(warnings[0].message!, /scheduler_config\.json/);
    const quiet = run('quiet');
    assert.equal(quiet.status, 0, quiet.stderr);
    assert.doesNotMatch(quiet.stderr + quiet.stdout, /warning/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
