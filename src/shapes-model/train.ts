// Training oneword's shapes model from scratch, in four resumable phases:
//   1. VAE (AutoencoderKL): reconstruction (L1 + MSE) + a small KL term, on fresh renders;
//   2. CLIP text encoder pretraining (a head reads the named attributes), then frozen;
//   3. latent cache: a fixed seeded set of renders encoded once by the frozen VAE
//      (mean and log-variance), and the scaling factor 1/std of the sampled latents;
//   4. UNet against the frozen encoder (v-prediction on zero-terminal-SNR betas by default),
//      min-SNR and object weighting, 10 % empty captions, AdamW, EMA of the weights.
// Every random draw comes from a seeded generator keyed by (seed, phase, step), so a run
// (and a resumed run) is deterministic.
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Graph } from '../graph/index.ts';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.ts';
import { Params } from '../models/params.ts';
import { vaeEncode } from '../models/vae.ts';
import { compile } from '../runtime/session.ts';
import { DDPMScheduler } from '../schedulers/index.ts';
import { type Attrs, IMAGE_SIZE, randomAttributes, render, Rng } from '../shapes/index.ts';
import { type ArchSpec, type DiffusionSpec, parseArch, type ParsedArch, schedulerConfigJson, ZERO_SNR_V_DIFFUSION } from './config.ts';
import { CaptionTokens, latentObjectFraction, objectWeights, renderSet, TEXTURE_WORD_PROB, toPixels, trainingCaption } from './data.ts';
import { textDependence } from './text-dependence.ts';
import { exportDiffusers } from './export.ts';
import { attributeBlocks, textPretrainBatch, textPretrainGraph, unetStepGraph, vaeStepGraph } from './graphs.ts';
import { initText, initUnet, initVae } from './init.ts';
import { ParamStore } from './params.ts';
import { type OptimConfig, Trainer } from './trainer.ts';
import { samplerModelFromStores } from './sample.ts';
import { evaluateModel } from './evaluate.ts';
import { checkVae } from './vae-check.ts';

export interface PhaseConfig {
  steps: number;
  batch: number;
  lr: number;
  warmupSteps: number;
}

export interface TrainConfig {
  arch: ArchSpec;
  seed: number;
  /**
   * `edgeWeight`: weight of the edge term (see edgeLoss in graphs.ts; 0 = none). The
   * recipe's VAE (800 steps, no edge term) reconstructs textures faithfully for stripes and
   * dots only (vae-check, 256 renders: checkered 0.48, plain 0.59, dotted 0.89, striped 0.94);
   * 2000 steps with edgeWeight 1 reached 0.98 / 0.74 / 1 / 1. A UNet trained on that VAE with
   * the rest of the recipe unchanged met the 200-prompt evaluation (colour 0.925, position
   * 0.99, background 0.985, shape 0.945, size 0.99) but learned words worse (dotted orange
   * star 0.17 against 0.81: it drew orange as red), so the bundle keeps the plain VAE.
   */
  vae: PhaseConfig & { klWeight: number; edgeWeight: number };
  /**
   * Text-encoder pretraining (0 steps: none, the encoder learns jointly with the UNet): a
   * linear head reads every attribute a caption names from the encoder's end-of-text states.
   * With `frozen`, the UNet then trains against the fixed encoder, as Stable Diffusion does
   * with CLIP.
   */
  text: PhaseConfig & { frozen: boolean };
  /** Images in the latent cache the UNet trains on. */
  datasetImages: number;
  /**
   * Standard deviation of the latents the UNet sees: scaling_factor = latentScale / std(z).
   * Stable Diffusion scales to std ≈ 1; a smaller scale lowers the signal-to-noise ratio at
   * every timestep. With std 1 the layout (background, position) of this small 16×16 latent
   * still shows through the noise at t ≈ 960, so the UNet learned to read it from the noise
   * instead of from the prompt and sampling from pure noise ignored position and background.
   */
  latentScale: number;
  /**
   * Loss weight of latent cells covered by the object relative to the plain background
   * (the Bayes-optimal prediction of every cell is unchanged; the small object simply
   * counts more, so colour, shape and position are learned sooner).
   */
  objectWeight: number;
  /** Probability that a training caption names the texture by its made-up word. */
  textureWordProb: number;
  /** Prediction target and noise schedule (SD 1.x: epsilon on SD's betas). */
  diffusion: DiffusionSpec;
  unet: PhaseConfig & { minSnrGamma: number; emaDecay: number };
  /** Checkpoint every this many steps (both phases). */
  checkpointEvery: number;
  /** Log one line every this many steps. */
  logEvery: number;
  /** Every this many UNet steps, a quick evaluation of the EMA weights (0 = never). */
  evalEvery: number;
  /** Prompts in that quick evaluation. */
  evalPrompts: number;
  threads?: number;
  /** Scratch folder for checkpoints and the latent cache. */
  workDir: string;
  /** Where the diffusers folder is written at the end. */
  outDir: string;
}

