// One optimiser step on a tiny configuration lowers the loss on that batch; the same seed
// gives the same weights.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseArch, TINY_ARCH } from '../../src/shapes-model/config.ts';
import { CaptionTokens, objectWeights, renderSet } from '../../src/shapes-model/data.ts';
import { unetStepGraph, vaeStepGraph } from '../../src/shapes-model/graphs.ts';
import { initText, initUnet, initVae } from '../../src/shapes-model/init.ts';
import { Trainer, type OptimConfig } from '../../src/shapes-model/trainer.ts';
import { Rng } from '../../src/shapes/index.ts';

const a = parseArch(TINY_ARCH);
const optim: OptimConfig = { lr: 3e-3, warmupSteps: 0, totalSteps: 10, minLrFrac: 1, weightDecay: 0.01, beta1: 0.9, beta2: 0.999, clipNorm: 1, emaDecay: 0.9 };

function normals(seed: string, n: number): Float32Array {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => r.normal());
}

test('a UNet + text-encoder step lowers the loss on its batch and trains every weight', async () => {
  const B = 4;
  const s = a.latentSize;
  const text = initText(a, 0);
  const unet = initUnet(a, 0);
  const before = unet.get('conv_out.weight').data.slice();
  const tokBefore = text.get('text_model.embeddings.token_embedding.weight').data.slice();
  const tr = await Trainer.create(unetStepGraph(a, text, unet, B), optim, 1);
  const tok = new CaptionTokens();
  const batch = {
    noisy: normals('x', B * 4 * s * s),
    target: normals('n', B * 4 * s * s),
    t: Float32Array.from([10, 300, 600, 900]),
    ids: tok.batch(['a red star', 'a blue circle on black', '', 'a small ring at the top left']),
    w: new Float32Array(B * s * s).fill(1),
  };
  const first = await tr.trainStep(batch);
  let last = first;
  for (let i = 0; i < 4; i++) last = await tr.trainStep(batch);
  assert.ok(last.loss < first.loss, `loss ${first.loss} → ${last.loss}`);
  assert.notDeepEqual(unet.get('conv_out.weight').data, before);
  // The embedding rows of the tokens used moved (gather → ScatterND gradient); others did not.
  const emb = text.get('text_model.embeddings.token_embedding.weight').data;
  const D = a.text.hidden_size;
  const row = (id: number, arr: Float32Array) => Array.from(arr.subarray(id * D, (id + 1) * D));
  const red = tok.tokenizer.encode('red')[0];
  assert.notDeepEqual(row(red, emb), row(red, tokBefore));
  assert.deepEqual(row(1000, emb), row(1000, tokBefore));
  // The EMA trails the live weights.
  const ema = tr.emaStores().get(unet)!;
  assert.notDeepEqual(ema.get('conv_out.weight').data, unet.get('conv_out.weight').data);
});

test('a VAE step lowers the reconstruction loss', async () => {
  const B = 4;
  const vae = initVae(a, 0);
  const tr = await Trainer.create(vaeStepGraph(a, vae, B, 1e-4), optim, 1);
  const data = renderSet(B, 1, a.arch.imageSize);
  const batch = { pixels: data.pixels, weights: objectWeights(data.pixels, B, a.arch.imageSize), eps: normals('e', B * 4 * a.latentSize ** 2) };
  const first = await tr.trainStep(batch);
  let last = first;
  for (let i = 0; i < 4; i++) last = await tr.trainStep(batch);
  assert.ok(last.loss < first.loss, `loss ${first.loss} → ${last.loss}`);
  assert.ok(Number.isFinite(last.extras.kl) && Number.isFinite(last.extras.mse));
});

test('initial weights and rendered data depend only on the seed', () => {
  assert.deepEqual(initUnet(a, 3).get('conv_in.weight').data, initUnet(a, 3).get('conv_in.weight').data);
  assert.notDeepEqual(initUnet(a, 3).get('conv_in.weight').data, initUnet(a, 4).get('conv_in.weight').data);
  assert.deepEqual(renderSet(3, 5, 16).pixels, renderSet(3, 5, 16).pixels);
  assert.deepEqual(renderSet(3, 5, 16).attrs, renderSet(3, 5, 16).attrs);
});

test('a UNet step against a frozen text encoder trains the UNet only', async () => {
  const B = 2;
  const s = a.latentSize;
  const text = initText(a, 0);
  const unet = initUnet(a, 0);
  const textBefore = text.get('text_model.final_layer_norm.weight').data.slice();
  const tr = await Trainer.create(unetStepGraph(a, text, unet, B, false), optim, 1);
  assert.ok(tr.graph.weights.every((w) => w.store === unet), 'only UNet weights are trained');
  const tok = new CaptionTokens();
  const batch = {
    noisy: normals('fx', B * 4 * s * s), target: normals('fn', B * 4 * s * s), t: Float32Array.from([100, 800]),
    ids: tok.batch(['a red star', 'a blue ring at the top left']), w: new Float32Array(B * s * s).fill(1),
  };
  const first = await tr.trainStep(batch);
  let last = first;
  for (let i = 0; i < 5; i++) last = await tr.trainStep(batch);
  assert.ok(last.loss < first.loss, `${first.loss} → ${last.loss}`);
  assert.deepEqual(text.get('text_model.final_layer_norm.weight').data, textBefore);
});

