// Deterministic renderer: one anti-aliased object on a plain background, 64×64 RGB (HWC, uint8).
// Shapes are analytic membership functions sampled 4×4 times per pixel, so there is no canvas
// dependency and the output is bit-identical everywhere.
import { type Attrs, type Position, type Shape, type Size, type Texture, BACKGROUND_RGB, COLOR_RGB, textureRgb, randomAttributes } from './attributes.ts';
import { Rng } from './random.ts';

/**
 * 64 rather than 32: at 32×32 a small object would be ~10 px across, too few pixels for a
 * texture (periods of 7–10 px here) to be visible at all, let alone learnable.
 */
export const IMAGE_SIZE = 64;

export interface RgbImage {
  width: number;
  height: number;
  /** HWC, 3 channels, row-major from the top-left pixel. */
  data: Uint8Array;
}

/** Half-extent of the object's bounding box in pixels (the box is ~2r wide; squares 1.7r). */
export const RADIUS: { readonly [K in Size]: number } = { small: 10, large: 16 };
/** Centre coordinates of the 3 grid rows/columns; large objects sit further in so they stay in frame. */
const GRID: { readonly [K in Size]: readonly [number, number, number] } = { small: [12, 32, 52], large: [18, 32, 46] };
/** Maximum position jitter in pixels along each axis. */
export const MAX_JITTER = 2;

const POSITION_CELL: { readonly [K in Position]: readonly [col: number, row: number] } = {
  'top-left': [0, 0], top: [1, 0], 'top-right': [2, 0],
  left: [0, 1], center: [1, 1], right: [2, 1],
  'bottom-left': [0, 2], bottom: [1, 2], 'bottom-right': [2, 2],
};

/** Position name of a 3×3 grid cell. */
export function positionOfCell(col: number, row: number): Position {
  for (const [name, [c, r]] of Object.entries(POSITION_CELL)) if (c === col && r === row) return name as Position;
  throw new RangeError(`no grid cell (${col}, ${row})`);
}

export function cellOfPosition(p: Position): readonly [number, number] {
  return POSITION_CELL[p];
}

export interface Layout {
  cx: number;
  cy: number;
  r: number;
}

export function layout(attrs: Pick<Attrs, 'size' | 'position'>, jitter: readonly [number, number] = [0, 0]): Layout {
  const [col, row] = POSITION_CELL[attrs.position];
  const g = GRID[attrs.size];
  return { cx: g[col] + jitter[0], cy: g[row] + jitter[1], r: RADIUS[attrs.size] };
}

// --- shapes, in object coordinates: u right, v down, bounding box within [-1, 1]² ---

