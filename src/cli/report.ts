// The demo's self-contained HTML report: images inlined as data URIs, the loss curve as
// an SVG, and the evaluation table. Opens from disk with no network.
import { encodePng } from '../io/png.ts';
import type { MethodScore, NamingMethod } from '../pipelines/shapes-eval.ts';

export interface ReportImage {
  rgb: Uint8Array;
  width: number;
  height: number;
  caption: string;
  ok?: boolean;
}

export interface ReportData {
  title: string;
  concept: Record<string, string>;
  token: string;
  training: ReportImage[];
  /** prompt template → method → images */
  grid: Array<{ template: string; prompts: Record<NamingMethod, string>; images: Record<NamingMethod, ReportImage[]> }>;
  losses: number[];
  scores: Record<NamingMethod, MethodScore>;
  steps: number;
  seconds: number;
  /** One or two sentences: what the word learned, against the best description. */
  summary?: string;
}

const esc = (s: string) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

function img(i: ReportImage): string {
  const src = `data:image/png;base64,${encodePng(i.rgb, i.width, i.height).toString('base64')}`;
  const mark = i.ok === undefined ? '' : i.ok ? ' ok' : ' miss';
  return `<figure class="im${mark}"><img src="${src}" width="96" height="96" alt="${esc(i.caption)}"><figcaption>${esc(i.caption)}</figcaption></figure>`;
}

/** Running-mean loss curve as an inline SVG. */
export function lossSvg(losses: number[], width = 560, height = 180): string {
  if (losses.length === 0) return '<p>no loss values</p>';
  const smooth: number[] = [];
  let m = losses[0];
  for (const l of losses) smooth.push((m = 0.95 * m + 0.05 * l));
  const lo = Math.min(...smooth);
  const hi = Math.max(...smooth);
  const pad = 32;
  const x = (i: number) => pad + (i / Math.max(1, smooth.length - 1)) * (width - 2 * pad);
  const y = (v: number) => height - pad - ((v - lo) / Math.max(hi - lo, 1e-12)) * (height - 2 * pad);
  const raw = losses.map((l, i) => `${x(i).toFixed(1)},${Math.min(height - 4, Math.max(4, y(l))).toFixed(1)}`).join(' ');
  const line = smooth.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" role="img" aria-label="training loss">
<rect width="100%" height="100%" fill="#fff"/>
<polyline points="${raw}" fill="none" stroke="#cbd5e1" stroke-width="1"/>
<polyline points="${line}" fill="none" stroke="#2563eb" stroke-width="2"/>
<text x="${pad}" y="14" font-size="11">loss (running mean), ${hi.toFixed(4)} → ${smooth[smooth.length - 1].toFixed(4)}</text>
<text x="${pad}" y="${height - 8}" font-size="11">step 1</text><text x="${width - pad}" y="${height - 8}" font-size="11" text-anchor="end">step ${losses.length}</text>
</svg>`;
}

const METHOD_LABEL: Record<NamingMethod, string> = { learned: 'learned word', init_word: 'init word', description: 'best description' };

export function evalTable(scores: Partial<Record<NamingMethod, MethodScore>>): string {
  const rows = (Object.entries(scores) as Array<[NamingMethod, MethodScore]>).map(
    ([m, s]) => `${METHOD_LABEL[m].padEnd(17)} ${s.reconstruction.toFixed(2).padStart(14)} ${s.editability.toFixed(2).padStart(11)} ${s.obeys.toFixed(2).padStart(13)} ${String(s.images).padStart(6)}`,
  );
  return [`${'naming'.padEnd(17)} ${'reconstruction'.padStart(14)} ${'editability'.padStart(11)} ${'obeys prompt'.padStart(13)} ${'images'.padStart(6)}`, ...rows].join('\n');
}

export function renderReport(d: ReportData): string {
  const methods = Object.keys(d.scores) as NamingMethod[];
  const table = methods
    .map((m) => {
      const s = d.scores[m];
      return `<tr><td>${METHOD_LABEL[m]}</td><td>${s.reconstruction.toFixed(2)}</td><td>${s.editability.toFixed(2)}</td><td>${s.obeys.toFixed(2)}</td><td>${s.images}</td></tr>`;
    })
    .join('');
  const grid = d.grid
    .map(
      (row) => `<section class="row"><h3>${esc(row.template.replace('{}', '…'))}</h3><div class="methods">${methods
        .map((m) => `<div class="method"><h4>${METHOD_LABEL[m]}: <code>${esc(row.prompts[m])}</code></h4><div class="ims">${row.images[m].map(img).join('')}</div></div>`)
        .join('')}</div></section>`,
    )
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(d.title)}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#111;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}h3{font-size:14px;margin:14px 0 4px}h4{font-size:12px;font-weight:500;margin:4px 0}
.ims{display:flex;flex-wrap:wrap;gap:6px}.im{margin:0;text-align:center;font-size:10px;color:#555;width:100px}
.im img{image-rendering:pixelated;border:3px solid #e5e7eb;border-radius:4px}.im.ok img{border-color:#16a34a}.im.miss img{border-color:#dc2626}
.methods{display:grid;grid-template-columns:repeat(3,1fr);gap:12px}table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}
code{background:#f3f4f6;padding:1px 4px;border-radius:3px}
</style></head><body>
<h1>${esc(d.title)}</h1>
<p>oneword learned the word <code>${esc(d.token)}</code> for a concept that has no word in the model's vocabulary
(${Object.entries(d.concept).map(([k, v]) => `${k}: <b>${esc(v)}</b>`).join(', ')}) from ${d.training.length} images,
in ${d.steps} steps (${d.seconds.toFixed(0)} s). Green frames: the analyzer reads the concept's shape, colour and texture; red: it does not.</p>
${d.summary ? `<p class="summary"><b>${esc(d.summary)}</b></p>` : ''}
<h2>Training images</h2><div class="ims">${d.training.map(img).join('')}</div>
<h2>Evaluation</h2>
<table><tr><th>naming</th><th>reconstruction</th><th>editability</th><th>obeys prompt</th><th>images</th></tr>${table}</table>
<p>Reconstruction: images showing the concept (shape, colour and texture). Editability: of the images whose prompt asks for a
position, size or background, those that show the concept and also obey. Obeys prompt: those that obey, concept or not.</p>
<h2>Loss</h2>${lossSvg(d.losses)}
<h2>New sentences</h2>
${grid}
</body></html>
`;
}
