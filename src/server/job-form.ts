// POST /api/jobs: a multipart form with the images and the options named as `oneword
// train`'s flags, checked completely before anything is kept. The upload is written to a
// staging folder and only renamed into the jobs folder once every check passed, so a bad
// request changes nothing.
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { decodeRgb, StableDiffusion } from '../index.ts';
import { defaultSize } from '../pipelines/generate.ts';
import { checkTrainOptions, TRAIN_DEFAULTS, type TrainOptions } from '../pipelines/textual-inversion.ts';
import { IMAGE_EXTENSIONS } from '../io/images.ts';
import { writeJsonAtomic } from './files.ts';
import type { JobRecord } from './jobs.ts';
import type { ModelRegistry } from './models.ts';
import { fromLibrary, RequestError } from './request-error.ts';

export const MAX_FILES = 100;

type FieldType = 'int' | 'number' | 'string' | 'boolean' | 'lr';

/** Form field (the CLI flag) → library option and type. */
const FIELDS: Record<string, [option: string, type: FieldType]> = {
  token: ['token', 'string'], init: ['init', 'string'], vectors: ['vectors', 'int'], what: ['what', 'string'],
  resolution: ['resolution', 'int'], 'center-crop': ['centerCrop', 'boolean'], 'flip-p': ['flipP', 'number'],
  steps: ['steps', 'int'], lr: ['lr', 'lr'], 'scale-lr': ['scaleLr', 'boolean'], 'lr-schedule': ['lrSchedule', 'string'],
  'lr-warmup': ['lrWarmup', 'int'], batch: ['batch', 'int'], 'grad-accum': ['gradAccum', 'int'],
  'max-grad-norm': ['maxGradNorm', 'number'], seed: ['seed', 'int'], 'save-every': ['saveEvery', 'int'],
  'preview-every': ['previewEvery', 'int'], 'preview-prompt': ['previewPrompt', 'string'],
};
const FILE_FIELDS = new Set(['images', 'template-file']);
const OPTION_TO_FIELD = Object.fromEntries(Object.entries(FIELDS).map(([f, [o]]) => [o, f]));

/** Tokens become file names (<name>.safetensors): letters, digits, <>, _, - and . only. */
const TOKEN = /^[\p{L}\p{N}<>_.-]{1,64}$/u;

function convert(field: string, type: FieldType, raw: string): unknown {
  const v = raw.trim();
  if (type === 'string') return raw;
  if (type === 'boolean') {
    if (['true', 'on', '1', 'yes'].includes(v)) return true;
    if (['false', 'off', '0', 'no', ''].includes(v)) return false;
    throw new RequestError(`${field} must be true or false, got "${raw}"`);
  }
  if (type === 'lr' && /[:,]/.test(v)) return v; // an A1111 schedule: "5e-3:100, 1e-3:1000, 1e-5"
  const n = Number(v);
  if (v === '' || !Number.isFinite(n)) throw new RequestError(`${field} needs a number${type === 'lr' ? ' or an A1111 schedule' : ''}, got "${raw}"`);
  if (type === 'int' && !Number.isInteger(n)) throw new RequestError(`${field} must be a whole number, got "${raw}"`);
  return n;
}

export interface ParsedJob {
  staging: string;
  record: JobRecord;
}

