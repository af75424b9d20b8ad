// Analyzer: reads a 64×64 image of the shapes world back into attributes.
//   background  per-channel median of the border, nearest palette colour
//   object      largest blob of pixels far from the background
//   position    bounding-box centre → 3×3 cell;  size  bounding-box extent vs a fitted threshold
//   colour      palette colour whose (colour, texture colour) segment explains the inner pixels
//   texture     plain if the texture-colour fraction barely varies, else softmax regression on
//               its spatial statistics (differences at several offsets)
//   shape       k-nearest-neighbour on the object's coverage map normalised to its bounding box
// The two small classifiers and both thresholds are fitted (lazily, seeded) on oneword's own
// renders, half of them blurred and noisy, so generated images are read as well as pristine ones.
import {
  type Attrs, type Background, type Color, type RGB, type Shape, type Texture,
  BACKGROUNDS, BACKGROUND_RGB, COLORS, COLOR_RGB, SHAPES, TEXTURES, textureRgb, rgbDistance,
} from './attributes.ts';
import { IMAGE_SIZE, type RgbImage, positionOfCell, RADIUS, renderRandom } from './render.ts';
import { degrade } from './degrade.ts';
import { Rng } from './random.ts';

export interface Analysis {
  attrs: Attrs;
  /** Per attribute, in [0, 1]: how clearly the winning value beat the runner-up (1 = unambiguous). */
  confidence: { [K in keyof Attrs]: number };
  /** False when no object could be separated from the background (attrs are then guesses). */
  found: boolean;
  /** Measurements behind the decision, for debugging and reports. */
  details: {
    backgroundRgb: RGB;
    /** Object bounding box centre and size in pixels. */
    center: [number, number];
    extent: [number, number];
    area: number;
    textureFeatures: number[];
  };
}

const N = IMAGE_SIZE;
const clamp01 = (x: number) => (x < 0 ? 0 : x > 1 ? 1 : x);

// ---------------------------------------------------------------- background & object mask

