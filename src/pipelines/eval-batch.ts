// DVAR's evaluation batch: images, flips, VAE latent samples, noise, timesteps and
// captions drawn ONCE from a generator of their own, so the loss on it depends on the
// embedding alone, and a resumed run redraws exactly the same batch from the seed. The
// training generator is never touched: stop auto trains exactly as stop fixed does.
import { TorchGenerator } from '../schedulers/index.ts';
import type { TrainStep } from './ti-step.ts';
import { TextFeeds, type RowFeeds } from './step-feeds.ts';

/** An image's cached latent distribution (index 1: its mirror, when flips are on). */
export interface EvalImage {
  caption: string;
  mean: Float32Array[];
  std: Float32Array[];
  /** SDXL's time ids of the image (empty otherwise). */
  timeIds: number[];
}

export interface EvalNoise {
  readonly numTrainTimesteps: number;
  addNoise(original: Float32Array, noise: Float32Array, timesteps: number | readonly number[]): Float32Array;
  trainingTarget(original: Float32Array, noise: Float32Array, timesteps: number | readonly number[]): Float32Array;
}

export interface EvalBatchSpec {
  images: readonly EvalImage[];
  /** Samples in the batch (a train step's batch × gradient accumulation: the same work as one step's forward passes). */
  samples: number;
  flipP: number;
  /** The run's seed; the batch has its own stream derived from it. */
  seed: number;
  templates: readonly string[];
  /** The text inputs of one sample: a template filled with the word and the image's caption (SDXL: also the image's time ids). */
  text: (template: string, image: EvalImage) => TextFeeds;
  scheduler: EvalNoise;
  latentShape: readonly [number, number, number];
  scalingFactor: number;
}

interface EvalSample {
  text: TextFeeds;
  noisy: Float32Array;
  target: Float32Array;
  t: number;
}

/** Keeps the evaluation stream apart from the training stream of the same seed. */
const EVAL_SEED_OFFSET = 0x5eed_e7a1n;

export class EvalBatch {
  private constructor(private readonly samples: EvalSample[]) {}

  /** Draws the batch: the images in turn (every image once when samples ≥ images), the rest at random. */
  static draw(s: EvalBatchSpec): EvalBatch {
    const gen = new TorchGenerator(BigInt(s.seed) + EVAL_SEED_OFFSET);
    const [c, h, w] = s.latentShape;
    const samples: EvalSample[] = [];
    for (let k = 0; k < s.samples; k++) {
      const img = s.images[k % s.images.length];
      const u = gen.rand(2);
      const flip = img.mean.length > 1 && u[0] < s.flipP ? 1 : 0;
      const template = s.templates[Math.min(s.templates.length - 1, Math.floor(u[1] * s.templates.length))];
      const eps = gen.randn([1, c, h, w]);
      const mean = img.mean[flip];
      const std = img.std[flip];
      const latents = Float32Array.from(mean, (m, i) => (m + std[i] * eps[i]) * s.scalingFactor);
      const noise = gen.randn([1, c, h, w]);
      const t = gen.randint(0, s.scheduler.numTrainTimesteps, 1)[0];
      samples.push({
        text: s.text(template, img),
        noisy: s.scheduler.addNoise(latents, noise, [t]),
        target: s.scheduler.trainingTarget(latents, noise, [t]),
        t,
      });
    }
    return new EvalBatch(samples);
  }

  get size(): number {
    return this.samples.length;
  }

  /** The mean denoising loss over the batch, run `step.shape.batch` samples at a time (no gradient). */
  async loss(step: TrainStep, rows: RowFeeds): Promise<number> {
    const b = step.shape.batch;
    if (this.samples.length % b !== 0) throw new Error(`evaluation batch of ${this.samples.length} does not split into runs of ${b}`);
    let total = 0;
    for (let i = 0; i < this.samples.length; i += b) {
      const chunk = this.samples.slice(i, i + b);
      const n = chunk[0].noisy.length;
      const noisy = new Float32Array(b * n);
      const target = new Float32Array(b * n);
      chunk.forEach((s, k) => {
        noisy.set(s.noisy, k * n);
        target.set(s.target, k * n);
      });
      const r = await step.run({ ...TextFeeds.join(chunk.map((s) => s.text)).feeds(), ...rows, noisy, target, t: chunk.map((s) => s.t) });
      total += r.loss * b;
    }
    return total / this.samples.length;
  }
}
