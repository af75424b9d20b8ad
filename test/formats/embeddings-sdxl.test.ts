// SDXL embeddings: one word with vectors for both text encoders (clip_l, clip_g), in the
// layouts kohya, A1111/ComfyUI and diffusers write. Fixtures: test/formats/gen/make_embedding_fixtures.py.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  loadEmbedding, saveSDXLEmbedding, saveDiffusersSDXLEmbedding, saveDiffusersEmbedding, saveA1111Embedding,
  embeddingWidthProblem, diffusersSecondFile, EmbeddingError, type Embedding, type LearnedEmbedding,
} from '../../src/io/embeddings.ts';
import { PickleSecurityError } from '../../src/io/pickle.ts';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.ts';

const FIX = new URL('../fixtures/embeddings/', import.meta.url).pathname;
const PAIR = join(FIX, 'sdxl-diffusers');

/** The generator's ramp: v[k] = (start + k)*scale + bias, rounded to float32. */
const ramp = (n: number, start = 0, scale = 0.01, bias = -0.3) => Array.from({ length: n }, (_, k) => Math.fround((start + k) * scale + bias));
const half = (n: number) => Array.from({ length: n }, (_, k) => k / 64 - 0.15625); // exact in fp16
const L = ramp(16); // clip_l [2, 8]
const G = ramp(24, 0, 0.02, -0.5); // clip_g [2, 12]

function checkSDXL(e: Embedding, want: Partial<Embedding>, l: number[], g: number[]) {
  for (const [k, v] of Object.entries(want)) assert.deepEqual((e as unknown as Record<string, unknown>)[k], v, k);
  assert.deepEqual([...e.vectors], l, 'clip_l values');
  assert.ok(e.vectors2, 'has encoder-2 vectors');
  assert.deepEqual([...e.vectors2], g, 'clip_g values');
  assert.equal(e.vectors.length, e.count * e.dim);
  assert.equal(e.vectors2.length, e.count * e.dim2!);
}

