// The rules that keep a run's files inside --out and away from other runs and user files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { checkRunFolder, embeddingFileNames, existingRunFiles, keepLogThrough, tokenFileNameProblem } from '../../src/pipelines/run-files.ts';
import { lockFolder, LOCK_FILE, makeFolder, outputFolderProblem } from '../../src/io/output-folder.ts';
import { writeEmbeddingFiles } from '../../src/pipelines/textual-inversion.ts';
import { OnewordError } from '../../src/errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'oneword-run-files-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

test('token file names: plain names pass, anything that could leave the folder is refused', () => {
  for (const ok of ['<my-cat>', 'cat-toy', '<猫>', '<a.b_c>', '<v2>']) assert.equal(tokenFileNameProblem(ok), null, ok);
  for (const bad of ['<../my-model>', '../../evil', '<my/cat>', '<a\\b>', '<c:d>', '<>', '<..>', '<.>', '<con>', '<a\u0000b>', `<${'x'.repeat(201)}>`]) {
    assert.ok(tokenFileNameProblem(bad), `${JSON.stringify(bad)} was accepted`);
  }
  assert.deepEqual(embeddingFileNames('<my-cat>', '-steps-5'), { diffusers: 'learned_embeds-steps-5.safetensors', a1111: 'my-cat-steps-5.safetensors' });
  // The library's own writer refuses such a token before writing anything.
  const e = { token: '<../escape>', vectors: new Float32Array(4), count: 1, dim: 4 };
  assert.throws(() => writeEmbeddingFiles(join(dir, 'w'), e), (err: unknown) => err instanceof OnewordError && err.usage && err.option === 'token');
  assert.ok(!existsSync(join(dir, 'w')) && !existsSync(join(dir, 'escape.safetensors')));
});

test('a folder holding a run or a file the run would write is refused, unless resumed', () => {
  const out = join(dir, 'run');
  mkdirSync(out);
  writeFileSync(join(out, 'notes.txt'), 'unrelated');
  checkRunFolder(out, '<cat>');
  writeFileSync(join(out, 'cat-steps-500.safetensors'), 'x');
  assert.deepEqual(existingRunFiles(out, '<cat>'), ['cat-steps-500.safetensors']);
  assert.throws(() => checkRunFolder(out, '<cat>'), /already holds cat-steps-500\.safetensors, which this run would overwrite/);
  writeFileSync(join(out, 'train-state.safetensors'), 'x');
  assert.throws(() => checkRunFolder(out, '<cat>'), /already holds a training run .*pass --resume/);
  checkRunFolder(out, '<cat>', out);
  assert.throws(() => checkRunFolder(join(out, 'notes.txt'), '<cat>'), /notes\.txt is a file, not a folder/);
});

test('resume keeps the log through the checkpoint and drops a line torn by a kill', () => {
  const log = join(dir, 'train-log.jsonl');
  writeFileSync(log, '{"step":1}\n{"step":2}\n{"step":3}\n{"ste');
  keepLogThrough(log, 2);
  assert.equal(readFileSync(log, 'utf8'), '{"step":1}\n{"step":2}\n');
});

test('a folder lock: one holder; a stale lock is taken over; released with the process', () => {
  const out = join(dir, 'locked', 'deep');
  const lock = lockFolder(out);
  assert.equal(readFileSync(join(out, LOCK_FILE), 'utf8').trim(), String(process.pid));
  lock.release();
  assert.ok(!existsSync(out), 'the lock left the empty folder it made');
  // Another live process (here the test runner) holding it: refused, naming its pid.
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, LOCK_FILE), `${process.ppid}\n`);
  assert.throws(() => lockFolder(out), new RegExp(`in use by another oneword process \\(pid ${process.ppid}\\)`));
  const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
  writeFileSync(join(out, LOCK_FILE), `${dead}\n`);
  lockFolder(out).release();
  assert.ok(!existsSync(join(out, LOCK_FILE)));
});

test('output folders are probed for real and made level by level', () => {
  assert.equal(outputFolderProblem(join(dir, 'new', 'deeper')), null);
  assert.ok(!existsSync(join(dir, 'new')), 'the probe left a folder behind');
  makeFolder(join(dir, 'new', 'deeper'));
  assert.ok(existsSync(join(dir, 'new', 'deeper')));
  if (process.platform === 'linux') {
    assert.match(outputFolderProblem('/proc/oneword-x')!, /cannot write to \/proc \(the file system takes no new files there\)/);
    assert.throws(() => makeFolder('/proc/oneword-x/y'), /cannot create the folder \/proc\/oneword-x/);
  }
});