function pixel(img: RgbImage, i: number): RGB {
  return [img.data[i * 3], img.data[i * 3 + 1], img.data[i * 3 + 2]];
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Per-channel median of the border pixels: robust to an object touching the frame and to noise. */
function borderColor(img: RgbImage): RGB {
  const ch: number[][] = [[], [], []];
  for (let i = 0; i < N; i++)
    for (const [x, y] of [[i, 0], [i, N - 1], [0, i], [N - 1, i]] as const) {
      const p = pixel(img, y * N + x);
      for (let c = 0; c < 3; c++) ch[c].push(p[c]);
    }
  return [median(ch[0]), median(ch[1]), median(ch[2])];
}

/** Mask of the largest 8-connected blob of pixels far from the background colour. */
function objectMask(img: RgbImage, bg: RGB): { mask: Uint8Array; area: number } {
  const d = new Float64Array(N * N);
  const border: number[] = [];
  for (let i = 0; i < N * N; i++) {
    d[i] = rgbDistance(pixel(img, i), bg);
    const x = i % N;
    const y = (i / N) | 0;
    if (x === 0 || y === 0 || x === N - 1 || y === N - 1) border.push(d[i]);
  }
  // Threshold well above the background's own spread (noise) but below every object/texture
  // contrast (≥ 90 by construction of the palette).
  const sorted = border.sort((a, b) => a - b);
  const spread = sorted[Math.floor(sorted.length * 0.75)];
  const thr = Math.min(70, Math.max(40, 3 * spread));
  const raw = new Uint8Array(N * N);
  for (let i = 0; i < N * N; i++) raw[i] = d[i] > thr ? 1 : 0;
  // largest component (drops specks of noise in generated images)
  const label = new Int32Array(N * N);
  let best = 0;
  let bestSize = 0;
  let next = 0;
  const stack: number[] = [];
  for (let i = 0; i < N * N; i++) {
    if (!raw[i] || label[i]) continue;
    label[i] = ++next;
    stack.push(i);
    let size = 0;
    while (stack.length) {
      const j = stack.pop()!;
      size++;
      const jx = j % N;
      const jy = (j / N) | 0;
      for (let dy = -1; dy <= 1; dy++)
        for (let dx = -1; dx <= 1; dx++) {
          const x = jx + dx;
          const y = jy + dy;
          if (x < 0 || y < 0 || x >= N || y >= N) continue;
          const k = y * N + x;
          if (raw[k] && !label[k]) {
            label[k] = next;
            stack.push(k);
          }
        }
    }
    if (size > bestSize) {
      bestSize = size;
      best = next;
    }
  }
  const mask = new Uint8Array(N * N);
  for (let i = 0; i < N * N; i++) mask[i] = label[i] === best && best > 0 ? 1 : 0;
  return { mask, area: bestSize };
}

function bbox(mask: Uint8Array): { x0: number; y0: number; x1: number; y1: number } {
  let x0 = N, y0 = N, x1 = -1, y1 = -1;
  for (let i = 0; i < N * N; i++) {
    if (!mask[i]) continue;
    const x = i % N;
    const y = (i / N) | 0;
    if (x < x0) x0 = x;
    if (x > x1) x1 = x;
    if (y < y0) y0 = y;
    if (y > y1) y1 = y;
  }
  // continuous coordinates: pixel x covers [x, x+1)
  return { x0, y0, x1: x1 + 1, y1: y1 + 1 };
}

// ---------------------------------------------------------------- colour unmixing

/**
 * Barycentric weights [wa, wb, wc] of the point of triangle (a, b, c) closest to p
 * (Ericson, Real-Time Collision Detection §5.1.5), written with scalars because it runs
 * for every object pixel.
 */
function closestInTriangle(p: RGB, a: RGB, b: RGB, c: RGB): [number, number, number] {
  const abx = b[0] - a[0], aby = b[1] - a[1], abz = b[2] - a[2];
  const acx = c[0] - a[0], acy = c[1] - a[1], acz = c[2] - a[2];
  const apx = p[0] - a[0], apy = p[1] - a[1], apz = p[2] - a[2];
  const d1 = abx * apx + aby * apy + abz * apz;
  const d2 = acx * apx + acy * apy + acz * apz;
  if (d1 <= 0 && d2 <= 0) return [1, 0, 0];
  const bpx = p[0] - b[0], bpy = p[1] - b[1], bpz = p[2] - b[2];
  const d3 = abx * bpx + aby * bpy + abz * bpz;
  const d4 = acx * bpx + acy * bpy + acz * bpz;
  if (d3 >= 0 && d4 <= d3) return [0, 1, 0];
  const vc = d1 * d4 - d3 * d2;
  if (vc <= 0 && d1 >= 0 && d3 <= 0) {
    const v = d1 / (d1 - d3);
    return [1 - v, v, 0];
  }
  const cpx = p[0] - c[0], cpy = p[1] - c[1], cpz = p[2] - c[2];
  const d5 = abx * cpx + aby * cpy + abz * cpz;
  const d6 = acx * cpx + acy * cpy + acz * cpz;
  if (d6 >= 0 && d5 <= d6) return [0, 0, 1];
  const vb = d5 * d2 - d1 * d6;
  if (vb <= 0 && d2 >= 0 && d6 <= 0) {
    const t = d2 / (d2 - d6);
    return [1 - t, 0, t];
  }
  const va = d3 * d6 - d5 * d4;
  if (va <= 0 && d4 - d3 >= 0 && d5 - d6 >= 0) {
    const t = (d4 - d3) / (d4 - d3 + (d5 - d6));
    return [0, 1 - t, t];
  }
  const den = 1 / (va + vb + vc);
  const v = vb * den;
  const w = vc * den;
  return [1 - v - w, v, w];
}

/** Distance from p to the segment a–b in RGB. */
function segmentDistance(p: RGB, a: RGB, b: RGB): number {
  const ab = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
  const len2 = ab[0] * ab[0] + ab[1] * ab[1] + ab[2] * ab[2];
  const t = len2 > 0 ? clamp01(((p[0] - a[0]) * ab[0] + (p[1] - a[1]) * ab[1] + (p[2] - a[2]) * ab[2]) / len2) : 0;
  return Math.hypot(p[0] - a[0] - t * ab[0], p[1] - a[1] - t * ab[1], p[2] - a[2] - t * ab[2]);
}

/**
 * An object's inner pixels should each be its colour, its texture colour or a mix of the two.
 * The colour whose (colour, texture colour) segment explains them best wins, so texture marks
 * count as evidence for the right colour instead of noise. Edge pixels are left out: there
 * a dark colour on black looks like a blend of a brighter one with the background (brown ≈
 * half-covered orange), which would make such colours ambiguous.
 */
function classifyColor(img: RgbImage, mask: Uint8Array, bgName: Background): { color: Color; scores: number[] } {
  let inner = erode(mask, 2);
  if (count(inner) < 12) inner = erode(mask, 1);
  if (count(inner) < 4) inner = mask;
  const idx: number[] = [];
  for (let i = 0; i < N * N; i++) if (inner[i]) idx.push(i);
  const scores = COLORS.map((c) => {
    const fg = COLOR_RGB[c];
    const mk = textureRgb(c, bgName);
    let s = 0;
    for (const i of idx) {
      const e = segmentDistance(pixel(img, i), fg, mk);
      s += Math.min(e * e, 80 * 80); // truncated: a few odd pixels cannot dominate
    }
    return Math.sqrt(s / Math.max(1, idx.length));
  });
  return { color: COLORS[argmin(scores)], scores };
}

function count(mask: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < mask.length; i++) n += mask[i];
  return n;
}

