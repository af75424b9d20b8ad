// Fuzzing (opt-in): `npm run fuzz -- --seconds 300 [--seed N] [--only safetensors,pt,image,config,prompt,lr]`.
//
// Mutates real inputs (the fixtures' safetensors files, torch.save archives, PNG/JPEG/WebP
// images, model config files, prompts and A1111 learning-rate schedules) and feeds each one
// to the reader oneword uses for it, in a worker process. Every input must end in a result
// or in a clear error: an OnewordError (every reader's own error type extends it) with a
// message. A crash of the worker, a case that runs over --timeout seconds or grows the
// worker over --max-rss-mb, or any other exception is a failure; its input is kept under
// fuzz-failures/ to reproduce. Exits 1 on any failure.
import { fork, type ChildProcess } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deflateRawSync } from 'node:zlib';
import { ZipArchive } from '../src/io/zip.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const FIX = join(ROOT, 'test', 'fixtures');
const MODEL = join(FIX, 'sd1-tiny');

type Target = 'safetensors' | 'pt' | 'image' | 'config' | 'prompt' | 'lr';
const TARGETS: Target[] = ['safetensors', 'pt', 'image', 'config', 'prompt', 'lr'];

interface Case { id: number; target: Target; file?: string; text?: string; ext?: string; note: string }
type Outcome = { id: number; ok: true; error?: string } | { id: number; ok: false; problem: string };

// ------------------------------------------------------------------ worker: runs one case

async function runCase(c: Case, work: string): Promise<string | undefined> {
  const { OnewordError } = await import('../src/errors.ts');
  try {
    switch (c.target) {
      case 'safetensors': case 'pt': {
        const { loadEmbedding } = await import('../src/io/embeddings.ts');
        const e = loadEmbedding(c.file!);
        if (e.vectors.length !== e.count * e.dim) throw new Error(`embedding of ${e.vectors.length} values for [${e.count}, ${e.dim}]`);
        if (c.target === 'safetensors') {
          const { SafetensorsFile } = await import('../src/io/safetensors.ts');
          const f = SafetensorsFile.open(c.file!);
          for (const name of f.tensors.keys()) if (['F32', 'F16', 'BF16', 'F64'].includes(f.info(name).dtype)) f.readFloat32(name);
        }
        return;
      }
      case 'image': {
        const { decodeRgb, trainingPixels } = await import('../src/io/images.ts');
        const img = await decodeRgb(c.file!);
        const px = trainingPixels(img, { size: 16, centerCrop: true });
        if (px.length !== 3 * 16 * 16) throw new Error(`${px.length} training values`);
        return;
      }
      case 'config': {
        // The mutated file stands in for one of the tiny model's configs (the rest are links).
        const { loadCheckpoint } = await import('../src/pipelines/checkpoint.ts');
        loadCheckpoint(join(work, 'model'));
        return;
      }
      case 'prompt': {
        const { tokenizeWeighted } = await import('../src/pipelines/prompt.ts');
        const { CLIPTokenizer } = await import('../src/models/clip-tokenizer.ts');
        const tok = (globalThis as { fuzzTokenizer?: ReturnType<typeof CLIPTokenizer.fromDir> }).fuzzTokenizer ??= (() => {
          const t = CLIPTokenizer.fromDir(join(MODEL, 'tokenizer'));
          t.addTokens(['<fuzz>', '<fuzz>_1']);
          return t;
        })();
        const r = tokenizeWeighted(tok, c.text!, { embeddings: new Map([['<fuzz>', 2]]) });
        for (const ch of r.chunks) {
          if (ch.ids.length !== 77 || ch.weights.length !== 77) throw new Error('a chunk is not 77 tokens long');
          if (!ch.weights.every(Number.isFinite)) throw new Error('a weight is not finite');
        }
        return;
      }
      case 'lr': {
        const { makeSchedule } = await import('../src/pipelines/lr-schedule.ts');
        const s = makeSchedule(c.text!, 'constant', 100, 0);
        for (const step of [0, 1, 50, 99, 1000]) {
          const lr = s.at(step);
          if (!(lr > 0 && lr < Infinity)) throw new Error(`learning rate ${lr} at step ${step}`);
        }
        return;
      }
    }
  } catch (e) {
    if (e instanceof OnewordError && e.message.trim()) return `${e.name}: ${e.message.slice(0, 160)}`;
    throw e;
  }
}