/** Checks the form and writes the staging folder; on any problem the folder is gone and a RequestError says why. */
export async function prepareJob(form: FormData, jobsDir: string, models: ModelRegistry): Promise<ParsedJob> {
  const values: Record<string, unknown> = {};
  let modelId = 'shapes';
  for (const key of new Set(form.keys())) {
    const all = form.getAll(key);
    if (FILE_FIELDS.has(key)) continue;
    if (key !== 'model' && !FIELDS[key]) throw new RequestError(`unknown field "${key}" (fields are named as oneword train's flags, e.g. steps, lr, grad-accum)`);
    if (all.length > 1) throw new RequestError(`${key} is given ${all.length} times`);
    if (typeof all[0] !== 'string') throw new RequestError(`${key} must be a text field, not a file`);
    if (key === 'model') modelId = all[0];
    else values[FIELDS[key][0]] = convert(key, FIELDS[key][1], all[0]);
  }
  const model = models.get(modelId);
  if (!model) throw new RequestError(`model "${modelId}" is not one of this server's models (GET /api/models)`);
  for (const k of ['token', 'init'] as const) if (values[k] === undefined) throw new RequestError(`${k} is required`);
  const token = String(values.token);
  if (!TOKEN.test(token) || token.includes('..')) throw new RequestError(`token must be 1–64 letters, digits, <, >, _, - or . (it names the embedding file), got "${token}"`);
  const previewEvery = (values.previewEvery as number | undefined) ?? 0;
  if (previewEvery < 0) throw new RequestError(`preview-every must be a whole number ≥ 0, got ${previewEvery}`);

  const images = form.getAll('images');
  if (images.length === 0) throw new RequestError('images: upload 3–5 (or more) pictures of the concept');
  if (images.length + form.getAll('template-file').length > MAX_FILES) throw new RequestError(`images: at most ${MAX_FILES} files per job, got ${images.length}`, 413);

  const id = `${token.replace(/^<|>$/g, '').replace(/[^\p{L}\p{N}_-]+/gu, '_').slice(0, 40) || 'word'}-${randomBytes(4).toString('hex')}`;
  const staging = join(jobsDir, `.staging-${id}`);
  mkdirSync(join(staging, 'images'), { recursive: true });
  try {
    const names: string[] = [];
    for (const [i, f] of images.entries()) {
      if (typeof f === 'string') throw new RequestError('images must be files');
      const ext = extname(f.name).toLowerCase();
      if (!(IMAGE_EXTENSIONS as readonly string[]).includes(ext)) throw new RequestError(`images: "${f.name}" is not a ${IMAGE_EXTENSIONS.join(', ')} file`);
      const name = `${String(i).padStart(3, '0')}${ext}`;
      const path = join(staging, 'images', name);
      writeFileSync(path, new Uint8Array(await f.arrayBuffer()));
      // The trainer's own decoder, with its limits, decides what is an image.
      try {
        await decodeRgb(path);
      } catch {
        throw new RequestError(`images: "${f.name}" is not an image this server can read`);
      }
      names.push(name);
    }
    const templateFiles = form.getAll('template-file');
    if (templateFiles.length > 1) throw new RequestError('template-file is given more than once');
    if (templateFiles[0] !== undefined) {
      if (typeof templateFiles[0] === 'string') throw new RequestError('template-file must be a file');
      writeFileSync(join(staging, 'template.txt'), new Uint8Array(await templateFiles[0].arrayBuffer()));
      values.templateFile = join(staging, 'template.txt');
    }

    // The trainer's own checks (vocabulary, resolution, schedule, template), before any compute.
    const { previewEvery: _p, previewPrompt: _q, ...trainValues } = values;
    const sd = StableDiffusion.load(model.path);
    const opts = { ...TRAIN_DEFAULTS, resolution: defaultSize(sd), ...trainValues, images: names.map((n) => join(staging, 'images', n)) } as unknown as TrainOptions;
    try {
      checkTrainOptions(sd, opts);
    } catch (e) {
      throw fromLibrary(e, OPTION_TO_FIELD);
    }
    if (values.templateFile) values.templateFile = join(jobsDir, id, 'template.txt');
    const { token: _t, init, ...options } = values;
    const now = new Date().toISOString();
    const record: JobRecord = {
      id, created: now, model: model.id, model_path: model.path, token, init: String(init), images: names,
      options: { ...options, resolution: opts.resolution }, state: 'queued', step: 0, steps: opts.steps, loss: null, queued_at: now,
    };
    writeJsonAtomic(join(staging, 'job.json'), record);
    return { staging, record };
  } catch (e) {
    rmSync(staging, { recursive: true, force: true });
    throw e;
  }
}

/** A job's options as the form names them (the CLI's flags). */
export function optionsAsFields(options: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(options)) if (k !== 'templateFile') out[OPTION_TO_FIELD[k] ?? k] = v;
  if (options.templateFile) out['template-file'] = 'template.txt';
  return out;
}
