// POST /api/generate: checks a JSON request, has the engine draw the images (one request
// at a time) and answers with base64 PNGs carrying A1111 infotext. Embeddings come from
// the gallery (a job id, optionally at a saved step) or as uploaded files.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { loadEmbedding, StableDiffusion } from '../index.ts';
import { embeddingWidthProblem } from '../io/embeddings.ts';
import { checkGenerateOptions } from '../pipelines/generate.ts';
import type { EngineClient } from './engine-client.ts';
import type { JobManager } from './jobs.ts';
import type { ModelRegistry } from './models.ts';
import type { FromEngine } from './protocol.ts';
import { fromLibrary, RequestError } from './request-error.ts';
import { savedSteps } from './run-folder.ts';

const FIELDS: Record<string, 'string' | 'number' | 'int' | 'array'> = {
  model: 'string', prompt: 'string', negative: 'string', steps: 'int', cfg: 'number', sampler: 'string', seed: 'int',
  width: 'int', height: 'int', count: 'int', eta: 'number', embeddings: 'array',
};
/** Library option → request field, for error messages. */
const FIELD_NAMES = { negativePrompt: 'negative', guidance: 'cfg' };
const MAX_COUNT = 16;
const MAX_SIZE = 2048;
const MAX_EMBEDDINGS = 16;
const EMBEDDING_EXTENSIONS = ['.safetensors', '.pt', '.bin'];
const WORD = /^[\p{L}\p{N}<>_.-]{1,64}$/u;

export interface GenerateResult {
  images: string[];
  infotexts: string[];
  seeds: number[];
  files: string[];
}

export class Generations {
  private chain: Promise<unknown> = Promise.resolve();
  private readonly waiting = new Map<string, { resolve: (m: FromEngine) => void }>();
  private readonly validators = new Map<string, StableDiffusion>();

  constructor(
    private readonly engine: EngineClient,
    private readonly models: ModelRegistry,
    private readonly jobs: JobManager,
    private readonly dataDir: string,
    private readonly threads?: number,
  ) {
    engine.on('message', (m: FromEngine) => {
      if ((m.type === 'generated' || m.type === 'generate-failed') && this.waiting.has(m.id)) {
        this.waiting.get(m.id)!.resolve(m);
        this.waiting.delete(m.id);
      }
    });
    engine.on('exit', () => {
      for (const [id, w] of this.waiting) w.resolve({ type: 'generate-failed', id, message: 'the generating process exited (out of memory?)', usage: false });
      this.waiting.clear();
    });
  }

  /** A loaded model to check options against (headers and tokenizer only). */
  private validator(id: string, path: string): StableDiffusion {
    let sd = this.validators.get(id);
    if (!sd) {
      sd = StableDiffusion.load(path);
      this.validators.set(id, sd);
    }
    return sd;
  }

  async run(body: unknown): Promise<GenerateResult> {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new RequestError('the request body must be a JSON object');
    const b = body as Record<string, unknown>;
    for (const [k, v] of Object.entries(b)) {
      const type = FIELDS[k];
      if (!type) throw new RequestError(`unknown field "${k}" (fields: ${Object.keys(FIELDS).join(', ')})`);
      if (v === undefined || v === null) continue;
      const ok = type === 'string' ? typeof v === 'string' : type === 'array' ? Array.isArray(v) : typeof v === 'number' && Number.isFinite(v) && (type === 'number' || Number.isInteger(v));
      if (!ok) throw new RequestError(`${k} must be ${type === 'int' ? 'a whole number' : type === 'array' ? 'an array' : `a ${type}`}, got ${JSON.stringify(v)}`);
    }
    if (typeof b.prompt !== 'string') throw new RequestError('prompt is required');
    const model = this.models.get(b.model ?? 'shapes');
    if (!model) throw new RequestError(`model "${String(b.model)}" is not one of this server's models (GET /api/models)`);
    if (b.count !== undefined && ((b.count as number) < 1 || (b.count as number) > MAX_COUNT)) throw new RequestError(`count must be from 1 to ${MAX_COUNT}, got ${b.count}`);
    for (const k of ['width', 'height'] as const) if (b[k] !== undefined && (b[k] as number) > MAX_SIZE) throw new RequestError(`${k} must be at most ${MAX_SIZE}, got ${b[k]}`);
    let options;
    try {
      options = checkGenerateOptions(this.validator(model.id, model.path), {
        prompt: b.prompt, negativePrompt: b.negative as string | undefined, steps: b.steps as number | undefined, guidance: b.cfg as number | undefined,
        sampler: b.sampler as string | undefined, seed: b.seed as number | undefined, width: b.width as number | undefined,
        height: b.height as number | undefined, count: b.count as number | undefined, ...(b.eta !== undefined && b.eta !== null ? { eta: b.eta as number } : {}),
      });
    } catch (e) {
      throw fromLibrary(e, FIELD_NAMES);
    }
    const uploads = join(this.dataDir, 'uploads', randomBytes(6).toString('hex'));
    try {
      const embeddings = this.embeddings((b.embeddings as unknown[] | undefined) ?? [], uploads, { dim: model.hidden_size, dim2: model.hidden_size_2 });
      const task = this.chain.then(() => this.send({
        type: 'generate', id: randomBytes(6).toString('hex'), modelPath: model.path, modelName: model.name, threads: this.threads,
        options, embeddings, outDir: join(this.dataDir, 'outputs'),
      }));
      this.chain = task.catch(() => undefined);
      const m = await task;
      if (m.type === 'generate-failed') throw m.usage ? new RequestError(m.message) : new Error(m.message);
      if (m.type !== 'generated') throw new Error('unexpected answer from the engine');
      return {
        images: m.images.map((i) => readFileSync(i.file).toString('base64')),
        infotexts: m.images.map((i) => i.infotext),
        seeds: m.images.map((i) => i.seed),
        files: m.images.map((i) => i.file.slice(this.dataDir.length + 1)),
      };
    } finally {
      rmSync(uploads, { recursive: true, force: true });
    }
  }

