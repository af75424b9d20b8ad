// Captions for shapes-world images. Attributes are randomly left out so the model learns to
// fill them in. Plain English never names a texture; training captions may name it by a
// made-up word (TEXTURE_NONCE_WORDS), so the model can draw a texture on request while no
// English description can ask for it — the situation of a real user's concept in Stable
// Diffusion, and what textual inversion is then asked to find.
import { ATTRIBUTE_VALUES, type Attrs, type Background, type Position, type Texture } from './attributes.ts';
import type { Rng } from './random.ts';

export interface CaptionOptions {
  /** Probability of leaving out each of size, colour, position and background (default 0.3). */
  dropProb?: number;
  /** Probability of replacing the shape noun by "shape" (default 0.1). */
  shapeDropProb?: number;
  /** Probability of naming the texture by its made-up word (default 0: plain English). */
  textureWordProb?: number;
}

/**
 * Made-up words for the textures, each one token of the CLIP vocabulary with no English
 * meaning (nonce words from child-language studies). Without some word for texture in
 * training, no text direction reaches texture at all and no embedding can steer it
 * (measured: a learned word got texture at chance); these give the model that pathway
 * while the English vocabulary still lacks it.
 */
export const TEXTURE_NONCE_WORDS: { readonly [K in Texture]: string } = {
  plain: 'taz',
  striped: 'dax',
  dotted: 'kiki',
  checkered: 'zeb',
};

const POSITION_PHRASES: { readonly [K in Position]: readonly string[] } = {
  'top-left': ['at the top left', 'in the top left corner'],
  top: ['at the top'],
  'top-right': ['at the top right', 'in the top right corner'],
  left: ['on the left'],
  center: ['in the center', 'in the middle'],
  right: ['on the right'],
  'bottom-left': ['at the bottom left', 'in the bottom left corner'],
  bottom: ['at the bottom'],
  'bottom-right': ['at the bottom right', 'in the bottom right corner'],
};

const BACKGROUND_PHRASES: readonly ((bg: Background) => string)[] = [
  (bg) => `on a ${bg} background`,
  (bg) => `on ${bg}`,
  (bg) => `against a ${bg} background`,
];

/** "a" or "an" for the word that follows (our vocabulary has no silent h / "u" = "you" cases). */
export function article(word: string): 'a' | 'an' {
  return /^[aeiou]/i.test(word) ? 'an' : 'a';
}

function nounPhrase(words: string[]): string {
  return `${article(words[0])} ${words.join(' ')}`;
}

/** The fullest caption, one fixed wording: "a small red star at the top left on a white background". */
export function describe(attrs: Attrs): string {
  return `${nounPhrase([attrs.size, attrs.color, attrs.shape])} ${POSITION_PHRASES[attrs.position][0]} ${BACKGROUND_PHRASES[0](attrs.background)}`;
}

/**
 * What an image shows besides its object: "at the top left on a black background" — the
 * caption a user would write beside a training image so that the learned word does not
 * absorb the position or background.
 */
export function describeSetting(attrs: Pick<Attrs, 'position' | 'background'>): string {
  return `${POSITION_PHRASES[attrs.position][0]} ${BACKGROUND_PHRASES[0](attrs.background)}`;
}

/** A random caption for `attrs`: random omissions and a few phrasings; the texture only by its made-up word. */
export function captionFor(attrs: Attrs, rng: Rng, opts: CaptionOptions = {}): string {
  const drop = opts.dropProb ?? 0.3;
  const dropShape = opts.shapeDropProb ?? 0.1;
  const textureWord = opts.textureWordProb ?? 0;
  const words: string[] = [];
  if (!rng.chance(drop)) words.push(attrs.size);
  // Drawn only when asked for, so plain-English captions keep their random sequence.
  if (textureWord > 0 && rng.chance(textureWord)) words.push(TEXTURE_NONCE_WORDS[attrs.texture]);
  if (!rng.chance(drop)) words.push(attrs.color);
  words.push(rng.chance(dropShape) ? 'shape' : attrs.shape);
  const np = nounPhrase(words);
  const pos = rng.chance(drop) ? '' : rng.pick(POSITION_PHRASES[attrs.position]);
  const bg = rng.chance(drop) ? '' : rng.pick(BACKGROUND_PHRASES)(attrs.background);
  // ordering: mostly "np pos bg", sometimes the position first or the background first
  const form = rng.int(10);
  let parts: string[];
  if (form < 6 || !pos) parts = [np, pos, bg];
  else if (form < 8) parts = [`${pos},`, np, bg];
  else parts = [np, bg, pos];
  return parts.filter((p) => p).join(' ');
}

const POSITION_READING: ReadonlyArray<[RegExp, Position]> = [
  [/\btop left\b/, 'top-left'], [/\btop right\b/, 'top-right'], [/\bbottom left\b/, 'bottom-left'], [/\bbottom right\b/, 'bottom-right'],
  [/\bat the top\b/, 'top'], [/\bat the bottom\b/, 'bottom'], [/\bon the left\b/, 'left'], [/\bon the right\b/, 'right'],
  [/\b(center|middle)\b/, 'center'],
];

/**
 * The attributes a caption of ours names (the inverse of captionFor): what a text encoder
 * can know from it. Unnamed attributes are absent; the texture only by its made-up word.
 */
export function namedAttributes(caption: string): Partial<Attrs> {
  const words = new Set(caption.toLowerCase().replace(/,/g, ' ').split(/\s+/));
  const out: Partial<Attrs> = {};
  const find = <K extends keyof Attrs>(key: K, values: readonly Attrs[K][]) => {
    const hit = values.find((v) => words.has(v as string));
    if (hit !== undefined) out[key] = hit;
  };
  find('shape', ATTRIBUTE_VALUES.shape);
  find('color', ATTRIBUTE_VALUES.color);
  find('size', ATTRIBUTE_VALUES.size);
  find('background', ATTRIBUTE_VALUES.background);
  const tex = (Object.entries(TEXTURE_NONCE_WORDS) as Array<[Texture, string]>).find(([, w]) => words.has(w));
  if (tex) out.texture = tex[0];
  const pos = POSITION_READING.find(([re]) => re.test(caption));
  if (pos) out.position = pos[1];
  return out;
}
