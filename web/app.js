// oneword's page: Train, Generate and Gallery over the server's HTTP API (and nothing else).
import { drawLossChart } from './chart.js';

const $ = (sel, root = document) => root.querySelector(sel);
const h = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  e.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return e;
};

const app = {
  token: localStorage.getItem('oneword-token'),
  models: [],
  samplers: [],
  jobs: [],
  images: [],
  job: null,
  log: { step: [], loss: [] },
  events: null,
};

// ------------------------------------------------------------------ API

function askToken() {
  const dialog = $('#token-dialog');
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      app.token = $('#token-input').value;
      localStorage.setItem('oneword-token', app.token);
      // Images, downloads and the event stream cannot send a header; they send this cookie.
      document.cookie = `oneword_token=${encodeURIComponent(app.token)}; path=/; SameSite=Strict`;
      resolve();
    }, { once: true });
    dialog.showModal();
  });
}

async function api(path, opts = {}) {
  const headers = { ...(opts.headers ?? {}) };
  if (app.token) headers.authorization = `Bearer ${app.token}`;
  const r = await fetch(path, { ...opts, headers });
  if (r.status === 401) {
    await askToken();
    return api(path, opts);
  }
  const body = (r.headers.get('content-type') ?? '').includes('json') ? await r.json() : null;
  if (!r.ok) throw new Error(body?.error ?? `${r.status} ${r.statusText}`);
  return body;
}

const fmtTime = (s) => {
  if (!Number.isFinite(s)) return '?';
  const m = Math.floor(s / 60);
  const sec = Math.round(s - m * 60);
  return m ? `${m}m${String(sec).padStart(2, '0')}s` : `${sec}s`;
};
const fmtLoss = (v) => (v === null || v === undefined ? '–' : Number(v).toFixed(4));
const modelOf = (id) => app.models.find((m) => m.id === id);
// A word fits a model when both text encoders' widths match (SDXL words carry two).
const sameWidths = (a, b) => Boolean(a && b && a.hidden_size === b.hidden_size && a.hidden_size_2 === b.hidden_size_2);

// ------------------------------------------------------------------ tabs

function showTab() {
  const tab = (location.hash || '#train').slice(1);
  for (const s of document.querySelectorAll('.tab')) s.hidden = s.id !== tab;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.tab === tab);
  if (tab === 'gallery') void renderGallery();
  if (tab === 'generate') renderWords();
}

// ------------------------------------------------------------------ train form

function renderThumbs() {
  const thumbs = $('#thumbs');
  thumbs.replaceChildren(...app.images.map((img, i) => h('div', { class: 'thumb', title: img.file.name },
    h('img', { src: img.url, alt: img.file.name }),
    h('button', { type: 'button', 'aria-label': `remove ${img.file.name}`, onclick: (e) => { e.stopPropagation(); URL.revokeObjectURL(img.url); app.images.splice(i, 1); renderThumbs(); } }, '×'))));
  const crop = $('[name="center-crop"]').checked;
  thumbs.classList.toggle('crop', crop);
  const n = app.images.length;
  $('#crop-hint').textContent = n
    ? `${n} image${n > 1 ? 's' : ''}, shown as the trainer sees them: ${crop ? 'cropped to a centred square' : 'the whole image squeezed to a square (tick Center crop to crop instead)'}.`
    : '';
}

function addImages(files) {
  for (const file of files) {
    if (!/\.(png|jpe?g|webp)$/i.test(file.name)) continue;
    app.images.push({ file, url: URL.createObjectURL(file) });
  }
  renderThumbs();
}

function setupDrop() {
  const drop = $('#drop');
  const input = $('#images-input');
  drop.addEventListener('click', () => input.click());
  drop.addEventListener('keydown', (e) => (e.key === 'Enter' || e.key === ' ') && input.click());
  input.addEventListener('change', () => { addImages(input.files); input.value = ''; });
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    addImages(e.dataTransfer.files);
  });
  $('[name="center-crop"]').addEventListener('change', renderThumbs);
}