/** Pixels whose whole (2r+1)² neighbourhood is in the mask (outside the frame counts as in). */
function erode(mask: Uint8Array, r: number): Uint8Array {
  const out = new Uint8Array(N * N);
  for (let i = 0; i < N * N; i++) {
    if (!mask[i]) continue;
    const x = i % N;
    const y = (i / N) | 0;
    let all = 1;
    for (let dy = -r; dy <= r && all; dy++)
      for (let dx = -r; dx <= r; dx++) {
        const xx = x + dx;
        const yy = y + dy;
        if (xx >= 0 && yy >= 0 && xx < N && yy < N && !mask[yy * N + xx]) {
          all = 0;
          break;
        }
      }
    out[i] = all;
  }
  return out;
}

/** Per pixel: how much of it is object (vs background), and how much of the object is texture mark. */
interface Unmixed {
  obj: Float64Array;
  mark: Float64Array;
}

function dilate(mask: Uint8Array, r: number): Uint8Array {
  const out = new Uint8Array(N * N);
  for (let i = 0; i < N * N; i++) {
    if (!mask[i]) continue;
    const x = i % N;
    const y = (i / N) | 0;
    for (let dy = -r; dy <= r; dy++)
      for (let dx = -r; dx <= r; dx++) {
        const xx = x + dx;
        const yy = y + dy;
        if (xx >= 0 && yy >= 0 && xx < N && yy < N) out[yy * N + xx] = 1;
      }
  }
  return out;
}

function unmix(img: RgbImage, region: Uint8Array, bg: RGB, fg: RGB, mk: RGB): Unmixed {
  const obj = new Float64Array(N * N);
  const mark = new Float64Array(N * N);
  for (let i = 0; i < N * N; i++) {
    if (!region[i]) continue;
    const w = closestInTriangle(pixel(img, i), bg, fg, mk);
    obj[i] = w[1] + w[2];
    mark[i] = obj[i] > 1e-6 ? w[2] / obj[i] : 0;
  }
  return { obj, mark };
}

// ---------------------------------------------------------------- texture

// Short offsets see edges/orientation; 5 and 7 px are half a checker period (anti-correlated)
// and one dot spacing (correlated), which tells dots from checkers on small objects.
const OFFSETS: readonly [number, number][] = [
  [1, 0], [0, 1], [1, 1], [1, -1], [2, 0], [0, 2], [2, 2], [2, -2], [3, 3], [3, -3], [4, 0], [0, 4],
  [5, 0], [0, 5], [5, 5], [5, -5], [7, 0], [0, 7], [7, 7], [7, -7],
];

/**
 * Texture features from the mark fraction s (0 = object colour, 1 = texture colour) over
 * pixels that are mostly object, so soft edges do not count as marks:
 * [mean s, std s, per offset the mean squared difference of s between a pixel and its
 * neighbour at that offset, then ratios of the two diagonal directions]. Stripes are constant along the (1,−1) diagonal only; checkers vary
 * along both diagonals; dots are a minority of small blobs; plain has only noise.
 */
