// oneword's public API: the few names a library user imports.
//
//   import { StableDiffusion, trainTextualInversion } from 'oneword';
//   const sd = await StableDiffusion.load('./stable-diffusion-v1-5');
//   const run = await trainTextualInversion(sd, { images: './my-cat', token: '<my-cat>', init: 'cat' });
//   await run.save('./my-cat-ti');
//   const [image] = await sd.generate({ prompt: 'a watercolor painting of <my-cat>', seed: 1 });
//   savePng('cat.png', image.pixels, image.width, image.height);
export { StableDiffusion, type SDOptions as LoadOptions, type LearnedToken, type XLEncoding, type XLConditioning } from './pipelines/stable-diffusion.ts';
export type { GenerateOptions, GeneratedImage } from './pipelines/generate.ts';
export {
  trainTextualInversion,
  type TextualInversionOptions,
  type TrainingRun,
  type SaveOptions,
} from './pipelines/train-textual-inversion.ts';
export type { TrainingImages, StepLog, EmbeddingFileFormat } from './pipelines/textual-inversion.ts';
export type { StopMode, KeepMode, InitMode, Recommendation } from './pipelines/early-stopping.ts';
export { loadEmbedding, type Embedding, type LearnedEmbedding, type EmbeddingFormat } from './io/embeddings.ts';
export { decodeRgb, savePng, type RgbImage } from './io/images.ts';
export { verify, formatVerifyTable, type VerifyOptions, type VerifyRow } from './pipelines/verify.ts';
export { SAMPLER_NAMES, type SamplerName } from './schedulers/index.ts';
export { OnewordError } from './errors.ts';
