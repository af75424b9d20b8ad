// CLIP byte-level BPE tokenizer, behaving exactly like transformers' slow `CLIPTokenizer`
// (4.40) in the common install without `ftfy`:
//   1. added tokens (bos/eos/unk/pad and user placeholders) are cut out first, case-sensitively,
//      with transformers' trie (leftmost match, then longest);
//   2. every other piece goes through BasicTokenizer(strip_accents=False, do_split_on_punc=False):
//      drop NUL/U+FFFD/control (category C*) chars, whitespace -> space, spaces around CJK
//      ideographs, NFC, split on whitespace, lowercase each word, join with single spaces;
//   3. the CLIP regex splits words (contractions, letter runs, single digits, symbol runs);
//   4. each piece is UTF-8 encoded, mapped byte -> printable char, and BPE-merged.
// Quirk kept on purpose: a pad token that is an ordinary vocab entry (SD2 pads with `!`) is
// an added special token, so every `!` in a prompt becomes its own id (0) before BPE sees it.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';

/** An entry of transformers' added-tokens table. */
export interface AddedToken {
  content: string;
  id: number;
  special: boolean;
  /** Eat whitespace on the left / right of the token (transformers' AddedToken flags). */
  lstrip: boolean;
  rstrip: boolean;
}

export interface TokenizerCallOptions {
  /** Default: the tokenizer's model_max_length (77). */
  maxLength?: number;
  /** Pad to maxLength with the pad token (transformers' padding="max_length"). Default true. */
  padding?: boolean;
  /** Keep bos + the first maxLength-2 tokens + eos. Default true. */
  truncation?: boolean;
}

export interface TokenizerOutput {
  inputIds: number[];
  /** 1 for bos..eos, 0 for padding. */
  attentionMask: number[];
}

export interface SpecialTokens {
  bos: string;
  eos: string;
  unk: string;
  pad: string;
}

const BOS = '<|startoftext|>';
const EOS = '<|endoftext|>';
/** transformers reads only this many merges (CLIP's 49152 - 256 bytes - 2 specials). */
const MAX_MERGES = 49152 - 256 - 2;

// ---------------------------------------------------------------------------------------
// Byte <-> printable-char table: bytes that are visible Latin-1 map to themselves, the other
// 68 to U+0100.. so that no BPE symbol is whitespace or a control char.
const BYTE_TO_CHAR: string[] = (() => {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const table = new Array<string>(256);
  for (const b of bs) table[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (table[b] === undefined) table[b] = String.fromCharCode(256 + n++);
  return table;
})();
const CHAR_TO_BYTE = new Map<string, number>(BYTE_TO_CHAR.map((c, b) => [c, b]));

// ---------------------------------------------------------------------------------------
// The vocabulary + merge ranks, immutable and shareable between tokenizer instances.
class BpeModel {
  readonly decoder: string[] = [];
  /** "a b" -> rank (lower merges first). */
  private readonly ranks = new Map<string, number>();
  /** byte-encoded word -> BPE symbols; results never change, so cache them forever. */
  private readonly cache = new Map<string, string[]>();

  /** `merges` are "a b" lines, rank = index. */
  constructor(readonly encoder: Map<string, number>, merges: string[]) {
    for (const [tok, id] of encoder) this.decoder[id] = tok;
    for (let i = 0; i < merges.length; i++) this.ranks.set(merges[i], i);
  }

  get size(): number { return this.encoder.size; }

  static fromMergesText(mergesText: string, vocab?: Map<string, number>): BpeModel {
    // Same slicing as transformers: strip the file, drop the "#version" line, keep MAX_MERGES.
    const lines = mergesText.trim().split('\n').slice(1, MAX_MERGES + 1);
    // Canonical "a b" form (a merges.txt written on Windows may carry \r or extra spaces).
    const merges = lines.map((l) => (/^\S+ \S+$/.test(l) ? l : l.trim().split(/\s+/).join(' ')));
    if (!vocab) {
      // CLIP's vocab is a pure function of the merges: bytes, bytes+</w>, one per merge, specials.
      const byteSyms = [...BYTE_TO_CHAR.slice(0x21, 0x7f), ...BYTE_TO_CHAR.slice(0xa1, 0xad),
        ...BYTE_TO_CHAR.slice(0xae, 0x100), ...BYTE_TO_CHAR.filter((_, b) => b < 0x21 || (b >= 0x7f && b < 0xa1) || b === 0xad)];
      const toks = [...byteSyms, ...byteSyms.map((s) => s + '</w>'), ...merges.map((m) => m.replace(' ', '')), BOS, EOS];
      vocab = new Map(toks.map((t, i) => [t, i]));
    }
    return new BpeModel(vocab, merges);
  }

  /** BPE of one byte-encoded word; the last symbol carries the end-of-word mark `</w>`. */
  bpe(token: string): string[] {
    if (token === BOS || token === EOS) return [token]; // the regex keeps these whole, no `</w>`
    const hit = this.cache.get(token);
    if (hit) return hit;
    let word = Array.from(token);
    word[word.length - 1] += '</w>';
    while (word.length > 1) {
      let best = Infinity;
      let bestPair = '';
      for (let i = 0; i + 1 < word.length; i++) {
        const r = this.ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < best) { best = r; bestPair = `${word[i]} ${word[i + 1]}`; }
      }
      if (best === Infinity) break;
      const sp = bestPair.indexOf(' ');
      const first = bestPair.slice(0, sp);
      const second = bestPair.slice(sp + 1);
      const next: string[] = [];
      for (let i = 0; i < word.length;) {
        if (word[i] === first && i + 1 < word.length && word[i + 1] === second) {
          next.push(first + second);
          i += 2;
        } else {
          next.push(word[i]);
          i += 1;
        }
      }
      word = next;
    }
    // Bounded so a long-running server fed arbitrary text cannot grow it without limit.
    if (this.cache.size >= 200_000) this.cache.clear();
    this.cache.set(token, word);
    return word;
  }
}