async function startJob(e) {
  e.preventDefault();
  $('#train-error').textContent = '';
  const form = e.target;
  const data = new FormData();
  for (const el of form.elements) {
    if (!el.name) continue;
    if (el.type === 'checkbox') { if (el.checked) data.append(el.name, 'true'); continue; }
    if (el.value.trim() !== '') data.append(el.name, el.value);
  }
  if (app.images.length === 0) { $('#train-error').textContent = 'Add 3–5 images of the concept first.'; return; }
  for (const img of app.images) data.append('images', img.file, img.file.name);
  $('#start').disabled = true;
  try {
    const { id } = await api('/api/jobs', { method: 'POST', body: data });
    await openJob(id);
  } catch (err) {
    $('#train-error').textContent = err.message;
  } finally {
    $('#start').disabled = false;
  }
}

// ------------------------------------------------------------------ the job in view

async function openJob(id) {
  app.events?.close();
  app.job = await api(`/api/jobs/${id}`);
  localStorage.setItem('oneword-job', id);
  const log = await api(`/api/jobs/${id}/log`);
  app.log = { step: log.step, loss: log.loss };
  renderJob();
  drawChart();
  const es = new EventSource(`/api/jobs/${id}/events`);
  app.events = es;
  es.addEventListener('state', (m) => {
    const view = JSON.parse(m.data);
    if (view.state === 'deleted') { es.close(); app.job = null; renderJob(); return; }
    // Back to the last checkpoint (a stop, a restart): the log after it is gone.
    if (view.step < (app.log.step.at(-1) ?? 0)) void api(`/api/jobs/${id}/log`).then((l) => { app.log = { step: l.step, loss: l.loss }; drawChart(); });
    app.job = view;
    renderJob();
    void refreshJobs();
  });
  es.addEventListener('step', (m) => {
    const d = JSON.parse(m.data);
    Object.assign(app.job, { step: d.step, it_per_s: d.it_per_s, eta_s: d.eta_s });
    renderStatus();
  });
  es.addEventListener('loss', (m) => {
    const d = JSON.parse(m.data);
    app.job.loss = d.smoothed;
    app.log.step.push(d.step);
    app.log.loss.push(d.loss);
    scheduleChart();
  });
  es.addEventListener('preview', (m) => {
    const d = JSON.parse(m.data);
    if (!app.job.previews.some((p) => p.step === d.step)) app.job.previews.push(d);
    // A step is saved before its preview is drawn: give its row the picture now.
    const saved = app.job.checkpoints.find((c) => c.step === d.step);
    if (saved) saved.preview = d.url;
    renderJob();
  });
  es.addEventListener('checkpoint', (m) => {
    app.job = JSON.parse(m.data).view;
    renderJob();
  });
}

let chartPending = false;
function scheduleChart() {
  if (chartPending) return;
  chartPending = true;
  requestAnimationFrame(() => { chartPending = false; drawChart(); });
}
function drawChart() {
  drawLossChart($('#loss-chart'), app.log.step, app.log.loss, { totalSteps: app.job?.steps });
}

function renderStatus() {
  const j = app.job;
  const status = $('#job-status');
  if (!j) { status.replaceChildren(); return; }
  const parts = [`step ${j.step} / ${j.steps}`, `loss ${fmtLoss(j.loss)}`];
  if (j.state === 'running' && j.it_per_s) parts.push(j.it_per_s >= 1 ? `${j.it_per_s.toFixed(2)} it/s` : `${(1 / j.it_per_s).toFixed(2)} s/it`, `ETA ${fmtTime(j.eta_s)}`);
  if (j.state === 'queued' && j.queue_position) parts.push(`${j.queue_position} ahead in the queue`);
  status.replaceChildren(h('span', { class: `badge ${j.state}`, id: 'job-state' }, j.state), ' ', parts.join(' · '));
  $('#job-bar').style.width = `${(100 * j.step) / j.steps}%`;
}

function renderPreviews() {
  const j = app.job;
  $('#previews').replaceChildren(...(j?.previews ?? []).map((p) => h('figure', {}, h('img', { src: p.url, alt: `preview at step ${p.step}` }), h('figcaption', {}, `step ${p.step}`))));
}

