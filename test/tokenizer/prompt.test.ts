import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CLIPTokenizer } from '../../src/models/clip-tokenizer.ts';
import { SafetensorsFile } from '../../src/io/safetensors.ts';
import { applyEmphasis, embeddingTokenNames, parsePromptAttention, PromptError, tokenizeWeighted } from '../../src/pipelines/prompt.ts';

const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));
const ints = (a: BigInt64Array) => Array.from(a, Number);
const row = (a: number[], i: number) => a.slice(i * 77, (i + 1) * 77);
const BOS = 49406;
const EOS = 49407;
const CAT = 2368; // "cat</w>"
const DOG = 1929; // "dog</w>"
const COMMA = 267; // ",</w>"

test("parsePromptAttention: A1111's documented examples", () => {
  assert.deepEqual(parsePromptAttention('normal text'), [['normal text', 1.0]]);
  assert.deepEqual(parsePromptAttention('an (important) word'), [['an ', 1.0], ['important', 1.1], [' word', 1.0]]);
  assert.deepEqual(parsePromptAttention('(unbalanced'), [['unbalanced', 1.1]]);
  assert.deepEqual(parsePromptAttention('\\(literal\\]'), [['(literal]', 1.0]]);
  assert.deepEqual(parsePromptAttention('(unnecessary)(parens)'), [['unnecessaryparens', 1.1]]);
  assert.deepEqual(parsePromptAttention('a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).'), [
    ['a ', 1.0],
    ['house', 1.5730000000000004],
    [' ', 1.1],
    ['on', 1.0],
    [' a ', 1.1],
    ['hill', 0.55],
    [', sun, ', 1.1],
    ['sky', 1.4641000000000006],
    ['.', 1.1],
  ]);
});

test('parsePromptAttention: brackets, escapes, weights and BREAK in detail', () => {
  assert.deepEqual(parsePromptAttention(''), [['', 1.0]]);
  assert.deepEqual(parsePromptAttention('[dim]'), [['dim', 1 / 1.1]]);
  assert.deepEqual(parsePromptAttention('[[dim]]'), [['dim', 1 / 1.1 / 1.1]]);
  assert.deepEqual(parsePromptAttention('x (y : 1.5 ) z'), [['x ', 1], ['y ', 1.5], [' z', 1]]);
  assert.deepEqual(parsePromptAttention('(x:.5)(y:2.)'), [['x', 0.5], ['y', 2]]);
  assert.deepEqual(parsePromptAttention('(x:-1)'), [['x', -1]]);
  assert.deepEqual(parsePromptAttention('(x:\u0661.\u0665)'), [['x', 1.5]]); // Python's \d and float() take any decimal digit
  assert.deepEqual(parsePromptAttention('a:1.2) b'), [['a:1.2) b', 1]]); // no open bracket: plain text
  assert.deepEqual(parsePromptAttention('a\\\\b'), [['a\\b', 1]]);
  assert.deepEqual(parsePromptAttention('a\\b'), [['ab', 1]]); // a lone backslash vanishes
  assert.deepEqual(parsePromptAttention('smile :)'), [['smile :)', 1]]); // unmatched brackets stay text
  assert.throws(() => parsePromptAttention('(x:1.2.3)'), /cannot read the weight "1\.2\.3"/);
  assert.deepEqual(parsePromptAttention('a BREAK b'), [['a', 1], ['BREAK', -1], ['b', 1]]);
  assert.deepEqual(parsePromptAttention('a\nBREAK\tb'), [['a', 1], ['BREAK', -1], ['b', 1]]);
  assert.deepEqual(parsePromptAttention('aBREAK b BREAKfast break'), [['aBREAK b BREAKfast break', 1]]);
  assert.deepEqual(parsePromptAttention('\u00e9BREAK x'), [['\u00e9BREAK x', 1]]); // Unicode word boundary
  assert.deepEqual(parsePromptAttention('(a BREAK b)'), [['a', 1.1], ['BREAK', -1.1], ['b', 1.1]]);
});

