import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadEmbedding, saveDiffusersEmbedding, saveA1111Embedding, defaultTokenName, multiVectorTokens, EmbeddingError, type Embedding } from '../../src/io/embeddings.ts';
import { PickleSecurityError } from '../../src/io/pickle.ts';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.ts';

const FIX = new URL('../fixtures/embeddings/', import.meta.url).pathname;

/** The generator's ramp: v[k] = k*scale + bias, rounded to float32. */
const ramp = (n: number, start = 0, scale = 0.01, bias = -0.3) => Array.from({ length: n }, (_, k) => Math.fround((start + k) * scale + bias));
const half = () => Array.from({ length: 24 }, (_, k) => k / 64 - 0.15625); // exact in fp16

function check(e: Embedding, want: Partial<Embedding>, values: number[]) {
  for (const [k, v] of Object.entries(want)) assert.deepEqual((e as unknown as Record<string, unknown>)[k], v, k);
  assert.equal(e.vectors.length, e.count * e.dim);
  assert.deepEqual([...e.vectors], values);
}

test('diffusers learned_embeds.safetensors {token: [N, D]}', () => {
  const e = loadEmbedding(FIX + 'learned_embeds.safetensors');
  check(e, { format: 'diffusers', token: '<cat-toy>', sourceName: '<cat-toy>', count: 2, dim: 16 }, ramp(32));
  assert.equal(e.info.format, 'pt');
});

test('older diffusers 1-D [D] embeddings, safetensors and .bin', () => {
  check(loadEmbedding(FIX + 'diffusers-1d.safetensors'), { format: 'diffusers-1d', sourceName: '<one>', count: 1, dim: 16 }, ramp(16));
  // weight[placeholder_id]: a [D] view at row 9 of a 10×16 matrix, DEFLATE-compressed archive.
  check(loadEmbedding(FIX + 'learned_embeds-1d.bin'), { format: 'diffusers-1d', sourceName: '<old-token>', count: 1, dim: 16 }, ramp(16, 16));
});

test('diffusers learned_embeds.bin: a [N, D] view at an offset into the whole embedding matrix', () => {
  check(loadEmbedding(FIX + 'learned_embeds.bin'), { format: 'diffusers-bin', token: '<cat-toy>', sourceName: '<cat-toy>', count: 2, dim: 16 }, ramp(32));
});

test('AUTOMATIC1111 .pt: string_to_param, name and training info', () => {
  const e = loadEmbedding(FIX + 'a1111-style.pt');
  check(e, { format: 'a1111-pt', token: 'a1111-style', sourceName: 'a1111-style', count: 2, dim: 16 }, ramp(32));
  assert.deepEqual(e.info, { step: '1500', sd_checkpoint: 'cc6cb27103', sd_checkpoint_name: 'v1-5-pruned-emaonly' });
});

test('A1111 .pt with an fp16 storage, old archive layout and zip64 records', () => {
  check(loadEmbedding(FIX + 'a1111-fp16.pt'), { format: 'a1111-pt', sourceName: 'fp16-embedding', count: 3, dim: 8, info: {} }, half());
});

test('archives written on a big-endian host (byteorder record "big")', () => {
  check(loadEmbedding(FIX + 'a1111-bigendian.pt'), { format: 'a1111-pt', sourceName: 'big-endian', count: 3, dim: 8 }, half());
});

test('A1111 .pt whose tensor is a non-contiguous (transposed) view', () => {
  check(loadEmbedding(FIX + 'a1111-transposed.pt'), { format: 'a1111-pt', count: 2, dim: 16 }, ramp(32));
});

test('original textual_inversion repo .pt: ParameterDict saved from CUDA', () => {
  check(loadEmbedding(FIX + 'original-repo.pt'), { format: 'a1111-pt', token: 'original-repo', count: 1, dim: 16 }, ramp(16));
});

test('kohya / A1111 emb_params safetensors (fp16) and a 1024-d SD2 embedding', () => {
  const k = loadEmbedding(FIX + 'kohya-style.safetensors');
  check(k, { format: 'a1111-safetensors', sourceName: 'kohya-style', count: 3, dim: 8 }, half());
  const sd2 = loadEmbedding(FIX + 'sd2-1024.safetensors');
  assert.deepEqual([sd2.count, sd2.dim], [1, 1024]);
  assert.equal(sd2.vectors[1023], Math.fround(1023 * 1e-4 - 0.3));
});

test('the token defaults to the file name and can be overridden', () => {
  assert.equal(defaultTokenName('/a/b/my-style.pt'), 'my-style');
  assert.equal(defaultTokenName('/a/b/archive.tar.pt'), 'archive.tar');
  assert.equal(defaultTokenName('noext'), 'noext');
  assert.equal(loadEmbedding(FIX + 'a1111-style.pt', { token: '<mine>' }).token, '<mine>');
  assert.throws(() => loadEmbedding(FIX + 'a1111-style.pt', { token: ' ' }), /must not be empty/);
});

