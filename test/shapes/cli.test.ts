import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { shapesCommand } from '../../src/cli/shapes.ts';

async function run(...argv: string[]) {
  let out = '';
  let err = '';
  const code = await shapesCommand(argv, { out: (t) => void (out += t), err: (t) => void (err += t) });
  return { code, out, err };
}

test('render writes PNGs and attributes.jsonl honouring the spec; analyze reads them back', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'oneword-shapes-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const spec = '{"shape":"star","color":"orange","texture":"dotted"}';
  const r = await run('render', '--spec', spec, '--count', '4', '--seed', '1', '--out', dir);
  assert.equal(r.code, 0, r.err);
  assert.deepEqual((await readdir(dir)).sort(), ['0000.png', '0001.png', '0002.png', '0003.png', 'attributes.jsonl']);
  const meta = await sharp(join(dir, '0002.png')).metadata();
  assert.equal(meta.width, 64);
  assert.equal(meta.height, 64);
  const lines = (await readFile(join(dir, 'attributes.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(lines.length, 4);
  for (const l of lines) {
    assert.equal(l.attributes.shape, 'star');
    assert.equal(l.attributes.color, 'orange');
    assert.equal(l.attributes.texture, 'dotted');
    assert.match(l.caption, /orange star/);
  }
  const files = lines.map((l) => join(dir, l.file));
  const a = await run('analyze', ...files);
  assert.equal(a.code, 0, a.err);
  const results = JSON.parse(a.out);
  assert.equal(results.length, 4);
  results.forEach((res: any, i: number) => {
    assert.deepEqual(res.attributes, lines[i].attributes);
    assert.equal(res.found, true);
    assert.ok(res.confidence.shape >= 0 && res.confidence.shape <= 1);
  });
  const jl = await run('analyze', '--jsonl', files[0], files[1]);
  assert.deepEqual(jl.out.trim().split('\n').map((l) => JSON.parse(l).attributes), [lines[0].attributes, lines[1].attributes]);
});

test('render is reproducible and image i does not depend on --count', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'oneword-shapes-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  assert.equal((await run('render', '--count', '3', '--seed', '7', '--out', join(dir, 'a'))).code, 0);
  assert.equal((await run('render', '--count=1', '--seed=7', '--out', join(dir, 'b'))).code, 0);
  assert.deepEqual(await readFile(join(dir, 'a', '0000.png')), await readFile(join(dir, 'b', '0000.png')));
  assert.notDeepEqual(await readFile(join(dir, 'a', '0000.png')), await readFile(join(dir, 'a', '0001.png')));
});

test('analyze resizes other image sizes to 64×64', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'oneword-shapes-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await run('render', '--spec', '{"shape":"heart","size":"large","color":"green","texture":"striped"}', '--count', '1', '--out', dir);
  const big = join(dir, 'big.png');
  await sharp(join(dir, '0000.png')).resize(256, 256, { kernel: 'cubic' }).toFile(big);
  const res = JSON.parse((await run('analyze', big)).out)[0];
  assert.equal(res.attributes.shape, 'heart');
  assert.equal(res.attributes.color, 'green');
  assert.equal(res.attributes.size, 'large');
});

test('clear errors: bad spec values list the valid ones; usage errors exit 2', async () => {
  let r = await run('render', '--spec', '{"shape":"hexagon"}', '--out', 'unused');
  assert.equal(r.code, 2);
  assert.match(r.err, /unknown shape "hexagon"; valid shape values: circle, square, triangle, star, heart, ring/);
  r = await run('render', '--spec', '{"pattern":"dotted"}', '--out', 'unused');
  assert.match(r.err, /unknown attribute "pattern"; valid attributes: shape, color, size, position, background, texture/);
  r = await run('render', '--spec', '{bad json', '--out', 'unused');
  assert.equal(r.code, 2);
  assert.match(r.err, /not valid JSON/);
  assert.equal((await run('render', '--count', '4')).code, 2, 'missing --out');
  assert.equal((await run('render', '--out', 'x', '--count', '0')).code, 2);
  assert.equal((await run('render', '--out', 'x', '--frobnicate')).code, 2);
  assert.equal((await run('dance')).code, 2);
  assert.equal((await run('analyze')).code, 2);
  const missing = await run('analyze', join(tmpdir(), 'no-such-image-oneword.png'));
  assert.equal(missing.code, 1);
  assert.match(JSON.parse(missing.out)[0].error, /missing|no such/i);
});

test('--help describes both subcommands and every attribute value', async () => {
  for (const argv of [['--help'], ['render', '--help'], ['analyze', '-h']]) {
    const r = await run(...argv);
    assert.equal(r.code, 0);
    assert.match(r.out, /oneword shapes render/);
    assert.match(r.out, /oneword shapes analyze/);
    assert.match(r.out, /checkered/);
    assert.match(r.out, /bottom-right/);
  }
});