for (const model of ['sd1-tiny', 'sd2-tiny']) {
  test(`${model}: tokenizeWeighted agrees with the reference ids where no syntax is involved`, () => {
    const ref = SafetensorsFile.open(join(FIX, `${model}.ref.seed0.safetensors`));
    const prompts = JSON.parse(ref.metadata.prompts) as string[];
    const base = CLIPTokenizer.fromDir(join(FIX, model, 'tokenizer'));
    const tok = CLIPTokenizer.fromDir(join(FIX, model, 'tokenizer'));
    tok.addTokens([ref.metadata.placeholder_token]);
    const ids = ints(ref.read('tok.input_ids') as BigInt64Array);
    const idsBase = ints(ref.read('tok.input_ids_base') as BigInt64Array);

    for (const i of [0, 1, 2]) {
      const { chunks, tokenCount } = tokenizeWeighted(tok, prompts[i], { embeddings: new Map([['<cat-toy>', 1]]) });
      assert.equal(chunks.length, 1);
      assert.deepEqual(chunks[0].ids, row(ids, i), `prompt ${i}`);
      assert.deepEqual(chunks[0].weights, new Array(77).fill(1));
      assert.equal(tokenCount, tok.encode(prompts[i]).length);
    }
    // empty prompt: one chunk, the negative prompt diffusers uses
    const empty = tokenizeWeighted(tok, '');
    assert.equal(empty.chunks.length, 1);
    assert.deepEqual(empty.chunks[0].ids, ints(ref.read('cfg.uncond_input_ids') as BigInt64Array));
    assert.equal(empty.tokenCount, 0);

    // the 96-word prompt: chunk 0 is what diffusers truncates to, chunk 1 keeps the rest
    const all = base.encode(prompts[5]);
    assert.ok(all.length > 75);
    const long = tokenizeWeighted(base, prompts[5]);
    assert.equal(long.chunks.length, 2);
    assert.deepEqual(long.chunks[0].ids, row(idsBase, 5));
    assert.deepEqual(long.chunks[1].ids, base.call(base.decode(all.slice(75))).inputIds);
    assert.deepEqual(long.chunks[1].ids.slice(1, 1 + all.length - 75), all.slice(75));
    assert.equal(long.tokenCount, all.length);

    // (masterpiece) loses its brackets and gains weight 1.1; everything else is unchanged
    const p4 = tokenizeWeighted(base, prompts[4]).chunks[0];
    const plain = row(idsBase, 4).filter((id) => id !== 263 && id !== 264); // "(" and ")" tokens
    const pad = base.padId;
    assert.deepEqual(p4.ids, [...plain, pad, pad]);
    const at = p4.ids.indexOf(12066); // "masterpiece</w>"
    assert.equal(p4.weights[at], 1.1);
    assert.equal(p4.weights.filter((w) => w !== 1).length, 1);
  });
}

test('SD2: padding after the first eos uses the pad id ("!" = 0), weights 1 there', () => {
  const sd2 = CLIPTokenizer.bundled({ padToken: '!' });
  const { chunks } = tokenizeWeighted(sd2, 'a (cat:1.3)');
  assert.deepEqual(chunks[0].ids.slice(0, 6), [BOS, 320, CAT, EOS, 0, 0]);
  assert.deepEqual(chunks[0].weights.slice(0, 6), [1, 1, 1.3, 1, 1, 1]);
  assert.equal(chunks[0].ids.length, 77);
});

test('fragments are tokenized separately, like A1111 (brackets split words)', () => {
  const t = CLIPTokenizer.bundled();
  const ids = tokenizeWeighted(t, '(red)dish').chunks[0].ids;
  assert.deepEqual(ids.slice(1, 3), [...t.encode('red'), ...t.encode('dish')].slice(0, 2));
  assert.notDeepEqual(ids.slice(1, 3), t.encode('reddish'));
  assert.deepEqual(tokenizeWeighted(t, '(red)dish', { emphasis: false }).chunks[0].ids, t.call('(red)dish').inputIds);
});

test('BREAK starts a new chunk; a trailing BREAK adds none; BREAK alone gives one empty chunk', () => {
  const t = CLIPTokenizer.bundled();
  const r = tokenizeWeighted(t, 'a cat BREAK a dog');
  assert.equal(r.chunks.length, 2);
  assert.deepEqual(r.chunks[0].ids.slice(0, 4), [BOS, 320, CAT, EOS]);
  assert.deepEqual(r.chunks[1].ids.slice(0, 4), [BOS, 320, DOG, EOS]);
  assert.equal(r.tokenCount, 4);
  assert.equal(tokenizeWeighted(t, 'a cat BREAK').chunks.length, 1);
  assert.equal(tokenizeWeighted(t, 'a BREAK BREAK b').chunks.length, 3);
  assert.deepEqual(tokenizeWeighted(t, 'BREAK').chunks, tokenizeWeighted(t, '').chunks);
  // inside brackets A1111 would encode the word "break"; here it still breaks
  assert.equal(tokenizeWeighted(t, '(a BREAK b)').chunks.length, 2);
});

