// Prompt syntax users bring from AUTOMATIC1111's webui:
//   (word) ×1.1, [word] ÷1.1, (word:1.3) explicit weight, \( \) \[ \] \\ escapes, BREAK;
//   prompts of any length, split into 75-token chunks, each encoded on its own with bos/eos
//   (A1111's `sd_hijack_clip` chunking), so nothing is silently truncated;
//   emphasis applied to the encoder output: scale each token's row by its weight, then rescale
//   the whole chunk so its mean is what it was (A1111's "Original" emphasis).
import type { CLIPTokenizer } from '../models/clip-tokenizer.ts';
import { OnewordError } from '../errors.ts';

/** A prompt that cannot be encoded as written: the caller's text to fix (a usage error). */
export class PromptError extends OnewordError {
  override name = 'PromptError';
  constructor(message: string) {
    super(message, { usage: true });
  }
}

/**
 * Largest emphasis weight, either sign. A1111 multiplies without limit, so 10,000 nested "("
 * reach Infinity and decode to a black image; no useful weight comes near this.
 */
export const MAX_EMPHASIS = 1000;

/**
 * Deepest bracket nesting read. Each open bracket re-weights everything after it, so the
 * parse costs (text length × depth); 73 levels of "(" already pass MAX_EMPHASIS.
 */
export const MAX_BRACKET_DEPTH = 256;

export type PromptFragment = [text: string, weight: number];

/** One text-encoder input: `ids` and per-position emphasis `weights`, both of the model's length (77). */
export interface WeightedChunk {
  ids: number[];
  weights: number[];
}

export interface TokenizeWeightedOptions {
  /**
   * Textual-inversion embeddings in the prompt: placeholder token -> number of vectors. A token
   * `<name>` with N vectors expands to the N ids of `<name>`, `<name>_1`, …, `<name>_{N-1}`
   * (diffusers' naming; all must already be added to the tokenizer, see `embeddingTokenNames`).
   * Its vectors are kept in one chunk: if they would straddle a boundary they move whole to the next.
   */
  embeddings?: ReadonlyMap<string, number>;
  /**
   * A1111's "prompt word wrap length limit" (default 20, as in A1111): when a chunk fills up and
   * its last comma is at most this many tokens back, the words after that comma move to the next
   * chunk instead of being cut mid-phrase. 0 disables it.
   */
  commaPaddingBacktrack?: number;
  /** Parse ( ) [ ] (x:w) and BREAK. false = take the prompt literally, one weight (A1111's "None"). */
  emphasis?: boolean;
}

export interface WeightedPrompt {
  chunks: WeightedChunk[];
  /** Prompt tokens used (embedding vectors counted one each), without bos/eos/padding. */
  tokenCount: number;
}

// Python's `\s` (str patterns) — spelled out because JS's `\s` differs at U+001C–1F, U+0085, U+FEFF.
const WS = '\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
// A1111's re_attention, alternative for alternative. Python's `\d` is any Unicode decimal digit.
const RE_ATTENTION = new RegExp(
  String.raw`\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:[${WS}]*([+-]?[.\p{Nd}]+)[${WS}]*\)|\)|\]|[^\\()\[\]:]+|:`, 'gu');
// A1111's re_break `\s*\bBREAK\b\s*`, with Python's Unicode word boundary.
const RE_BREAK = new RegExp(String.raw`[${WS}]*(?<![\p{L}\p{N}_])BREAK(?![\p{L}\p{N}_])[${WS}]*`, 'u');

const ROUND = 1.1;
const SQUARE = 1 / 1.1;

/** Value of a Unicode decimal digit: decimal digits come in aligned runs of 0..9, so count back. */
function digitValue(ch: string): number {
  const cp = ch.codePointAt(0)!;
  if (cp >= 0x30 && cp <= 0x39) return cp - 0x30;
  let k = 0;
  while (/\p{Nd}/u.test(String.fromCodePoint(cp - k - 1))) k++;
  return k % 10;
}

/** Python's float() on the `[+-]?[.\d]+` the regex captured; a malformed one is an error there too. */
function parseWeight(s: string): number {
  const ascii = s.replace(/\p{Nd}/gu, (d) => String(digitValue(d)));
  if (!/^[+-]?(?:\d+\.?\d*|\.\d+)$/.test(ascii)) {
    throw new PromptError(`prompt: cannot read the weight "${s}" in "(…:${s})"; write a number such as 1.2 or .8`);
  }
  return Number(ascii);
}