export const FULL_RECIPE: Omit<TrainConfig, 'arch' | 'workDir' | 'outDir'> = {
  seed: 0,
  vae: { steps: 800, batch: 16, lr: 1e-3, warmupSteps: 50, klWeight: 1e-4, edgeWeight: 0 },
  text: { steps: 600, batch: 64, lr: 2e-3, warmupSteps: 50, frozen: true },
  datasetImages: 20000,
  latentScale: 0.4,
  objectWeight: 4,
  textureWordProb: TEXTURE_WORD_PROB,
  diffusion: ZERO_SNR_V_DIFFUSION,
  unet: { steps: 5000, batch: 32, lr: 1e-3, warmupSteps: 200, minSnrGamma: 5, emaDecay: 0.998 },
  checkpointEvery: 100,
  logEvery: 10,
  evalEvery: 500,
  evalPrompts: 24,
};

export type LogFn = (entry: Record<string, unknown>) => void;

const optim = (p: PhaseConfig, emaDecay = 0): OptimConfig => ({
  lr: p.lr, warmupSteps: p.warmupSteps, totalSteps: p.steps, minLrFrac: 0.1,
  weightDecay: 0.01, beta1: 0.9, beta2: 0.999, clipNorm: 1, emaDecay,
});

function normals(rng: Rng, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.normal();
  return out;
}

/** Runs `trainer` from its current step to `steps`, checkpointing to `ckpt`. */
async function runPhase(
  phase: string, trainer: Trainer, steps: number, cfg: TrainConfig, ckpt: string, log: LogFn,
  batchFor: (step: number) => Record<string, Float32Array | BigInt64Array>,
  after?: (step: number) => Promise<void>,
): Promise<void> {
  let acc: Record<string, number> = {};
  let n = 0;
  let t0 = performance.now();
  while (trainer.step < steps) {
    const step = trainer.step;
    const r = await trainer.trainStep(batchFor(step));
    acc.loss = (acc.loss ?? 0) + r.loss;
    for (const [k, v] of Object.entries(r.extras)) acc[k] = (acc[k] ?? 0) + v;
    acc.gradNorm = (acc.gradNorm ?? 0) + r.gradNorm;
    n++;
    if (trainer.step % cfg.logEvery === 0 || trainer.step === steps) {
      const sec = (performance.now() - t0) / 1000 / n;
      const entry: Record<string, unknown> = { phase, step: trainer.step };
      for (const [k, v] of Object.entries(acc)) entry[k] = Number((v / n).toPrecision(5));
      entry.lr = Number(r.lr.toPrecision(4));
      entry.secPerStep = Number(sec.toFixed(3));
      log(entry);
      acc = {};
      n = 0;
      t0 = performance.now();
    }
    if (trainer.step % cfg.checkpointEvery === 0 || trainer.step === steps) trainer.saveCheckpoint(ckpt, { phase });
    if (after) {
      const t1 = performance.now();
      await after(trainer.step);
      t0 += performance.now() - t1;
    }
  }
}

