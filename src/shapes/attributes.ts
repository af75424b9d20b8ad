// The attribute vocabulary of the shapes world, its palettes, and random/validated attribute sets.
import { Rng } from './random.ts';

export const SHAPES = ['circle', 'square', 'triangle', 'star', 'heart', 'ring'] as const;
export const COLORS = ['red', 'orange', 'yellow', 'green', 'blue', 'purple', 'pink', 'brown'] as const;
export const SIZES = ['small', 'large'] as const;
export const POSITIONS = [
  'top-left', 'top', 'top-right',
  'left', 'center', 'right',
  'bottom-left', 'bottom', 'bottom-right',
] as const;
export const BACKGROUNDS = ['white', 'black', 'gray', 'beige'] as const;
export const TEXTURES = ['plain', 'striped', 'dotted', 'checkered'] as const;

export type Shape = (typeof SHAPES)[number];
export type Color = (typeof COLORS)[number];
export type Size = (typeof SIZES)[number];
export type Position = (typeof POSITIONS)[number];
export type Background = (typeof BACKGROUNDS)[number];
export type Texture = (typeof TEXTURES)[number];

export interface Attrs {
  shape: Shape;
  color: Color;
  size: Size;
  position: Position;
  background: Background;
  texture: Texture;
}

export type AttrName = keyof Attrs;
export const ATTRIBUTE_NAMES: readonly AttrName[] = ['shape', 'color', 'size', 'position', 'background', 'texture'];

export const ATTRIBUTE_VALUES: { readonly [K in AttrName]: readonly Attrs[K][] } = {
  shape: SHAPES,
  color: COLORS,
  size: SIZES,
  position: POSITIONS,
  background: BACKGROUNDS,
  texture: TEXTURES,
};

export type RGB = readonly [number, number, number];

// Object colours are chosen far apart in RGB (min pairwise distance ≈ 90) and far from every
// background, so both a model and the analyzer can tell them apart; brown is kept darker and
// bluer than "dark orange" because textures use a darkened shade of orange.
export const COLOR_RGB: { readonly [K in Color]: RGB } = {
  red: [220, 30, 35],
  orange: [250, 135, 10],
  yellow: [245, 215, 25],
  green: [40, 165, 60],
  blue: [40, 90, 225],
  purple: [140, 55, 195],
  pink: [250, 125, 190],
  brown: [115, 65, 30],
};

export const BACKGROUND_RGB: { readonly [K in Background]: RGB } = {
  white: [255, 255, 255],
  black: [0, 0, 0],
  gray: [128, 128, 128],
  beige: [235, 222, 195],
};

/**
 * The texture's second colour: a darker shade or a lighter tint of the object colour,
 * whichever stands out more from the background (shade on white/beige, tint on black, either
 * on gray). Always a variant of the object colour, so the colour stays identifiable; and never
 * on the object → background line, so the analyzer can tell texture marks from soft edges.
 */
export function textureRgb(color: Color, background: Background): RGB {
  const c = COLOR_RGB[color];
  const bg = BACKGROUND_RGB[background];
  const shade = c.map((v) => Math.round(v * 0.4)) as unknown as RGB;
  const tint = c.map((v) => Math.round(v + (255 - v) * 0.55)) as unknown as RGB;
  return rgbDistance(shade, bg) >= rgbDistance(tint, bg) ? shade : tint;
}

export function rgbDistance(a: RGB, b: RGB): number {
  return Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
}

/** Minimum RGB distance an object colour (and its texture colour) must keep from the background. */
export const MIN_CONTRAST = 90;

/** Whether an object of this colour reads clearly on this background. */
export function compatible(color: Color, background: Background): boolean {
  const bg = BACKGROUND_RGB[background];
  return rgbDistance(COLOR_RGB[color], bg) >= MIN_CONTRAST && rgbDistance(textureRgb(color, background), bg) >= MIN_CONTRAST;
}

/**
 * Uniformly random attributes, with any `fixed` ones kept. An unfixed background is
 * resampled until it contrasts with the object colour.
 */
export function randomAttributes(rng: Rng, fixed: Partial<Attrs> = {}): Attrs {
  const a: Attrs = {
    shape: fixed.shape ?? rng.pick(SHAPES),
    color: fixed.color ?? rng.pick(COLORS),
    size: fixed.size ?? rng.pick(SIZES),
    position: fixed.position ?? rng.pick(POSITIONS),
    background: fixed.background ?? rng.pick(BACKGROUNDS),
    texture: fixed.texture ?? rng.pick(TEXTURES),
  };
  if (fixed.background === undefined) {
    for (let i = 0; i < 32 && !compatible(a.color, a.background); i++) a.background = rng.pick(BACKGROUNDS);
  }
  return a;
}

/** Accepts "top left", "Top_Left", "top-left"… for "top-left"; and "grey" / "centre". */
function normalizeValue(v: string): string {
  const s = v.trim().toLowerCase().replace(/[\s_]+/g, '-');
  const aliases: Record<string, string> = { grey: 'gray', centre: 'center', middle: 'center', 'middle-left': 'left',
    'middle-right': 'right', 'top-center': 'top', 'bottom-center': 'bottom', 'top-middle': 'top', 'bottom-middle': 'bottom',
    stripes: 'striped', dots: 'dotted', checkers: 'checkered', checked: 'checkered', big: 'large' };
  return aliases[s] ?? s;
}

/**
 * Validates a partial attribute spec (e.g. parsed from JSON); throws an Error listing the
 * valid names or values for anything unknown. Values are normalised ("top left" → "top-left").
 */
export function parseSpec(spec: unknown): Partial<Attrs> {
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) {
    throw new Error(`spec must be a JSON object such as {"shape":"star","color":"orange"}; valid attributes: ${ATTRIBUTE_NAMES.join(', ')}`);
  }
  const out: Partial<Record<AttrName, string>> = {};
  for (const [key, raw] of Object.entries(spec as Record<string, unknown>)) {
    const name = key.trim().toLowerCase() === 'colour' ? 'color' : key.trim().toLowerCase();
    if (!(ATTRIBUTE_NAMES as readonly string[]).includes(name)) {
      throw new Error(`unknown attribute "${key}"; valid attributes: ${ATTRIBUTE_NAMES.join(', ')}`);
    }
    const valid = ATTRIBUTE_VALUES[name as AttrName] as readonly string[];
    if (typeof raw !== 'string') throw new Error(`attribute "${name}" must be a string, one of: ${valid.join(', ')}`);
    const v = normalizeValue(raw);
    if (!valid.includes(v)) throw new Error(`unknown ${name} "${raw}"; valid ${name} values: ${valid.join(', ')}`);
    out[name as AttrName] = v;
  }
  return out as Partial<Attrs>;
}