async function worker(work: string): Promise<void> {
  process.on('message', async (c: Case) => {
    let outcome: Outcome;
    try {
      const error = await runCase(c, work);
      outcome = { id: c.id, ok: true, error };
    } catch (e) {
      const err = e as Error;
      outcome = { id: c.id, ok: false, problem: `unclear error: ${err?.name}: ${String(err?.message).slice(0, 300)}` };
    }
    process.send!({ ...outcome, rss: process.memoryUsage().rss });
  });
  process.send!({ ready: true });
}

// ------------------------------------------------------------------ mutations

class Rand {
  private s: number;
  constructor(seed: number) { this.s = seed >>> 0 || 1; }
  next(): number { // xorshift32
    let x = this.s;
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    this.s = x >>> 0;
    return this.s / 2 ** 32;
  }
  int(n: number): number { return Math.floor(this.next() * n); }
  pick<T>(xs: readonly T[]): T { return xs[this.int(xs.length)]; }
}

const INTERESTING = [0, 1, 2, 0x7f, 0x80, 0xff, 0x7fff, 0xffff, 0x7fffffff, 0xffffffff, 2 ** 31, 1e6, 1e9];

function mutateBytes(r: Rand, input: Uint8Array, others: Uint8Array[]): { data: Uint8Array; note: string } {
  let b = Buffer.from(input);
  const notes: string[] = [];
  for (let k = 1 + r.int(4); k > 0; k--) {
    const at = b.length ? r.int(b.length) : 0;
    switch (r.int(8)) {
      case 0: if (b.length) { b[at] ^= 1 << r.int(8); notes.push(`flip@${at}`); } break;
      case 1: if (b.length) { b[at] = r.pick([0, 0xff, 0x7f, 0x80, 0x20, 0x7b]); notes.push(`byte@${at}`); } break;
      case 2: if (at + 4 <= b.length) { b.writeUInt32LE(r.pick(INTERESTING) >>> 0, at); notes.push(`u32le@${at}`); } break;
      case 3: if (at + 4 <= b.length) { b.writeUInt32BE(r.pick(INTERESTING) >>> 0, at); notes.push(`u32be@${at}`); } break;
      case 4: { b = b.subarray(0, r.int(b.length + 1)); notes.push(`truncate ${b.length}`); break; }
      case 5: { const n = 1 + r.int(64); b = Buffer.concat([b.subarray(0, at), b.subarray(at + n)]); notes.push(`delete ${n}@${at}`); break; }
      case 6: { const o = r.pick(others.length ? others : [input]); const s = r.int(o.length + 1); b = Buffer.concat([b.subarray(0, at), o.subarray(s, s + 1 + r.int(256)), b.subarray(at)]); notes.push(`splice@${at}`); break; }
      case 7: { const n = 1 + r.int(256); b = Buffer.concat([b.subarray(0, at), Buffer.alloc(n, r.int(256)), b.subarray(at)]); notes.push(`insert ${n}@${at}`); break; }
    }
  }
  return { data: b, note: notes.join(' ') };
}

/** Values a hostile JSON field is set to. */
const JSON_VALUES: unknown[] = [0, -1, 1, 3, 1e9, 2 ** 53, -1e9, 1.5, 1e308, '', 'x', null, true, [], [1e9], [0], {}, [32, 64, 1e7], new Array(50).fill(32)];

function mutateJson(r: Rand, value: unknown, depth = 0): { value: unknown; note: string } {
  if (Array.isArray(value) && value.length && r.next() < 0.5) {
    const i = r.int(value.length);
    const inner = mutateJson(r, value[i], depth + 1);
    const copy = value.slice();
    copy[i] = inner.value;
    return { value: copy, note: `[${i}]${inner.note}` };
  }
  if (value && typeof value === 'object' && !Array.isArray(value) && depth < 4) {
    const obj = { ...(value as Record<string, unknown>) };
    const keys = Object.keys(obj);
    const key = keys.length ? r.pick(keys) : 'x';
    const roll = r.next();
    if (roll < 0.1) { delete obj[key]; return { value: obj, note: `.${key} deleted` }; }
    if (roll < 0.6 && obj[key] && typeof obj[key] === 'object') {
      const inner = mutateJson(r, obj[key], depth + 1);
      obj[key] = inner.value;
      return { value: obj, note: `.${key}${inner.note}` };
    }
    const v = r.pick(JSON_VALUES);
    obj[key] = v;
    return { value: obj, note: `.${key}=${JSON.stringify(v)?.slice(0, 30)}` };
  }
  const v = r.pick(JSON_VALUES);
  return { value: v, note: `=${JSON.stringify(v)?.slice(0, 30)}` };
}

