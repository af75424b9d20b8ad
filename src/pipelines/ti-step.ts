// The textual-inversion train step as ONE compiled graph:
//   ids, v*, noisy latents, t, target → loss = MSE(UNet(noisy, t, TextEncoder(ids; v*)), target)
// and ∂loss/∂v*. Only v* is differentiated: the text encoder and UNet weights are frozen,
// and nothing upstream of v* (VAE, time embedding) gets a backward pass.
import { Graph, grad, mse, type Tensor } from '../graph/index.ts';
import type { CompiledGraph } from '../runtime/session.ts';
import { compile } from '../runtime/session.ts';
import { clipTextEncoder } from '../models/clip-text.ts';
import { unet2DCondition } from '../models/unet.ts';
import type { StableDiffusion } from './stable-diffusion.ts';

export interface TrainStepShape {
  batch: number;
  /** Number of extra token rows (all learned vectors, the trained ones included). */
  rows: number;
  latent: [number, number, number];
}

export interface TrainStepResult {
  loss: number;
  /** ∂loss/∂rows [rows, D] (empty for a forward-only step). */
  grad: Float32Array;
  /** Only when asked for (verification). */
  pred?: Float32Array;
  context?: Float32Array;
}

export class TrainStep {
  private constructor(
    private readonly compiled: CompiledGraph,
    readonly shape: TrainStepShape,
  ) {}

  /** `gradient: false` compiles the forward pass alone (the loss on an evaluation batch). */
  static async create(sd: StableDiffusion, shape: TrainStepShape, withIntermediates = false, gradient = true): Promise<TrainStep> {
    const g = new Graph();
    const d = sd.hiddenSize;
    const [c, h, w] = shape.latent;
    const b = shape.batch;
    const ids = g.input('ids', [b, 77], 'int64');
    const rows = g.input('rows', [shape.rows, d]);
    const noisy = g.input('noisy', [b, c, h, w]);
    const t = g.input('t', [b]);
    const target = g.input('target', [b, c, h, w]);
    const context = clipTextEncoder(sd.params(g, 'textEncoder').scope('text_model'), sd.ckpt.textEncoderConfig, ids, { extraRows: rows });
    const pred = unet2DCondition(sd.params(g, 'unet'), sd.ckpt.unetConfig, noisy, t, context);
    const loss = mse(pred, target);
    const outs: Record<string, Tensor> = { loss };
    if (gradient) outs.grad = grad(loss, [rows])[0];
    if (withIntermediates) Object.assign(outs, { pred, context });
    return new TrainStep(await compile(outs, sd.compileOptions()), shape);
  }

  async run(feeds: { ids: BigInt64Array | ArrayLike<number>; rows: Float32Array; noisy: Float32Array; t: ArrayLike<number>; target: Float32Array }): Promise<TrainStepResult> {
    const ids = feeds.ids instanceof BigInt64Array ? feeds.ids : BigInt64Array.from(feeds.ids as ArrayLike<number>, (v) => BigInt(v));
    const r = await this.compiled.run({ ids, rows: feeds.rows, noisy: feeds.noisy, t: Float32Array.from(feeds.t), target: feeds.target });
    return {
      loss: (r.loss as Float32Array)[0],
      grad: (r.grad as Float32Array | undefined) ?? new Float32Array(0),
      pred: r.pred as Float32Array | undefined,
      context: r.context as Float32Array | undefined,
    };
  }
}