/**
 * A1111's `parse_prompt_attention`: the prompt as [text, weight] runs, adjacent equal weights
 * merged. Unbalanced brackets still apply to the end of the prompt; BREAK yields ["BREAK", -1].
 *
 *   parsePromptAttention('an (important) word') -> [['an ', 1], ['important', 1.1], [' word', 1]]
 */
export function parsePromptAttention(text: string): PromptFragment[] {
  const res: PromptFragment[] = [];
  const round: number[] = [];
  const square: number[] = [];
  const multiplyRange = (start: number, m: number) => {
    for (let p = start; p < res.length; p++) res[p][1] *= m;
  };

  for (const m of text.matchAll(RE_ATTENTION)) {
    const tok = m[0];
    const weight = m[1];
    if (tok.startsWith('\\')) res.push([tok.slice(1), 1.0]);
    else if (tok === '(' || tok === '[') {
      (tok === '(' ? round : square).push(res.length);
      if (round.length + square.length > MAX_BRACKET_DEPTH) throw new PromptError(`prompt: brackets nested more than ${MAX_BRACKET_DEPTH} deep (each "(" multiplies the weight by 1.1)`);
    }
    else if (weight !== undefined && round.length) multiplyRange(round.pop()!, parseWeight(weight));
    else if (tok === ')' && round.length) multiplyRange(round.pop()!, ROUND);
    else if (tok === ']' && square.length) multiplyRange(square.pop()!, SQUARE);
    else {
      tok.split(RE_BREAK).forEach((part, i) => {
        if (i > 0) res.push(['BREAK', -1]);
        res.push([part, 1.0]);
      });
    }
  }
  for (const pos of round) multiplyRange(pos, ROUND);
  for (const pos of square) multiplyRange(pos, SQUARE);
  if (res.length === 0) res.push(['', 1.0]);

  // Adjacent runs of equal weight merge (in one pass: a long prompt has many).
  const merged: PromptFragment[] = [];
  for (const f of res) {
    const last = merged[merged.length - 1];
    if (last && last[1] === f[1]) last[0] += f[0];
    else merged.push(f);
  }
  return merged;
}

/** The tokens a multi-vector embedding occupies, named as diffusers does: `<cat>`, `<cat>_1`, …. */
export function embeddingTokenNames(token: string, vectors: number): string[] {
  return Array.from({ length: vectors }, (_, k) => (k === 0 ? token : `${token}_${k}`));
}

/** token id of each embedding's first token -> the ids of all its vectors. */
function embeddingIds(tokenizer: CLIPTokenizer, embeddings: ReadonlyMap<string, number>, chunkLength: number): Map<number, number[]> {
  const out = new Map<number, number[]>();
  for (const [name, vectors] of embeddings) {
    if (!Number.isInteger(vectors) || vectors < 1) throw new Error(`prompt: embedding "${name}" must have a whole number of vectors ≥ 1, got ${vectors}`);
    if (vectors > chunkLength) throw new Error(`prompt: embedding "${name}" has ${vectors} vectors, more than fit in one ${chunkLength}-token chunk`);
    const ids = embeddingTokenNames(name, vectors).map((t) => {
      const id = tokenizer.tokenToId(t);
      if (id === undefined) {
        throw new Error(`prompt: embedding token "${t}" is not in the tokenizer; add ${JSON.stringify(embeddingTokenNames(name, vectors))} with tokenizer.addTokens() first`);
      }
      return id;
    });
    out.set(ids[0], ids);
  }
  return out;
}

/**
 * A1111's `tokenize_line`: the prompt as 77-token chunks (bos + 75 + eos), weights per position.
 * Each parsed fragment is tokenized on its own (so `(red)dish` is `red` + `dish`), padding uses eos
 * then — where the model pads differently (SD2: `!`) — the pad id after the first eos, as A1111 does.
 * An empty prompt gives one chunk; `BREAK` starts a new chunk.
 */
