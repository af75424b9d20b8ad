// `npm run eval -- <suite…>`: slower, opt-in measurements of the bundled shapes model.
//   shapes    per-attribute accuracy of generations over 200 seeded random prompts
//   concepts  the demo's method on concepts outside the bundle (default options), with the
//             issue's thresholds: reconstruction ≥ 0.8 and ≥ 0.3 above the best description,
//             editability ≥ 0.7
//   stopping  steps, seconds and scores of fixed-step training, --stop auto, and encoder
//             init + --stop auto on 8 concepts (see eval-stopping.ts; flags shrink it)
import { runDemo } from '../src/cli/demo.ts';
import type { Attrs } from '../src/shapes/attributes.ts';

// Suite names are the words that are neither flags nor a flag's value (--model DIR …).
const argv = process.argv.slice(2);
const suites = argv.filter((a, i) => !a.startsWith('--') && !(i > 0 && argv[i - 1].startsWith('--')));
const wanted = suites.length ? suites : ['shapes', 'concepts'];

const CONCEPTS: Array<Partial<Attrs>> = [
  { shape: 'heart', color: 'blue', texture: 'striped' },
  { shape: 'circle', color: 'green', texture: 'checkered' },
];

for (const suite of wanted) {
  if (suite === 'shapes') {
    await import('./eval-shapes.ts');
  } else if (suite === 'stopping') {
    await import('./eval-stopping.ts');
  } else if (suite === 'concepts') {
    for (const concept of CONCEPTS) {
      const name = `${concept.texture}-${concept.color}-${concept.shape}`;
      const r = await runDemo({ concept, out: `tmp/eval-${name}`, mode: 'quiet' });
      const e = r.eval;
      const pass = e.learned.reconstruction >= 0.8 && e.learned.reconstruction - e.description.reconstruction >= 0.3 && e.learned.editability >= 0.7;
      console.log(JSON.stringify({ case: `concept-${name}`, ...e, pass }));
    }
  } else {
    console.error(`unknown eval suite "${suite}" (shapes, concepts, stopping)`);
    process.exit(2);
  }
}