test('long prompts are never truncated: 200 tokens -> 3 chunks holding all of them', () => {
  const t = CLIPTokenizer.bundled();
  const r = tokenizeWeighted(t, Array(200).fill('cat').join(' '));
  assert.equal(r.chunks.length, 3);
  assert.equal(r.tokenCount, 200);
  const body = r.chunks.flatMap((c) => c.ids.slice(1, 76)).filter((id) => id === CAT);
  assert.equal(body.length, 200);
  for (const c of r.chunks) {
    assert.equal(c.ids.length, 77);
    assert.equal(c.weights.length, 77);
    assert.equal(c.ids[0], BOS);
    assert.equal(c.ids[76], EOS);
  }
});

test('comma backtrack (A1111 default 20) moves the words after a near comma to the next chunk', () => {
  const t = CLIPTokenizer.bundled();
  const prompt = `${Array(70).fill('cat').join(' ')}, ${Array(10).fill('dog').join(' ')}`;
  const r = tokenizeWeighted(t, prompt);
  assert.equal(r.chunks.length, 2);
  assert.deepEqual(r.chunks[0].ids.slice(0, 73), [BOS, ...Array(70).fill(CAT), COMMA, EOS]);
  assert.deepEqual(r.chunks[1].ids.slice(0, 12), [BOS, ...Array(10).fill(DOG), EOS]);
  assert.equal(r.tokenCount, 81);
  const off = tokenizeWeighted(t, prompt, { commaPaddingBacktrack: 0 });
  assert.deepEqual(off.chunks[0].ids.slice(71, 77), [COMMA, DOG, DOG, DOG, DOG, EOS]);
  assert.deepEqual(off.chunks[1].ids.slice(0, 8), [BOS, ...Array(6).fill(DOG), EOS]);
  // comma further back than the limit: cut where the chunk is full
  const far = tokenizeWeighted(t, prompt, { commaPaddingBacktrack: 3 });
  assert.deepEqual(far.chunks[0].ids, off.chunks[0].ids);
});

test('multi-vector embeddings expand to <name>, <name>_1, … and never straddle chunks', () => {
  const t = CLIPTokenizer.bundled();
  const names = embeddingTokenNames('<emb>', 3);
  assert.deepEqual(names, ['<emb>', '<emb>_1', '<emb>_2']);
  const ids = t.addTokens(names);
  const embeddings = new Map([['<emb>', 3]]);

  const short = tokenizeWeighted(t, 'a (<emb>:1.5) cat', { embeddings });
  assert.deepEqual(short.chunks[0].ids.slice(0, 7), [BOS, 320, ...ids, CAT, EOS]);
  assert.deepEqual(short.chunks[0].weights.slice(0, 7), [1, 1, 1.5, 1.5, 1.5, 1, 1]);
  assert.equal(short.tokenCount, 5);

  // 74 tokens leave 1 slot: the 3 vectors move whole to the next chunk
  const r = tokenizeWeighted(t, `${Array(74).fill('cat').join(' ')} <emb> dog`, { embeddings });
  assert.equal(r.chunks.length, 2);
  assert.deepEqual(r.chunks[0].ids.slice(74, 77), [CAT, EOS, EOS]);
  assert.deepEqual(r.chunks[1].ids.slice(0, 6), [BOS, ...ids, DOG, EOS]);
  // 72 tokens leave exactly 3: they stay
  const fit = tokenizeWeighted(t, `${Array(72).fill('cat').join(' ')} <emb>`, { embeddings });
  assert.equal(fit.chunks.length, 1);
  assert.deepEqual(fit.chunks[0].ids.slice(73, 77), [...ids, EOS]);
  // without the map the placeholder is one ordinary added token
  assert.deepEqual(tokenizeWeighted(t, '<emb>').chunks[0].ids.slice(0, 3), [BOS, ids[0], EOS]);
});