function textureFeatures(u: Unmixed, mask: Uint8Array): number[] {
  const ok = new Uint8Array(N * N);
  let sum = 0, sum2 = 0, n = 0;
  for (let i = 0; i < N * N; i++) {
    if (!mask[i] || u.obj[i] < 0.6) continue;
    ok[i] = 1;
    sum += u.mark[i];
    sum2 += u.mark[i] * u.mark[i];
    n++;
  }
  const mean = n ? sum / n : 0;
  const variance = n ? Math.max(0, sum2 / n - mean * mean) : 0;
  const feats = [mean, Math.sqrt(variance)];
  const diffs: number[] = [];
  for (const [dx, dy] of OFFSETS) {
    let acc = 0, m = 0;
    for (let y = Math.max(0, -dy); y < N - Math.max(0, dy); y++)
      for (let x = Math.max(0, -dx); x < N - Math.max(0, dx); x++) {
        const i = y * N + x;
        const j = i + dy * N + dx;
        if (!ok[i] || !ok[j]) continue;
        const e = u.mark[i] - u.mark[j];
        acc += e * e;
        m++;
      }
    diffs.push(m ? acc / m : 0);
  }
  // Raw differences carry the texture's contrast (noise-only plain objects stay near 0); the
  // diagonal ratios its orientation (≈0 for stripes, ≈1 for dots and checkers).
  const ratio = (i: number, j: number) => (diffs[i] + 0.002) / (diffs[j] + 0.002);
  // Variance-normalised differences: the texture's layout regardless of its contrast.
  const norm = diffs.map((d) => d / (2 * variance + 0.005));
  return [...feats, ...diffs, ...norm, ratio(3, 2), ratio(7, 6), ratio(9, 8)];
}

// ---------------------------------------------------------------- shape map

/** Side of the bounding-box-normalised shape map. */
const GRID = 16;

/**
 * Object coverage resampled onto a GRID×GRID map of the object's own bounding box (4×4
 * samples per cell), so the map depends on the outline only, not on size, position or texture.
 */
function shapeMap(obj: Float64Array, box: Box): Float64Array {
  const out = new Float64Array(GRID * GRID);
  const w = box.x1 - box.x0;
  const h = box.y1 - box.y0;
  const S = 4;
  for (let gy = 0; gy < GRID; gy++)
    for (let gx = 0; gx < GRID; gx++) {
      let acc = 0;
      for (let sy = 0; sy < S; sy++)
        for (let sx = 0; sx < S; sx++) {
          const x = Math.floor(box.x0 + ((gx + (sx + 0.5) / S) / GRID) * w);
          const y = Math.floor(box.y0 + ((gy + (sy + 0.5) / S) / GRID) * h);
          acc += obj[Math.min(N - 1, y) * N + Math.min(N - 1, x)];
        }
      out[gy * GRID + gx] = acc / (S * S);
    }
  return out;
}

/** Half the bounding-box extent of each shape in units of its radius (see render.ts). */
const HALF_EXTENT: { readonly [K in Shape]: number } = { circle: 1, square: 0.85, triangle: 1, star: 1, heart: 1, ring: 1 };

// ---------------------------------------------------------------- measurement

type Box = { x0: number; y0: number; x1: number; y1: number };

interface Measured {
  found: boolean;
  bg: RGB;
  bgName: Background;
  bgScores: number[];
  area: number;
  box: Box;
  map: Float64Array;
  color: Color;
  colorScores: number[];
  tex: number[];
  /** Features for plain vs patterned: log std of the mark fraction, log expected noise in it. */
  plain: number[];
}

function nearestBackground(bg: RGB): { name: Background; scores: number[] } {
  const scores = BACKGROUNDS.map((b) => rgbDistance(bg, BACKGROUND_RGB[b]));
  return { name: BACKGROUNDS[argmin(scores)], scores };
}