function polygon(points: [number, number][]): (u: number, v: number) => boolean {
  return (u, v) => {
    let inside = false;
    for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
      const [xi, yi] = points[i];
      const [xj, yj] = points[j];
      if (yi > v !== yj > v && u < ((xj - xi) * (v - yi)) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  };
}

function starPoints(): [number, number][] {
  // 5 points, one up; inner radius 0.5 (chunkier than a geometric star) so arms of a small
  // star are still ~5 px wide and can show a texture. Scaled and shifted to fill [-1, 1]².
  const pts: [number, number][] = [];
  for (let k = 0; k < 10; k++) {
    const a = -Math.PI / 2 + (k * Math.PI) / 5;
    const rad = k % 2 === 0 ? 1 : 0.5;
    pts.push([rad * Math.cos(a), rad * Math.sin(a)]);
  }
  const xmax = Math.cos(Math.PI / 2 - (2 * Math.PI) / 5); // 0.951
  const ymid = (-1 + Math.sin(Math.PI / 2 - Math.PI / 5)) / 2; // centre of [-1, 0.809]
  return pts.map(([x, y]) => [x / xmax, (y - ymid) / xmax]);
}

const inStar = polygon(starPoints());
const inTriangle = polygon([[0, -0.9], [1, 0.9], [-1, 0.9]]);

const SHAPE_FN: { readonly [K in Shape]: (u: number, v: number) => boolean } = {
  circle: (u, v) => u * u + v * v <= 1,
  square: (u, v) => Math.abs(u) <= 0.85 && Math.abs(v) <= 0.85,
  triangle: inTriangle,
  star: inStar,
  heart: (u, v) => {
    // (x²+y²−1)³ − x²y³ ≤ 0 (y up) spans x ∈ ±1.139, y ∈ [−1, 1.236]; rescale to fit [-1, 1]².
    const x = u * 1.139;
    const y = -v * 1.139 + 0.118;
    const q = x * x + y * y - 1;
    return q * q * q - x * x * y * y * y <= 0;
  },
  ring: (u, v) => {
    const d = u * u + v * v;
    return d <= 1 && d >= 0.25;
  },
};

export function insideShape(shape: Shape, u: number, v: number): boolean {
  return SHAPE_FN[shape](u, v);
}

// --- textures, in pixel offsets from the object centre (fixed pixel scale for both sizes, so
// a texture looks the same whatever the object's size or position) ---

/** Texture period parameters in pixels. */
export const STRIPE_PERIOD = 8;
export const CHECKER_CELL = 5;
export const DOT_SPACING = 7;
export const DOT_RADIUS = 2;

const TEXTURE_FN: { readonly [K in Texture]: (x: number, y: number) => boolean } = {
  plain: () => false,
  // diagonal stripes running bottom-left → top-right, 4 px on / 4 px off
  striped: (x, y) => {
    const t = (x + y) / Math.SQRT2 / STRIPE_PERIOD + 0.25;
    return t - Math.floor(t) < 0.5;
  },
  checkered: (x, y) => (Math.floor(x / CHECKER_CELL + 0.5) + Math.floor(y / CHECKER_CELL + 0.5)) % 2 !== 0,
  // square grid of dots with one at the object centre, so even a small object shows a dot
  dotted: (x, y) => {
    const dx = x - Math.round(x / DOT_SPACING) * DOT_SPACING;
    const dy = y - Math.round(y / DOT_SPACING) * DOT_SPACING;
    return dx * dx + dy * dy <= DOT_RADIUS * DOT_RADIUS;
  },
};

/** Whether a point (pixel offsets from the object centre) is a texture mark. */
export function textureMark(texture: Texture, x: number, y: number): boolean {
  return TEXTURE_FN[texture](x, y);
}

export interface RenderOptions {
  /** Centre offset in pixels; default none, or drawn from `rng` in ±MAX_JITTER. */
  jitter?: readonly [number, number];
  rng?: Rng;
  /** Samples per pixel along each axis (default 4 → 16 samples). */
  supersample?: number;
}

/** Renders `attrs` at IMAGE_SIZE×IMAGE_SIZE. Same attrs and jitter → identical bytes. */
export function render(attrs: Attrs, opts: RenderOptions | Rng = {}): RgbImage {
  const o: RenderOptions = opts instanceof Rng ? { rng: opts } : opts;
  const jitter = o.jitter ?? (o.rng ? [o.rng.uniform(-MAX_JITTER, MAX_JITTER), o.rng.uniform(-MAX_JITTER, MAX_JITTER)] as const : [0, 0] as const);
  const ss = o.supersample ?? 4;
  const { cx, cy, r } = layout(attrs, jitter);
  const W = IMAGE_SIZE;
  const H = IMAGE_SIZE;
  const bg = BACKGROUND_RGB[attrs.background];
  const fg = COLOR_RGB[attrs.color];
  const mk = textureRgb(attrs.color, attrs.background);
  const inside = SHAPE_FN[attrs.shape];
  const mark = TEXTURE_FN[attrs.texture];
  const data = new Uint8Array(W * H * 3);
  const x0 = Math.max(0, Math.floor(cx - r - 1));
  const x1 = Math.min(W - 1, Math.ceil(cx + r + 1));
  const y0 = Math.max(0, Math.floor(cy - r - 1));
  const y1 = Math.min(H - 1, Math.ceil(cy + r + 1));
  const n = ss * ss;
  for (let py = 0; py < H; py++) {
    for (let px = 0; px < W; px++) {
      let nf = 0;
      let nm = 0;
      if (px >= x0 && px <= x1 && py >= y0 && py <= y1) {
        for (let sy = 0; sy < ss; sy++) {
          const y = py + (sy + 0.5) / ss - cy;
          for (let sx = 0; sx < ss; sx++) {
            const x = px + (sx + 0.5) / ss - cx;
            if (!inside(x / r, y / r)) continue;
            if (mark(x, y)) nm++;
            else nf++;
          }
        }
      }
      const nb = n - nf - nm;
      const k = (py * W + px) * 3;
      for (let c = 0; c < 3; c++) data[k + c] = Math.round((nb * bg[c] + nf * fg[c] + nm * mk[c]) / n);
    }
  }
  return { width: W, height: H, data };
}

export interface Sample {
  attrs: Attrs;
  image: RgbImage;
}

/** Random attributes (keeping `fixed`), random jitter, rendered. */
export function renderRandom(rng: Rng, fixed: Partial<Attrs> = {}): Sample {
  const attrs = randomAttributes(rng, fixed);
  return { attrs, image: render(attrs, { rng }) };
}
