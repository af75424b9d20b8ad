import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AddedTokenTrie, CLIPTokenizer } from '../../src/models/clip-tokenizer.ts';
import { SafetensorsFile } from '../../src/io/safetensors.ts';

const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));
const MODELS = ['sd1-tiny', 'sd2-tiny'] as const;
const tokDir = (m: string) => join(FIX, m, 'tokenizer');
const ints = (a: BigInt64Array) => Array.from(a, Number);
const row = (a: number[], i: number) => a.slice(i * 77, (i + 1) * 77);

const sd1 = CLIPTokenizer.bundled();
const sd2 = CLIPTokenizer.bundled({ padToken: '!' });

test('bundled vocabulary (derived from the merges) equals the reference vocab.json entry for entry', () => {
  const vocab = JSON.parse(readFileSync(join(tokDir('sd1-tiny'), 'vocab.json'), 'utf8')) as Record<string, number>;
  assert.equal(sd1.vocabSize, Object.keys(vocab).length);
  assert.equal(sd1.vocabSize, 49408);
  for (const [tok, id] of Object.entries(vocab)) {
    if (sd1.tokenToId(tok) !== id || sd1.idToToken(id) !== tok) assert.fail(`vocab mismatch at ${JSON.stringify(tok)} / ${id}`);
  }
});

for (const model of MODELS) {
  const ref = SafetensorsFile.open(join(FIX, `${model}.ref.seed0.safetensors`));
  const prompts = JSON.parse(ref.metadata.prompts) as string[];
  const scalar = (n: string) => Number((ref.read(n) as BigInt64Array)[0]);
  const loaders: Record<string, () => CLIPTokenizer> = {
    fromDir: () => CLIPTokenizer.fromDir(tokDir(model)),
    bundled: () => CLIPTokenizer.bundled(model === 'sd2-tiny' ? { padToken: '!' } : {}),
  };
  for (const [how, load] of Object.entries(loaders)) {
    test(`${model} (${how}): reproduces tok.* of the reference file for every prompt`, () => {
      const base = load();
      const tok = load();
      const [placeholder] = tok.addTokens([ref.metadata.placeholder_token]);
      assert.equal(placeholder, scalar('tok.placeholder_id'));
      assert.deepEqual(tok.encode(ref.metadata.initializer_token), [scalar('tok.initializer_id')]);
      assert.equal(tok.bosId, scalar('tok.bos_id'));
      assert.equal(tok.eosId, scalar('tok.eos_id'));
      assert.equal(tok.padId, scalar('tok.pad_id'));
      assert.equal(tok.length, 49409);

      const ids = ints(ref.read('tok.input_ids') as BigInt64Array);
      const idsBase = ints(ref.read('tok.input_ids_base') as BigInt64Array);
      const mask = ints(ref.read('tok.attention_mask') as BigInt64Array);
      prompts.forEach((p, i) => {
        const out = tok.call(p);
        assert.deepEqual(out.inputIds, row(ids, i), `input_ids, prompt ${i}: ${p}`);
        assert.deepEqual(out.attentionMask, row(mask, i), `attention_mask, prompt ${i}`);
        assert.deepEqual(base.call(p).inputIds, row(idsBase, i), `input_ids_base, prompt ${i}`);
      });
      assert.deepEqual(tok.call('').inputIds, ints(ref.read('cfg.uncond_input_ids') as BigInt64Array));
      assert.deepEqual(tok.call(prompts[0]).inputIds, ints(ref.read('cfg.cond_input_ids') as BigInt64Array));
      assert.deepEqual(tok.call(ref.metadata.ti_prompt).inputIds, ints(ref.read('ti.input_ids') as BigInt64Array));
    });
  }
}

test('fromDir reads the pad token from the folder: SD1 pads with eos, SD2 with "!" (id 0)', () => {
  const a = CLIPTokenizer.fromDir(tokDir('sd1-tiny'));
  const b = CLIPTokenizer.fromDir(tokDir('sd2-tiny'));
  assert.equal(a.padToken, '<|endoftext|>');
  assert.equal(b.padToken, '!');
  assert.equal(b.padId, 0);
  assert.equal(a.modelMaxLength, 77);
});