function measure(img: RgbImage): Measured {
  if (img.width !== N || img.height !== N || img.data.length !== N * N * 3) {
    throw new Error(`analyzer needs a ${N}×${N} RGB image, got ${img.width}×${img.height} with ${img.data.length} bytes`);
  }
  const bg = borderColor(img);
  const { name: bgName, scores: bgScores } = nearestBackground(bg);
  const { mask, area } = objectMask(img, bg);
  const found = area >= 4;
  const box = found ? bbox(mask) : { x0: N / 2 - 1, y0: N / 2 - 1, x1: N / 2 + 1, y1: N / 2 + 1 };
  const { color, scores: colorScores } = classifyColor(img, mask, bgName);
  const fg = COLOR_RGB[color];
  const mk = textureRgb(color, bgName);
  // soft edges reach ~2 px beyond the thresholded mask under blur
  const u = unmix(img, dilate(mask, 2), bg, fg, mk);
  const tex = textureFeatures(u, mask);
  // Noise scatters the mark fraction by about noise / (object–texture colour distance × sine
  // of the angle between the object→texture and background→object directions: near-parallel
  // ones, as for brown on white, amplify it). The colour fit's residual (≈ √2 σ for its two
  // perpendicular dimensions) estimates the noise.
  const noise = colorScores[argmin(colorScores)] / Math.SQRT2;
  const contrast = 1 + rgbDistance(fg, mk) * sine([fg[0] - bg[0], fg[1] - bg[1], fg[2] - bg[2]], [mk[0] - fg[0], mk[1] - fg[1], mk[2] - fg[2]]);
  const plain = [Math.log(Math.max(tex[1], 1e-3)), Math.log(noise / contrast + 1e-3)];
  return { found, bg, bgName, bgScores, area, box, map: shapeMap(u.obj, box), color, colorScores, tex, plain };
}

/** Sine of the angle between two 3-vectors (1 if either is zero). */
function sine(a: number[], b: number[]): number {
  const na = Math.hypot(a[0], a[1], a[2]);
  const nb = Math.hypot(b[0], b[1], b[2]);
  if (na === 0 || nb === 0) return 1;
  const cx = a[1] * b[2] - a[2] * b[1], cy = a[2] * b[0] - a[0] * b[2], cz = a[0] * b[1] - a[1] * b[0];
  return Math.hypot(cx, cy, cz) / (na * nb);
}

function argmin(xs: number[]): number {
  let k = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] < xs[k]) k = i;
  return k;
}

/** 1 when the best score is 0 or far below the runner-up, 0 on a tie. */
function margin(scores: number[]): number {
  const s = scores.slice().sort((a, b) => a - b);
  return s.length < 2 || s[1] <= 0 ? 1 : clamp01((s[1] - s[0]) / s[1]);
}

function estimatedRadius(box: Box, shape: Shape): number {
  return Math.max(box.x1 - box.x0, box.y1 - box.y0) / (2 * HALF_EXTENT[shape]);
}

// ---------------------------------------------------------------- fitted model

export interface AnalyzerModel {
  /** Exemplar shape maps with their SHAPES index. */
  shapeMaps: Float64Array[];
  shapeLabels: number[];
  /** Logistic regression plain (class 0) vs patterned (class 1) on Measured.plain. */
  plainWeights: number[][];
  plainBias: number[];
  /** Softmax regression over standardised texture features for the patterned textures
   * (TEXTURES minus plain): weights[class][feature], bias[class]. */
  textureWeights: number[][];
  textureBias: number[];
  textureMean: number[];
  textureStd: number[];
  /** Estimated-radius threshold between small and large. */
  sizeThreshold: number;
}

const KNN_K = 7;

/** The textures that have a pattern, i.e. a second colour. */
const PATTERNS: readonly Texture[] = TEXTURES.filter((t) => t !== 'plain');

/** Distance-weighted k-NN vote: winning class and its margin over the runner-up in [0, 1]. */
function knn(dist: number[], labels: number[], classes: number): { label: number; confidence: number } {
  const order = dist.map((d, i) => [d, i] as const).sort((a, b) => a[0] - b[0]).slice(0, KNN_K);
  const votes = new Array<number>(classes).fill(0);
  for (const [d, i] of order) votes[labels[i]] += 1 / (d + 1e-3);
  const total = votes.reduce((a, b) => a + b, 0);
  const ranked = votes.map((v, i) => [v, i] as const).sort((a, b) => b[0] - a[0]);
  return { label: ranked[0][1], confidence: total > 0 ? (ranked[0][0] - ranked[1][0]) / total : 0 };
}

function softmax(logits: number[]): number[] {
  const mx = Math.max(...logits);
  const e = logits.map((v) => Math.exp(v - mx));
  const z = e.reduce((x, y) => x + y, 0);
  return e.map((v) => v / z);
}