function saveStore(path: string, store: ParamStore, meta: Record<string, string> = {}): void {
  const t: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  for (const name of store.names()) {
    const x = store.get(name);
    t[name] = { dtype: 'F32', shape: x.shape, data: x.data };
  }
  writeSafetensors(path, t, meta);
}

function loadStore(path: string, into: ParamStore): Record<string, string> {
  const f = SafetensorsFile.open(path);
  for (const name of into.names()) into.get(name).data.set(f.readFloat32(name));
  return f.metadata;
}

// ---------------------------------------------------------------- phase 1: VAE

export async function trainVaePhase(cfg: TrainConfig, a: ParsedArch, log: LogFn): Promise<ParamStore> {
  const vae = initVae(a, cfg.seed);
  const done = join(cfg.workDir, 'vae.final.safetensors');
  if (existsSync(done)) {
    loadStore(done, vae);
    log({ phase: 'vae', note: `loaded finished VAE from ${done}` });
    return vae;
  }
  const B = cfg.vae.batch;
  const sg = vaeStepGraph(a, vae, B, cfg.vae.klWeight, cfg.vae.edgeWeight);
  const trainer = await Trainer.create(sg, optim(cfg.vae), cfg.threads);
  const ckpt = join(cfg.workDir, 'vae.ckpt.safetensors');
  if (existsSync(ckpt)) {
    trainer.loadCheckpoint(ckpt);
    log({ phase: 'vae', note: `resumed at step ${trainer.step}` });
  }
  const S = a.arch.imageSize;
  const s = a.latentSize;
  await runPhase('vae', trainer, cfg.vae.steps, cfg, ckpt, log, (step) => {
    const rng = new Rng(`vae:${cfg.seed}:${step}`);
    const pixels = new Float32Array(B * 3 * S * S);
    for (let i = 0; i < B; i++) toPixels(render(randomAttributes(rng), { rng }), S, pixels, i * 3 * S * S);
    return { pixels, weights: objectWeights(pixels, B, S), eps: normals(rng, B * 4 * s * s) };
  });
  saveStore(done, vae);
  // The analyzer reads the world's own image size only (not the tiny preset's).
  if (a.arch.imageSize !== IMAGE_SIZE) return vae;
  const check = await checkVae(vae, a.vae, 256, 12345, cfg.threads);
  log({ phase: 'vae-check', images: check.images, mae: check.mae, agreement: check.agreement, textureAgreement: check.textureAgreement });
  return vae;
}

// ---------------------------------------------------------------- phase 1b: text encoder

export async function trainTextPhase(cfg: TrainConfig, a: ParsedArch, log: LogFn): Promise<ParamStore> {
  const text = initText(a, cfg.seed);
  if (cfg.text.steps === 0) return text;
  const done = join(cfg.workDir, 'text.final.safetensors');
  if (existsSync(done)) {
    loadStore(done, text);
    log({ phase: 'text', note: `loaded pretrained text encoder from ${done}` });
    return text;
  }
  const K = attributeBlocks().reduce((n, b) => n + b.size, 0);
  const D = a.text.hidden_size;
  const head = new ParamStore();
  const hr = new Rng(`text-head:${cfg.seed}`);
  head.set('weight', [K, D], Float32Array.from({ length: K * D }, () => hr.normal() * 0.02));
  head.set('bias', [K], new Float32Array(K));
  const B = cfg.text.batch;
  const trainer = await Trainer.create(textPretrainGraph(a, text, head, B), optim(cfg.text), cfg.threads);
  const ckpt = join(cfg.workDir, 'text.ckpt.safetensors');
  if (existsSync(ckpt)) {
    trainer.loadCheckpoint(ckpt);
    log({ phase: 'text', note: `resumed at step ${trainer.step}` });
  }
  const tokens = new CaptionTokens();
  await runPhase('text', trainer, cfg.text.steps, cfg, ckpt, log, (step) => {
    const rng = new Rng(`text:${cfg.seed}:${step}`);
    const captions = Array.from({ length: B }, () => trainingCaption(randomAttributes(rng), rng, cfg.textureWordProb));
    return textPretrainBatch(captions, tokens);
  });
  saveStore(done, text);
  return text;
}