test('SD2 quirk: with pad "!" every "!" is its own special id 0; SD1 BPE-merges it', () => {
  assert.deepEqual(sd1.encode('artstation!!'), [1486, 2631, 748]);
  assert.deepEqual(sd2.encode('artstation!!'), [1486, 2631, 0, 0]);
  assert.deepEqual(sd2.encode('hello!world'), [3306, 0, 1002]);
  assert.deepEqual(sd1.encode('hello!world'), [3306, 256, 1002]);
});

// Expected ids from an independent Python port of the no-ftfy path run on CPython's unicodedata and
// the `regex` module (the Unicode-sensitive parts); columns: SD1 pad, SD2 pad.
const UNICODE_CASES: Array<[string, number[], number[]]> = [
  ['Caf\u00e9 au lait, CAF\u00c9, cafe\u0301, na\u00efve fa\u00e7ade', [15304, 2566, 572, 585, 267, 15304, 267, 15304, 267, 1097, 35689, 563, 778, 10067, 1928], []],
  ['\u00c9COLE Stra\u00dfe \u0130stanbul \u039f\u0394\u039f\u03a3', [3459, 8166, 1894, 127, 253, 324, 328, 16384, 11231, 138, 123, 138, 112, 138, 123, 139, 480], []],
  ['\u732b\u304c\u3059\u304d \u6211\u7231\u5317\u4eac', [163, 234, 360, 4813, 234, 4813, 247, 4813, 491, 162, 230, 495, 163, 230, 365, 161, 234, 501, 21078, 361], []],
  ['emoji \ud83d\udc31\ud83d\ude80\ud83d\udc4d\ud83c\udffd \ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67 \u2764\ufe0f \ud83c\uddef\ud83c\uddf5', [16327, 35710, 22400, 43722, 18966, 18800, 964, 356, 1752, 26527], []],
  ['zero\u200bwidth soft\u00adhyphen nbsp\u00a0here em\u2003space', [14867, 23571, 1571, 7804, 745, 576, 6459, 4393, 763, 2270, 2138], []],
  ['tabs\tand\nnewlines\r\nand\u2028line \u000b vt \u001c fs \u0085 nel', [29163, 537, 1218, 3418, 537, 1148, 10291, 3854, 2693], []],
  ['numbers 12345 3.14 1,000,000 \u00bd \u00b2 \u0663\u0664', [6121, 272, 273, 274, 275, 276, 274, 269, 272, 275, 272, 267, 271, 271, 271, 267, 271, 271, 271, 33613, 41175, 149, 352, 149, 353], []],
  ["don't it's we're I've I'm you'll he'd DON'T it'\u017f", [847, 713, 585, 568, 649, 982, 328, 1200, 328, 880, 592, 1342, 797, 1896, 847, 713, 585, 6, 129, 379], []],
  ['punct!!! ?? ... --- ((masterpiece)) #42 @user $100', [2707, 1122, 995, 2197, 678, 11079, 13796, 12066, 5167, 258, 275, 273, 287, 7031, 259, 272, 271, 271],
    [2707, 1122, 0, 0, 0, 2197, 678, 11079, 13796, 12066, 5167, 258, 275, 273, 287, 7031, 259, 272, 271, 271]],
  ['a\u0000b\ufffdc\u0007d', [596, 4480], []],
  ['\ufb01 \ufb02 \u216b \u24d0\u24b6 \uff21\uff22\uff23 \u212a', [171, 105, 479, 171, 105, 480, 158, 227, 375, 27400, 238, 27400, 494, 171, 121, 223, 171, 121, 224, 171, 121, 481, 330], []],
  ['a\u0345b \u1fb3', [320, 321, 157, 122, 367], []],
  ['<|startoftext|>x<|ENDOFTEXT|>y', [49406, 343, 49407, 344], []],
  ['hello!world wow!! !', [3306, 256, 1002, 2781, 748, 256], [3306, 0, 1002, 2781, 0, 0, 0]],
];