export function tokenizeWeighted(tokenizer: CLIPTokenizer, text: string, opts: TokenizeWeightedOptions = {}): WeightedPrompt {
  const chunkLength = tokenizer.modelMaxLength - 2;
  const backtrack = opts.commaPaddingBacktrack ?? 20;
  const comma = tokenizer.tokenToId(',</w>');
  const { bosId, eosId, padId } = tokenizer;
  const embIds = embeddingIds(tokenizer, opts.embeddings ?? new Map(), chunkLength);
  const parsed: PromptFragment[] = (opts.emphasis ?? true) ? parsePromptAttention(text) : [[text, 1.0]];
  for (const [fragment, weight] of parsed) {
    if (!(Math.abs(weight) <= MAX_EMPHASIS)) {
      const words = fragment.trim().slice(0, 40) + (fragment.trim().length > 40 ? '…' : '');
      throw new PromptError(`prompt: the emphasis on "${words}" is ${weight} (each "(" multiplies it by 1.1, each "[" divides); weights must be from -${MAX_EMPHASIS} to ${MAX_EMPHASIS}`);
    }
  }

  const chunks: WeightedChunk[] = [];
  let tokens: number[] = [];
  let weights: number[] = [];
  let lastComma = -1;
  let tokenCount = 0;

  const nextChunk = () => {
    tokenCount += tokens.length;
    const ids = [bosId, ...tokens, eosId];
    const w = [1.0, ...weights, 1.0];
    while (ids.length < chunkLength + 2) { ids.push(eosId); w.push(1.0); }
    if (padId !== eosId) {
      for (let j = ids.indexOf(eosId) + 1; j < ids.length; j++) ids[j] = padId;
    }
    chunks.push({ ids, weights: w });
    tokens = [];
    weights = [];
    lastComma = -1;
  };

  for (const [fragment, weight] of parsed) {
    // A1111 tests weight === -1, so a BREAK inside brackets (weight -1.1) would be encoded as the
    // word "break" with a negative weight; any negative-weight marker is a BREAK here.
    if (fragment === 'BREAK' && weight < 0) { nextChunk(); continue; }
    const ids = tokenizer.encode(fragment);
    for (let position = 0; position < ids.length; position++) {
      const id = ids[position];
      if (id === comma) {
        lastComma = tokens.length;
      } else if (backtrack !== 0 && tokens.length === chunkLength && lastComma !== -1 && tokens.length - lastComma <= backtrack) {
        const at = lastComma + 1;
        const movedTokens = tokens.slice(at);
        const movedWeights = weights.slice(at);
        tokens = tokens.slice(0, at);
        weights = weights.slice(0, at);
        nextChunk();
        tokens = movedTokens;
        weights = movedWeights;
      }
      if (tokens.length === chunkLength) nextChunk();

      const vectors = embIds.get(id);
      if (!vectors) { tokens.push(id); weights.push(weight); continue; }
      if (tokens.length + vectors.length > chunkLength) nextChunk();
      for (const v of vectors) { tokens.push(v); weights.push(weight); }
    }
  }
  if (tokens.length || chunks.length === 0) nextChunk();
  return { chunks, tokenCount };
}

/**
 * A1111's "Original" emphasis on one chunk's encoder output `hidden` ([T, D], row-major, in place):
 * z *= weight of its row, then z *= mean(z before) / mean(z after) over the whole chunk. Float32
 * rounding at each step as torch does; means are accumulated in float64.
 */
export function applyEmphasis(hidden: Float32Array, shape: readonly [number, number], weights: ArrayLike<number>): void {
  const [T, D] = shape;
  if (hidden.length !== T * D) throw new Error(`applyEmphasis: hidden has ${hidden.length} values, shape [${T}, ${D}] needs ${T * D}`);
  if (weights.length !== T) throw new Error(`applyEmphasis: ${weights.length} weights for ${T} rows`);
  let plain = true;
  for (let t = 0; t < T; t++) if (weights[t] !== 1) { plain = false; break; }
  if (plain) return; // ratio would be exactly 1: nothing changes
  const n = T * D;
  let before = 0;
  for (let i = 0; i < n; i++) before += hidden[i];
  let after = 0;
  for (let t = 0; t < T; t++) {
    const w = weights[t];
    for (let i = t * D; i < (t + 1) * D; i++) {
      hidden[i] *= w; // stored as float32, like torch's product
      after += hidden[i];
    }
  }
  const newMean = Math.fround(after / n);
  // A1111 divides regardless and gets inf/NaN; leave the scaled values rather than poison the chunk.
  if (newMean === 0) return;
  const ratio = Math.fround(Math.fround(before / n) / newMean);
  for (let i = 0; i < n; i++) hidden[i] *= ratio;
}