// ---------------------------------------------------------------- phase 2: latent cache

export interface LatentCache {
  attrs: Attrs[];
  mean: Float32Array;
  logvar: Float32Array;
  /** 1 / std of latents sampled from the posterior (SD's recipe for its scaling factor). */
  unitScalingFactor: number;
  /** Per latent cell, the fraction of object pixels (0–255): [N, h, w]. */
  object: Uint8Array;
}

export async function encodePhase(cfg: TrainConfig, a: ParsedArch, vae: ParamStore, log: LogFn): Promise<LatentCache> {
  const path = join(cfg.workDir, 'latents.safetensors');
  if (existsSync(path)) {
    const f = SafetensorsFile.open(path);
    log({ phase: 'encode', note: `loaded latent cache from ${path}` });
    const attrs = JSON.parse(f.metadata.attrs) as Attrs[];
    // Caches written before object fractions were stored: the renders are reproducible.
    const object = f.has('object') ? (f.read('object') as Uint8Array) : objectFractions(cfg, a, attrs.length);
    return {
      attrs,
      mean: f.readFloat32('mean'),
      logvar: f.readFloat32('logvar'),
      unitScalingFactor: Number(f.metadata.unit_scaling_factor ?? f.metadata.scaling_factor),
      object,
    };
  }
  const N = cfg.datasetImages;
  const S = a.arch.imageSize;
  const s = a.latentSize;
  const per = 4 * s * s;
  const chunk = 50;
  const g = new Graph();
  const px = g.input('pixels', [chunk, 3, S, S]);
  const dist = vaeEncode(new Params(g, vae, 'vae/'), a.vae, px);
  const enc = await compile({ mean: dist.mean, logvar: dist.logvar }, { weights: 'feed', threads: cfg.threads });
  const t0 = performance.now();
  const data = renderSet(N, cfg.seed, S);
  const object = latentObjectFraction(data.pixels, N, S, S / s);
  const mean = new Float32Array(N * per);
  const logvar = new Float32Array(N * per);
  for (let i = 0; i < N; i += chunk) {
    const m = Math.min(chunk, N - i);
    const pixels = new Float32Array(chunk * 3 * S * S);
    pixels.set(data.pixels.subarray(i * 3 * S * S, (i + m) * 3 * S * S));
    const r = await enc.run({ pixels });
    mean.set((r.mean as Float32Array).subarray(0, m * per), i * per);
    logvar.set((r.logvar as Float32Array).subarray(0, m * per), i * per);
  }
  // SD's scaling factor: 1 / std of latents sampled from the posterior.
  const rng = new Rng(`encode:${cfg.seed}`);
  let sum = 0;
  let sum2 = 0;
  for (let i = 0; i < mean.length; i++) {
    const z = mean[i] + Math.exp(0.5 * logvar[i]) * rng.normal();
    sum += z;
    sum2 += z * z;
  }
  const mu = sum / mean.length;
  const std = Math.sqrt(sum2 / mean.length - mu * mu);
  const unitScalingFactor = Number((1 / std).toPrecision(5));
  let meanStd = 0;
  for (let i = 0; i < logvar.length; i++) meanStd += Math.exp(0.5 * logvar[i]);
  log({ phase: 'encode', images: N, latentMean: Number(mu.toPrecision(4)), latentStd: Number(std.toPrecision(4)),
    posteriorStd: Number((meanStd / logvar.length).toPrecision(4)), unitScalingFactor, seconds: Math.round((performance.now() - t0) / 1000) });
  writeSafetensors(path, {
    mean: { dtype: 'F32', shape: [N, 4, s, s], data: mean },
    logvar: { dtype: 'F32', shape: [N, 4, s, s], data: logvar },
    object: { dtype: 'U8', shape: [N, s, s], data: object },
  }, { attrs: JSON.stringify(data.attrs), unit_scaling_factor: String(unitScalingFactor) });
  return { attrs: data.attrs, mean, logvar, unitScalingFactor, object };
}