test('unicode, emoji, accents, numbers, contractions, control chars match the Python path', () => {
  for (const [text, a, b] of UNICODE_CASES) {
    assert.deepEqual(sd1.encode(text), a, `SD1: ${JSON.stringify(text)}`);
    assert.deepEqual(sd2.encode(text), b.length ? b : a, `SD2: ${JSON.stringify(text)}`);
  }
});

test('normalisation properties: NFC, no accent stripping, lowercasing, cleanup, CJK split', () => {
  const same = (x: string, y: string) => assert.deepEqual(sd1.encode(x), sd1.encode(y), `${JSON.stringify(x)} vs ${JSON.stringify(y)}`);
  same('cafe\u0301', 'caf\u00e9'); // decomposed -> NFC
  same('CAFÉ', 'café');
  assert.notDeepEqual(sd1.encode('café'), sd1.encode('cafe')); // strip_accents=False
  same('a   photo\t\n of\u00a0a\u3000cat  ', 'a photo of a cat');
  same('zero\u200bwidth', 'zerowidth'); // format chars (Cf) are dropped, not spaces
  same('\ud83d\udc68\u200d\ud83d\udc69', '\ud83d\udc68\ud83d\udc69'); // ZWJ dropped too
  same('x\u0007y', 'xy');
  same('\u732b\u732b', '\u732b \u732b'); // each CJK ideograph is its own word
  assert.deepEqual(sd1.encode(''), []);
  assert.deepEqual(sd1.encode(' \t\n '), []);
  assert.deepEqual(sd1.encode('#42'), [258, 275, 273]); // digits one by one
  assert.deepEqual(sd1.encode("don't"), [847, 713]);
});

test('placeholders: matched verbatim and case-sensitively, before lowercasing', () => {
  const t = CLIPTokenizer.bundled();
  const [cat] = t.addTokens(['<cat-toy>']);
  assert.equal(cat, 49408);
  assert.deepEqual(t.encode('a <cat-toy>'), [320, cat]);
  assert.deepEqual(t.encode('a<cat-toy>s'), [320, cat, 338]); // glued text still splits off
  assert.deepEqual(t.encode('<CAT-TOY>'), [283, 2368, 268, 5988, 285]); // not the placeholder
  assert.deepEqual(t.encode('<Cat-Toy>'), sd1.encode('<cat-toy>'));
  assert.equal(t.idToToken(cat), '<cat-toy>');
  assert.equal(t.tokenToId('<cat-toy>'), cat);
  // several, with ids in order; the longest match wins when one placeholder prefixes another
  const [a, b] = t.addTokens(['<dog>', '<dog>_1']);
  assert.deepEqual([a, b], [49409, 49410]);
  assert.equal(t.length, 49411);
  assert.deepEqual(t.encode('<dog> <dog>_1<dog>'), [a, b, a]);
});

test('addTokens refuses tokens that already exist, with a clear message', () => {
  const t = CLIPTokenizer.bundled();
  assert.throws(() => t.addTokens(['toy</w>']), /"toy<\/w>" already exists in the vocabulary \(id 5988\)/);
  assert.throws(() => t.addTokens(['toy']), /already exists/);
  assert.throws(() => t.addTokens(['<|endoftext|>']), /already exists.*49407/);
  t.addTokens(['<x>']);
  assert.throws(() => t.addTokens(['<x>']), /already exists.*49408/);
  assert.throws(() => t.addTokens(['<y>', '<y>']), /"<y>" already exists/);
  assert.throws(() => t.addTokens(['']), /non-empty/);
  // a tokenizer's additions do not leak into another built from the same bundled data
  assert.equal(CLIPTokenizer.bundled().tokenToId('<x>'), undefined);
});

