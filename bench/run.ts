// `npm run bench -- <suite…>`: prints one JSON line per case.
import { benchEngine } from './engine.ts';
import { benchComponents } from './components.ts';

const suites: Record<string, () => Promise<void>> = {
  engine: benchEngine,
  components: () => benchComponents(),
};

const wanted = process.argv.slice(2);
const names = wanted.length ? wanted : Object.keys(suites);
for (const n of names) {
  const run = suites[n];
  if (!run) {
    console.error(`unknown benchmark suite "${n}" (available: ${Object.keys(suites).join(', ')})`);
    process.exit(2);
  }
  await run();
}
