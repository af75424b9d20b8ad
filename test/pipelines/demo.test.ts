// `oneword demo` end to end on the tiny fixture model (the bundled shapes model's numbers
// live in `npm run eval`): training, the three namings, report and eval.json.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const FIX = new URL('../fixtures/', import.meta.url).pathname;
const BIN = new URL('../../bin/oneword.js', import.meta.url).pathname;

test('demo: trains, generates every naming, writes a self-contained report and eval.json', () => {
  const dir = mkdtempSync(join(tmpdir(), 'oneword-demo-'));
  try {
    const prompts = join(dir, 'prompts.json');
    writeFileSync(prompts, JSON.stringify([{ template: 'a large {} on a black background', constraints: { size: 'large', background: 'black' } }]));
    const out = join(dir, 'report');
    const r = spawnSync(process.execPath, [BIN, 'demo', '--model', join(FIX, 'sd1-tiny'), '--concept', '{"shape":"heart","color":"blue","texture":"striped"}', '--steps', '3', '--count', '2', '--prompts', prompts, '--out', out, '--progress', 'json'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const e = JSON.parse(readFileSync(join(out, 'eval.json'), 'utf8'));
    assert.deepEqual(e.concept, { shape: 'heart', color: 'blue', texture: 'striped' });
    assert.equal(e.steps, 3);
    for (const m of ['learned', 'init_word', 'description']) {
      assert.equal(e[m].images, 2);
      for (const k of ['reconstruction', 'editability']) assert.ok(e[m][k] >= 0 && e[m][k] <= 1);
    }
    const html = readFileSync(join(out, 'index.html'), 'utf8');
    assert.match(html, /<svg[^>]*aria-label="training loss"/);
    assert.equal((html.match(/<img src="data:image\/png;base64,/g) ?? []).length, 4 + 3 * 2);
    assert.ok(!/src="(https?:|file:)/.test(html), 'report must not reference outside files');
    assert.match(html, /a large &lt;my-thing&gt; on a black background/);
    assert.match(html, /a large blue heart on a black background/);
    assert.match(html, /<p class="summary"><b>&lt;my-thing&gt; captured /);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