function objectFractions(cfg: TrainConfig, a: ParsedArch, n: number): Uint8Array {
  const S = a.arch.imageSize;
  const out = new Uint8Array(n * a.latentSize ** 2);
  const chunk = 1000;
  // renderSet draws images one after another from one generator: render all, in chunks of masks.
  const data = renderSet(n, cfg.seed, S);
  for (let i = 0; i < n; i += chunk) {
    const m = Math.min(chunk, n - i);
    out.set(latentObjectFraction(data.pixels.subarray(i * 3 * S * S, (i + m) * 3 * S * S), m, S, S / a.latentSize), i * a.latentSize ** 2);
  }
  return out;
}

// ---------------------------------------------------------------- phase 3: UNet + text encoder

export async function trainUnetPhase(cfg: TrainConfig, a: ParsedArch, vae: ParamStore, cache: LatentCache, sf: number, log: LogFn, text: ParamStore): Promise<{ text: ParamStore; unet: ParamStore }> {
  const unet = initUnet(a, cfg.seed);
  const B = cfg.unet.batch;
  const trainText = !(cfg.text.steps > 0 && cfg.text.frozen);
  const sg = unetStepGraph(a, text, unet, B, trainText);
  const trainer = await Trainer.create(sg, optim(cfg.unet, cfg.unet.emaDecay), cfg.threads);
  const ckpt = join(cfg.workDir, 'unet.ckpt.safetensors');
  if (existsSync(ckpt)) {
    trainer.loadCheckpoint(ckpt);
    log({ phase: 'unet', note: `resumed at step ${trainer.step}` });
  }
  const ac = new DDPMScheduler(schedulerConfigJson(cfg.diffusion)).alphasCumprod;
  const vPred = cfg.diffusion.prediction === 'v_prediction';
  const s = a.latentSize;
  const per = 4 * s * s;
  const N = cache.attrs.length;
  const tokens = new CaptionTokens();
  const gamma = cfg.unet.minSnrGamma;
  // The text-dependence probe: the last 64 cached images, posterior means, scaled.
  const probeN = Math.min(64, N - (N % 16));
  const probe = { attrs: cache.attrs.slice(N - probeN), latents: cache.mean.slice((N - probeN) * per).map((v) => v * sf) };
  await runPhase('unet', trainer, cfg.unet.steps, cfg, ckpt, log, (step) => {
    const rng = new Rng(`unet:${cfg.seed}:${step}`);
    const noisy = new Float32Array(B * per);
    const target = new Float32Array(B * per);
    const t = new Float32Array(B);
    const ss = s * s;
    const w = new Float32Array(B * ss);
    const captions: string[] = [];
    for (let b = 0; b < B; b++) {
      const idx = rng.int(N);
      captions.push(trainingCaption(cache.attrs[idx], rng, cfg.textureWordProb));
      const ti = rng.int(ac.length);
      t[b] = ti;
      const abar = ac[ti];
      const sa = Math.sqrt(abar);
      const sb = Math.sqrt(1 - abar);
      const snr = (cfg.latentScale ** 2 * abar) / (1 - abar); // of the scaled latents
      // min-SNR-γ weights (Hang et al. 2023): ε-loss min(SNR, γ)/SNR; for the v-loss, whose
      // implicit weight is SNR + 1, min(SNR + 1, γ)/(SNR + 1), which stays 1 at zero SNR.
      const wt = gamma <= 0 ? 1 : vPred ? Math.min(snr + 1, gamma) / (snr + 1) : Math.min(snr, gamma) / snr;
      // Spatial weights, mean 1 over the image: object cells count objectWeight times more.
      let sum = 0;
      for (let k = 0; k < ss; k++) sum += 1 + ((cfg.objectWeight - 1) * cache.object[idx * ss + k]) / 255;
      for (let k = 0; k < ss; k++) w[b * ss + k] = (wt * ss * (1 + ((cfg.objectWeight - 1) * cache.object[idx * ss + k]) / 255)) / sum;
      for (let k = 0; k < per; k++) {
        const j = idx * per + k;
        const z = (cache.mean[j] + Math.exp(0.5 * cache.logvar[j]) * rng.normal()) * sf;
        const e = rng.normal();
        target[b * per + k] = vPred ? sa * e - sb * z : e;
        noisy[b * per + k] = sa * z + sb * e;
      }
    }
    return { noisy, target, t, ids: tokens.batch(captions), w };
  }, async (step) => {
    if (!cfg.evalEvery || (step % cfg.evalEvery !== 0 && step !== cfg.unet.steps)) return;
    const ema = trainer.emaStores();
    const model = samplerModelFromStores({
      text: ema.get(text) ?? text, unet: ema.get(unet)!, vae, textConfig: a.text, unetConfig: a.unet, vaeConfig: a.vae, diffusion: cfg.diffusion,
    });
    const t1 = performance.now();
    const r = await evaluateModel(model, { prompts: cfg.evalPrompts, steps: 20, guidance: 5, batch: 8, varietyPrompts: 0, threads: cfg.threads });
    const dep = await textDependence(a, ema.get(text) ?? text, ema.get(unet)!, cfg.diffusion, probe, { threads: cfg.threads });
    log({ phase: 'eval', step, ...r, texturesPerPrompt: undefined, varietySeeds: undefined, textLoss: dep.loss, textGap: dep.gap, seconds: Math.round((performance.now() - t1) / 1000) });
  });
  const ema = trainer.emaStores();
  return { text: ema.get(text) ?? text, unet: ema.get(unet)! };
}

