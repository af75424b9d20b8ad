#!/usr/bin/env node
// In a clone, runs the TypeScript sources through tsx, so `npm ci` needs no build step;
// an installed package has only the compiled JavaScript in dist/ and runs that.
import { existsSync } from 'node:fs';

const sources = new URL('../src/cli/main.ts', import.meta.url);
let main;
if (existsSync(sources)) {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import(sources.href));
} else {
  ({ main } = await import('../dist/cli/main.js'));
}
process.exitCode = await main(process.argv.slice(2));