function logits(x: number[], w: number[][], b: number[]): number[] {
  return w.map((wc, c) => wc.reduce((acc, wi, i) => acc + wi * x[i], b[c]));
}

/** Multinomial logistic regression by full-batch gradient descent (deterministic, tiny data). */
function fitSoftmax(xs: number[][], ys: number[], classes: number, steps = 1500, lr = 0.5, l2reg = 1e-3): { w: number[][]; b: number[] } {
  const dim = xs[0].length;
  const w = Array.from({ length: classes }, () => new Array<number>(dim).fill(0));
  const b = new Array<number>(classes).fill(0);
  for (let step = 0; step < steps; step++) {
    const gw = Array.from({ length: classes }, () => new Array<number>(dim).fill(0));
    const gb = new Array<number>(classes).fill(0);
    for (let n = 0; n < xs.length; n++) {
      const p = softmax(logits(xs[n], w, b));
      for (let c = 0; c < classes; c++) {
        const g = p[c] - (ys[n] === c ? 1 : 0);
        gb[c] += g;
        for (let i = 0; i < dim; i++) gw[c][i] += g * xs[n][i];
      }
    }
    for (let c = 0; c < classes; c++) {
      b[c] -= (lr * gb[c]) / xs.length;
      for (let i = 0; i < dim; i++) w[c][i] -= lr * (gw[c][i] / xs.length + l2reg * w[c][i]);
    }
  }
  return { w, b };
}

function l2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d += (a[i] - b[i]) ** 2;
  return Math.sqrt(d);
}

/**
 * Threshold t on a 1-D feature (x ≥ t ⇒ positive) with the fewest training errors; ties
 * broken by the widest gap, and placed midway between the neighbouring exemplars.
 */
function bestSplit(xs: number[], positive: boolean[]): number {
  const order = xs.map((x, i) => [x, positive[i]] as const).sort((a, b) => a[0] - b[0]);
  const totalPos = positive.filter((p) => p).length;
  let negBelow = 0;
  let posBelow = 0;
  let best = { errors: Infinity, gap: -Infinity, t: 0 };
  for (let k = 0; k <= order.length; k++) {
    if (k > 0) order[k - 1][1] ? posBelow++ : negBelow++;
    // split between order[k-1] and order[k]
    const lo = k > 0 ? order[k - 1][0] : order[0][0] - 1;
    const hi = k < order.length ? order[k][0] : order[order.length - 1][0] + 1;
    const errors = posBelow + (order.length - k - (totalPos - posBelow));
    const gap = hi - lo;
    if (errors < best.errors || (errors === best.errors && gap > best.gap)) best = { errors, gap, t: (lo + hi) / 2 };
  }
  return best.t;
}

export interface FitOptions {
  seed?: number;
  /** Renders per shape (textures are drawn at random in the same renders). */
  perShape?: number;
}

/**
 * Fits the analyzer's small classifiers on fresh renders, half of them blurred and noisy so
 * that they also cover slightly soft images from a generative model.
 */