/** A safetensors header mutated as JSON (shapes, offsets, dtypes), the data left as it was. */
function mutateSafetensorsHeader(r: Rand, input: Uint8Array): { data: Uint8Array; note: string } {
  const b = Buffer.from(input);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString('utf8'));
  const m = mutateJson(r, header);
  const text = Buffer.from(JSON.stringify(m.value));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(text.length));
  return { data: Buffer.concat([len, text, b.subarray(8 + n)]), note: `header${m.note}` };
}

interface ZipEntryData { name: string; data: Buffer; method: 0 | 8; size: number; crc: number | null }

/** The entries of a (valid, seed) zip in central-directory order, decompressed. */
function readZip(buf: Buffer): ZipEntryData[] {
  const zip = ZipArchive.fromBuffer(buf);
  return zip.names.map((name) => {
    const data = Buffer.from(zip.read(name));
    return { name, data, method: 0, size: data.length, crc: null };
  });
}

let CRC: Uint32Array | undefined;
function crc32(d: Uint8Array): number {
  CRC ??= Uint32Array.from({ length: 256 }, (_, n) => { let c = n; for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; return c >>> 0; });
  let c = 0xffffffff;
  for (const x of d) c = CRC[(c ^ x) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function writeZip(entries: ZipEntryData[]): Buffer {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name);
    const body = e.method === 8 ? deflateRawSync(e.data) : e.data;
    const fields = Buffer.alloc(26);
    fields.writeUInt16LE(20, 0); fields.writeUInt16LE(0, 2); fields.writeUInt16LE(e.method, 4);
    fields.writeUInt32LE(e.crc ?? crc32(e.data), 10); fields.writeUInt32LE(body.length, 14); fields.writeUInt32LE(e.size >>> 0, 18);
    fields.writeUInt16LE(name.length, 22);
    const local = Buffer.concat([Buffer.from([0x50, 0x4b, 0x03, 0x04]), fields, name, body]);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0); c.writeUInt16LE(20, 4); fields.copy(c, 6); c.writeUInt32LE(offset, 42);
    central.push(c, name);
    parts.push(local);
    offset += local.length;
  }
  const cd = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0); end.writeUInt16LE(entries.length, 8); end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cd.length, 12); end.writeUInt32LE(offset, 16);
  return Buffer.concat([...parts, cd, end]);
}

/** A torch.save archive with one record mutated (its CRC fixed, or its declared size lied about). */
function mutateTorchArchive(r: Rand, input: Uint8Array, others: Uint8Array[]): { data: Uint8Array; note: string } {
  const entries = readZip(Buffer.from(input));
  const e = r.pick(entries);
  const roll = r.next();
  let note: string;
  if (roll < 0.2) {
    e.size = r.pick([0, 1, 1 << 20, 1 << 30, 0xffffffff]);
    e.method = 8;
    note = `${e.name} declares ${e.size} bytes`;
  } else {
    const m = mutateBytes(r, e.data, others);
    e.data = Buffer.from(m.data);
    e.size = e.data.length;
    if (r.next() < 0.3) e.method = 8;
    note = `${e.name}: ${m.note}`;
  }
  return { data: writeZip(entries.map((x) => (x === e ? x : { ...x, size: x.data.length }))), note };
}

/** A PNG with one chunk's data mutated and its CRC fixed (so the decoder sees the damage). */
function mutatePngChunks(r: Rand, input: Uint8Array, others: Uint8Array[]): { data: Uint8Array; note: string } {
  const b = Buffer.from(input);
  const chunks: Array<{ type: string; data: Buffer }> = [];
  for (let p = 8; p + 8 <= b.length;) {
    const len = b.readUInt32BE(p);
    chunks.push({ type: b.toString('latin1', p + 4, p + 8), data: b.subarray(p + 8, p + 8 + len) });
    p += 12 + len;
  }
  const c = r.pick(chunks);
  let note: string;
  if (c.type === 'IHDR' && r.next() < 0.5) {
    c.data = Buffer.from(c.data);
    c.data.writeUInt32BE(r.pick([0, 1, 16000, 65535, 0x7fffffff]), r.pick([0, 4]));
    note = `IHDR size ${c.data.readUInt32BE(0)}×${c.data.readUInt32BE(4)}`;
  } else {
    const m = mutateBytes(r, c.data, others);
    c.data = Buffer.from(m.data);
    note = `${c.type}: ${m.note}`;
  }
  const out: Buffer[] = [b.subarray(0, 8)];
  for (const x of chunks) {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(x.data.length, 0);
    head.write(x.type, 4, 'latin1');
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), x.data])));
    out.push(head, x.data, crc);
  }
  return { data: Buffer.concat(out), note };
}