test('call(): truncation keeps bos + first 75 + eos; options turn truncation and padding off', () => {
  const long = Array.from({ length: 120 }, (_, i) => `word${i % 10}`).join(' ');
  const all = sd1.encode(long);
  assert.ok(all.length > 75);
  const out = sd1.call(long);
  assert.equal(out.inputIds.length, 77);
  assert.deepEqual(out.inputIds, [49406, ...all.slice(0, 75), 49407]);
  assert.deepEqual(out.attentionMask, new Array(77).fill(1));
  assert.deepEqual(sd1.call(long, { truncation: false }).inputIds, [49406, ...all, 49407]);
  assert.deepEqual(sd1.call('a cat', { padding: false }), { inputIds: [49406, 320, 2368, 49407], attentionMask: [1, 1, 1, 1] });
  const sd2Out = sd2.call('a cat', { maxLength: 8 });
  assert.deepEqual(sd2Out.inputIds, [49406, 320, 2368, 49407, 0, 0, 0, 0]);
  assert.deepEqual(sd2Out.attentionMask, [1, 1, 1, 1, 0, 0, 0, 0]);
});

test('decode() inverts encode() for ordinary text', () => {
  const t = CLIPTokenizer.bundled();
  t.addTokens(['<cat-toy>']);
  const ids = t.call('A Photo of <cat-toy> on a beach, café 🐱').inputIds;
  assert.equal(t.decode(ids, { skipSpecialTokens: true }), 'a photo of <cat-toy> on a beach , café 🐱');
  assert.match(t.decode(ids), /^<\|startoftext\|>a photo/);
  assert.throws(() => t.decode([99999]), /unknown id 99999/);
});

test('fromDir: tokens saved by an earlier textual-inversion run keep their ids; clear error without files', () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-tok-'));
  try {
    for (const f of ['vocab.json', 'merges.txt', 'special_tokens_map.json']) copyFileSync(join(tokDir('sd1-tiny'), f), join(dir, f));
    const config = JSON.parse(readFileSync(join(tokDir('sd1-tiny'), 'tokenizer_config.json'), 'utf8'));
    config.added_tokens_decoder['49408'] = { content: '<cat-toy>', lstrip: false, normalized: true, rstrip: false, single_word: false, special: false };
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(config));
    writeFileSync(join(dir, 'added_tokens.json'), JSON.stringify({ '<cat-toy>': 49408, '<other>': 49409 }));
    const t = CLIPTokenizer.fromDir(dir);
    assert.deepEqual(t.encode('a <cat-toy> <other>'), [320, 49408, 49409]);
    assert.equal(t.length, 49410);
    assert.deepEqual(t.addTokens(['<new>']), [49410]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.throws(() => CLIPTokenizer.fromDir(join(FIX, 'no-such-dir')), /vocab\.json not found/);
});

test("added-token trie splits exactly like transformers' Trie (longest match, earliest start)", () => {
  const split = (tokens: string[], text: string) => {
    const t = new AddedTokenTrie();
    for (const w of tokens) t.add(w);
    return t.split(text);
  };
  // transformers' docstring examples
  assert.deepEqual(split([], '[CLS] This is a extra_id_100'), ['[CLS] This is a extra_id_100']);
  assert.deepEqual(split(['[CLS]', 'extra_id_1', 'extra_id_100'], '[CLS] This is a extra_id_100'), ['[CLS]', ' This is a ', 'extra_id_100']);
  assert.deepEqual(split(['A', 'P', '[SPECIAL]'], '[SPECIAL]'), ['[SPECIAL]']);
  assert.deepEqual(split(['AB', 'B', 'C'], 'ABC'), ['AB', 'C']);
  assert.deepEqual(split(['ABC', 'B', 'CD'], 'ABCD'), ['ABC', 'D']);
  assert.deepEqual(split(['ab', 'b', 'abc', 'bca'], 'bcabca'), ['bca', 'bca']);
  // outputs of the Python Trie on overlapping sets
  assert.deepEqual(split(['<hi!>', '!'], 'x!<hi!>!'), ['x', '!', '<hi!>', '!']);
  assert.deepEqual(split(['abcd', 'bc'], 'abcx'), ['a', 'bc', 'x']);
  assert.deepEqual(split(['a', 'aa', 'aaa'], 'aaaaa'), ['aaa', 'aa']);
  assert.deepEqual(split(['😀x'], 'a😀x😀'), ['a', '😀x', '😀']); // code points, not UTF-16 units
});