// ---------------------------------------------------------------- all phases

export async function trainShapesModel(cfg: TrainConfig, log: LogFn): Promise<void> {
  mkdirSync(cfg.workDir, { recursive: true });
  const a0 = parseArch(cfg.arch);
  const t0 = performance.now();
  log({ phase: 'start', config: cfg });
  const vae = await trainVaePhase(cfg, a0, log);
  const pretrainedText = await trainTextPhase(cfg, a0, log);
  const cache = await encodePhase(cfg, a0, vae, log);
  const scalingFactor = Number((cfg.latentScale * cache.unitScalingFactor).toPrecision(5));
  log({ phase: 'latents', unitScalingFactor: cache.unitScalingFactor, latentScale: cfg.latentScale, scalingFactor });
  const a = parseArch(cfg.arch, scalingFactor);
  const { text, unet } = await trainUnetPhase(cfg, a, vae, cache, scalingFactor, log, pretrainedText);
  const tmp = `${cfg.outDir}.partial`;
  rmSync(tmp, { recursive: true, force: true });
  exportDiffusers(tmp, { arch: cfg.arch, diffusion: cfg.diffusion, scalingFactor, vae, text, unet });
  replaceDir(tmp, cfg.outDir);
  log({ phase: 'done', seconds: Math.round((performance.now() - t0) / 1000), out: cfg.outDir });
}

/** Moves the model files from `from` into `to` (other files in `to`, e.g. TRAINING.md, stay). */
function replaceDir(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  for (const sub of ['model_index.json', 'unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler']) {
    const dst = join(to, sub);
    rmSync(dst, { recursive: true, force: true });
    renameSync(join(from, sub), dst);
  }
  rmSync(from, { recursive: true, force: true });
}