test('text pretraining: the head learns to read named attributes from the end-of-text states', async () => {
  const { attributeBlocks, textPretrainBatch, textPretrainGraph, SEQ_LEN } = await import('../../src/shapes-model/graphs.ts');
  const { ParamStore } = await import('../../src/shapes-model/params.ts');
  const blocks = attributeBlocks();
  const K = blocks.reduce((n, b) => n + b.size, 0);
  assert.equal(K, 6 + 8 + 2 + 9 + 4 + 4 + 6);
  const text = initText(a, 0);
  const head = new ParamStore();
  head.set('weight', [K, a.text.hidden_size], normals('h', K * a.text.hidden_size).map((v) => v * 0.02));
  head.set('bias', [K], new Float32Array(K));
  const captions = ['a red star', 'a large blue ring at the top left on a black background', '', 'a kiki green heart'];
  const B = captions.length;
  const batch = textPretrainBatch(captions, new CaptionTokens());
  // Targets: exactly one class per attribute block; "a kiki green heart" names texture dotted.
  for (let b = 0; b < B; b++) for (const bl of blocks) assert.equal(batch.target.slice(b * K + bl.offset, b * K + bl.offset + bl.size).reduce((x, y) => x + y), 1);
  const tex = blocks.find((bl) => bl.key === 'texture')!;
  assert.equal(batch.target[3 * K + tex.offset + tex.values.indexOf('dotted')], 1);
  assert.equal(batch.target[0 * K + tex.offset + tex.size - 1], 1, 'texture not named');
  // Mask: from the end-of-text token on ("a red star" → bos, 3 words, eos at 4), summing to 1.
  assert.equal(batch.mask[3], 0);
  assert.ok(batch.mask[4] > 0);
  assert.ok(Math.abs(batch.mask.reduce((x, y) => x + y) - 1) < 1e-5);
  assert.equal(batch.mask.length, B * SEQ_LEN);
  const tr = await Trainer.create(textPretrainGraph(a, text, head, B), { ...optim, lr: 1e-2 }, 1);
  const first = await tr.trainStep(batch);
  assert.ok(Math.abs(first.loss - 6 * Math.log(7)) < 3, `initial loss ${first.loss} near 6 uniform guesses`);
  let last = first;
  for (let i = 0; i < 30; i++) last = await tr.trainStep(batch);
  assert.ok(last.loss < first.loss * 0.5, `${first.loss} → ${last.loss}`);
});

test('the VAE edge term is the weighted mean L1 of the error differences along x and along y', async () => {
  const { edgeLoss } = await import('../../src/shapes-model/graphs.ts');
  const { Graph, evaluate } = await import('../../src/graph/index.ts');
  const [B, C, S] = [2, 3, 5];
  const d = normals('d', B * C * S * S);
  const w = Float32Array.from(normals('w', B * S * S), (v) => 1 + Math.abs(v));
  const g = new Graph();
  const out = edgeLoss(g.input('d', [B, C, S, S]), g.input('w', [B, 1, S, S]), S);
  const [got] = evaluate([out], { d, w });
  // By hand: pairs (x−1, x) along each axis, weighted by w at the second pixel of the pair.
  const at = (b: number, c: number, y: number, x: number) => d[((b * C + c) * S + y) * S + x];
  const wt = (b: number, y: number, x: number) => w[(b * S + y) * S + x];
  const l1 = (v: number) => Math.sqrt(v * v + 1e-6);
  let ex = 0;
  let ey = 0;
  for (let b = 0; b < B; b++) for (let c = 0; c < C; c++) for (let y = 0; y < S; y++) for (let x = 1; x < S; x++) {
    ex += l1(at(b, c, y, x) - at(b, c, y, x - 1)) * wt(b, y, x);
    ey += l1(at(b, c, x, y) - at(b, c, x - 1, y)) * wt(b, x, y);
  }
  const n = B * C * S * (S - 1);
  assert.ok(Math.abs(got[0] - (ex / n + ey / n)) < 1e-9, `${got[0]} vs ${ex / n + ey / n}`);
  // And it is zero when the reconstruction is off by a constant.
  const [flat] = evaluate([out], { d: new Float32Array(B * C * S * S).fill(0.3), w });
  assert.ok(flat[0] < 1e-2);
});

test('a VAE step with the edge term lowers the loss and reports it inside the loss', async () => {
  const B = 2;
  const data = renderSet(B, 1, a.arch.imageSize);
  const batch = { pixels: data.pixels, weights: objectWeights(data.pixels, B, a.arch.imageSize), eps: normals('e', B * 4 * a.latentSize ** 2) };
  const plain = await (await Trainer.create(vaeStepGraph(a, initVae(a, 0), B, 1e-4), optim, 1)).trainStep(batch);
  const tr = await Trainer.create(vaeStepGraph(a, initVae(a, 0), B, 1e-4, 1), optim, 1);
  const first = await tr.trainStep(batch);
  assert.ok(first.loss > plain.loss, 'the edge term adds to the loss');
  let last = first;
  for (let i = 0; i < 4; i++) last = await tr.trainStep(batch);
  assert.ok(last.loss < first.loss, `loss ${first.loss} → ${last.loss}`);
});
