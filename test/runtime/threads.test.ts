// Thread counts are bounded by the machine's cores, in the library as on the command line.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { availableParallelism } from 'node:os';
import { compile } from '../../src/runtime/session.ts';
import { Graph, softmax } from '../../src/graph/index.ts';
import { MAX_THREADS, threadsProblem } from '../../src/runtime/threads.ts';
import { StableDiffusion } from '../../src/pipelines/stable-diffusion.ts';
import { OnewordError } from '../../src/errors.ts';

const MODEL = join(new URL('../fixtures/', import.meta.url).pathname, 'sd1-tiny');

test('threads: 1 to the number of cores; 999, 0, -3 and 1.5 are refused by name', async () => {
  assert.equal(MAX_THREADS, availableParallelism());
  assert.equal(threadsProblem(undefined), null);
  assert.equal(threadsProblem(MAX_THREADS), null);
  for (const bad of [999, MAX_THREADS + 1, 0, -3, 1.5, NaN]) {
    assert.match(threadsProblem(bad)!, new RegExp(`must be a whole number from 1 to ${MAX_THREADS} \\(this machine's cores\\), got ${bad}`));
    assert.throws(() => StableDiffusion.load(MODEL, { threads: bad }), (e: unknown) => e instanceof OnewordError && e.usage && e.option === 'threads');
  }
  await assert.rejects(compile({ y: softmax(new Graph().input('x', [2])) }, { threads: 999 }), /threads must be a whole number from 1 to/);
});