let bundledModel: BpeModel | undefined;
function bundledMergesText(): string {
  return gunzipSync(readFileSync(fileURLToPath(new URL('../../assets/clip/merges.txt.gz', import.meta.url)))).toString('utf8');
}
function loadBundledModel(): BpeModel {
  if (!bundledModel) bundledModel = BpeModel.fromMergesText(bundledMergesText());
  return bundledModel;
}

/** The bundled merges.txt (as SD 1.x / 2.x ship it) and the vocabulary CLIP derives from it. */
export function bundledClipVocabulary(): { mergesText: string; vocab: ReadonlyMap<string, number> } {
  return { mergesText: bundledMergesText(), vocab: loadBundledModel().encoder };
}

// ---------------------------------------------------------------------------------------
// transformers' Trie.split, reproduced step for step (including its lookahead), because the
// exact cut points decide which text reaches BPE. Works on code points like Python strings.
// Exported for tests only.
interface TrieNode { end: boolean; next: Map<string, TrieNode> }

export class AddedTokenTrie {
  private readonly root: TrieNode = { end: false, next: new Map() };

  add(word: string): void {
    if (!word) return;
    let node = this.root;
    for (const ch of word) {
      let child = node.next.get(ch);
      if (!child) { child = { end: false, next: new Map() }; node.next.set(ch, child); }
      node = child;
    }
    node.end = true;
  }

