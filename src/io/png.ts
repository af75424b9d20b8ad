// PNG encoding with text chunks, and AUTOMATIC1111's "parameters" infotext.
//
// We encode PNGs ourselves (filter + zlib) rather than through sharp so the bytes
// depend only on the pixels and the text: no timestamps, no encoder-version drift,
// and the text chunk sits before IDAT exactly where PIL/A1111 put it.
import { readFileSync, openSync, readSync, closeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { deflateSync, inflateSync } from 'node:zlib';
import { crc32 } from './zip.ts';

export class PngError extends Error {
  override name = 'PngError';
}

const SIGNATURE = Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function chunk(type: string, data: Uint8Array): Buffer {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  out.set(data, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

function checkKeyword(k: string): void {
  // PNG spec: 1–79 Latin-1 characters, no NUL, no leading/trailing/double spaces.
  if (k.length < 1 || k.length > 79 || !/^[\x20-\x7e\xa1-\xff]+$/.test(k) || /^ | $| {2}/.test(k)) {
    throw new PngError(`invalid PNG text keyword ${JSON.stringify(k)}`);
  }
}

/** tEXt when the text is Latin-1 (as PIL's PngInfo.add_text does), else uncompressed UTF-8 iTXt. */
function textChunk(keyword: string, text: string): Buffer {
  checkKeyword(keyword);
  const kw = Buffer.from(keyword, 'latin1');
  if (/^[\x00-\xff]*$/.test(text)) {
    return chunk('tEXt', Buffer.concat([kw, Buffer.from([0]), Buffer.from(text, 'latin1')]));
  }
  // keyword \0 compression-flag compression-method language \0 translated-keyword \0 text
  return chunk('iTXt', Buffer.concat([kw, Buffer.from([0, 0, 0, 0, 0]), Buffer.from(text, 'utf8')]));
}

function paeth(a: number, b: number, c: number): number {
  const p = a + b - c;
  const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/**
 * 8-bit RGB (3 channels) or RGBA (4) PNG from interleaved HWC bytes. Each row gets
 * the filter with the smallest sum of absolute residuals (libpng's heuristic).
 */
export function encodePng(pixels: Uint8Array, width: number, height: number, opts: { channels?: 3 | 4; text?: ReadonlyArray<readonly [string, string]> } = {}): Buffer {
  const ch = opts.channels ?? 3;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1 || width > 0x7fffffff || height > 0x7fffffff) {
    throw new PngError(`invalid PNG size ${width}x${height}`);
  }
  if (pixels.length !== width * height * ch) throw new PngError(`expected ${width}x${height}x${ch} = ${width * height * ch} bytes, got ${pixels.length}`);
  const stride = width * ch;
  const raw = Buffer.alloc((stride + 1) * height);
  const cand = Array.from({ length: 5 }, () => new Uint8Array(stride));
  for (let y = 0; y < height; y++) {
    const row = pixels.subarray(y * stride, (y + 1) * stride);
    const prev = y > 0 ? pixels.subarray((y - 1) * stride, y * stride) : null;
    let best = 0;
    let bestCost = Infinity;
    for (let f = 0; f < 5; f++) {
      const out = cand[f];
      let cost = 0;
      for (let i = 0; i < stride; i++) {
        const a = i >= ch ? row[i - ch] : 0;
        const b = prev ? prev[i] : 0;
        const c = prev && i >= ch ? prev[i - ch] : 0;
        const pred = f === 0 ? 0 : f === 1 ? a : f === 2 ? b : f === 3 ? (a + b) >> 1 : paeth(a, b, c);
        const v = (row[i] - pred) & 0xff;
        out[i] = v;
        cost += v < 128 ? v : 256 - v;
      }
      if (cost < bestCost) { bestCost = cost; best = f; }
    }
    raw[y * (stride + 1)] = best;
    raw.set(cand[best], y * (stride + 1) + 1);
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = ch === 3 ? 2 : 6; // colour type: RGB / RGBA
  const parts = [Buffer.from(SIGNATURE), chunk('IHDR', ihdr)];
  for (const [k, v] of opts.text ?? []) parts.push(textChunk(k, v));
  parts.push(chunk('IDAT', deflateSync(raw, { level: 9 })), chunk('IEND', new Uint8Array(0)));
  return Buffer.concat(parts);
}

const MAX_TEXT_BYTES = 16 << 20;

/**
 * All tEXt / zTXt / iTXt entries of a PNG, keyword → text (a later chunk with the same
 * keyword wins, as in PIL's `Image.info`). Chunk lengths and CRCs are checked.
 */
export function readPngTextChunks(source: string | Uint8Array): Map<string, string> {
  const label = typeof source === 'string' ? source : '<buffer>';
  const buf = typeof source === 'string' ? readFileSync(source) : Buffer.from(source.buffer, source.byteOffset, source.byteLength);
  const fail = (m: string): never => { throw new PngError(`${label}: ${m}`); };
  if (buf.length < 8 || !SIGNATURE.every((b, i) => buf[i] === b)) fail('not a PNG file');
  const out = new Map<string, string>();
  let p = 8;
  for (;;) {
    if (p + 12 > buf.length) fail('truncated PNG (no IEND chunk)');
    const len = buf.readUInt32BE(p);
    if (len > 0x7fffffff || p + 12 + len > buf.length) fail(`chunk at byte ${p} runs past the end of the file`);
    const type = buf.toString('latin1', p + 4, p + 8);
    const data = buf.subarray(p + 8, p + 8 + len);
    if (crc32(buf.subarray(p + 4, p + 8 + len)) !== buf.readUInt32BE(p + 8 + len)) fail(`${type} chunk at byte ${p} fails its CRC check`);
    if (type === 'IEND') return out;
    const nul = data.indexOf(0);
    if ((type === 'tEXt' || type === 'zTXt' || type === 'iTXt') && nul > 0) {
      const key = data.toString('latin1', 0, nul);
      const inflate = (b: Uint8Array) => {
        try { return inflateSync(b, { maxOutputLength: MAX_TEXT_BYTES }); } catch (e) { return fail(`${type} "${key}" does not inflate: ${(e as Error).message}`); }
      };
      if (type === 'tEXt') {
        out.set(key, data.toString('latin1', nul + 1));
      } else if (type === 'zTXt') {
        if (data[nul + 1] !== 0) fail(`zTXt "${key}" uses unknown compression method ${data[nul + 1]}`);
        out.set(key, inflate(data.subarray(nul + 2)).toString('latin1'));
      } else {
        const compressed = data[nul + 1] === 1;
        const lang = data.indexOf(0, nul + 3);
        const tkey = lang < 0 ? -1 : data.indexOf(0, lang + 1);
        if (lang < 0 || tkey < 0) fail(`iTXt "${key}" is malformed`);
        const body = data.subarray(tkey + 1);
        out.set(key, (compressed ? inflate(body) : body).toString('utf8'));
      }
    }
    p += 12 + len;
  }
}

/** The A1111 infotext stored under the `parameters` keyword, or null if there is none. */
export function readPngParameters(source: string | Uint8Array): string | null {
  return readPngTextChunks(source).get('parameters') ?? null;
}

// ---------------------------------------------------------------- A1111 infotext

export interface A1111Parameters {
  prompt: string;
  negativePrompt?: string;
  steps: number;
  /** A1111 sampler name, e.g. "DPM++ 2M Karras" or "Euler a". */
  sampler: string;
  /** Newer A1111 splits the schedule out ("Karras"); omitted when undefined. */
  scheduleType?: string;
  cfgScale: number;
  seed: number;
  width: number;
  height: number;
  /** First 10 hex digits of the checkpoint's sha256 (see `a1111ShortHash`). */
  modelHash?: string;
  model?: string;
  /** Embedding name → first 12 hex digits of its file's sha256; or a preformatted string. */
  tiHashes?: Record<string, string> | string;
  /** More "Key: value" pairs, in order (e.g. "Clip skip", "Version"); undefined/null are skipped. */
  extra?: Record<string, string | number | boolean | null | undefined>;
}

/** A1111's `quote`: values containing a comma, colon or newline become JSON strings. */
function quote(v: string): string {
  return /[,:\n]/.test(v) ? JSON.stringify(v) : v;
}

/**
 * Formats generation settings the way AUTOMATIC1111's `create_infotext` does:
 *   prompt
 *   Negative prompt: …
 *   Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x512, Model hash: …, Model: …, TI hashes: "…"
 * Numbers print as JavaScript prints them (7 → "7", 7.5 → "7.5").
 */
export function formatA1111Parameters(p: A1111Parameters): string {
  const params: Array<[string, string | number | boolean | null | undefined]> = [
    ['Steps', p.steps],
    ['Sampler', p.sampler],
    ['Schedule type', p.scheduleType],
    ['CFG scale', p.cfgScale],
    ['Seed', p.seed],
    ['Size', `${p.width}x${p.height}`],
    ['Model hash', p.modelHash],
    ['Model', p.model],
  ];
  for (const [k, v] of Object.entries(p.extra ?? {})) params.push([k, v]);
  if (p.tiHashes !== undefined) {
    // A1111 strips ":" and "," from names so the list stays parseable.
    const ti = typeof p.tiHashes === 'string'
      ? p.tiHashes
      : Object.entries(p.tiHashes).map(([name, h]) => `${name.replace(/[:,]/g, '')}: ${h}`).join(', ');
    if (ti) params.push(['TI hashes', ti]);
  }
  const line = params
    .filter(([, v]) => v !== undefined && v !== null)
    .map(([k, v]) => `${k}: ${quote(String(v))}`)
    .join(', ');
  const neg = p.negativePrompt ? `\nNegative prompt: ${p.negativePrompt}` : '';
  return `${p.prompt}${neg}\n${line}`.trim();
}

// A1111's re_param: key, then a quoted (JSON) value or anything up to the next comma.
const RE_PARAM = /\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g;

/** Inverse of formatA1111Parameters, following A1111's `parse_generation_parameters`. */
export function parseA1111Parameters(text: string): { prompt: string; negativePrompt: string; params: Record<string, string> } {
  const lines = text.trim().split('\n');
  let last = lines.pop() ?? '';
  if ([...last.matchAll(RE_PARAM)].length < 3) {
    lines.push(last);
    last = '';
  }
  let prompt = '';
  let negativePrompt = '';
  let inNegative = false;
  for (let line of lines) {
    line = line.trim();
    if (line.startsWith('Negative prompt:')) {
      inNegative = true;
      line = line.slice(16).trim();
    }
    if (inNegative) negativePrompt += (negativePrompt ? '\n' : '') + line;
    else prompt += (prompt ? '\n' : '') + line;
  }
  const params: Record<string, string> = Object.create(null);
  for (const m of last.matchAll(RE_PARAM)) {
    let v = m[2];
    if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) {
      try { v = JSON.parse(v) as string; } catch { /* keep as written */ }
    }
    params[m[1]] = v;
  }
  return { prompt, negativePrompt, params };
}

/**
 * A1111's short file hash: the first `length` hex digits of the file's sha256
 * (10 for "Model hash", 12 for "TI hashes"). Reads in chunks, so checkpoints of
 * several GB are fine.
 */
export function a1111ShortHash(path: string, length = 10): string {
  const h = createHash('sha256');
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(1 << 20);
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex').slice(0, length);
}