const PROMPT_PIECES = ['(', ')', '[', ']', ':', '\\', '\\(', ':1.2)', ':-1)', ':0)', ':1e3)', ':.5)', ' BREAK ', 'BREAK', ',', ', ', 'cat', 'a photo of', '<fuzz>', '<fuzz>_1', ' ', '\n', '٣', '🐈', '\u0000', '((((((((((', '))))))))))', ':99999999999999999999999999)', 'x'.repeat(300)];

function randomPrompt(r: Rand): string {
  const n = r.next() < 0.05 ? 2000 + r.int(20000) : r.int(60);
  let s = '';
  for (let i = 0; i < n; i++) s += r.next() < 0.1 ? '('.repeat(r.int(2000)) : r.pick(PROMPT_PIECES);
  return s;
}

const LR_PIECES = ['5e-3', '1e-3', '0', '-1', '1e400', 'NaN', 'abc', '', ':', ',', ':100', ':0', ':-5', ':1e9', ':9007199254740993', ' ', '1e-5', ':100.5', '.', '1e30'];

function randomSchedule(r: Rand): string {
  let s = '';
  for (let i = r.int(12); i >= 0; i--) s += r.pick(LR_PIECES);
  return s;
}

// ------------------------------------------------------------------ driver

function seedFiles(): Record<'safetensors' | 'pt' | 'image', string[]> {
  const emb = join(FIX, 'embeddings');
  const img = join(FIX, 'images');
  const list = (d: string, re: RegExp) => readdirSync(d).filter((f) => re.test(f)).map((f) => join(d, f));
  return {
    safetensors: [...list(emb, /\.safetensors$/), join(FIX, 'sd1-tiny', 'text_encoder', 'model.safetensors')],
    // Only archives that load (the hostile ones are refused before anything is read).
    pt: list(emb, /^(a1111|learned_embeds|original-repo|sdxl-kohya|sdxl-with-info).*\.(pt|bin)$/),
    image: list(img, /\.(png|jpg|webp)$/),
  };
}

const CONFIGS = ['text_encoder/config.json', 'unet/config.json', 'vae/config.json', 'scheduler/scheduler_config.json'];

/** A model folder whose configs are copies (to be replaced) and whose weights are links. */
function makeModel(work: string): string {
  const dir = join(work, 'model');
  for (const e of readdirSync(MODEL, { withFileTypes: true, recursive: true })) {
    const rel = join(e.parentPath ?? (e as { path: string }).path, e.name).slice(MODEL.length + 1);
    if (e.isDirectory()) mkdirSync(join(dir, rel), { recursive: true });
    else if (rel.endsWith('.json') || rel.endsWith('.txt')) cpSync(join(MODEL, rel), join(dir, rel));
    else symlinkSync(join(MODEL, rel), join(dir, rel));
  }
  return dir;
}

function parseFlags(argv: string[]): { seconds: number; seed: number; only: Target[]; timeout: number; maxRssMb: number } {
  const get = (name: string, def: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 && i + 1 < argv.length ? argv[i + 1] : def;
  };
  const only = get('only', TARGETS.join(',')).split(',') as Target[];
  for (const t of only) if (!TARGETS.includes(t)) throw new Error(`--only: unknown target "${t}" (${TARGETS.join(', ')})`);
  return { seconds: Number(get('seconds', '300')), seed: Number(get('seed', String(Date.now() % 1e9))), only, timeout: Number(get('timeout', '60')), maxRssMb: Number(get('max-rss-mb', '1536')) };
}

