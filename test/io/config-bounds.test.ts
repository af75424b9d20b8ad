// Every size a config file decides is bounded before anything is built from it: a hostile
// number fails at once with the file and the field named, not after minutes and gigabytes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCheckpoint } from '../../src/pipelines/checkpoint.ts';
import { CheckpointError } from '../../src/io/weights.ts';
import { configBoundsProblem, UNET_BOUNDS } from '../../src/io/config-bounds.ts';

const SD1 = new URL('../fixtures/sd1-tiny/', import.meta.url).pathname;

/** Loads a copy of the tiny model with one config field replaced; returns the error. */
function loadWith(file: string, key: string, value: unknown): CheckpointError {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-bounds-'));
  try {
    const model = join(dir, 'model');
    cpSync(SD1, model, { recursive: true });
    const path = join(model, file);
    writeFileSync(path, JSON.stringify({ ...JSON.parse(readFileSync(path, 'utf8')), [key]: value }));
    const started = performance.now();
    try {
      loadCheckpoint(model);
    } catch (e) {
      assert.ok(performance.now() - started < 5000, 'took too long to refuse');
      assert.ok(e instanceof CheckpointError, `expected CheckpointError, got ${e}`);
      assert.ok(e.message.startsWith(path), `does not name ${path}: ${e.message}`);
      return e;
    }
    assert.fail(`${file} with ${key} = ${JSON.stringify(value)} loaded`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('config bounds: 1e9 text encoder layers are refused by name, at once', () => {
  const e = loadWith('text_encoder/config.json', 'num_hidden_layers', 1e9);
  assert.match(e.message, /"num_hidden_layers" is 1000000000; oneword accepts at most 64/);
});

test('config bounds: UNet, VAE and scheduler sizes are bounded too', () => {
  assert.match(loadWith('unet/config.json', 'layers_per_block', 1e7).message, /"layers_per_block" is 10000000; oneword accepts at most 16/);
  assert.match(loadWith('unet/config.json', 'transformer_layers_per_block', [1e8, 1]).message, /"transformer_layers_per_block"\[0\] is 100000000/);
  assert.match(loadWith('vae/config.json', 'latent_channels', 2 ** 40).message, /"latent_channels" is 1099511627776; oneword accepts at most 64/);
  assert.match(loadWith('scheduler/scheduler_config.json', 'num_train_timesteps', 1e9).message, /"num_train_timesteps" is 1000000000; oneword accepts at most 100000/);
  assert.match(loadWith('scheduler/scheduler_config.json', 'trained_betas', new Array(200_000).fill(0.01)).message, /"trained_betas" lists 200000 values; oneword accepts at most 100000/);
});

test('config bounds: an oversized config file is refused before it is read', () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-bounds-'));
  try {
    const model = join(dir, 'model');
    cpSync(SD1, model, { recursive: true });
    truncateSync(join(model, 'unet', 'config.json'), 64 << 20);
    assert.throws(() => loadCheckpoint(model), /unet\/config\.json: is 67108864 bytes; a config file may have at most 16777216/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('config bounds: lists are bounded in length and entries; non-numbers are left to the parser', () => {
  assert.equal(configBoundsProblem({ block_out_channels: [32, 64], layers_per_block: 2 }, UNET_BOUNDS), null);
  assert.match(configBoundsProblem({ block_out_channels: new Array(9).fill(32) }, UNET_BOUNDS)!, /lists 9 values; oneword accepts at most 8/);
  assert.match(configBoundsProblem({ block_out_channels: [32, 1e6] }, UNET_BOUNDS)!, /"block_out_channels"\[1\] is 1000000; oneword accepts at most 8192/);
  assert.equal(configBoundsProblem({ layers_per_block: 'two' }, UNET_BOUNDS), null);
});
