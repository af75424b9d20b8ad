// The page in a real browser (Debian's chromium through playwright-core), on the bundled
// shapes model: drop 4 images → start a 20-step job → the loss chart and a preview appear →
// stop → resume → finish → download the embedding → generate with the word → the image
// appears. Screenshots of each page are kept in test-artifacts/serve/ (not committed).
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { loadEmbedding } from '../../src/index.ts';
import { startServer, type RunningServer } from '../../src/server/server.ts';
import { conceptImages } from './helpers.ts';

const CHROMIUM = [process.env.CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p): p is string => Boolean(p && existsSync(p)));
const ARTIFACTS = new URL('../../test-artifacts/serve/', import.meta.url).pathname;
// Generous for a loaded machine; on a quiet 2-core machine the whole flow takes well under a minute.
const WAIT = { timeout: 300_000 };

let dir: string;
let server: RunningServer;
let browser: Browser;

before(async () => {
  if (!CHROMIUM) return;
  dir = mkdtempSync(join(tmpdir(), 'oneword-page-'));
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer({ port: 0, data: join(dir, 'data') });
  browser = await chromium.launch({ executablePath: CHROMIUM });
});
after(async () => {
  await browser?.close();
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function dropImages(page: Page, paths: string[]): Promise<void> {
  const files = paths.map((p) => ({ name: p.split('/').pop()!, b64: readFileSync(p).toString('base64') }));
  const transfer = await page.evaluateHandle((list) => {
    const dt = new DataTransfer();
    for (const f of list) dt.items.add(new File([Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0))], f.name, { type: 'image/png' }));
    return dt;
  }, files);
  await page.dispatchEvent('#drop', 'drop', { dataTransfer: transfer });
}

const state = (page: Page) => page.locator('#job-state');

test('serve page: train on the shapes model with stop and resume, download the word, generate with it', { skip: CHROMIUM ? false : 'no chromium: apt-get install chromium' }, async () => {
  const t0 = performance.now();
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 }, acceptDownloads: true });
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(server.url);
  await page.waitForSelector('body[data-ready]', { state: 'attached', ...WAIT });

  await dropImages(page, await conceptImages(join(dir, 'images')));
  assert.equal(await page.locator('#thumbs .thumb').count(), 4);
  await page.selectOption('#train-model', 'shapes');
  await page.fill('[name="token"]', '<my-star>');
  await page.fill('[name="init"]', 'star');
  await page.fill('[name="steps"]', '20');
  await page.fill('[name="lr"]', '1e-3');
  await page.fill('[name="save-every"]', '5');
  await page.fill('[name="preview-every"]', '5');
  await page.screenshot({ path: join(ARTIFACTS, '1-train-form.png'), fullPage: true });
  await page.click('#start');

  await page.waitForSelector('#loss-chart path.smooth', WAIT);
  await page.waitForSelector('#previews img', WAIT);
  // The saved step 5 shows its preview as soon as it exists (it is drawn after the step is saved).
  assert.equal(await page.locator('#saved tbody tr', { hasText: /^5/ }).locator('img').count(), 1);
  await page.screenshot({ path: join(ARTIFACTS, '2-train-running.png'), fullPage: true });
  await page.click('#stop');
  await state(page).filter({ hasText: /^(stopped|done)$/ }).waitFor(WAIT);
  assert.equal(await state(page).textContent(), 'stopped', 'the job finished before Stop reached it');
  const stoppedAt = Number(/step (\d+)/.exec((await page.textContent('#job-status'))!)![1]);
  assert.ok(stoppedAt >= 5 && stoppedAt < 20, `stopped at ${stoppedAt}`);

  await page.click('#resume');
  await state(page).filter({ hasText: /^(done|failed)$/ }).waitFor(WAIT);
  assert.equal(await state(page).textContent(), 'done', (await page.textContent('#job-note')) ?? '');
  assert.match((await page.textContent('#job-status'))!, /step 20 \/ 20/);
  await page.waitForFunction(() => document.querySelectorAll('#saved tbody tr').length >= 4);
  await page.screenshot({ path: join(ARTIFACTS, '3-train-done.png'), fullPage: true });

  // The final step's embedding, as a diffusers file.
  const final = page.locator('#saved tbody tr', { hasText: '20 (final)' });
  const [download] = await Promise.all([page.waitForEvent('download'), final.getByText('diffusers').click()]);
  assert.equal(download.suggestedFilename(), 'learned_embeds.safetensors');
  const file = join(dir, 'learned_embeds.safetensors');
  await download.saveAs(file);
  const e = loadEmbedding(file);
  assert.equal(e.token, '<my-star>');
  assert.equal(e.dim, 64);

  await final.getByText('generate with it').click();
  await page.waitForSelector('#generate:not([hidden])');
  await page.fill('#gen-form [name="prompt"]', 'a photo of <my-star>');
  await page.fill('#gen-form [name="steps"]', '10');
  // The final step is the job's latest: its one entry is ticked.
  assert.equal(await page.locator('#gen-words input').count(), 1);
  assert.ok(await page.isChecked('#gen-words input'), 'the picked word is ticked');
  await page.click('#generate-button');
  const img = page.locator('img.generated');
  await img.waitFor(WAIT);
  assert.equal(await img.evaluate((i: HTMLImageElement) => i.complete && i.naturalWidth), 64);
  assert.match((await page.textContent('.result pre'))!, /a photo of <my-star>\nSteps: 10, .*Model: shapes, .*TI hashes: "<my-star>: [0-9a-f]{12}"/);
  await page.screenshot({ path: join(ARTIFACTS, '4-generate.png'), fullPage: true });

  await page.click('nav a[data-tab="gallery"]');
  await page.locator('.card', { hasText: '<my-star>' }).waitFor(WAIT);
  await page.screenshot({ path: join(ARTIFACTS, '5-gallery.png'), fullPage: true });
  assert.deepEqual(errors, []);
  process.stderr.write(`# browser flow: ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
});
