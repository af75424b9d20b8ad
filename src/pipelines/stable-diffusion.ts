// A loaded Stable Diffusion model: tokenizer(s), learned tokens, and compiled components
// (text encoder(s), UNet, VAE) as plain async functions on typed arrays. Each component is
// compiled once per input shape and reused. SDXL models have a second tokenizer and text
// encoder; their prompts encode to both encoders' penultimate states and a pooled vector.
import { totalmem } from 'node:os';
import { dirname } from 'node:path';
import * as o from '../graph/index.ts';
import { Graph, type Tensor, type WeightMode } from '../graph/index.ts';
import { compile, type CompiledGraph, type CompileOptions } from '../runtime/session.ts';
import { threadsProblem } from '../runtime/threads.ts';
import { loadCheckpoint, type LoadOptions, type StableDiffusionCheckpoint } from './checkpoint.ts';
import { CLIPTokenizer } from '../models/clip-tokenizer.ts';
import { clipPoolingMask, clipTextEncoder, clipTextHiddenStates, clipTextPooled } from '../models/clip-text.ts';
import { SDXL_TIME_IDS, unet2DCondition } from '../models/unet.ts';
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
  /**
   * Keep every weight memory-mapped from the model's files instead of letting ONNX Runtime
   * make its own re-laid-out copy (its 'extended' optimisation level, weight prepacking off):
   * the weights then cost page cache the system can reclaim, not private memory; and allocate
   * activations as a run goes instead of one block planned ahead (ORT's memory pattern off).
   * Like A1111's --medvram, for models that do not fit otherwise (SDXL training on 24 GB).
   * Measured: SD 1.5 TI step at 512² 7.0 → 9.4 s, peak RSS 13.7 → 10.8 GB (private 7.1 GB);
   * SDXL UNet forward at 512² 5.2 → 5.5 s. Default: on when the weights, as float32, take more
   * than a third of the machine's memory (SDXL on 24 GB), else off.
   */
  lowMemory?: boolean;
}

/** A token learned by textual inversion: N vectors of the text encoder's width (SDXL: N for each encoder). */
export interface LearnedToken {
  token: string;
  vectors: Float32Array;
  count: number;
  /** Token ids of `<token>`, `<token>_1`, … in the tokenizer. */
  ids: number[];
  /** SDXL: the N vectors for text encoder 2 (clip_g) … */
  vectors2?: Float32Array;
  /** … and the ids of the same names in tokenizer 2. */
  ids2?: number[];
}

/** SDXL's encoding of prompts: both encoders' penultimate states side by side, and encoder 2's pooled output. */
export interface XLEncoding {
  /** [B, 77, D1 + D2] */
  hidden: Float32Array;
  /** [B, projection_dim] */
  pooled: Float32Array;
}

/** SDXL's added UNet conditioning per batch row: pooled text embeds [B, Dp] and time ids [B, 6]. */
export interface XLConditioning {
  textEmbeds: Float32Array;
  timeIds: Float32Array;
}

export class StableDiffusion {
  readonly tokenizer: CLIPTokenizer;
  /** SDXL: tokenizer_2 (the bundled CLIP BPE padding with `!`, as SDXL's does, when the model ships none); else null. */
  readonly tokenizer2: CLIPTokenizer | null;
  readonly learned = new Map<string, LearnedToken>();
  private readonly compiled = new Map<string, Promise<CompiledGraph>>();

  private constructor(
    readonly ckpt: StableDiffusionCheckpoint,
    private readonly opts: SDOptions,
  ) {
    this.tokenizer = ckpt.tokenizerDir
      ? CLIPTokenizer.fromDir(ckpt.tokenizerDir)
      : CLIPTokenizer.bundled(ckpt.family === 'sd2' ? { padToken: '!' } : {});
    this.tokenizer2 = !ckpt.textEncoder2Config ? null
      : ckpt.tokenizer2Dir ? CLIPTokenizer.fromDir(ckpt.tokenizer2Dir) : CLIPTokenizer.bundled({ padToken: '!' });
  }

