// The engine process: trains one word at a time and generates images, on requests from
// the server over IPC. A second process keeps the server answering while ONNX Runtime
// computes, and a crash here (out of memory, a native abort) leaves the server running.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { OnewordError, savePng, StableDiffusion, trainTextualInversion, type TextualInversionOptions } from '../index.ts';
import { loadEmbeddingsInto, nextIndex } from '../cli/generate.ts';
import { formatA1111Parameters } from '../io/images.ts';
import { SAMPLER_INFOTEXT, type SamplerName } from '../schedulers/index.ts';
import type { FromEngine, GenerateRequest, ToEngine, TrainRequest } from './protocol.ts';

const send = (m: FromEngine) => process.send?.(m);
const stops = new Map<string, AbortController>();


function failure(e: unknown): { message: string; usage: boolean } {
  if (e instanceof OnewordError) return { message: e.message, usage: e.usage };
  return { message: (e as Error)?.message ?? String(e), usage: false };
}

async function train(r: TrainRequest): Promise<void> {
  const stop = new AbortController();
  stops.set(r.job, stop);
  try {
    const sd = StableDiffusion.load(r.modelPath, { threads: r.threads });
    const run = await trainTextualInversion(sd, {
      ...(r.options as unknown as TextualInversionOptions),
      signal: stop.signal,
      onStep: (l, running) => send({ type: 'step', job: r.job, step: l.step, loss: l.loss, running, lr: l.lr, seconds: l.seconds }),
      onSave: (step, files) => send({ type: 'checkpoint', job: r.job, step, files }),
      onPreview: ({ step, file }) => file && send({ type: 'preview', job: r.job, step, file }),
    });
    send({ type: 'trained', job: r.job, stopped: run.stopped, step: run.steps });
  } catch (e) {
    send({ type: 'train-failed', job: r.job, ...failure(e) });
  } finally {
    stops.delete(r.job);
  }
}

async function generate(r: GenerateRequest): Promise<void> {
  try {
    // A fresh model per request, so one request's words never leak into the next; the
    // compiled ONNX Runtime sessions are cached per process and shared.
    const sd = StableDiffusion.load(r.modelPath, { threads: r.threads });
    const tiHashes = loadEmbeddingsInto(sd, r.embeddings.map((e) => `${e.file}:${e.token}`));
    const o = r.options as GenerateRequest['options'] & { negativePrompt?: string; guidance?: number; sampler?: string; steps?: number };
    const images = await sd.generate({ ...o, onStep: (image, step, steps) => send({ type: 'generate-progress', id: r.id, image, step, steps }) });
    mkdirSync(r.outDir, { recursive: true });
    let index = nextIndex(r.outDir);
    const out = images.map((img) => {
      const infotext = formatA1111Parameters({
        prompt: o.prompt, negativePrompt: o.negativePrompt, steps: o.steps!, sampler: SAMPLER_INFOTEXT[o.sampler as SamplerName] ?? o.sampler,
        cfgScale: o.guidance!, seed: img.seed, width: img.width, height: img.height, model: r.modelName,
        tiHashes: Object.keys(tiHashes).length ? tiHashes : undefined, extra: { Version: 'oneword' },
      });
      const file = join(r.outDir, `${String(index++).padStart(5, '0')}-${img.seed}.png`);
      savePng(file, img.pixels, img.width, img.height, { parameters: infotext });
      return { file, seed: img.seed, infotext };
    });
    send({ type: 'generated', id: r.id, images: out });
  } catch (e) {
    send({ type: 'generate-failed', id: r.id, ...failure(e) });
  }
}

process.on('message', (m: ToEngine) => {
  if (m.type === 'train') void train(m);
  else if (m.type === 'stop') stops.get(m.job)?.abort();
  else if (m.type === 'generate') void generate(m);
});
// The server is gone (even killed with -9): stop at once. Its next start finds the job at
// its last checkpoint; writing on here could race with that.
process.on('disconnect', () => process.exit(1));
