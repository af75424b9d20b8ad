// A single file whose text encoder differs from the released models in what no weight
// records (its attention heads): read alone it is mis-described and computes wrong
// embeddings; with --config (a diffusers folder describing it) it matches the model.
//
// The model: sd1-tiny's weights, declared with 2 text-encoder heads instead of 4. Its
// reference tensors come from oneword on the diffusers folder of that model, the path
// verify.test.ts checks against diffusers itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { verify, formatVerifyTable } from '../../src/pipelines/verify.ts';
import { StableDiffusion } from '../../src/pipelines/stable-diffusion.ts';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.ts';
import { OnewordError } from '../../src/errors.ts';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const BIN = new URL('../../bin/oneword.js', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'oneword-single-config-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

/** sd1-tiny as a diffusers folder whose text encoder has 2 heads (weights unchanged). */
const folder = join(dir, 'two-heads');
cpSync(join(FIX, 'sd1-tiny'), folder, { recursive: true });
const tePath = join(folder, 'text_encoder', 'config.json');
writeFileSync(tePath, JSON.stringify({ ...JSON.parse(readFileSync(tePath, 'utf8')), num_attention_heads: 2 }, null, 2));
/** The same model as one LDM-named file: the fixture's single file holds exactly these weights. */
const single = join(dir, 'two-heads.safetensors');
cpSync(join(FIX, 'sd1-tiny-single-file.safetensors'), single);

/** sd1-tiny's reference file with te.* and cfg.* recomputed on the 2-head folder. */
async function twoHeadReference(): Promise<string> {
  const ref = SafetensorsFile.open(join(FIX, 'sd1-tiny.ref.seed0.safetensors'));
  const prompts = JSON.parse(ref.metadata.prompts) as string[];
  const sd = StableDiffusion.load(folder);
  const d = sd.hiddenSize;
  const init = sd.tokenizer.encode(ref.metadata.initializer_token)[0];
  const row = sd.ckpt.textEncoder.float32('text_model.embeddings.token_embedding.weight').slice(init * d, (init + 1) * d);
  sd.addLearnedToken(ref.metadata.placeholder_token, row, 1);
  const encode = (texts: string[]) => sd.encodeIds(texts.flatMap((p) => sd.tokenizer.call(p).inputIds), texts.length);
  const out: Record<string, TensorToWrite> = {};
  for (const name of ['tok.input_ids', 'te.placeholder_row', 'cfg.cond_input_ids', 'cfg.uncond_input_ids']) {
    const info = ref.info(name);
    out[name] = { dtype: info.dtype, shape: info.shape, data: ref.read(name) };
  }
  const f32 = (name: string, data: Float32Array): TensorToWrite => ({ dtype: 'F32', shape: ref.info(name).shape, data });
  out['te.last_hidden_state'] = f32('te.last_hidden_state', await encode(prompts));
  out['cfg.cond_embeds'] = f32('cfg.cond_embeds', await encode([prompts[0]]));
  out['cfg.uncond_embeds'] = f32('cfg.uncond_embeds', await encode(['']));
  // Differs from the 4-head original, or the test below could not fail.
  const orig = ref.readFloat32('te.last_hidden_state');
  const got = out['te.last_hidden_state'].data as Float32Array;
  assert.ok(got.some((v, i) => Math.abs(v - orig[i]) > 1e-2), 'head count changes the embeddings');
  const path = join(dir, 'two-heads.ref.safetensors');
  writeSafetensors(path, out, ref.metadata);
  return path;
}

test('single file with non-standard text-encoder heads: wrong alone, matches with a config folder (API and CLI)', async () => {
  const ref = await twoHeadReference();
  const only = ['te.', 'cfg.'];

  const alone = await verify(single, ref, { only });
  const wrong = alone.filter((r) => !r.pass).map((r) => r.name);
  assert.ok(wrong.includes('te.last_hidden_state') && wrong.includes('cfg.cond_embeds'), formatVerifyTable(alone));

  const given = await verify(single, ref, { only, config: folder });
  assert.ok(given.length >= 6, `only ${given.length} rows`);
  assert.equal(given.filter((r) => !r.pass).length, 0, formatVerifyTable(given));

  const cli = (extra: string[]) => spawnSync(process.execPath, [BIN, 'verify', '--model', single, '--reference', ref, '--only', 'te.', '--only', 'cfg.', ...extra], { encoding: 'utf8' });
  const without = cli([]);
  assert.equal(without.status, 1, without.stderr);
  assert.match(without.stdout, /te\.last_hidden_state .* FAIL/);
  const withConfig = cli(['--config', folder]);
  assert.equal(withConfig.status, 0, withConfig.stdout + withConfig.stderr);
  assert.match(withConfig.stdout, /\d+ passed, 0 failed/);
});

test('config folder: its configs, scheduler and tokenizer describe the single file; misuse is a usage error', () => {
  const sd = StableDiffusion.load(single, { config: folder });
  assert.equal(sd.ckpt.textEncoderConfig.num_attention_heads, 2);
  assert.equal(sd.ckpt.tokenizerDir, join(folder, 'tokenizer'));
  assert.deepEqual(sd.ckpt.schedulerConfig, JSON.parse(readFileSync(join(folder, 'scheduler', 'scheduler_config.json'), 'utf8')));
  assert.equal(StableDiffusion.load(single).ckpt.textEncoderConfig.num_attention_heads, 4, 'the released-model rule without a config');

  // A folder with only some configs: the rest is read off the file.
  const partial = join(dir, 'text-only');
  cpSync(join(folder, 'text_encoder'), join(partial, 'text_encoder'), { recursive: true });
  const p = StableDiffusion.load(single, { config: partial }).ckpt;
  assert.equal(p.textEncoderConfig.num_attention_heads, 2);
  assert.equal(p.unetConfig.sample_size, 64);
  assert.equal(p.tokenizerDir, null);

  const usage = (f: () => unknown, re: RegExp) => assert.throws(f, (e: unknown) => e instanceof OnewordError && e.usage && e.option === 'config' && re.test(e.message));
  usage(() => StableDiffusion.load(single, { config: join(dir, 'nope') }), /config must be a diffusers model folder.*nope is not a folder/);
  usage(() => StableDiffusion.load(single, { config: join(folder, 'tokenizer') }), /has none of text_encoder\/config\.json/);
  usage(() => StableDiffusion.load(folder, { config: folder }), /config applies to single-file checkpoints only/);
  const res = spawnSync(process.execPath, [BIN, 'verify', '--model', single, '--reference', single, '--config', join(dir, 'nope')], { encoding: 'utf8' });
  assert.equal(res.status, 2, res.stderr);
  assert.match(res.stderr, /--config must be a diffusers model folder/);
});