function inTmp(fn: (dir: string) => void) {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-sdxl-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('kohya SDXL safetensors (fp16, model-spec metadata): clip_l is encoder 1, clip_g encoder 2, the token is the file name', () => {
  const e = loadEmbedding(FIX + 'sdxl-kohya.safetensors');
  checkSDXL(e, { format: 'sdxl-safetensors', token: 'sdxl-kohya', sourceName: 'my-sdxl-word', count: 2, dim: 8, dim2: 12 }, half(16), half(24));
  assert.equal(e.info['modelspec.architecture'], 'stable-diffusion-xl-v1-base/textual-inversion');
});

test('A1111 / ComfyUI clip_l + clip_g safetensors without metadata', () => {
  checkSDXL(loadEmbedding(FIX + 'sdxl.safetensors'), { format: 'sdxl-safetensors', token: 'sdxl', sourceName: undefined, count: 2, dim: 8, dim2: 12, info: {} }, ramp(16), ramp(24));
});

test('SDXL torch.save .pt: kohya\'s plain dict, and one with scalar entries beside the tensors', () => {
  checkSDXL(loadEmbedding(FIX + 'sdxl-kohya.pt'), { format: 'sdxl-pt', token: 'sdxl-kohya', count: 2, dim: 8, dim2: 12, info: {} }, L, G);
  const e = loadEmbedding(FIX + 'sdxl-with-info.pt');
  checkSDXL(e, { format: 'sdxl-pt', token: 'sdxl-with-info', sourceName: 'sdxl-info', info: { name: 'sdxl-info', step: '2000' } }, L, G);
  assert.equal(loadEmbedding(FIX + 'sdxl-kohya.pt', { token: '<mine>' }).token, '<mine>');
});

test('diffusers SDXL pair: learned_embeds(.safetensors|-steps-S) read with its _2 file, token from inside', () => {
  checkSDXL(loadEmbedding(join(PAIR, 'learned_embeds.safetensors')), { format: 'diffusers-sdxl-pair', token: '<cat-toy>', sourceName: '<cat-toy>', count: 2, dim: 8, dim2: 12, info: { format: 'pt' } }, L, G);
  checkSDXL(loadEmbedding(join(PAIR, 'learned_embeds-steps-500.safetensors')), { format: 'diffusers-sdxl-pair', token: '<cat-toy>' }, ramp(16, 0, 0.001), ramp(24, 0, 0.001));
  assert.equal(diffusersSecondFile('/o/learned_embeds.safetensors'), '/o/learned_embeds_2.safetensors');
  assert.equal(diffusersSecondFile('/o/learned_embeds-steps-500.safetensors'), '/o/learned_embeds_2-steps-500.safetensors');
  assert.equal(diffusersSecondFile('/o/cat.bin'), '/o/cat_2.bin');
});

test('the text_encoder_2 file alone is refused, naming the file to pass', () => {
  assert.throws(() => loadEmbedding(join(PAIR, 'learned_embeds_2.safetensors')), /learned_embeds_2\.safetensors: is the text_encoder_2 half of a diffusers SDXL pair; pass the first file, learned_embeds\.safetensors/);
  assert.throws(() => loadEmbedding(join(PAIR, 'learned_embeds_2-steps-500.safetensors')), /pass the first file, learned_embeds-steps-500\.safetensors/);
  inTmp((dir) => {
    // The script's name says what it is even when its partner was not copied along.
    copyFileSync(join(PAIR, 'learned_embeds_2.safetensors'), join(dir, 'learned_embeds_2.safetensors'));
    assert.throws(() => loadEmbedding(join(dir, 'learned_embeds_2.safetensors')), (e: unknown) => e instanceof EmbeddingError && e.usage && /text_encoder_2 half/.test(e.message));
    // Any other X_2 next to an X is the second half too.
    saveDiffusersSDXLEmbedding(join(dir, 'style.safetensors'), '<s>', new Float32Array(4), new Float32Array(6), 1, 4, 6);
    assert.throws(() => loadEmbedding(join(dir, 'style_2.safetensors')), /pass the first file, style\.safetensors/);
  });
});

test('files named like a pair that are not one load as separate embeddings', () => {
  inTmp((dir) => {
    // v_2 alone, no v: an ordinary SD embedding someone numbered.
    saveDiffusersEmbedding(join(dir, 'v_2.safetensors'), '<v2>', Float32Array.from(ramp(8)), 1, 8);
    const lone = loadEmbedding(join(dir, 'v_2.safetensors'));
    assert.deepEqual([lone.format, lone.token, lone.vectors2], ['diffusers', '<v2>', undefined]);
    // An emb_params file next to a diffusers one is a different kind of file, not its partner.
    saveDiffusersEmbedding(join(dir, 'w.safetensors'), '<w>', Float32Array.from(ramp(8)), 1, 8);
    saveA1111Embedding(join(dir, 'w_2.safetensors'), 'w_2', Float32Array.from(ramp(8)), 1, 8);
    const w = loadEmbedding(join(dir, 'w.safetensors'));
    assert.deepEqual([w.format, w.vectors2], ['diffusers', undefined]);
    assert.equal(loadEmbedding(join(dir, 'w_2.safetensors')).format, 'a1111-safetensors');
  });
});

test('a pair whose halves disagree names both files', () => {
  inTmp((dir) => {
    const put = (name: string, token: string, n: number, d: number) => writeSafetensors(join(dir, name), { [token]: { dtype: 'F32', shape: [n, d], data: new Float32Array(n * d) } });
    put('a.safetensors', '<a>', 2, 8);
    put('a_2.safetensors', '<b>', 2, 12);
    assert.throws(() => loadEmbedding(join(dir, 'a.safetensors')), /a\.safetensors and a_2\.safetensors are a diffusers SDXL pair by name but define different tokens \("<a>" and "<b>"\)/);
    put('c.safetensors', '<c>', 2, 8);
    put('c_2.safetensors', '<c>', 3, 12);
    assert.throws(() => loadEmbedding(join(dir, 'c.safetensors')), /c\.safetensors and c_2\.safetensors are a diffusers SDXL pair but hold 2 and 3 vectors/);
    // A broken second half is reported under its own name.
    put('d.safetensors', '<d>', 1, 8);
    writeSafetensors(join(dir, 'd_2.safetensors'), { '<d>': { dtype: 'F32', shape: [1, 2], data: Float32Array.from([0, Infinity]) } });
    assert.throws(() => loadEmbedding(join(dir, 'd.safetensors')), /d_2\.safetensors: embedding contains Infinity at element 1/);
  });
});

test('broken SDXL files give specific errors', () => {
  assert.throws(() => loadEmbedding(FIX + 'sdxl-count-mismatch.pt'), /clip_l has 2 vectors but clip_g has 3; an SDXL word has the same number for both text encoders/);
  assert.throws(() => loadEmbedding(FIX + 'sdxl-not-a-tensor.pt'), /sdxl-not-a-tensor\.pt: clip_l is "not a tensor"; expected a tensor/);
  assert.throws(() => loadEmbedding(FIX + 'hostile-sdxl.pt'), PickleSecurityError);
  assert.ok(!existsSync('/tmp/oneword-pickle-pwned'), 'nothing ran');
  inTmp((dir) => {
    const st = (name: string, tensors: Parameters<typeof writeSafetensors>[1]) => { const p = join(dir, name); writeSafetensors(p, tensors); return p; };
    const f32 = (n: number, d: number) => ({ dtype: 'F32' as const, shape: [n, d], data: new Float32Array(n * d) });
    assert.throws(() => loadEmbedding(st('l.safetensors', { clip_l: f32(1, 8) })), /holds "clip_l" but no "clip_g"; an SDXL embedding has vectors for both text encoders/);
    assert.throws(() => loadEmbedding(st('g.safetensors', { clip_g: f32(1, 12) })), /holds "clip_g" but no "clip_l"/);
    assert.throws(() => loadEmbedding(st('n.safetensors', { clip_l: f32(1, 8), clip_g: f32(2, 12) })), /clip_l has 1 vector but clip_g has 2/);
    assert.throws(() => loadEmbedding(st('i.safetensors', { clip_l: f32(1, 8), clip_g: { dtype: 'I32', shape: [1, 12], data: new Int32Array(12) } })), /clip_g has dtype I32; expected a float type/);
    assert.throws(() => loadEmbedding(st('nan.safetensors', { clip_l: f32(1, 8), clip_g: { dtype: 'F32', shape: [1, 3], data: Float32Array.from([0, 0, NaN]) } })), /clip_g contains NaN at element 2/);
    // Shapes are judged from the header, before anything is read.
    assert.throws(() => loadEmbedding(st('wide2.safetensors', { clip_l: f32(1, 8), clip_g: f32(1, 9000) })), /clip_g has shape \[1, 9000\]; an embedding has at most 1024 vectors of width 8192 or less/);
    assert.throws(() => loadEmbedding(st('many.safetensors', { clip_l: f32(2000, 1), clip_g: f32(2000, 1) })), /clip_l has shape \[2000, 1\]/);
    assert.throws(() => loadEmbedding(st('3d.safetensors', { clip_l: { dtype: 'F32', shape: [1, 2, 4], data: new Float32Array(8) }, clip_g: f32(1, 8) })), /clip_l has shape \[1, 2, 4\]; an embedding is \[N, D\] or \[D\]/);
  });
});

test('saveSDXLEmbedding writes exactly clip_l and clip_g (f32) with the name and model spec in the metadata', () => {
  inTmp((dir) => {
    const path = join(dir, 'my-xl.safetensors');
    const l = Float32Array.from(ramp(3 * 8)), g = Float32Array.from(ramp(3 * 12, 5));
    saveSDXLEmbedding(path, 'my-xl', l, g, 3, 8, 12, { step: 1200, sdCheckpoint: 'abcdef0123', lr: 0.004 });
    const f = SafetensorsFile.open(path);
    // A1111 turns every tensor of the file into part of the word, kohya and ComfyUI pick these two keys.
    assert.deepEqual([...f.tensors.keys()].sort(), ['clip_g', 'clip_l']);
    assert.deepEqual([f.info('clip_l').dtype, f.info('clip_l').shape, f.info('clip_g').dtype, f.info('clip_g').shape], ['F32', [3, 8], 'F32', [3, 12]]);
    assert.deepEqual(f.metadata, {
      'modelspec.sai_model_spec': '1.0.0',
      'modelspec.architecture': 'stable-diffusion-xl-v1-base/textual-inversion',
      'modelspec.implementation': 'https://github.com/Stability-AI/generative-models',
      'modelspec.title': 'my-xl',
      format: 'pt', name: 'my-xl', step: '1200', sd_checkpoint: 'abcdef0123', lr: '0.004',
    });
    checkSDXL(loadEmbedding(path), { format: 'sdxl-safetensors', token: 'my-xl', sourceName: 'my-xl', count: 3, dim: 8, dim2: 12 }, [...l], [...g]);
    // Bad input is refused before anything is written, naming the encoder.
    assert.throws(() => saveSDXLEmbedding(join(dir, 'x.safetensors'), 'x', l, new Float32Array(35), 3, 8, 12), /clip_g: expected 3×12 = 36 values, got 35/);
    assert.throws(() => saveSDXLEmbedding(join(dir, 'x.safetensors'), 'x', Float32Array.from([NaN]), g, 1, 1, 36), /clip_l contains NaN/);
    assert.deepEqual(readdirSync(dir), ['my-xl.safetensors']);
  });
});

test('saveDiffusersSDXLEmbedding writes the pair as diffusers\' SDXL script does, and it reads back', () => {
  inTmp((dir) => {
    const l = Float32Array.from(ramp(2 * 8)), g = Float32Array.from(ramp(2 * 12, 7));
    const path = join(dir, 'learned_embeds.safetensors');
    saveDiffusersSDXLEmbedding(path, '<xl-tok>', l, g, 2, 8, 12);
    assert.deepEqual(readdirSync(dir).sort(), ['learned_embeds.safetensors', 'learned_embeds_2.safetensors']);
    for (const [file, d] of [['learned_embeds.safetensors', 8], ['learned_embeds_2.safetensors', 12]] as const) {
      // One tensor keyed by the token and {"format": "pt"}: what load_textual_inversion takes.
      const f = SafetensorsFile.open(join(dir, file));
      assert.deepEqual([...f.tensors.keys()], ['<xl-tok>']);
      assert.deepEqual([f.info('<xl-tok>').dtype, f.info('<xl-tok>').shape, f.metadata], ['F32', [2, d], { format: 'pt' }]);
    }
    checkSDXL(loadEmbedding(path), { format: 'diffusers-sdxl-pair', token: '<xl-tok>', count: 2, dim: 8, dim2: 12 }, [...l], [...g]);
    // Step files follow the script's naming.
    saveDiffusersSDXLEmbedding(join(dir, 'learned_embeds-steps-100.safetensors'), '<xl-tok>', l, g, 2, 8, 12);
    assert.ok(existsSync(join(dir, 'learned_embeds_2-steps-100.safetensors')));
    assert.throws(() => saveDiffusersSDXLEmbedding(path, '__metadata__', l, g, 2, 8, 12), /cannot save under token/);
    assert.throws(() => saveDiffusersSDXLEmbedding(path, '<t>', l, g.subarray(1), 2, 8, 12), /text_encoder_2: expected 2×12 = 24 values, got 23/);
  });
});

test('saveDiffusersSDXLEmbedding renames neither half into place unless both were written', () => {
  inTmp((dir) => {
    const path = join(dir, 'pair.safetensors');
    saveDiffusersEmbedding(path, '<old>', new Float32Array(8), 1, 8);
    const before = readFileSync(path);
    // The second file's name is taken by a folder: its rename fails, and the first must stay as it was.
    mkdirSync(join(dir, 'pair_2.safetensors'));
    writeFileSync(join(dir, 'pair_2.safetensors', 'keep'), 'x');
    assert.throws(() => saveDiffusersSDXLEmbedding(path, '<new>', new Float32Array(8), new Float32Array(12), 1, 8, 12), (e: unknown) => e instanceof EmbeddingError && /write failed/.test(e.message));
    assert.deepEqual(readFileSync(path), before);
    assert.deepEqual(readdirSync(dir).sort(), ['pair.safetensors', 'pair_2.safetensors'], 'no temporary files left');
  });
});

test('embeddingWidthProblem names both sides\' widths, and is null when the word fits', () => {
  const sd = (dim: number): LearnedEmbedding => ({ token: 't', vectors: new Float32Array(2 * dim), count: 2, dim });
  const xl = (d1: number, d2: number): LearnedEmbedding => ({ ...sd(d1), vectors2: new Float32Array(2 * d2), dim2: d2 });
  const SD1 = { dim: 768 }, SD2 = { dim: 1024 }, SDXL = { dim: 768, dim2: 1280 };
  assert.equal(embeddingWidthProblem(sd(768), SD1), null);
  assert.equal(embeddingWidthProblem(sd(1024), SD2), null);
  assert.equal(embeddingWidthProblem(xl(768, 1280), SDXL), null);
  assert.equal(embeddingWidthProblem(sd(1024), SD1), 'the embedding has 1024-dimensional vectors but this model\'s text encoder uses 768 (SD 1.x: 768, SD 2.x: 1024)');
  assert.match(embeddingWidthProblem(sd(768), SDXL)!, /^this is an SD 1\.x\/2\.x embedding \(768 wide\) but the model is SDXL \(clip_l 768, clip_g 1280\): /);
  assert.equal(embeddingWidthProblem(xl(768, 1280), SD1), 'an SDXL embedding (clip_l 768, clip_g 1280) cannot be used with an SD 1.x model (768)');
  assert.equal(embeddingWidthProblem(xl(768, 1280), SD2), 'an SDXL embedding (clip_l 768, clip_g 1280) cannot be used with an SD 2.x model (1024)');
  assert.equal(embeddingWidthProblem(xl(768, 1024), SDXL), 'this SDXL embedding (clip_l 768, clip_g 1024) does not fit the model (clip_l 768, clip_g 1280)');
  // An in-memory SDXL word without dim2 is measured from its vectors.
  const noDim2: LearnedEmbedding = { ...sd(768), vectors2: new Float32Array(2 * 1280) };
  assert.equal(embeddingWidthProblem(noDim2, SDXL), null);
  assert.match(embeddingWidthProblem(noDim2, SD1)!, /clip_g 1280/);
  // Every message is one line.
  for (const m of [embeddingWidthProblem(sd(768), SDXL), embeddingWidthProblem(xl(8, 12), SD1)]) assert.ok(m && !m.includes('\n'));
});

test('every SDXL file written reads back through the other SDXL layouts unchanged', () => {
  // One word moved between tools: kohya safetensors → diffusers pair → kohya safetensors.
  inTmp((dir) => {
    const a = loadEmbedding(FIX + 'sdxl-kohya.pt');
    saveDiffusersSDXLEmbedding(join(dir, 'learned_embeds.safetensors'), '<w>', a.vectors, a.vectors2!, a.count, a.dim, a.dim2!);
    const b = loadEmbedding(join(dir, 'learned_embeds.safetensors'));
    saveSDXLEmbedding(join(dir, 'w.safetensors'), 'w', b.vectors, b.vectors2!, b.count, b.dim, b.dim2!);
    checkSDXL(loadEmbedding(join(dir, 'w.safetensors')), { count: 2, dim: 8, dim2: 12 }, L, G);
  });
});