async function driver(argv: string[]): Promise<number> {
  const o = parseFlags(argv);
  const r = new Rand(o.seed);
  const work = mkdtempSync(join(tmpdir(), 'oneword-fuzz-'));
  const failures = join(ROOT, 'fuzz-failures');
  const seeds = seedFiles();
  const bytes = Object.fromEntries(Object.entries(seeds).map(([k, fs]) => [k, fs.map((f) => readFileSync(f))])) as Record<'safetensors' | 'pt' | 'image', Buffer[]>;
  const model = makeModel(work);
  const stats = new Map<Target, { cases: number; errors: number }>(o.only.map((t) => [t, { cases: 0, errors: 0 }]));
  const failed: string[] = [];
  let maxRss = 0;
  let child: ChildProcess | undefined;
  const start = async () => {
    child = fork(fileURLToPath(import.meta.url), ['--worker', work], { execArgv: ['--import', 'tsx', '--max-old-space-size=1024'], stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    await new Promise<void>((res) => child!.once('message', () => res()));
  };
  await start();
  const end = Date.now() + o.seconds * 1000;
  let id = 0;
  console.log(`fuzz: seed ${o.seed}, ${o.seconds} s, targets ${o.only.join(', ')}`);
  while (Date.now() < end) {
    const target = r.pick(o.only);
    const c: Case = { id: ++id, target, note: '' };
    if (target === 'safetensors' || target === 'pt' || target === 'image') {
      const k = r.int(seeds[target].length);
      const src = bytes[target][k];
      const m = target === 'safetensors' && r.next() < 0.5 ? mutateSafetensorsHeader(r, src)
        : target === 'pt' && r.next() < 0.7 ? mutateTorchArchive(r, src, bytes.pt)
        : target === 'image' && seeds.image[k].endsWith('.png') && r.next() < 0.6 ? mutatePngChunks(r, src, bytes.image)
        : mutateBytes(r, src, bytes[target]);
      const ext = seeds[target][k].slice(seeds[target][k].lastIndexOf('.'));
      c.file = join(work, `case${ext}`);
      c.ext = ext;
      c.note = `${seeds[target][k].slice(FIX.length + 1)}: ${m.note}`;
      writeFileSync(c.file, m.data);
    } else if (target === 'config') {
      for (const f of CONFIGS) cpSync(join(MODEL, f), join(model, f));
      const f = r.pick(CONFIGS);
      const original = JSON.parse(readFileSync(join(MODEL, f), 'utf8'));
      const m = r.next() < 0.85 ? { text: JSON.stringify(mutateJson(r, original).value), note: 'json' } : { text: Buffer.from(mutateBytes(r, Buffer.from(JSON.stringify(original)), []).data).toString('latin1'), note: 'bytes' };
      c.file = join(model, f);
      c.ext = '.json';
      c.note = `${f} (${m.note})`;
      writeFileSync(c.file, m.text);
    } else {
      c.text = target === 'prompt' ? randomPrompt(r) : randomSchedule(r);
      c.note = JSON.stringify(c.text.slice(0, 80));
    }
    const outcome = await new Promise<Outcome & { rss?: number }>((res) => {
      const timer = setTimeout(() => res({ id: c.id, ok: false, problem: `hang: no result after ${o.timeout} s` }), o.timeout * 1000);
      const onMessage = (m: Outcome & { rss: number }) => { cleanup(); res(m); };
      const onExit = (code: number | null, signal: string | null) => { cleanup(); res({ id: c.id, ok: false, problem: `crash: worker exited (${signal ?? `code ${code}`})` }); };
      const cleanup = () => { clearTimeout(timer); child!.off('message', onMessage); child!.off('exit', onExit); };
      child!.on('message', onMessage);
      child!.on('exit', onExit);
      child!.send(c);
    });
    const s = stats.get(target)!;
    s.cases++;
    if (outcome.rss !== undefined) maxRss = Math.max(maxRss, outcome.rss);
    let problem = outcome.ok ? undefined : outcome.problem;
    if (outcome.ok && outcome.error) s.errors++;
    if (!problem && outcome.rss !== undefined && outcome.rss > o.maxRssMb * 2 ** 20) problem = `memory: worker at ${(outcome.rss / 2 ** 20).toFixed(0)} MB`;
    if (problem) {
      mkdirSync(failures, { recursive: true });
      const base = join(failures, `${target}-${c.id}`);
      if (c.file) cpSync(c.file, `${base}${c.ext}`);
      else writeFileSync(`${base}.txt`, c.text!);
      failed.push(`${target} #${c.id} (${c.note}): ${problem} → ${base}`);
      console.log(`FAIL ${failed[failed.length - 1]}`);
      if (!outcome.ok || (outcome.rss ?? 0) > o.maxRssMb * 2 ** 20) {
        child!.kill('SIGKILL');
        await start();
      }
    }
  }
  child!.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
  for (const [t, s] of stats) console.log(`  ${t.padEnd(12)} ${String(s.cases).padStart(6)} cases, ${String(s.errors).padStart(6)} refused with a clear error`);
  console.log(`fuzz: ${id} cases, ${failed.length} failures, worker peak RSS ${(maxRss / 2 ** 20).toFixed(0)} MB (seed ${o.seed})`);
  return failed.length ? 1 : 0;
}

const argv = process.argv.slice(2);
if (argv[0] === '--worker') await worker(argv[1]);
else process.exitCode = await driver(argv);
