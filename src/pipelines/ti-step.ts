// The textual-inversion train step as ONE compiled graph:
//   ids, v*, noisy latents, t, target → loss = MSE(UNet(noisy, t, TextEncoder(ids; v*)), target)
// and ∂loss/∂v*. Only v* is differentiated: the text encoder and UNet weights are frozen,
// and nothing upstream of v* (VAE, time embedding) gets a backward pass.
// SDXL (textual_inversion_sdxl.py with both encoders trained): ids and rows for each encoder,
// context = both encoders' hidden_states[-2] side by side, the UNet also takes encoder 2's
// pooled output (at the learned token's position) and the time ids; ∂loss/∂rows of BOTH.
import { Graph, grad, mse, type Tensor } from '../graph/index.ts';
import * as o from '../graph/index.ts';
import type { CompiledGraph } from '../runtime/session.ts';
import { compile } from '../runtime/session.ts';
import { clipPoolingMask, clipTextEncoder, clipTextHiddenStates, clipTextPooled } from '../models/clip-text.ts';
import { SDXL_TIME_IDS, unet2DCondition } from '../models/unet.ts';
import { OnewordError } from '../errors.ts';
import type { StableDiffusion } from './stable-diffusion.ts';

export interface TrainStepShape {
  batch: number;
  /** Number of extra token rows (all learned vectors, the trained ones included). */
  rows: number;
  latent: [number, number, number];
  /** SDXL: number of text encoder 2's extra rows (default: `rows`). */
  rows2?: number;
}

export interface TrainStepFeeds {
  ids: BigInt64Array | ArrayLike<number>;
  rows: Float32Array;
  noisy: Float32Array;
  t: ArrayLike<number>;
  target: Float32Array;
  /** SDXL: tokenizer 2's ids [B, 77] … */
  ids2?: BigInt64Array | ArrayLike<number>;
  /** … text encoder 2's extra rows … */
  rows2?: Float32Array;
  /** … and the time ids [B, 6] (sdxlTimeIds per image). */
  timeIds?: ArrayLike<number>;
}

export interface TrainStepResult {
  loss: number;
  /** ∂loss/∂rows [rows, D] (empty for a forward-only step). */
  grad: Float32Array;
  /** SDXL: ∂loss/∂rows2 [rows2, D2] (empty for a forward-only step). */
  grad2?: Float32Array;
  /** Only when asked for (verification). */
  pred?: Float32Array;
  context?: Float32Array;
  /** SDXL, only when asked for: the pooled text embeds the UNet got [B, Dp]. */
  textEmbeds?: Float32Array;
}

/** The text conditioning of an SDXL step: context [B, 77, D1 + D2] and pooled text embeds [B, Dp]. */
function xlConditioning(sd: StableDiffusion, g: Graph, b: number, rows: Tensor, rows2: Tensor): { context: Tensor; textEmbeds: Tensor } {
  const cfg2 = sd.ckpt.textEncoder2Config!;
  const h1 = clipTextHiddenStates(sd.params(g, 'textEncoder').scope('text_model'), sd.ckpt.textEncoderConfig, g.input('ids', [b, 77], 'int64'), { extraRows: rows });
  const p2 = sd.params(g, 'textEncoder2');
  const h2 = clipTextHiddenStates(p2.scope('text_model'), cfg2, g.input('ids2', [b, 77], 'int64'), { extraRows: rows2 });
  return { context: o.concat([h1.penultimate, h2.penultimate], 2), textEmbeds: clipTextPooled(p2, cfg2, h2.last, g.input('pool', [b, 77])) };
}

export class TrainStep {
  private constructor(
    private readonly compiled: CompiledGraph,
    readonly shape: TrainStepShape,
    private readonly sd: StableDiffusion,
  ) {}

  /** `gradient: false` compiles the forward pass alone (the loss on an evaluation batch). */
  static async create(sd: StableDiffusion, shape: TrainStepShape, withIntermediates = false, gradient = true): Promise<TrainStep> {
    const g = new Graph();
    const d = sd.hiddenSize;
    const [c, h, w] = shape.latent;
    const b = shape.batch;
    const rows = g.input('rows', [shape.rows, d]);
    const noisy = g.input('noisy', [b, c, h, w]);
    const t = g.input('t', [b]);
    const target = g.input('target', [b, c, h, w]);
    const outs: Record<string, Tensor> = {};
    let pred: Tensor;
    let context: Tensor;
    if (sd.isXL) {
      const rows2 = g.input('rows2', [shape.rows2 ?? shape.rows, sd.hiddenSize2]);
      const xl = xlConditioning(sd, g, b, rows, rows2);
      context = xl.context;
      pred = unet2DCondition(sd.params(g, 'unet'), sd.ckpt.unetConfig, noisy, t, context, { textEmbeds: xl.textEmbeds, timeIds: g.input('timeIds', [b, SDXL_TIME_IDS]) });
      if (withIntermediates) outs.textEmbeds = xl.textEmbeds;
      outs.loss = mse(pred, target);
      if (gradient) [outs.grad, outs.grad2] = grad(outs.loss, [rows, rows2]);
    } else {
      context = clipTextEncoder(sd.params(g, 'textEncoder').scope('text_model'), sd.ckpt.textEncoderConfig, g.input('ids', [b, 77], 'int64'), { extraRows: rows });
      pred = unet2DCondition(sd.params(g, 'unet'), sd.ckpt.unetConfig, noisy, t, context);
      outs.loss = mse(pred, target);
      if (gradient) outs.grad = grad(outs.loss, [rows])[0];
    }
    if (withIntermediates) Object.assign(outs, { pred, context });
    return new TrainStep(await compile(outs, sd.compileOptions()), shape, sd);
  }

  async run(feeds: TrainStepFeeds): Promise<TrainStepResult> {
    const int64 = (ids: BigInt64Array | ArrayLike<number>) => (ids instanceof BigInt64Array ? ids : BigInt64Array.from(ids as ArrayLike<number>, (v) => BigInt(v)));
    const extra: Record<string, Float32Array | BigInt64Array> = {};
    if (this.sd.isXL) {
      if (!feeds.ids2 || !feeds.rows2 || !feeds.timeIds) throw new OnewordError('an SDXL train step needs ids2, rows2 and timeIds');
      const ids2 = int64(feeds.ids2);
      Object.assign(extra, { ids2, rows2: feeds.rows2, timeIds: Float32Array.from(feeds.timeIds), pool: clipPoolingMask(this.sd.ckpt.textEncoder2Config!, ids2, this.shape.batch) });
    }
    const r = await this.compiled.run({ ids: int64(feeds.ids), rows: feeds.rows, noisy: feeds.noisy, t: Float32Array.from(feeds.t), target: feeds.target, ...extra });
    return {
      loss: (r.loss as Float32Array)[0],
      grad: (r.grad as Float32Array | undefined) ?? new Float32Array(0),
      ...(this.sd.isXL ? { grad2: (r.grad2 as Float32Array | undefined) ?? new Float32Array(0) } : {}),
      pred: r.pred as Float32Array | undefined,
      context: r.context as Float32Array | undefined,
      textEmbeds: r.textEmbeds as Float32Array | undefined,
    };
  }
}