  /** Loads a diffusers folder or a single-file SD 1.x / 2.x / XL `.safetensors` (nothing is read beyond headers yet). */
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
    // An SDXL word (clip_l + clip_g) needs an SDXL model and the reverse; every message names both sides' widths.
    const problem = embeddingWidthProblem(e, { dim: this.hiddenSize, dim2: this.isXL ? this.hiddenSize2 : undefined });
    if (problem) throw new EmbeddingError(where, problem, { usage: true });
    if (e.vectors.length !== e.count * e.dim) {
      throw new EmbeddingError(where, `the embedding has ${e.vectors.length / e.count}-dimensional vectors but this model's text encoder uses ${this.hiddenSize} (SD 1.x: 768, SD 2.x: 1024)`, { usage: true });
    }
    return this.addLearnedToken(e.token, e.vectors, e.count, e.vectors2);
  }

  /** Width of the (first) text encoder: the width of a learned token's vectors (SDXL: clip_l's). */
  get hiddenSize(): number {
    return this.ckpt.textEncoderConfig.hidden_size;
  }
  /** An SDXL model: two text encoders, pooled text and size conditioning. */
  get isXL(): boolean {
    return this.ckpt.family === 'sdxl';
  }
  /** SDXL: width of text encoder 2 (clip_g's vectors); 0 without one. */
  get hiddenSize2(): number {
    return this.ckpt.textEncoder2Config?.hidden_size ?? 0;
  }
  /** Width of the UNet's text context: hiddenSize, or D1 + D2 for SDXL. */
  get contextSize(): number {
    return this.ckpt.unetConfig.cross_attention_dim;
  }
  /** SDXL: width of the pooled text embeds (text encoder 2's projection_dim); 0 without. */
  get pooledSize(): number {
    return this.ckpt.textEncoder2Config?.projection_dim ?? 0;
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

  /** Bytes of every weight as float32 (what the compiled components hold). */
  get weightBytes(): number {
    let n = 0;
    for (const w of [this.ckpt.textEncoder, this.ckpt.textEncoder2, this.ckpt.unet, this.ckpt.vae]) {
      if (w) for (const name of w.names()) n += w.shape(name).reduce((a, b) => a * b, 1);
    }
    return 4 * n;
  }

  /** Whether weights stay memory-mapped instead of being re-laid-out by ONNX Runtime (SDOptions.lowMemory). */
  get lowMemory(): boolean {
    return this.opts.lowMemory ?? this.weightBytes > totalmem() / 3;
  }

  compileOptions(): CompileOptions {
    return {
      weights: this.opts.weights ?? 'external',
      threads: this.opts.threads,
      optimization: this.opts.optimization ?? (this.lowMemory ? 'extended' : undefined),
      disablePrepacking: this.lowMemory,
      memPattern: !this.lowMemory,
      externalRoot: this.ckpt.layout === 'single-file' ? dirname(this.ckpt.source) : undefined,
    };
  }

  /** Params for a component inside graph `g` (weights named per component). */
  params(g: Graph, component: 'textEncoder' | 'textEncoder2' | 'unet' | 'vae'): Params {
    const tag = { textEncoder: 'te/', textEncoder2: 'te2/', unet: 'unet/', vae: 'vae/' }[component];
    const weights = this.ckpt[component];
    if (!weights) throw new OnewordError(`${this.ckpt.source}: this model has no second text encoder (not an SDXL model)`);
    return new Params(g, weights, tag);
  }

  /**
   * Registers a learned token (or replaces its vectors). Its N vectors get tokenizer ids
   * after every existing token, read from the text encoder's extra rows. SDXL models need
   * `vectors2`, the N vectors for text encoder 2, kept under the same names in tokenizer 2.
   */
  addLearnedToken(token: string, vectors: Float32Array, count: number, vectors2?: Float32Array): LearnedToken {
    const d = this.hiddenSize;
    if (vectors.length !== count * d) {
      throw new OnewordError(`embedding "${token}": ${vectors.length / count} values per vector, but this model's text encoder uses ${d}`, { usage: true });
    }
    if (this.isXL && vectors2?.length !== count * this.hiddenSize2) {
      const got = vectors2 ? `${vectors2.length / count} values per vector` : 'no vectors';
      throw new OnewordError(`embedding "${token}": ${got} for text encoder 2, but this SDXL model needs ${count} of ${this.hiddenSize2} (beside ${d} for text encoder 1)`, { usage: true });
    }
    const existing = this.learned.get(token);
    if (existing) {
      if (existing.count !== count) throw new OnewordError(`token "${token}" is already loaded with ${existing.count} vectors`, { usage: true });
      existing.vectors.set(vectors);
      if (vectors2) existing.vectors2?.set(vectors2);
      return existing;
    }
    const names = embeddingTokenNames(token, count);
    for (const name of names) {
      const id = this.tokenizer.tokenToId(name);
      if (id !== undefined) throw OnewordError.badOption('token', `"${name}" already exists in the vocabulary (id ${id}); use a new word such as "<${name.replace(/^<|>$/g, '')}>"`);
    }
    const ids = this.tokenizer.addTokens(names);
    const t: LearnedToken = { token, vectors: Float32Array.from(vectors), count, ids };
    if (this.tokenizer2 && vectors2) Object.assign(t, { vectors2: Float32Array.from(vectors2), ids2: this.tokenizer2.addTokens(names) });
    this.learned.set(token, t);
    return t;
  }

  /** Extra embedding rows for every id ≥ vocab_size, in id order (at least one row). */
  extraRows(): Float32Array {
    return learnedRows(this.learned.values(), this.tokenizer.length, this.vocabSize, this.hiddenSize, (t) => [t.ids, t.vectors]);
  }

  /** SDXL: text encoder 2's extra rows, for every id ≥ its vocab_size in tokenizer 2 (at least one row). */
  extraRows2(): Float32Array {
    const cfg = this.ckpt.textEncoder2Config;
    if (!cfg || !this.tokenizer2) throw new OnewordError(`${this.ckpt.source}: this model has no second text encoder (not an SDXL model)`);
    return learnedRows(this.learned.values(), this.tokenizer2.length, cfg.vocab_size, cfg.hidden_size, (t) => [t.ids2 ?? [], t.vectors2 ?? new Float32Array(0)]);
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
    return (await c.run({ ids: int64(ids), extra: rows })).out as Float32Array;
  }

  /**
   * SDXL text encoders: ids [B, 77] for each tokenizer → both encoders' hidden_states[-2]
   * concatenated [B, 77, D1 + D2] and encoder 2's pooled text_embeds [B, Dp] (at argmax(ids),
   * i.e. a learned token's position when the prompt has one).
   */
  async encodeIdsXL(ids1: ArrayLike<number> | BigInt64Array, ids2: ArrayLike<number> | BigInt64Array, batch: number): Promise<XLEncoding> {
    const cfg2 = this.ckpt.textEncoder2Config;
    if (!cfg2) throw new OnewordError(`${this.ckpt.source}: encodeIdsXL needs an SDXL model`);
    const rows1 = this.extraRows();
    const rows2 = this.extraRows2();
    const [n1, n2] = [rows1.length / this.hiddenSize, rows2.length / this.hiddenSize2];
    const c = await this.cached(`te-xl:${batch}:${n1}:${n2}`, () => {
      const g = new Graph();
      const h1 = clipTextHiddenStates(this.params(g, 'textEncoder').scope('text_model'), this.ckpt.textEncoderConfig, g.input('ids1', [batch, 77], 'int64'), { extraRows: g.input('extra1', [n1, this.hiddenSize]) });
      const p2 = this.params(g, 'textEncoder2');
      const h2 = clipTextHiddenStates(p2.scope('text_model'), cfg2, g.input('ids2', [batch, 77], 'int64'), { extraRows: g.input('extra2', [n2, this.hiddenSize2]) });
      return { hidden: o.concat([h1.penultimate, h2.penultimate], 2), pooled: clipTextPooled(p2, cfg2, h2.last, g.input('pool', [batch, 77])) };
    });
    const r = await c.run({ ids1: int64(ids1), ids2: int64(ids2), extra1: rows1, extra2: rows2, pool: clipPoolingMask(cfg2, ids2, batch) });
    return { hidden: r.hidden as Float32Array, pooled: r.pooled as Float32Array };
  }

  /**
   * UNet: latents [B, C, h, w], timesteps [B], context [B, 77·k, D] → prediction [B, C, h, w].
   * SDXL models also take `added`: pooled text embeds [B, Dp] and time ids [B, 6].
   */
  async unet(sample: Float32Array, shape: readonly number[], t: ArrayLike<number>, context: Float32Array, added?: XLConditioning): Promise<Float32Array> {
    const [b, ch, h, w] = shape;
    const d = this.contextSize;
    // Long prompts give contexts of 77·k tokens.
    const len = context.length / (b * d);
    if (this.isXL && !added) throw new OnewordError('an SDXL UNet needs the pooled text embeds and time ids');
    const c = await this.cached(`unet:${b}:${ch}:${h}:${w}:${len}`, () => {
      const g = new Graph();
      const x = g.input('sample', [b, ch, h, w]);
      const tt = g.input('t', [b]);
      const ctx = g.input('context', [b, len, d]);
      const xl = this.isXL ? { textEmbeds: g.input('textEmbeds', [b, this.pooledSize]), timeIds: g.input('timeIds', [b, SDXL_TIME_IDS]) } : undefined;
      return { out: unet2DCondition(this.params(g, 'unet'), this.ckpt.unetConfig, x, tt, ctx, xl) };
    });
    return (await c.run({ sample, t: Float32Array.from(t), context, ...added })).out as Float32Array;
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

function int64(ids: ArrayLike<number> | BigInt64Array): BigInt64Array {
  return ids instanceof BigInt64Array ? ids : BigInt64Array.from(ids as ArrayLike<number>, (v) => BigInt(v));
}

/** A text encoder's extra rows: every learned vector at its id − vocab_size, for every id past the vocabulary (at least one row). */
function learnedRows(
  tokens: Iterable<LearnedToken>, tokenizerLength: number, vocab: number, d: number, pick: (t: LearnedToken) => [number[], Float32Array],
): Float32Array {
  const rows = new Float32Array(Math.max(1, tokenizerLength - vocab) * d);
  for (const t of tokens) {
    const [ids, vectors] = pick(t);
    ids.forEach((id, k) => rows.set(vectors.subarray(k * d, (k + 1) * d), (id - vocab) * d));
  }
  return rows;
}