  split(text: string): string[] {
    const chars = Array.from(text);
    const n = chars.length;
    let states = new Map<number, TrieNode>();
    const offsets = [0];
    let skip = 0;
    for (let current = 0; current < n; current++) {
      const ch = chars[current];
      if (skip && current < skip) continue;
      const toRemove: number[] = [];
      let reset = false;
      for (const [st, node] of states) {
        let start = st;
        if (node.end) {
          // A match ends here; look for a longer one, preferring earlier starts.
          let end = current;
          for (const [lookstart, lookNode0] of states) {
            let lookNode = lookNode0;
            let lookahead: number;
            if (lookstart > start) break;
            else if (lookstart < start) { lookahead = current + 1; end = current + 1; }
            else { lookahead = current; end = current; }
            let nextChar = lookahead < n ? chars[lookahead] : undefined;
            if (lookNode.end) { start = lookstart; end = lookahead; skip = lookahead; }
            while (nextChar !== undefined && lookNode.next.has(nextChar)) {
              lookNode = lookNode.next.get(nextChar)!;
              lookahead += 1;
              if (lookNode.end) { start = lookstart; end = lookahead; skip = lookahead; }
              if (lookahead === n) break;
              nextChar = chars[lookahead];
            }
          }
          offsets.push(start, end);
          reset = true;
          break;
        } else if (node.next.has(ch)) {
          states.set(st, node.next.get(ch)!);
        } else {
          toRemove.push(st);
        }
      }
      if (reset) states = new Map();
      else for (const s of toRemove) states.delete(s);
      if (current >= skip && this.root.next.has(ch)) states.set(current, this.root.next.get(ch)!);
    }
    for (const [start, node] of states) {
      if (node.end) { offsets.push(start, n); break; }
    }
    offsets.push(n);
    const out: string[] = [];
    let start = 0;
    for (const end of offsets) {
      if (start >= end) continue;
      out.push(chars.slice(start, end).join(''));
      start = end;
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------
// BasicTokenizer(do_lower_case=True, strip_accents=False, do_split_on_punc=False).
const RE_DROP = /[\u0000\uFFFD]|(?![\t\n\r])\p{C}/gu; // NUL, replacement char, control/format/unassigned
const RE_WS = /[\t\n\r\p{Zs}]/gu;
const RE_CJK = /[\u4E00-\u9FFF\u3400-\u4DBF\u{20000}-\u{2A6DF}\u{2A700}-\u{2B73F}\u{2B740}-\u{2B81F}\u{2B820}-\u{2CEAF}\uF900-\uFAFF\u{2F800}-\u{2FA1F}]/gu;
/** What Python's str.split() treats as whitespace. */
const RE_PY_SPLIT = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/u;
const PY_WS_EDGES = /^[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+|[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$/gu;

function basicClean(text: string): string {
  let t: string;
  if (/^[\x20-\x7e]*$/.test(text)) {
    t = text; // printable ASCII: nothing to drop, map or normalise
  } else {
    t = text.replace(RE_DROP, '').replace(RE_WS, ' ').replace(RE_CJK, ' $& ').normalize('NFC');
  }
  t = t.replace(PY_WS_EDGES, '');
  if (!t) return '';
  return t.split(RE_PY_SPLIT).map((w) => w.toLowerCase()).join(' ');
}

// The CLIP pre-tokenizer regex. `i` matters for a few case-folding oddities (e.g. `'ſ` matches
// `'s`, as in the Python `regex` module with IGNORECASE).
const RE_CLIP = /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/giu;

function byteEncode(piece: string): string {
  if (/^[\x21-\x7e]*$/.test(piece)) return piece; // those bytes map to themselves
  let s = '';
  for (const b of Buffer.from(piece, 'utf8')) s += BYTE_TO_CHAR[b];
  return s;
}

function pyStrip(s: string, side: 'left' | 'right'): string {
  const re = side === 'left'
    ? /^[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/u
    : /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$/u;
  return s.replace(re, '');
}

// ---------------------------------------------------------------------------------------
export class CLIPTokenizer {
  readonly bosToken: string;
  readonly eosToken: string;
  readonly unkToken: string;
  readonly padToken: string;
  /** transformers' model_max_length: the sequence length the text encoder was trained with. */
  readonly modelMaxLength: number;

  private readonly addedEncoder = new Map<string, number>();
  private readonly addedDecoder = new Map<number, AddedToken>();
  private readonly trie = new AddedTokenTrie();
  /** len(get_vocab()): base vocab plus added tokens that are not already in it. */
  private totalSize: number;

  private constructor(private readonly model: BpeModel, special: SpecialTokens, added: AddedToken[], modelMaxLength: number) {
    this.bosToken = special.bos;
    this.eosToken = special.eos;
    this.unkToken = special.unk;
    this.padToken = special.pad;
    this.modelMaxLength = modelMaxLength;
    this.totalSize = model.size;
    for (const t of added) this.registerAdded(t);
    // Special tokens not listed as added tokens get added as transformers' __init__ does
    // (bos, eos, unk, pad order): existing vocab entries keep their id, others get new ids.
    for (const s of [special.bos, special.eos, special.unk, special.pad]) {
      if (this.addedEncoder.has(s)) continue;
      const id = model.encoder.get(s) ?? this.totalSize;
      this.registerAdded({ content: s, id, special: true, lstrip: false, rstrip: false });
    }
  }

  /** The CLIP vocabulary shipped with oneword (same as SD 1.x / 2.x). SD2 checkpoints pad with `!`. */
  static bundled(opts: { padToken?: string; modelMaxLength?: number } = {}): CLIPTokenizer {
    return new CLIPTokenizer(loadBundledModel(), { bos: BOS, eos: EOS, unk: EOS, pad: opts.padToken ?? EOS }, [],
      opts.modelMaxLength ?? 77);
  }

  /**
   * Loads a diffusers/transformers `tokenizer/` folder: vocab.json + merges.txt, and (if present)
   * tokenizer_config.json, special_tokens_map.json and added_tokens.json, so the pad token (SD2: `!`)
   * and tokens saved by an earlier textual-inversion run come back with their ids.
   */
  static fromDir(dir: string): CLIPTokenizer {
    const file = (name: string) => join(dir, name);
    for (const f of ['vocab.json', 'merges.txt']) {
      if (!existsSync(file(f))) throw new Error(`CLIPTokenizer.fromDir: ${file(f)} not found (expected a CLIP tokenizer folder with vocab.json and merges.txt)`);
    }
    const readJson = (name: string): Record<string, any> | undefined =>
      existsSync(file(name)) ? JSON.parse(readFileSync(file(name), 'utf8')) : undefined;
    const vocab = new Map<string, number>(Object.entries(readJson('vocab.json') as Record<string, number>));
    const model = BpeModel.fromMergesText(readFileSync(file('merges.txt'), 'utf8'), vocab);

    const config = readJson('tokenizer_config.json') ?? {};
    const specialMap = readJson('special_tokens_map.json') ?? {};
    const content = (v: unknown): string | undefined =>
      typeof v === 'string' ? v : v && typeof v === 'object' && typeof (v as any).content === 'string' ? (v as any).content : undefined;
    // special_tokens_map.json wins over tokenizer_config.json, as in from_pretrained.
    const pick = (key: string, dflt: string) => content(specialMap[key]) ?? content(config[key]) ?? dflt;
    const special: SpecialTokens = { bos: pick('bos_token', BOS), eos: pick('eos_token', EOS), unk: pick('unk_token', EOS), pad: pick('pad_token', EOS) };

    const added: AddedToken[] = [];
    for (const [id, t] of Object.entries((config.added_tokens_decoder ?? {}) as Record<string, any>)) {
      added.push({ content: t.content, id: Number(id), special: !!t.special, lstrip: !!t.lstrip, rstrip: !!t.rstrip });
    }
    for (const [tok, id] of Object.entries((readJson('added_tokens.json') ?? {}) as Record<string, number>)) {
      if (!added.some((a) => a.content === tok)) added.push({ content: tok, id, special: false, lstrip: false, rstrip: false });
    }
    added.sort((a, b) => a.id - b.id);
    const maxLen = typeof config.model_max_length === 'number' && config.model_max_length < 1e6 ? config.model_max_length : 77;
    return new CLIPTokenizer(model, special, added, maxLen);
  }

  private registerAdded(t: AddedToken): void {
    const known = this.addedEncoder.has(t.content) || this.model.encoder.has(t.content);
    this.addedEncoder.set(t.content, t.id);
    this.addedDecoder.set(t.id, t);
    this.trie.add(t.content);
    if (!known) this.totalSize += 1;
  }

  /** Size of the base BPE vocabulary (49408), without added tokens. */
  get vocabSize(): number { return this.model.size; }
  /** Base vocabulary plus added tokens: the row count the text encoder's embedding needs. */
  get length(): number { return this.totalSize; }
  get bosId(): number { return this.tokenToId(this.bosToken)!; }
  get eosId(): number { return this.tokenToId(this.eosToken)!; }
  get padId(): number { return this.tokenToId(this.padToken)!; }
  get unkId(): number { return this.tokenToId(this.unkToken)!; }

  /** Added tokens (specials and placeholders), ordered by id. */
  get addedTokens(): AddedToken[] {
    return [...this.addedDecoder.values()].sort((a, b) => a.id - b.id);
  }

  /**
   * Adds new tokens (textual-inversion placeholders), matched verbatim and case-sensitively in
   * prompts. Returns their ids, allocated from `length` upwards (49408 for a fresh CLIP tokenizer).
   */
  addTokens(tokens: string[]): number[] {
    const ids: number[] = [];
    for (const tok of tokens) {
      if (typeof tok !== 'string' || tok === '') throw new Error('CLIPTokenizer.addTokens: tokens must be non-empty strings');
      const existing = this.tokenToId(tok);
      if (existing !== undefined) {
        throw new Error(`CLIPTokenizer.addTokens: "${tok}" already exists in the vocabulary (id ${existing}); ` +
          `a placeholder must be a new token, e.g. "<${tok.replace(/^<|>$/g, '')}>" or another unused name`);
      }
      const id = this.totalSize;
      this.registerAdded({ content: tok, id, special: false, lstrip: false, rstrip: false });
      ids.push(id);
    }
    return ids;
  }

  /** Id of a vocabulary token (BPE form, e.g. `toy</w>`) or of an added token; undefined if unknown. */
  tokenToId(token: string): number | undefined {
    return this.addedEncoder.get(token) ?? this.model.encoder.get(token);
  }

  idToToken(id: number): string | undefined {
    return this.addedDecoder.get(id)?.content ?? this.model.decoder[id];
  }

  /** Token strings as transformers' `tokenize()` gives them (BPE symbols and added tokens). */
  tokenize(text: string): string[] {
    const pieces = this.trie.split(text);
    // Apply lstrip/rstrip of added tokens to their neighbours (no-op for CLIP's own tokens).
    for (let i = 0; i < pieces.length; i++) {
      const id = this.addedEncoder.get(pieces[i]);
      if (id === undefined) continue;
      const t = this.addedDecoder.get(id)!;
      if (t.rstrip && i + 1 < pieces.length) pieces[i + 1] = pyStrip(pieces[i + 1], 'left');
      if (t.lstrip && i > 0) pieces[i - 1] = pyStrip(pieces[i - 1], 'right');
    }
    const out: string[] = [];
    for (const piece of pieces) {
      if (!piece) continue;
      if (this.addedEncoder.has(piece)) { out.push(piece); continue; }
      let words = basicClean(piece);
      // U+0345 is the one char that Python's `regex` (IGNORECASE) matches with no alternative of
      // the CLIP pattern, so findall skips it; JS would keep it. A space skips it the same way.
      if (words.includes('\u0345')) words = words.replaceAll('\u0345', ' ');
      for (const m of words.matchAll(RE_CLIP)) out.push(...this.model.bpe(byteEncode(m[0])));
    }
    return out;
  }

  /** Token ids of `text` without bos/eos, padding or truncation. */
  encode(text: string): number[] {
    const unk = this.unkId;
    return this.tokenize(text).map((t) => this.tokenToId(t) ?? unk);
  }

  /** transformers' `tokenizer(text, padding="max_length", max_length=77, truncation=True)`. */
  call(text: string, opts: TokenizerCallOptions = {}): TokenizerOutput {
    const maxLength = opts.maxLength ?? this.modelMaxLength;
    let ids = this.encode(text);
    if ((opts.truncation ?? true) && ids.length > maxLength - 2) ids = ids.slice(0, Math.max(0, maxLength - 2));
    const inputIds = [this.bosId, ...ids, this.eosId];
    const attentionMask = inputIds.map(() => 1);
    if (opts.padding ?? true) {
      while (inputIds.length < maxLength) { inputIds.push(this.padId); attentionMask.push(0); }
    }
    return { inputIds, attentionMask };
  }

  /**
   * Text for ids, like transformers' decode: BPE symbols are joined and byte-decoded (`</w>` -> space),
   * placeholders stand as written, separated by spaces.
   */
  decode(ids: readonly number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    const parts: string[] = [];
    let run: string[] = [];
    const flush = () => {
      if (!run.length) return;
      const bytes: number[] = [];
      for (const ch of run.join('')) {
        const b = CHAR_TO_BYTE.get(ch);
        if (b !== undefined) bytes.push(b);
        else bytes.push(...Buffer.from(ch, 'utf8'));
      }
      parts.push(Buffer.from(bytes).toString('utf8').replaceAll('</w>', ' ').trim());
      run = [];
    };
    for (const id of ids) {
      const added = this.addedDecoder.get(id);
      if (added?.special && opts.skipSpecialTokens) continue;
      const tok = this.idToToken(id);
      if (tok === undefined) throw new Error(`CLIPTokenizer.decode: unknown id ${id}`);
      if (added && !added.special) { flush(); parts.push(tok); } else run.push(tok);
    }
    flush();
    return parts.filter((p) => p !== '').join(' ');
  }
}
