// The demo's plain-language verdict names what the word captured and what it missed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PartCounts, summarize } from '../../src/cli/demo.ts';
import type { Attrs } from '../../src/shapes/attributes.ts';

const concept = { shape: 'star', color: 'orange', texture: 'dotted' } as const;
const base: Attrs = { ...concept, size: 'small', position: 'center', background: 'white' };
const names = { learned: '<w>', init_word: 'star', description: 'orange star' };

function counts(images: Array<Partial<Attrs>>): PartCounts {
  const p = new PartCounts();
  for (const a of images) p.add({ ...base, ...a }, concept);
  return p;
}

test('summary: a word that captured everything, against a description without the texture', () => {
  const learned = counts([{}, {}, {}, { texture: 'plain' }]);
  const description = counts([{ texture: 'plain' }, { texture: 'striped' }, {}, { texture: 'plain' }]);
  const score = (r: number, e: number) => ({ reconstruction: r, editability: e, obeys: e, images: 4 });
  const s = summarize('<w>', concept, names, { learned: score(0.75, 0.5), init_word: score(0, 0), description: score(0.25, 0.25) },
    { learned, init_word: counts([]), description });
  assert.match(s, /^<w> captured the whole concept: its images show the dotted orange star in 3 of 4 \(shape 4 of 4, colour 4 of 4, texture 3 of 4\)/);
  assert.match(s, /in 50 % of the images that ask for one/);
  assert.match(s, /"orange star", draws the dotted orange star in 25 % \(texture right in 1 of 4/);
});

test('summary: names the parts the word missed', () => {
  const learned = counts([{ texture: 'plain' }, { texture: 'striped', color: 'red' }, {}, { texture: 'plain' }]);
  const score = { reconstruction: 0.25, editability: 0, obeys: 0, images: 4 };
  const s = summarize('<w>', concept, names, { learned: score, init_word: score, description: score }, { learned, init_word: learned, description: learned });
  assert.match(s, /only in part \(shape 4 of 4, colour 3 of 4, texture 1 of 4; texture not learned\)/);
});
