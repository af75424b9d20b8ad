#!/usr/bin/env bash
# Opt-in check of the published package (not part of `npm test`): packs oneword (prepack
# builds dist/), installs the tarball into a temporary folder outside the repository
# offline from the npm cache, then uses it from plain Node: the library (train, save,
# load, generate), the `oneword` command, and the type declarations.
# Usage: scripts/check-package.sh [MODEL]   (default: test/fixtures/sd1-tiny)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
model=$(cd "${1:-$repo/test/fixtures/sd1-tiny}" && pwd)
images="$repo/assets/demo/dotted-orange-star"
work=$(mktemp -d "${TMPDIR:-/tmp}/oneword-package-XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== npm pack"
tarball=$(cd "$repo" && npm pack --pack-destination "$work" --silent | tail -n 1)
ls -l "$work/$tarball" | awk '{print $5, $9}'

echo "== npm install (offline) into $work/app"
mkdir "$work/app" && cd "$work/app"
# Offline, npm 11 resolves a new dependency's dependencies from full registry documents,
# which `npm ci` never caches; so the app is first seeded with oneword's runtime
# dependencies at the versions of its lockfile, then the tarball is added on top.
# --ignore-scripts: onnxruntime-node's postinstall would download CUDA providers (its CPU
# build ships in the package) and nothing else in the runtime tree has install scripts.
node - "$repo/package-lock.json" <<'JS'
const fs = require('node:fs');
const lock = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const dependencies = lock.packages[''].dependencies;
const name = 'oneword-package-check';
const packages = { '': { name, dependencies } };
for (const [path, entry] of Object.entries(lock.packages)) if (path && !entry.dev) packages[path] = entry;
fs.writeFileSync('package.json', JSON.stringify({ name, private: true, type: 'module', dependencies }, null, 2));
fs.writeFileSync('package-lock.json', JSON.stringify({ name, lockfileVersion: 3, requires: true, packages }, null, 2));
JS
npm ci --offline --ignore-scripts --no-audit --no-fund
npm install --offline --ignore-scripts --no-audit --no-fund "$work/$tarball"

echo "== library from plain Node"
cp "$repo/scripts/package-smoke.mjs" .
node package-smoke.mjs "$model" "$images" "$work/out"

echo "== the oneword command"
./node_modules/.bin/oneword generate --model "$model" --prompt "a photo of a star" --steps 2 --width 32 --height 32 --out "$work/gen" --quiet
ls "$work/gen"

echo "== type declarations"
cat > consumer.ts <<'TS'
import { StableDiffusion, trainTextualInversion, type TrainingRun, type GeneratedImage } from 'oneword';
const sd = await StableDiffusion.load('model', { threads: 1 });
const run: TrainingRun = await trainTextualInversion(sd, { images: ['a.png'], token: '<t>', init: 'cat', steps: 2 });
const images: GeneratedImage[] = await sd.generate({ prompt: 'a photo of <t>', negativePrompt: 'blurry', count: 1 });
// @ts-expect-error: options are checked
await trainTextualInversion(sd, { images: 'dir', token: '<t>', init: 'cat', learningRate: 1 });
export { run, images };
TS
"$repo/node_modules/.bin/tsc" --noEmit --strict --target es2022 --module nodenext --moduleResolution nodenext \
  --types node --typeRoots "$repo/node_modules/@types" consumer.ts
echo "types: ok"
echo "package check: ok"
