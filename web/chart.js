// Loss charts as plain SVG: the loss of every step and a smoothed curve over it.
const NS = 'http://www.w3.org/2000/svg';

function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

/** An exponential moving average with TensorBoard's bias correction, so short runs are not flattened at their start. */
export function smooth(values, weight = values.length < 200 ? 0.8 : 0.97) {
  const out = [];
  let last = 0;
  let debias = 0;
  for (const v of values) {
    last = last * weight + (1 - weight) * v;
    debias = debias * weight + (1 - weight);
    out.push(last / debias);
  }
  return out;
}

/** A tick label with as many decimals as the axis span needs to tell its ticks apart. */
function fmt(v, span) {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e4 || a < 1e-3)) return v.toExponential(2);
  return v.toFixed(Math.max(0, Math.min(6, Math.ceil(-Math.log10(span)) + 1)));
}

/**
 * Draws steps/losses into `svg` (its viewBox sets the size). `axes: false` draws a bare
 * sparkline (the gallery's thumbnails).
 */
export function drawLossChart(svg, steps, losses, { axes = true, totalSteps } = {}) {
  svg.replaceChildren();
  const [, , W, H] = svg.getAttribute('viewBox').split(/\s+/).map(Number);
  const pad = axes ? { l: 48, r: 10, t: 10, b: 24 } : { l: 3, r: 3, t: 3, b: 3 };
  const finite = losses.filter(Number.isFinite);
  if (finite.length === 0) {
    if (axes) svg.append(el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'the loss appears here once training starts'));
    return;
  }
  const lo = Math.min(...finite);
  const hi = Math.max(...finite);
  const span = hi - lo || Math.abs(hi) || 1;
  const x0 = steps[0] > 1 ? 0 : 1;
  const x1 = Math.max(totalSteps ?? 0, steps.at(-1), x0 + 1);
  const x = (s) => pad.l + ((s - x0) / (x1 - x0)) * (W - pad.l - pad.r);
  const y = (v) => pad.t + (1 - (v - lo) / span) * (H - pad.t - pad.b);
  const path = (vals) => vals.map((v, i) => `${i ? 'L' : 'M'}${x(steps[i]).toFixed(1)},${y(Number.isFinite(v) ? v : hi).toFixed(1)}`).join('');
  if (axes) {
    svg.append(el('line', { class: 'axis', x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b }));
    svg.append(el('line', { class: 'axis', x1: pad.l, y1: pad.t, x2: pad.l, y2: H - pad.b }));
    for (const v of [lo, lo + span / 2, hi]) svg.append(el('text', { x: pad.l - 4, y: y(v) + 4, 'text-anchor': 'end' }, fmt(v, span)));
    for (const s of [x0, Math.round((x0 + x1) / 2), x1]) svg.append(el('text', { x: x(s), y: H - 6, 'text-anchor': 'middle' }, String(s)));
    svg.append(el('text', { x: W - pad.r, y: pad.t + 10, 'text-anchor': 'end' }, 'loss'));
  }
  svg.append(el('path', { class: 'raw', d: path(losses) }));
  svg.append(el('path', { class: 'smooth', d: path(smooth(losses)) }));
}
