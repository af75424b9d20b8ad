import { test } from 'node:test';
import assert from 'node:assert/strict';
import { type Attrs, TEXTURES, randomAttributes } from '../../src/shapes/attributes.ts';
import { article, captionFor, describe, namedAttributes, TEXTURE_NONCE_WORDS } from '../../src/shapes/caption.ts';
import { Rng } from '../../src/shapes/random.ts';

const star: Attrs = { shape: 'star', color: 'red', size: 'small', position: 'top-left', background: 'white', texture: 'striped' };

test('describe gives the fullest fixed wording', () => {
  assert.equal(describe(star), 'a small red star at the top left on a white background');
  assert.equal(describe({ ...star, size: 'large', color: 'blue', shape: 'ring', position: 'center', background: 'black' }),
    'a large blue ring in the center on a black background');
  assert.equal(describe({ ...star, position: 'right' }), 'a small red star on the right on a white background');
});

test('articles: "an orange star", "a large orange star"', () => {
  assert.equal(article('orange'), 'an');
  assert.equal(article('red'), 'a');
  const rng = new Rng(1);
  const caps = Array.from({ length: 300 }, () => captionFor({ ...star, color: 'orange' }, rng));
  assert.ok(caps.some((c) => /\ban orange star\b/.test(c)));
  assert.ok(caps.some((c) => /\ba small orange star\b/.test(c)));
  assert.ok(!caps.some((c) => /\ba orange\b|\ban small\b|\ban star\b/.test(c)));
});

test('textures are never named, whatever the attributes', () => {
  const rng = new Rng(2);
  const banned = /strip|dot|check|plain|pattern|textur|spot|plaid/i;
  for (let i = 0; i < 2000; i++) {
    const a = randomAttributes(rng);
    const c = captionFor(a, rng);
    assert.ok(!banned.test(c), c);
    for (const t of TEXTURES) assert.ok(!c.includes(t));
  }
  assert.ok(!banned.test(describe(star)));
});

test('attributes are dropped at random and kept otherwise', () => {
  const rng = new Rng(3);
  const full = captionFor(star, rng, { dropProb: 0, shapeDropProb: 0 });
  for (const w of ['small', 'red', 'star', 'top left', 'white']) assert.ok(full.includes(w), `${w} in "${full}"`);
  assert.equal(captionFor(star, rng, { dropProb: 1, shapeDropProb: 0 }), 'a star');
  assert.equal(captionFor(star, rng, { dropProb: 1, shapeDropProb: 1 }), 'a shape');
  // default: each optional attribute appears sometimes, not always
  const caps = Array.from({ length: 500 }, () => captionFor(star, rng));
  for (const w of ['small', 'red', 'top left', 'white']) {
    const n = caps.filter((c) => c.includes(w)).length;
    assert.ok(n > 250 && n < 450, `${w} in ${n}/500`);
  }
  assert.ok(new Set(caps).size > 20, 'several phrasings');
});

test('captions are deterministic for a seed and never mention a wrong value', () => {
  const a = Array.from({ length: 20 }, (_, i) => captionFor(star, new Rng(i)));
  const b = Array.from({ length: 20 }, (_, i) => captionFor(star, new Rng(i)));
  assert.deepEqual(a, b);
  const rng = new Rng(4);
  for (let i = 0; i < 300; i++) {
    const c = captionFor(star, rng);
    assert.ok(!/\b(large|blue|green|circle|ring|bottom|black|gray|beige)\b/.test(c), c);
  }
});

test('training captions may name the texture by its made-up word, and only the right one', () => {
  const rng = new Rng(5);
  const words = Object.values(TEXTURE_NONCE_WORDS);
  assert.equal(new Set(words).size, TEXTURES.length);
  for (const t of TEXTURES) {
    const caps = Array.from({ length: 200 }, () => captionFor({ ...star, texture: t }, rng, { textureWordProb: 0.5 }));
    const named = caps.filter((c) => c.split(' ').includes(TEXTURE_NONCE_WORDS[t])).length;
    assert.ok(named > 60 && named < 140, `${t}: ${named}/200`);
    for (const c of caps) for (const w of words) if (w !== TEXTURE_NONCE_WORDS[t]) assert.ok(!c.split(' ').includes(w), c);
  }
  assert.equal(captionFor(star, rng, { dropProb: 0, shapeDropProb: 0, textureWordProb: 1 }).split(' ').slice(0, 4).join(' '), 'a small dax red');
});

test('the made-up texture words are single tokens that no English caption uses', async () => {
  const { CLIPTokenizer } = await import('../../src/models/clip-tokenizer.ts');
  const tok = CLIPTokenizer.bundled();
  for (const w of Object.values(TEXTURE_NONCE_WORDS)) assert.equal(tok.encode(w).length, 1, w);
  const rng = new Rng(6);
  for (let i = 0; i < 500; i++) {
    const c = captionFor(randomAttributes(rng), rng);
    for (const w of Object.values(TEXTURE_NONCE_WORDS)) assert.ok(!c.split(' ').includes(w), c);
  }
});

test('namedAttributes reads back exactly what a caption names', () => {
  const rng = new Rng(7);
  for (let i = 0; i < 3000; i++) {
    const a = randomAttributes(rng);
    const c = captionFor(a, rng, { textureWordProb: 0.5 });
    const named = namedAttributes(c);
    for (const [k, v] of Object.entries(named)) assert.equal(v, a[k as keyof Attrs], `${k} in "${c}"`);
    // every value word in the caption is read
    if (c.includes(a.color)) assert.equal(named.color, a.color);
    if (/top|bottom|left|right|center|middle/.test(c)) assert.equal(named.position, a.position, c);
    if (c.includes(TEXTURE_NONCE_WORDS[a.texture])) assert.equal(named.texture, a.texture);
  }
  assert.deepEqual(namedAttributes(''), {});
  assert.deepEqual(namedAttributes('a shape'), {});
  assert.deepEqual(namedAttributes(describe(star)), { shape: 'star', color: 'red', size: 'small', background: 'white', position: 'top-left' });
});
