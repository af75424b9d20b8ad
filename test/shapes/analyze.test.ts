import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ATTRIBUTE_NAMES, type AttrName, type Attrs, BACKGROUND_RGB } from '../../src/shapes/attributes.ts';
import { analyze, analyzerModel } from '../../src/shapes/analyze.ts';
import { degrade, type Degradation } from '../../src/shapes/degrade.ts';
import { Rng } from '../../src/shapes/random.ts';
import { render, renderRandom } from '../../src/shapes/render.ts';

/** Per-attribute accuracy on `n` fresh renders (a seed the analyzer was not fitted on). */
function accuracy(n: number, seed: number, d?: Degradation) {
  const model = analyzerModel();
  const rng = new Rng(seed);
  const ok = Object.fromEntries(ATTRIBUTE_NAMES.map((k) => [k, 0])) as Record<AttrName, number>;
  const conf = Object.fromEntries(ATTRIBUTE_NAMES.map((k) => [k, 0])) as Record<AttrName, number>;
  for (let i = 0; i < n; i++) {
    const { attrs, image } = renderRandom(rng);
    const a = analyze(d ? degrade(image, d, rng) : image, model);
    assert.ok(a.found);
    for (const k of ATTRIBUTE_NAMES) {
      if (a.attrs[k] === attrs[k]) ok[k]++;
      conf[k] += a.confidence[k] / n;
    }
  }
  const acc = Object.fromEntries(ATTRIBUTE_NAMES.map((k) => [k, ok[k] / n])) as Record<AttrName, number>;
  return { acc, conf };
}

const fmt = (r: Record<string, number>) => ATTRIBUTE_NAMES.map((k) => `${k} ${(r[k] * 100).toFixed(1)}%`).join(', ');

test('≥ 98 % per attribute on fresh clean renders', (t) => {
  const { acc, conf } = accuracy(400, 1001);
  t.diagnostic(`clean (n=400): ${fmt(acc)}`);
  t.diagnostic(`mean confidence: ${fmt(conf)}`);
  for (const k of ATTRIBUTE_NAMES) assert.ok(acc[k] >= 0.98, `${k}: ${acc[k]}`);
  for (const k of ATTRIBUTE_NAMES) assert.ok(conf[k] > 0.5, `mean ${k} confidence ${conf[k]}`);
});

test('robust to mild blur and noise (as from a generative model)', (t) => {
  const mild = accuracy(300, 2002, { blur: 0.8, noise: 6 });
  t.diagnostic(`blur 0.8 px + noise 6 (n=300): ${fmt(mild.acc)}`);
  const strong = accuracy(300, 3003, { blur: 1.2, noise: 10 });
  t.diagnostic(`blur 1.2 px + noise 10 (n=300): ${fmt(strong.acc)}`);
  for (const k of ATTRIBUTE_NAMES) assert.ok(mild.acc[k] >= 0.95, `mild ${k}: ${mild.acc[k]}`);
  for (const k of ATTRIBUTE_NAMES) assert.ok(strong.acc[k] >= 0.9, `strong ${k}: ${strong.acc[k]}`);
});

test('every value of every attribute is recognised', () => {
  // one render per value with the other attributes random: no value is systematically missed
  const rng = new Rng(4004);
  const model = analyzerModel();
  const cases: Partial<Attrs>[] = [
    ...(['circle', 'square', 'triangle', 'star', 'heart', 'ring'] as const).map((shape) => ({ shape })),
    ...(['red', 'orange', 'yellow', 'green', 'blue', 'purple', 'pink', 'brown'] as const).map((color) => ({ color })),
    ...(['white', 'black', 'gray', 'beige'] as const).map((background) => ({ background })),
    ...(['plain', 'striped', 'dotted', 'checkered'] as const).map((texture) => ({ texture })),
    ...(['top-left', 'top', 'top-right', 'left', 'center', 'right', 'bottom-left', 'bottom', 'bottom-right'] as const).map((position) => ({ position })),
  ];
  for (const fixed of cases)
    for (const size of ['small', 'large'] as const) {
      const { attrs, image } = renderRandom(rng, { ...fixed, size });
      assert.deepEqual(analyze(image, model).attrs, attrs);
    }
});

test('confidence drops where the answer is ambiguous', () => {
  const a: Attrs = { shape: 'circle', color: 'blue', size: 'small', position: 'center', background: 'white', texture: 'plain' };
  const sure = analyze(render(a));
  assert.ok(sure.confidence.position > 0.9);
  // pushed to 0.2 px from the left/center cell boundary (x = 64/3)
  const edge = analyze(render(a, { jitter: [64 / 3 + 0.2 - 32, 0] }));
  assert.ok(edge.confidence.position < 0.2, `position confidence ${edge.confidence.position}`);
  for (const v of Object.values(sure.confidence)) assert.ok(v >= 0 && v <= 1);
});

test('an empty image reports no object', () => {
  const data = new Uint8Array(64 * 64 * 3);
  for (let i = 0; i < data.length; i += 3) data.set(BACKGROUND_RGB.gray, i);
  const a = analyze({ width: 64, height: 64, data });
  assert.equal(a.found, false);
  assert.equal(a.attrs.background, 'gray');
  assert.equal(a.confidence.shape, 0);
  assert.equal(a.confidence.color, 0);
});

test('rejects images of the wrong size', () => {
  assert.throws(() => analyze({ width: 32, height: 32, data: new Uint8Array(32 * 32 * 3) }), /64×64/);
});