function renderJob() {
  const j = app.job;
  $('#job-title').textContent = j ? `${j.token} — ${j.model}` : 'No job yet';
  renderStatus();
  $('#stop').hidden = !j || !['running', 'queued'].includes(j.state);
  $('#resume').hidden = !j || !['stopped', 'failed'].includes(j.state);
  $('#job-note').textContent = j ? (j.error ?? j.note ?? '') : '';
  $('#job-note').className = j?.error ? 'error' : 'muted';
  renderPreviews();
  const rows = j?.checkpoints ?? [];
  const losses = rows.map((c) => c.loss ?? Infinity);
  const best = rows.length > 1 ? losses.indexOf(Math.min(...losses)) : -1;
  $('#saved tbody').replaceChildren(...rows.map((c, i) => h('tr', { class: i === best ? 'best' : null },
    h('td', {}, `${c.step}${c.final ? ' (final)' : ''}`),
    h('td', {}, c.preview ? h('img', { src: c.preview, alt: `preview at step ${c.step}` }) : '–'),
    h('td', {}, fmtLoss(c.loss)),
    h('td', {},
      c.diffusers && h('a', { href: c.diffusers, download: '' }, 'diffusers'), ' ',
      c.a1111 && h('a', { href: c.a1111, download: '' }, 'A1111'), ' ',
      h('a', { href: '#generate', onclick: () => { app.pick = `${j.id}@${c.step}`; } }, 'generate with it')))));
  drawChart();
}

async function refreshJobs() {
  const { jobs, queue } = await api('/api/jobs');
  app.jobs = jobs;
  const byId = new Map(jobs.map((j) => [j.id, j]));
  $('#queue').replaceChildren(...queue.map((id) => {
    const j = byId.get(id);
    return h('li', {}, h('a', { onclick: () => openJob(id) }, j.token), ` ${j.state}, step ${j.step}/${j.steps}`);
  }));
  $('#queue-empty').hidden = queue.length > 0;
  const running = jobs.find((j) => j.state === 'running');
  const waiting = jobs.filter((j) => j.state === 'queued').length;
  $('#queue-status').textContent = running ? `training ${running.token}: ${running.step}/${running.steps}${waiting ? ` · ${waiting} queued` : ''}` : waiting ? `${waiting} queued` : 'idle';
}

// ------------------------------------------------------------------ generate

function renderWords() {
  const model = modelOf($('#gen-model').value);
  const box = $('#gen-words');
  const checked = new Set([...box.querySelectorAll('input:checked')].map((i) => i.value));
  const entries = [];
  for (const j of app.jobs) {
    if (!j.checkpoints.length || !sameWidths(modelOf(j.model), model)) continue;
    entries.push({ value: j.id, label: `${j.token} (${j.id}, step ${j.checkpoints.at(-1).step})` });
  }
  if (app.pick) {
    // A step picked in the saved-steps table: the job's own entry when it is the latest one.
    const [id, step] = app.pick.split('@');
    const j = app.jobs.find((x) => x.id === id);
    const latest = j?.checkpoints.at(-1)?.step === Number(step);
    if (j && !latest && !entries.some((e) => e.value === app.pick)) entries.unshift({ value: app.pick, label: `${j.token} (${id}, step ${step})` });
    checked.add(latest ? id : app.pick);
    app.pick = null;
  }
  box.replaceChildren(...(entries.length ? entries.map((e) => h('label', {}, h('input', { type: 'checkbox', value: e.value, checked: checked.has(e.value) }), e.label)) : [h('span', { class: 'muted' }, 'No learned words for this model yet.')]));
}

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