export function fitAnalyzer(opts: FitOptions = {}): AnalyzerModel {
  const rng = new Rng(opts.seed ?? 20240611);
  const per = opts.perShape ?? 80;
  const shapeMaps: Float64Array[] = [];
  const shapeLabels: number[] = [];
  const raw: number[][] = [];
  const plainFeats: number[][] = [];
  const textureLabels: number[] = [];
  const small: number[] = [];
  const large: number[] = [];
  for (let s = 0; s < SHAPES.length; s++)
    for (let i = 0; i < per; i++) {
      const { attrs, image } = renderRandom(rng, { shape: SHAPES[s], texture: TEXTURES[i % TEXTURES.length] });
      // alternate clean/degraded independently of the texture cycle
      const img = Math.floor(i / TEXTURES.length) % 2 ? degrade(image, { blur: rng.uniform(0.3, 1.6), noise: rng.uniform(0, 12) }, rng) : image;
      const m = measure(img);
      shapeMaps.push(m.map);
      shapeLabels.push(s);
      raw.push(m.tex);
      plainFeats.push(m.plain);
      textureLabels.push(TEXTURES.indexOf(attrs.texture));
      (attrs.size === 'small' ? small : large).push(estimatedRadius(m.box, attrs.shape));
    }
  // Plain vs patterned is one question (is there a second colour?), answered by the contrast
  // feature (relative to the noise level), not the layout features, which noise alone can fill.
  const plainIdx = TEXTURES.indexOf('plain');
  const { w: plainWeights, b: plainBias } = fitSoftmax(plainFeats, textureLabels.map((l) => (l === plainIdx ? 0 : 1)), 2, 3000);
  const pat = raw.filter((_, i) => textureLabels[i] !== plainIdx);
  const patLabels = textureLabels.filter((l) => l !== plainIdx).map((l) => PATTERNS.indexOf(TEXTURES[l]));
  const dim = pat[0].length;
  const textureMean = Array.from({ length: dim }, (_, j) => pat.reduce((a, f) => a + f[j], 0) / pat.length);
  const textureStd = Array.from({ length: dim }, (_, j) => Math.sqrt(pat.reduce((a, f) => a + (f[j] - textureMean[j]) ** 2, 0) / pat.length) + 1e-6);
  const z = pat.map((f) => f.map((v, j) => (v - textureMean[j]) / textureStd[j]));
  const { w: textureWeights, b: textureBias } = fitSoftmax(z, patLabels, PATTERNS.length);
  const sizeThreshold = bestSplit([...small, ...large], [...small.map(() => false), ...large.map(() => true)]);
  return { shapeMaps, shapeLabels, plainWeights, plainBias, textureWeights, textureBias, textureMean, textureStd, sizeThreshold };
}

let defaultModel: AnalyzerModel | undefined;

/** The analyzer's model, fitted once per process on first use (a couple of seconds). */
export function analyzerModel(): AnalyzerModel {
  return (defaultModel ??= fitAnalyzer());
}

/** Reads a 64×64 RGB image back into shapes-world attributes. */
export function analyze(img: RgbImage, model: AnalyzerModel = analyzerModel()): Analysis {
  const m = measure(img);
  const sh = knn(model.shapeMaps.map((t) => l2(m.map, t)), model.shapeLabels, SHAPES.length);
  const shape = SHAPES[sh.label];
  const z = m.tex.map((v, j) => (v - model.textureMean[j]) / model.textureStd[j]);
  const tp = softmax(logits(z, model.textureWeights, model.textureBias));
  // contrast ratio to the plain threshold: confident once it is 2× away on either side
  const [pPlain, pPattern] = softmax(logits(m.plain, model.plainWeights, model.plainBias));
  const texture: Texture = pPlain >= pPattern ? 'plain' : PATTERNS[tp.indexOf(Math.max(...tp))];
  const textureConf = texture === 'plain' ? pPlain : pPattern * Math.max(...tp);
  const cx = (m.box.x0 + m.box.x1) / 2;
  const cy = (m.box.y0 + m.box.y1) / 2;
  const third = N / 3;
  const col = Math.min(2, Math.max(0, Math.floor(cx / third)));
  const row = Math.min(2, Math.max(0, Math.floor(cy / third)));
  // distance to the nearest boundary shared with a neighbouring cell
  const edge = (v: number, k: number) => Math.min(k > 0 ? v - k * third : Infinity, k < 2 ? (k + 1) * third - v : Infinity);
  const r = estimatedRadius(m.box, shape);
  const halfGap = (RADIUS.large - RADIUS.small) / 2;
  const conf = (v: number) => (m.found ? v : 0);
  return {
    attrs: {
      shape,
      color: m.color,
      size: r >= model.sizeThreshold ? 'large' : 'small',
      position: positionOfCell(col, row),
      background: m.bgName,
      texture,
    },
    confidence: {
      shape: conf(sh.confidence),
      color: conf(margin(m.colorScores)),
      size: conf(clamp01(Math.abs(r - model.sizeThreshold) / halfGap)),
      position: conf(clamp01(Math.min(edge(cx, col), edge(cy, row)) / 3)),
      background: margin(m.bgScores), // measurable even without an object
      texture: conf(textureConf),
    },
    found: m.found,
    details: {
      backgroundRgb: m.bg,
      center: [cx, cy],
      extent: [m.box.x1 - m.box.x0, m.box.y1 - m.box.y0],
      area: m.area,
      textureFeatures: m.tex,
    },
  };
}
