// Renders the demo's bundled training images (committed under assets/demo/): one concept
// with no word in the shapes model's vocabulary, shown at different positions, sizes and
// backgrounds, each with a caption of its setting. Run: node --import tsx scripts/make-demo-images.ts
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeSetting, render, writePng, type Attrs } from '../src/shapes/index.ts';

const dir = join('assets', 'demo', 'dotted-orange-star');
mkdirSync(dir, { recursive: true });
const concept = { shape: 'star', color: 'orange', texture: 'dotted' } as const;
const views: Array<Pick<Attrs, 'size' | 'position' | 'background'>> = [
  { size: 'large', position: 'center', background: 'white' },
  { size: 'small', position: 'top-left', background: 'black' },
  { size: 'large', position: 'bottom-right', background: 'gray' },
  { size: 'small', position: 'right', background: 'beige' },
];
for (const [i, v] of views.entries()) {
  await writePng(render({ ...concept, ...v } as Attrs, { jitter: [0, 0] }), join(dir, `${i}.png`));
  // The caption beside each image names what is not the concept (AUTOMATIC1111's [filewords]).
  writeFileSync(join(dir, `${i}.txt`), `${describeSetting(v)}\n`);
}
writeFileSync(join(dir, 'concept.json'), `${JSON.stringify(concept)}\n`);
