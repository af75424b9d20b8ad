// A small text-to-image sampler for the shapes model (DDIM with classifier-free guidance),
// used to evaluate training. Works on any SD-1.x-layout model built from these graphs.
import { Graph } from '../graph/index.ts';
import type { CLIPTextConfig } from '../models/clip-text.ts';
import type { UNetConfig } from '../models/unet-config.ts';
import type { VAEConfig } from '../models/vae.ts';
import { loadCheckpoint } from '../pipelines/checkpoint.ts';
import { clipTextEncoder } from '../models/clip-text.ts';
import { CLIPTokenizer } from '../models/clip-tokenizer.ts';
import { Params, type WeightSet } from '../models/params.ts';
import { unet2DCondition } from '../models/unet.ts';
import { vaeDecode } from '../models/vae.ts';
import { compile, type CompiledGraph } from '../runtime/session.ts';
import { DDIMScheduler } from '../schedulers/index.ts';
import { Rng, type RgbImage } from '../shapes/index.ts';
import { CaptionTokens, toImage } from './data.ts';
import { SEQ_LEN } from './graphs.ts';
import { type DiffusionSpec, schedulerConfigJson } from './config.ts';

export interface SamplerModel {
  text: WeightSet;
  unet: WeightSet;
  vae: WeightSet;
  textConfig: CLIPTextConfig;
  unetConfig: UNetConfig;
  vaeConfig: VAEConfig;
  schedulerConfig: Record<string, unknown>;
  tokenizer: CLIPTokenizer;
}

export function loadSamplerModel(dir: string): SamplerModel {
  const ck = loadCheckpoint(dir);
  return {
    text: ck.textEncoder,
    unet: ck.unet,
    vae: ck.vae,
    textConfig: ck.textEncoderConfig,
    unetConfig: ck.unetConfig,
    vaeConfig: ck.vaeConfig,
    schedulerConfig: ck.schedulerConfig,
    tokenizer: ck.tokenizerDir ? CLIPTokenizer.fromDir(ck.tokenizerDir) : CLIPTokenizer.bundled(),
  };
}

export interface SampleOptions {
  steps?: number;
  guidance?: number;
  /** Intra-op threads for ORT. */
  threads?: number;
}

interface Graphs {
  text: CompiledGraph;
  unet: CompiledGraph;
  decode: CompiledGraph;
}

const graphCache = new WeakMap<SamplerModel, Map<number, Promise<Graphs>>>();

function latentSize(m: SamplerModel): number {
  return m.vaeConfig.sample_size / 2 ** (m.vaeConfig.block_out_channels.length - 1);
}

// runtime/session.ts caches sessions by graph bytes, and with fed weights the bytes do not
// depend on the weight values: two models of one architecture would share the first one's
// weights. A per-model prefix on the weight names keeps their graphs (and sessions) apart.
const modelIds = new WeakMap<SamplerModel, number>();
let nextModelId = 0;

async function buildGraphs(m: SamplerModel, batch: number, threads?: number): Promise<Graphs> {
  let id = modelIds.get(m);
  if (id === undefined) modelIds.set(m, (id = nextModelId++));
  const tag = `m${id}/`;
  const s = latentSize(m);
  const opts = { weights: 'feed' as const, threads };
  const gt = new Graph();
  const ids = gt.input('ids', [batch, SEQ_LEN], 'int64');
  const ctx = clipTextEncoder(new Params(gt, m.text, `${tag}te/`).scope('text_model'), m.textConfig, ids);
  const gu = new Graph();
  const x = gu.input('x', [2 * batch, m.unetConfig.in_channels, s, s]);
  const t = gu.input('t', [2 * batch]);
  const c = gu.input('ctx', [2 * batch, SEQ_LEN, m.textConfig.hidden_size]);
  const eps = unet2DCondition(new Params(gu, m.unet, `${tag}unet/`), m.unetConfig, x, t, c);
  const gd = new Graph();
  const z = gd.input('z', [batch, m.vaeConfig.latent_channels, s, s]);
  const px = vaeDecode(new Params(gd, m.vae, `${tag}vae/`), m.vaeConfig, z);
  const [text, unet, decode] = await Promise.all([compile({ ctx }, opts), compile({ eps }, opts), compile({ px }, opts)]);
  return { text, unet, decode };
}

function graphsFor(m: SamplerModel, batch: number, threads?: number): Promise<Graphs> {
  let byBatch = graphCache.get(m);
  if (!byBatch) graphCache.set(m, (byBatch = new Map()));
  let g = byBatch.get(batch);
  if (!g) byBatch.set(batch, (g = buildGraphs(m, batch, threads)));
  return g;
}

/** Initial latent noise for one image: depends only on its seed. */
export function initialNoise(seed: number, n: number): Float32Array {
  const rng = new Rng(`shapes-sample:${seed}`);
  return Float32Array.from({ length: n }, () => rng.normal());
}

/** Images for prompts[i] from seeds[i] (batched as given; results do not depend on batching). */
export async function sampleImages(m: SamplerModel, prompts: readonly string[], seeds: readonly number[], opts: SampleOptions = {}): Promise<RgbImage[]> {
  const batch = prompts.length;
  const g = await graphsFor(m, batch, opts.threads);
  const s = latentSize(m);
  const C = m.unetConfig.in_channels;
  const per = C * s * s;
  const tok = new CaptionTokens(m.tokenizer);
  const { ctx: condCtx } = await g.text.run({ ids: tok.batch(prompts) });
  const { ctx: uncondCtx } = await g.text.run({ ids: tok.batch(prompts.map(() => '')) });
  const ctx = new Float32Array(2 * condCtx.length);
  ctx.set(uncondCtx as Float32Array, 0);
  ctx.set(condCtx as Float32Array, condCtx.length);
  const sched = new DDIMScheduler(m.schedulerConfig ?? schedulerConfigJson());
  sched.setTimesteps(opts.steps ?? 25);
  let lat: Float32Array = new Float32Array(batch * per);
  seeds.forEach((seed, i) => lat.set(initialNoise(seed, per), i * per));
  const w = opts.guidance ?? 5;
  for (const t of sched.timesteps) {
    const x = new Float32Array(2 * lat.length);
    x.set(lat, 0);
    x.set(lat, lat.length);
    const { eps } = await g.unet.run({ x, t: new Float32Array(2 * batch).fill(t), ctx });
    const e = eps as Float32Array;
    const guided = new Float32Array(lat.length);
    for (let i = 0; i < lat.length; i++) guided[i] = e[i] + w * (e[lat.length + i] - e[i]);
    lat = sched.step(guided, t, lat);
  }
  const sf = m.vaeConfig.scaling_factor;
  const { px } = await g.decode.run({ z: lat.map((v) => v / sf) });
  const size = m.vaeConfig.sample_size;
  return prompts.map((_, i) => toImage(px as Float32Array, size, i * 3 * size * size));
}

/** A SamplerModel over in-memory stores (during or right after training). */
export function samplerModelFromStores(p: {
  text: WeightSet; unet: WeightSet; vae: WeightSet;
  textConfig: CLIPTextConfig; unetConfig: UNetConfig; vaeConfig: VAEConfig;
  diffusion?: DiffusionSpec;
}): SamplerModel {
  const { diffusion, ...rest } = p;
  return { ...rest, schedulerConfig: schedulerConfigJson(diffusion), tokenizer: CLIPTokenizer.bundled() };
}
