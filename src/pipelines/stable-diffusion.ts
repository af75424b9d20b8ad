// A loaded Stable Diffusion model: tokenizer, learned tokens, and compiled components
// (text encoder, UNet, VAE) as plain async functions on typed arrays. Each component is
// compiled once per input shape and reused.
import { dirname } from 'node:path';
import { Graph, type Tensor, type WeightMode } from '../graph/index.ts';
import { compile, type CompiledGraph, type CompileOptions } from '../runtime/session.ts';
import { threadsProblem } from '../runtime/threads.ts';
import { loadCheckpoint, type LoadOptions, type StableDiffusionCheckpoint } from './checkpoint.ts';
import { CLIPTokenizer } from '../models/clip-tokenizer.ts';
import { clipTextEncoder } from '../models/clip-text.ts';
import { unet2DCondition } from '../models/unet.ts';
import { vaeDecode, vaeEncode } from '../models/vae.ts';
import { Params } from '../models/params.ts';
import { OnewordError } from '../errors.ts';
import { EmbeddingError, embeddingWidthProblem, loadEmbedding, type LearnedEmbedding } from '../io/embeddings.ts';
import { embeddingTokenNames } from './prompt.ts';
import { generate, type GeneratedImage, type GenerateOptions } from './generate.ts';

/** Why a thread count cannot be used (null when it can): the CLI checks its flag before loading. */
export { threadsProblem };

/** Options of StableDiffusion.load (plus `variant: 'fp16'` and `predictionType` from LoadOptions). */
export interface SDOptions extends LoadOptions {
  /** How weights reach ONNX Runtime. Default 'external': float32 files are memory-mapped, others cast once and fed. */
  weights?: WeightMode;
  /** CPU threads. Default: all cores. */
  threads?: number;
  /** ONNX Runtime graph optimisation. Default 'all'. */
  optimization?: CompileOptions['optimization'];
}

/** A token learned by textual inversion: N vectors of the text encoder's width. */
export interface LearnedToken {
  token: string;
  vectors: Float32Array;
  count: number;
  /** Token ids of `<token>`, `<token>_1`, … in the tokenizer. */
  ids: number[];
}

export class StableDiffusion {
  readonly tokenizer: CLIPTokenizer;
  readonly learned = new Map<string, LearnedToken>();
  private readonly compiled = new Map<string, Promise<CompiledGraph>>();

  private constructor(
    readonly ckpt: StableDiffusionCheckpoint,
    private readonly opts: SDOptions,
  ) {
    this.tokenizer = ckpt.tokenizerDir
      ? CLIPTokenizer.fromDir(ckpt.tokenizerDir)
      : CLIPTokenizer.bundled(ckpt.family === 'sd2' ? { padToken: '!' } : {});
  }

  /** Loads a diffusers folder or a single-file SD 1.x / 2.x `.safetensors` (nothing is read beyond headers yet). */
  static load(path: string, opts: SDOptions = {}): StableDiffusion {
    const problem = threadsProblem(opts.threads);
    if (problem) throw OnewordError.badOption('threads', problem);
    return new StableDiffusion(loadCheckpoint(path, opts), opts);
  }

  /** Text to images; every option but the prompt has the CLI's default. */
  generate(opts: GenerateOptions): Promise<GeneratedImage[]> {
    return generate(this, opts);
  }

  /**
   * Teaches the model a word: an embedding file of any supported format (diffusers,
   * A1111/kohya .safetensors, .pt, .bin) or an embedding in memory (e.g. a training run's).
   * `token` sets the word to write in prompts (default: the file's own; see loadEmbedding).
   */
  loadTextualInversion(source: string | LearnedEmbedding, opts: { token?: string } = {}): LearnedToken {
    const e = typeof source === 'string' ? loadEmbedding(source, opts) : { ...source, token: opts.token ?? source.token };
    const where = typeof source === 'string' ? source : `embedding "${e.token}"`;
    // SDXL words (clip_l + clip_g) read fine now; clip_l alone must not pass for an SD 1.x word.
    const sdxlProblem = e.vectors2 ? embeddingWidthProblem(e, { dim: this.hiddenSize }) : null;
    if (sdxlProblem) throw new EmbeddingError(where, sdxlProblem, { usage: true });
    if (e.dim !== this.hiddenSize || e.vectors.length !== e.count * e.dim) {
      throw new EmbeddingError(where, `the embedding has ${e.vectors.length / e.count}-dimensional vectors but this model's text encoder uses ${this.hiddenSize} (SD 1.x: 768, SD 2.x: 1024)`, { usage: true });
    }
    return this.addLearnedToken(e.token, e.vectors, e.count);
  }

  get hiddenSize(): number {
    return this.ckpt.textEncoderConfig.hidden_size;
  }
  get latentChannels(): number {
    return this.ckpt.vaeConfig.latent_channels;
  }
  /** Pixels per latent cell (2^(number of VAE down blocks − 1)). */
  get vaeFactor(): number {
    return 2 ** (this.ckpt.vaeConfig.block_out_channels.length - 1);
  }
  get scalingFactor(): number {
    return this.ckpt.vaeConfig.scaling_factor;
  }
  get vocabSize(): number {
    return this.ckpt.textEncoderConfig.vocab_size;
  }

  compileOptions(): CompileOptions {
    return {
      weights: this.opts.weights ?? 'external',
      threads: this.opts.threads,
      optimization: this.opts.optimization,
      externalRoot: this.ckpt.layout === 'single-file' ? dirname(this.ckpt.source) : undefined,
    };
  }