async function generate(e) {
  e.preventDefault();
  const f = e.target;
  $('#gen-error').textContent = '';
  const num = (name) => (f[name].value.trim() === '' ? undefined : Number(f[name].value));
  const embeddings = [...$('#gen-words').querySelectorAll('input:checked')].map((i) => i.value);
  for (const file of $('#gen-files').files) embeddings.push({ name: file.name, data: base64(await file.arrayBuffer()) });
  const body = {
    model: f.model.value, prompt: f.prompt.value, negative: f.negative.value, sampler: f.sampler.value,
    steps: num('steps'), cfg: num('cfg'), seed: num('seed'), width: num('width'), height: num('height'), count: num('count'), embeddings,
  };
  const button = $('#generate-button');
  button.disabled = true;
  const t0 = performance.now();
  const tick = setInterval(() => { $('#gen-status').textContent = `generating… ${fmtTime((performance.now() - t0) / 1000)}`; }, 500);
  try {
    const r = await api('/api/generate', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    $('#gen-results').replaceChildren(...r.images.map((b64, i) => {
      const src = `data:image/png;base64,${b64}`;
      const name = r.files[i].split('/').pop();
      return h('figure', { class: 'result' }, h('img', { src, alt: body.prompt, class: 'generated' }), h('pre', {}, r.infotexts[i]), h('a', { href: src, download: name }, `Download ${name}`));
    }));
    $('#gen-status').textContent = `${r.images.length} image${r.images.length > 1 ? 's' : ''} in ${fmtTime((performance.now() - t0) / 1000)}`;
  } catch (err) {
    $('#gen-error').textContent = err.message;
    $('#gen-status').textContent = '';
  } finally {
    clearInterval(tick);
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ gallery

async function renderGallery() {
  await refreshJobs();
  const cards = await Promise.all([...app.jobs].reverse().map(async (j) => {
    const log = await api(`/api/jobs/${j.id}/log`);
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('viewBox', '0 0 140 60');
    svg.setAttribute('aria-label', `loss curve of ${j.token}`);
    drawLossChart(svg, log.step, log.loss, { axes: false, totalSteps: j.steps });
    const last = j.checkpoints.at(-1);
    const picture = j.previews.at(-1)?.url ?? j.images[0];
    return h('article', { class: 'card', 'data-job': j.id },
      h('h3', {}, j.token),
      h('div', { class: 'muted' }, `${j.model} · ${j.state} · ${j.step}/${j.steps} steps · loss ${fmtLoss(j.loss)}`),
      h('div', { class: 'row' }, h('img', { src: picture, alt: `${j.token} preview` }), svg),
      h('div', { class: 'links' },
        h('a', { href: '#train', onclick: () => openJob(j.id) }, 'open'),
        last?.diffusers && h('a', { href: last.diffusers, download: '' }, 'diffusers'),
        last?.a1111 && h('a', { href: last.a1111, download: '' }, 'A1111'),
        h('button', { type: 'button', class: 'secondary', disabled: j.state === 'running', onclick: async () => {
          if (!confirm(`Delete ${j.token} (${j.id}) and all its files?`)) return;
          await api(`/api/jobs/${j.id}`, { method: 'DELETE' });
          if (app.job?.id === j.id) { app.events?.close(); app.job = null; renderJob(); }
          void renderGallery();
        } }, 'delete')));
  }));
  $('#cards').replaceChildren(...(cards.length ? cards : [h('p', { class: 'muted' }, 'No words yet: train one on the Train tab.')]));
}

// ------------------------------------------------------------------ start

function fillModels() {
  for (const sel of [$('#train-model'), $('#gen-model')]) {
    sel.replaceChildren(...app.models.map((m) => h('option', { value: m.id }, `${m.name}${m.id === 'shapes' ? ' (bundled)' : ''} — ${m.family}, ${m.resolution}px`)));
  }
  $('#gen-sampler').replaceChildren(...app.samplers.map((s) => h('option', { value: s }, s)));
  const onTrainModel = () => { $('[name="resolution"]').value = modelOf($('#train-model').value)?.resolution ?? ''; };
  const onGenModel = () => {
    const m = modelOf($('#gen-model').value);
    $('#gen-form').width.value = m?.resolution ?? '';
    $('#gen-form').height.value = m?.resolution ?? '';
    $('#gen-sampler').value = m?.sampler ?? app.samplers[0];
    renderWords();
  };
  $('#train-model').addEventListener('change', onTrainModel);
  $('#gen-model').addEventListener('change', onGenModel);
  onTrainModel();
  onGenModel();
}

async function main() {
  const server = await api('/api/server');
  app.samplers = server.samplers;
  app.models = await api('/api/models');
  fillModels();
  setupDrop();
  $('#train-form').addEventListener('submit', startJob);
  $('#gen-form').addEventListener('submit', generate);
  $('#stop').addEventListener('click', async () => { app.job = await api(`/api/jobs/${app.job.id}/stop`, { method: 'POST' }); renderJob(); });
  $('#resume').addEventListener('click', async () => { app.job = await api(`/api/jobs/${app.job.id}/resume`, { method: 'POST' }); renderJob(); });
  window.addEventListener('hashchange', showTab);
  await refreshJobs();
  const last = localStorage.getItem('oneword-job');
  const open = app.jobs.find((j) => j.id === last) ?? app.jobs.find((j) => j.state === 'running') ?? app.jobs.at(-1);
  if (open) await openJob(open.id);
  else { renderJob(); drawChart(); }
  showTab();
  setInterval(() => void refreshJobs().catch(() => {}), 5000);
  document.body.dataset.ready = 'true';
}

void main().catch((e) => { document.body.prepend(h('p', { class: 'error' }, `oneword: ${e.message}`)); });
