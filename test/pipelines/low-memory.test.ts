// lowMemory keeps weights memory-mapped (ORT's 'extended' level, no prepacking): the same
// numbers within float tolerance, chosen automatically only for models that are big for the machine.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { totalmem } from 'node:os';
import { StableDiffusion } from '../../src/pipelines/stable-diffusion.ts';

const MODEL = new URL('../fixtures/sd1-tiny', import.meta.url).pathname;

test('lowMemory: weights stay mapped, the image is the same within float tolerance, and it is on by default only for big models', async () => {
  const normal = StableDiffusion.load(MODEL);
  const low = StableDiffusion.load(MODEL, { lowMemory: true });
  assert.equal(normal.lowMemory, false, 'a tiny model is far below a third of the memory');
  assert.ok(normal.weightBytes > 0 && normal.weightBytes < totalmem() / 3);
  assert.deepEqual([normal.compileOptions().optimization, normal.compileOptions().disablePrepacking, normal.compileOptions().memPattern], [undefined, false, true]);
  assert.deepEqual([low.compileOptions().optimization, low.compileOptions().disablePrepacking, low.compileOptions().memPattern], ['extended', true, false]);
  const opts = { prompt: 'a red star', steps: 3, width: 32, height: 32, seed: 5 };
  const [a] = await normal.generate(opts);
  const [b] = await low.generate(opts);
  let diff = 0;
  for (let i = 0; i < a.pixels.length; i++) diff = Math.max(diff, Math.abs(a.pixels[i] - b.pixels[i]));
  assert.ok(diff <= 2, `pixels differ by ${diff}`);
});