  /** Params for a component inside graph `g` (weights named per component). */
  params(g: Graph, component: 'textEncoder' | 'unet' | 'vae'): Params {
    const tag = { textEncoder: 'te/', unet: 'unet/', vae: 'vae/' }[component];
    return new Params(g, this.ckpt[component], tag);
  }

  /**
   * Registers a learned token (or replaces its vectors). Its N vectors get tokenizer ids
   * after every existing token, read from the text encoder's extra rows.
   */
  addLearnedToken(token: string, vectors: Float32Array, count: number): LearnedToken {
    const d = this.hiddenSize;
    if (vectors.length !== count * d) {
      throw new OnewordError(`embedding "${token}": ${vectors.length / count} values per vector, but this model's text encoder uses ${d}`, { usage: true });
    }
    const existing = this.learned.get(token);
    if (existing) {
      if (existing.count !== count) throw new OnewordError(`token "${token}" is already loaded with ${existing.count} vectors`, { usage: true });
      existing.vectors.set(vectors);
      return existing;
    }
    const names = embeddingTokenNames(token, count);
    for (const name of names) {
      const id = this.tokenizer.tokenToId(name);
      if (id !== undefined) throw OnewordError.badOption('token', `"${name}" already exists in the vocabulary (id ${id}); use a new word such as "<${name.replace(/^<|>$/g, '')}>"`);
    }
    const ids = this.tokenizer.addTokens(names);
    const t: LearnedToken = { token, vectors: Float32Array.from(vectors), count, ids };
    this.learned.set(token, t);
    return t;
  }

  /** Extra embedding rows for every id ≥ vocab_size, in id order (at least one row). */
  extraRows(): Float32Array {
    const d = this.hiddenSize;
    const n = Math.max(1, this.tokenizer.length - this.vocabSize);
    const rows = new Float32Array(n * d);
    for (const t of this.learned.values()) {
      t.ids.forEach((id, k) => rows.set(t.vectors.subarray(k * d, (k + 1) * d), (id - this.vocabSize) * d));
    }
    return rows;
  }

  private cached(key: string, build: () => Record<string, Tensor>): Promise<CompiledGraph> {
    let c = this.compiled.get(key);
    if (!c) {
      c = compile(build(), this.compileOptions());
      this.compiled.set(key, c);
    }
    return c;
  }

  /** Text encoder: ids [B, 77] → last_hidden_state [B, 77, D]. */
  async encodeIds(ids: ArrayLike<number> | BigInt64Array, batch: number): Promise<Float32Array> {
    const rows = this.extraRows();
    const n = rows.length / this.hiddenSize;
    const c = await this.cached(`te:${batch}:${n}`, () => {
      const g = new Graph();
      const tIds = g.input('ids', [batch, 77], 'int64');
      const extra = g.input('extra', [n, this.hiddenSize]);
      const out = clipTextEncoder(this.params(g, 'textEncoder').scope('text_model'), this.ckpt.textEncoderConfig, tIds, { extraRows: extra });
      return { out };
    });
    const feedIds = ids instanceof BigInt64Array ? ids : BigInt64Array.from(ids as ArrayLike<number>, (v) => BigInt(v));
    return (await c.run({ ids: feedIds, extra: rows })).out as Float32Array;
  }

  /** UNet: latents [B, C, h, w], timesteps [B], context [B, 77·k, D] → prediction [B, C, h, w]. */
  async unet(sample: Float32Array, shape: readonly number[], t: ArrayLike<number>, context: Float32Array): Promise<Float32Array> {
    const [b, ch, h, w] = shape;
    // Long prompts give contexts of 77·k tokens.
    const len = context.length / (b * this.hiddenSize);
    const c = await this.cached(`unet:${b}:${ch}:${h}:${w}:${len}`, () => {
      const g = new Graph();
      const x = g.input('sample', [b, ch, h, w]);
      const tt = g.input('t', [b]);
      const ctx = g.input('context', [b, len, this.hiddenSize]);
      return { out: unet2DCondition(this.params(g, 'unet'), this.ckpt.unetConfig, x, tt, ctx) };
    });
    return (await c.run({ sample, t: Float32Array.from(t), context })).out as Float32Array;
  }

  /** VAE encoder: pixels [B, 3, H, W] in [-1, 1] → unscaled latent mean, std, logvar. */
  async vaeEncode(pixels: Float32Array, shape: readonly number[]): Promise<{ mean: Float32Array; std: Float32Array; logvar: Float32Array }> {
    const [b, ch, h, w] = shape;
    const c = await this.cached(`vae-enc:${b}:${ch}:${h}:${w}`, () => {
      const g = new Graph();
      const d = vaeEncode(this.params(g, 'vae'), this.ckpt.vaeConfig, g.input('pixels', [b, ch, h, w]));
      return { mean: d.mean, std: d.std, logvar: d.logvar };
    });
    const r = await c.run({ pixels });
    return { mean: r.mean as Float32Array, std: r.std as Float32Array, logvar: r.logvar as Float32Array };
  }

  /** VAE decoder: unscaled latents [B, C, h, w] → pixels [B, 3, H, W] (raw, roughly [-1, 1]). */
  async vaeDecode(latents: Float32Array, shape: readonly number[]): Promise<Float32Array> {
    const [b, ch, h, w] = shape;
    const c = await this.cached(`vae-dec:${b}:${ch}:${h}:${w}`, () => {
      const g = new Graph();
      return { out: vaeDecode(this.params(g, 'vae'), this.ckpt.vaeConfig, g.input('latents', [b, ch, h, w])) };
    });
    return (await c.run({ latents })).out as Float32Array;
  }
}