  private send(r: Parameters<EngineClient['generate']>[0]): Promise<FromEngine> {
    return new Promise((resolve) => {
      this.waiting.set(r.id, { resolve });
      this.engine.generate(r);
    });
  }

  /**
   * Each entry: a job id ("id" or "id@step", or { job, step }) or an uploaded file
   * { name, data: base64, token? }. Returns the files with their prompt words.
   */
  private embeddings(list: unknown[], uploads: string, widths: { dim: number; dim2?: number }): Array<{ file: string; token: string }> {
    if (list.length > MAX_EMBEDDINGS) throw new RequestError(`embeddings: at most ${MAX_EMBEDDINGS}, got ${list.length}`);
    return list.map((entry, i) => {
      const where = `embeddings[${i}]`;
      let e: Record<string, unknown>;
      if (typeof entry === 'string') {
        const [job, step] = entry.split('@');
        e = { job, ...(step !== undefined ? { step: Number(step) } : {}) };
      } else if (typeof entry === 'object' && entry !== null && !Array.isArray(entry)) e = entry as Record<string, unknown>;
      else throw new RequestError(`${where} must be a job id or { "name", "data" } (a base64 file)`);
      if (e.token !== undefined && (typeof e.token !== 'string' || !WORD.test(e.token))) throw new RequestError(`${where}.token must be 1–64 letters, digits, <, >, _, - or .`);
      if (typeof e.job === 'string') {
        const job = this.jobs.get(e.job);
        if (!job) throw new RequestError(`${where}: no job "${e.job}"`);
        if (e.step !== undefined && !Number.isInteger(e.step)) throw new RequestError(`${where}.step must be a whole number`);
        const saved = savedSteps(this.jobs.runDir(job.id), job.steps);
        const at = e.step === undefined ? saved.at(-1) : saved.find((s) => s.step === e.step);
        if (!at?.diffusers) throw new RequestError(`${where}: job "${job.id}" has no saved embedding${e.step === undefined ? ' yet' : ` at step ${e.step}`}`);
        return { file: at.diffusers, token: (e.token as string | undefined) ?? job.token };
      }
      if (typeof e.name !== 'string' || typeof e.data !== 'string') throw new RequestError(`${where} must be a job id or { "name", "data" } (a base64 file)`);
      const ext = extname(e.name).toLowerCase();
      if (!EMBEDDING_EXTENSIONS.includes(ext)) throw new RequestError(`${where}: "${e.name}" is not a ${EMBEDDING_EXTENSIONS.join(', ')} file`);
      // A1111's rule: the word is the file name unless given.
      const token = (e.token as string | undefined) ?? e.name.slice(0, e.name.length - ext.length);
      if (!WORD.test(token)) throw new RequestError(`${where}: name the word with "token" (letters, digits, <, >, _, - or .)`);
      mkdirSync(uploads, { recursive: true });
      const file = join(uploads, `${i}${ext}`);
      writeFileSync(file, Buffer.from(e.data, 'base64'));
      let emb;
      try {
        emb = loadEmbedding(file, { token });
      } catch (err) {
        throw new RequestError(`${where}: "${e.name}" ${(err as Error).message.replace(`${file}: `, '')}`);
      }
      const misfit = embeddingWidthProblem(emb, widths);
      if (misfit) throw new RequestError(`${where}: "${e.name}": ${misfit}`);
      return { file, token };
    });
  }
}