test('format is detected from content, not from the extension', () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-emb-'));
  try {
    const asBin = join(dir, 'looks-like.bin');
    writeFileSync(asBin, readFileSync(FIX + 'learned_embeds.safetensors'));
    assert.equal(loadEmbedding(asBin).format, 'diffusers');
    const asSafetensors = join(dir, 'actually-a-pickle.safetensors');
    writeFileSync(asSafetensors, readFileSync(FIX + 'a1111-style.pt'));
    assert.equal(loadEmbedding(asSafetensors).format, 'a1111-pt');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('unsupported and broken files give clear errors', () => {
  assert.throws(() => loadEmbedding(FIX + 'no-such-file.safetensors'), (e: unknown) => e instanceof EmbeddingError && /cannot read/.test((e as Error).message));
  assert.throws(() => loadEmbedding(FIX + 'two-tokens.safetensors'), /holds 2 tensors \("<a>", "<b>"\)/);
  assert.throws(() => loadEmbedding(FIX + 'hostile-os-system.pt'), PickleSecurityError);
  assert.throws(() => loadEmbedding(FIX + 'not-an-embedding.pt'), /not an embedding: .* found keys "epoch", "global_step", "lr"/);
  assert.throws(() => loadEmbedding(FIX + 'no-such-file.pt'), /cannot read/);
  const dir = mkdtempSync(join(tmpdir(), 'oneword-emb-'));
  try {
    const put = (name: string, bytes: Uint8Array) => { const p = join(dir, name); writeFileSync(p, bytes); return p; };
    assert.throws(() => loadEmbedding(put('legacy.pt', Uint8Array.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]))), /legacy \(pre-1\.6\) PyTorch format/);
    assert.throws(() => loadEmbedding(put('img.png', Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0]))), /is an image/);
    assert.throws(() => loadEmbedding(put('junk.pt', new TextEncoder().encode('hello world, not an embedding'))), /not a safetensors file or a PyTorch archive/);
    assert.throws(() => loadEmbedding(put('empty.pt', new Uint8Array(0))), /not a safetensors file/);
    const st = (name: string, tensors: Parameters<typeof writeSafetensors>[1]) => { const p = join(dir, name); writeSafetensors(p, tensors); return p; };
    assert.throws(() => loadEmbedding(st('nan.safetensors', { t: { dtype: 'F32', shape: [1, 4], data: Float32Array.from([0, NaN, 1, 2]) } })), /contains NaN at element 1/);
    assert.throws(() => loadEmbedding(st('3d.safetensors', { t: { dtype: 'F32', shape: [1, 2, 2], data: new Float32Array(4) } })), /shape \[1, 2, 2\]/);
    assert.throws(() => loadEmbedding(st('int.safetensors', { t: { dtype: 'I32', shape: [1, 4], data: new Int32Array(4) } })), /dtype I32/);
    assert.throws(() => loadEmbedding(st('empty.safetensors', {})), /holds no tensors/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('saveDiffusersEmbedding writes {token: f32 [N, D]} with diffusers metadata, atomically', () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-emb-'));
  try {
    const path = join(dir, 'learned_embeds.safetensors');
    const v = Float32Array.from(ramp(3 * 8));
    saveDiffusersEmbedding(path, '<my-tok>', v, 3, 8);
    const f = SafetensorsFile.open(path);
    assert.deepEqual([...f.tensors.keys()], ['<my-tok>']);
    assert.deepEqual([f.info('<my-tok>').dtype, f.info('<my-tok>').shape], ['F32', [3, 8]]);
    assert.deepEqual(f.metadata, { format: 'pt' });
    check(loadEmbedding(path), { format: 'diffusers', sourceName: '<my-tok>', count: 3, dim: 8 }, [...v]);
    // Overwrite in place; no temporary files are left behind.
    saveDiffusersEmbedding(path, '<my-tok>', new Float32Array(8), 1, 8);
    assert.equal(loadEmbedding(path).count, 1);
    assert.deepEqual(readdirSync(dir), ['learned_embeds.safetensors']);
    // Bad input is rejected before anything is written.
    assert.throws(() => saveDiffusersEmbedding(path, '<x>', new Float32Array(7), 1, 8), /expected 1×8 = 8 values, got 7/);
    assert.throws(() => saveDiffusersEmbedding(path, '<x>', Float32Array.from([NaN]), 1, 1), /NaN/);
    assert.equal(loadEmbedding(path).count, 1);
    assert.ok(!existsSync(join(dir, 'other.safetensors')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('saveA1111Embedding writes emb_params with the name and training info in the metadata', () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-emb-'));
  try {
    const path = join(dir, 'my-style.safetensors');
    const v = Float32Array.from(ramp(2 * 768, 0, 1e-4));
    saveA1111Embedding(path, 'my-style', v, 2, 768, { step: 3000, sdCheckpoint: 'cc6cb27103', sdCheckpointName: 'v1-5-pruned-emaonly', lr: 0.005 });
    const f = SafetensorsFile.open(path);
    assert.deepEqual([...f.tensors.keys()], ['emb_params']);
    assert.deepEqual(f.info('emb_params').shape, [2, 768]);
    assert.deepEqual(f.metadata, { format: 'pt', name: 'my-style', step: '3000', sd_checkpoint: 'cc6cb27103', sd_checkpoint_name: 'v1-5-pruned-emaonly', lr: '0.005' });
    const e = loadEmbedding(path);
    check(e, { format: 'a1111-safetensors', token: 'my-style', sourceName: 'my-style', count: 2, dim: 768 }, [...v]);
    assert.deepEqual(readdirSync(dir), ['my-style.safetensors']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('multi-vector tokens are named as diffusers names them', () => {
  assert.deepEqual(multiVectorTokens('<cat-toy>', 3), ['<cat-toy>', '<cat-toy>_1', '<cat-toy>_2']);
  assert.deepEqual(multiVectorTokens('x', 1), ['x']);
  assert.throws(() => multiVectorTokens('x', 0), RangeError);
});
