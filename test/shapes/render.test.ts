import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  ATTRIBUTE_NAMES, ATTRIBUTE_VALUES, BACKGROUNDS, BACKGROUND_RGB, COLORS, COLOR_RGB, SHAPES, TEXTURES,
  type Attrs, compatible, parseSpec, randomAttributes, rgbDistance, textureRgb,
} from '../../src/shapes/attributes.ts';
import { IMAGE_SIZE, MAX_JITTER, RADIUS, layout, render, renderRandom, type RgbImage } from '../../src/shapes/render.ts';
import { Rng } from '../../src/shapes/random.ts';

const N = IMAGE_SIZE;
const base: Attrs = { shape: 'circle', color: 'red', size: 'large', position: 'center', background: 'white', texture: 'plain' };

function px(img: RgbImage, x: number, y: number): number[] {
  const i = (y * img.width + x) * 3;
  return [img.data[i], img.data[i + 1], img.data[i + 2]];
}

/** Bounding box of pixels that differ from the background. */
function objectBox(img: RgbImage, bg: readonly number[]) {
  let x0 = N, y0 = N, x1 = -1, y1 = -1, area = 0;
  for (let y = 0; y < N; y++)
    for (let x = 0; x < N; x++) {
      const p = px(img, x, y);
      if (rgbDistance(p as any, bg as any) < 60) continue;
      area++;
      x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y);
    }
  return { x0, y0, x1: x1 + 1, y1: y1 + 1, area };
}

test('vocabulary meets the spec', () => {
  assert.ok(SHAPES.length >= 6 && ['circle', 'square', 'triangle', 'star', 'heart', 'ring'].every((s) => (SHAPES as readonly string[]).includes(s)));
  assert.ok(COLORS.length >= 8);
  assert.ok(BACKGROUNDS.length >= 4);
  assert.deepEqual([...TEXTURES], ['plain', 'striped', 'dotted', 'checkered']);
  assert.equal(ATTRIBUTE_VALUES.position.length, 9);
});

test('every colour and its texture colour stand out on every background', () => {
  for (const c of COLORS)
    for (const b of BACKGROUNDS) {
      assert.ok(compatible(c, b), `${c} on ${b}`);
      // texture colour must differ visibly from the object colour too
      assert.ok(rgbDistance(COLOR_RGB[c], textureRgb(c, b)) >= 60, `${c} texture on ${b}`);
    }
  // object colours are mutually distinct
  for (const a of COLORS) for (const b of COLORS) if (a < b) assert.ok(rgbDistance(COLOR_RGB[a], COLOR_RGB[b]) >= 80, `${a} vs ${b}`);
});

test('render is deterministic and 64×64 RGB', () => {
  const a = render(base, new Rng(5));
  const b = render(base, new Rng(5));
  assert.equal(a.width, 64);
  assert.equal(a.height, 64);
  assert.equal(a.data.length, 64 * 64 * 3);
  assert.deepEqual(a.data, b.data);
  assert.notDeepEqual(render(base, new Rng(6)).data, a.data, 'jitter depends on the rng');
});

test('renders are pinned: a changed renderer invalidates every model trained on it', () => {
  const rng = new Rng('pin');
  const h = createHash('sha256');
  for (let i = 0; i < 24; i++) h.update(renderRandom(rng).image.data);
  assert.equal(h.digest('hex').slice(0, 16), PINNED_RENDER_HASH);
});
const PINNED_RENDER_HASH = '1561ab9575bcf765';

test('background fills the frame and the centre holds the object colour', () => {
  for (const b of BACKGROUNDS) {
    const img = render({ ...base, background: b });
    assert.deepEqual(px(img, 0, 0), [...BACKGROUND_RGB[b]]);
    assert.deepEqual(px(img, 63, 63), [...BACKGROUND_RGB[b]]);
    assert.deepEqual(px(img, 32, 32), [...COLOR_RGB.red]);
  }
});

test('ring has a hole, triangle and heart leave their upper corners empty, square fills its corners', () => {
  const at = (shape: Attrs['shape'], x: number, y: number) => px(render({ ...base, shape }), x, y);
  const white = [255, 255, 255];
  const { cx, cy, r } = layout(base);
  assert.deepEqual(at('ring', Math.floor(cx), Math.floor(cy)), white);
  assert.deepEqual(at('circle', Math.floor(cx), Math.floor(cy)), [...COLOR_RGB.red]);
  assert.deepEqual(at('triangle', Math.floor(cx - 0.8 * r), Math.floor(cy - 0.8 * r)), white);
  assert.deepEqual(at('triangle', Math.floor(cx), Math.floor(cy + 0.7 * r)), [...COLOR_RGB.red]);
  assert.deepEqual(at('heart', Math.floor(cx), Math.floor(cy - 0.9 * r)), white, 'notch at the top of the heart');
  assert.deepEqual(at('square', Math.floor(cx + 0.75 * r), Math.floor(cy - 0.75 * r)), [...COLOR_RGB.red]);
  assert.deepEqual(at('circle', Math.floor(cx + 0.75 * r), Math.floor(cy - 0.75 * r)), white);
  assert.deepEqual(at('star', Math.floor(cx), Math.floor(cy - 0.6 * r)), [...COLOR_RGB.red], 'top point of the star');
  assert.deepEqual(at('star', Math.floor(cx), Math.floor(cy + 0.85 * r)), white, 'between the two lower points');
});