test('embedding errors are explicit', () => {
  const t = CLIPTokenizer.bundled();
  t.addTokens(['<two>']);
  assert.throws(() => tokenizeWeighted(t, '<two>', { embeddings: new Map([['<two>', 2]]) }), /"<two>_1" is not in the tokenizer.*addTokens/);
  assert.throws(() => tokenizeWeighted(t, 'x', { embeddings: new Map([['<none>', 1]]) }), /"<none>" is not in the tokenizer/);
  assert.throws(() => tokenizeWeighted(t, 'x', { embeddings: new Map([['<two>', 0]]) }), /whole number of vectors/);
  t.addTokens(embeddingTokenNames('<big>', 80));
  assert.throws(() => tokenizeWeighted(t, 'x', { embeddings: new Map([['<big>', 80]]) }), /more than fit in one 75-token chunk/);
});

test('applyEmphasis: scale rows by weight, then restore the mean of the whole chunk', () => {
  const z = new Float32Array([1, 2, 3, 4, 5, 6]);
  applyEmphasis(z, [3, 2], [1, 2, 1]);
  // scaled: 1 2 6 8 5 6 (mean 28/6); original mean 3.5 -> ratio 0.75
  assert.deepEqual(Array.from(z), [0.75, 1.5, 4.5, 6, 3.75, 4.5]);
  const mean = z.reduce((s, v) => s + v, 0) / z.length;
  assert.ok(Math.abs(mean - 3.5) < 1e-6);

  const same = new Float32Array([0.1, -0.2, 0.3, 0.4]);
  const copy = same.slice();
  applyEmphasis(same, [2, 2], [1, 1]);
  assert.deepEqual(same, copy);

  // a realistic chunk: emphasised row grows relative to the others, mean stays
  const D = 8;
  const h = Float32Array.from({ length: 77 * D }, (_, i) => Math.sin(i) + 0.3);
  const w = new Array(77).fill(1);
  w[5] = 1.4;
  const before = h.reduce((s, v) => s + v, 0) / h.length;
  const ref = h.slice();
  applyEmphasis(h, [77, D], w);
  const after = h.reduce((s, v) => s + v, 0) / h.length;
  assert.ok(Math.abs(after - before) < 1e-5);
  const ratio = h[0] / ref[0];
  for (let d = 0; d < D; d++) assert.ok(Math.abs(h[5 * D + d] - ref[5 * D + d] * 1.4 * ratio) < 1e-5);

  assert.throws(() => applyEmphasis(new Float32Array(5), [3, 2], [1, 1, 1]), /shape \[3, 2\] needs 6/);
  assert.throws(() => applyEmphasis(new Float32Array(6), [3, 2], [1, 1]), /2 weights for 3 rows/);
});

test('emphasis is bounded: 10,000 nested "(" (weight Infinity, a black image) are refused as usage errors, A1111 weights pass', () => {
  const tok = CLIPTokenizer.bundled();
  const refused = (text: string, re: RegExp) => assert.throws(() => tokenizeWeighted(tok, text), (e: unknown) => e instanceof PromptError && e.usage && re.test(e.message));
  refused(`${'('.repeat(10000)}cat`, /brackets nested more than 256 deep/);
  refused(`${'('.repeat(80)}cat`, /the emphasis on "cat" is 2048\.\d+ .*weights must be from -1000 to 1000/);
  refused(`(cat:${'9'.repeat(400)})`, /the emphasis on "cat" is Infinity/);
  refused('(cat:1001)', /is 1001/);
  // Within the bounds, A1111's own semantics: negative and strong weights, 40 nested brackets.
  assert.equal(tokenizeWeighted(tok, '(cat:-1) (dog:1000)').chunks[0].weights[1], -1);
  assert.ok(Math.abs(tokenizeWeighted(tok, `${'('.repeat(40)}cat`).chunks[0].weights[1] - 1.1 ** 40) < 1e-6);
});

test('a 2 MB prompt of brackets and escapes parses in linear time', () => {
  const text = `${'\\( '.repeat(200_000)}${'(a) [b] '.repeat(50_000)}`;
  const start = performance.now();
  const parsed = parsePromptAttention(text);
  assert.ok(parsed.length > 1000);
  assert.ok(performance.now() - start < 5000, `took ${(performance.now() - start).toFixed(0)} ms`);
});