test('size and position follow the attributes, within the frame', () => {
  const rng = new Rng(11);
  for (let i = 0; i < 60; i++) {
    const { attrs, image } = renderRandom(rng, { shape: 'circle', texture: 'plain' });
    const box = objectBox(image, BACKGROUND_RGB[attrs.background]);
    const w = box.x1 - box.x0;
    assert.ok(Math.abs(w - 2 * RADIUS[attrs.size]) <= 2, `width ${w} for ${attrs.size}`);
    const col = Math.floor((box.x0 + box.x1) / 2 / (N / 3));
    const row = Math.floor((box.y0 + box.y1) / 2 / (N / 3));
    const want = layout(attrs);
    assert.equal(col, Math.floor(want.cx / (N / 3)), `column for ${attrs.position}`);
    assert.equal(row, Math.floor(want.cy / (N / 3)), `row for ${attrs.position}`);
  }
  // worst-case jitter keeps large corner objects inside the frame
  for (const position of ['top-left', 'bottom-right'] as const) {
    for (const j of [-MAX_JITTER, MAX_JITTER]) {
      const { cx, cy, r } = layout({ size: 'large', position }, [j, j]);
      assert.ok(cx - r >= 0 && cy - r >= 0 && cx + r <= N && cy + r <= N);
    }
  }
});

test('textures: plain is one colour, patterns mix object and texture colour in the right layout', () => {
  const count = (img: RgbImage, rgb: readonly number[]) => {
    let n = 0;
    for (let i = 0; i < img.data.length; i += 3) if (img.data[i] === rgb[0] && img.data[i + 1] === rgb[1] && img.data[i + 2] === rgb[2]) n++;
    return n;
  };
  const a: Attrs = { ...base, shape: 'square' };
  const mark = textureRgb(a.color, a.background);
  assert.equal(count(render(a), mark), 0);
  const frac: Record<string, number> = {};
  for (const texture of ['striped', 'dotted', 'checkered'] as const) {
    const img = render({ ...a, texture });
    const nm = count(img, mark);
    const nf = count(img, COLOR_RGB[a.color]);
    frac[texture] = nm / (nm + nf);
    assert.ok(nm > 20 && nf > 20, `${texture}: ${nm} marks, ${nf} object pixels`);
  }
  assert.ok(frac.dotted < 0.35, `dots are a minority: ${frac.dotted}`);
  assert.ok(frac.striped > 0.35 && frac.checkered > 0.35);
  // stripes are constant along the (1,-1) diagonal, checkers are not
  const img = render({ ...a, texture: 'striped' });
  const { cx, cy } = layout(a);
  const x = Math.round(cx), y = Math.round(cy);
  assert.deepEqual(px(img, x + 2, y - 2 + 0), px(img, x + 2 - 3, y - 2 + 3));
});

test('randomAttributes keeps fixed values and covers every value', () => {
  const rng = new Rng(1);
  const seen = new Map<string, Set<string>>(ATTRIBUTE_NAMES.map((n) => [n, new Set()]));
  for (let i = 0; i < 400; i++) {
    const a = randomAttributes(rng);
    for (const n of ATTRIBUTE_NAMES) seen.get(n)!.add(a[n]);
    assert.ok(compatible(a.color, a.background));
  }
  for (const n of ATTRIBUTE_NAMES) assert.equal(seen.get(n)!.size, ATTRIBUTE_VALUES[n].length, n);
  for (let i = 0; i < 20; i++) {
    const a = randomAttributes(rng, { shape: 'star', texture: 'dotted', position: 'top-left' });
    assert.equal(a.shape, 'star');
    assert.equal(a.texture, 'dotted');
    assert.equal(a.position, 'top-left');
  }
});

test('parseSpec normalises values and names valid ones on error', () => {
  assert.deepEqual(parseSpec({ shape: 'Star', colour: 'orange', position: 'top left', background: 'grey' }),
    { shape: 'star', color: 'orange', position: 'top-left', background: 'gray' });
  assert.throws(() => parseSpec({ shape: 'hexagon' }), /unknown shape "hexagon".*circle, square, triangle, star, heart, ring/);
  assert.throws(() => parseSpec({ flavour: 'x' }), /unknown attribute "flavour".*shape, color, size, position, background, texture/);
  assert.throws(() => parseSpec({ size: 3 }), /must be a string/);
  assert.throws(() => parseSpec([1]), /JSON object/);
});
