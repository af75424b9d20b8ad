// Conformance check: recompute every tensor of a diffusers/transformers reference file
// (format: shared fixtures' FORMAT.md) from its stored inputs, and compare.
//
// Tolerances: token ids exact; float tensors max |a − b| ≤ 1e-4 × (1 + max |ref|);
// sampling trajectories (final latents) ≤ 1e-3 × (1 + max |ref|), since ten steps of
// float32 round-off compound; the TI gradient also needs cosine similarity ≥ 0.9999.
import { SafetensorsFile } from '../io/safetensors.ts';
import { CLIPTokenizer } from '../models/clip-tokenizer.ts';
import { adamWState, adamWStep } from '../optim/adamw.ts';
import { createScheduler, type SchedulerKind } from '../schedulers/index.ts';
import {
  checkSchedules, checkTrajectory, checkVae, compare, concat, cosine, exact, nums, SAMPLE_VARIANTS, type Check, type VerifyRow,
} from './verify-checks.ts';
import { StableDiffusion, type SDOptions } from './stable-diffusion.ts';
import { decodeLatents, denoise, type EncodedPrompt } from './text-to-image.ts';
import { TrainStep } from './ti-step.ts';
import { verifyXL } from './verify-xl.ts';

export type { VerifyRow };

export interface VerifyOptions extends SDOptions {
  /** Only tensors whose name starts with one of these prefixes (e.g. ["tok.", "unet."]). */
  only?: string[];
  onRow?: (row: VerifyRow) => void;
}

/** The learned placeholder as textual_inversion.py adds it: its id and its initial row. */
interface Placeholder {
  id: number;
  initRow: Float32Array;
}

/** Tokenizer: the model's own, plus the placeholder as textual_inversion.py adds it. */
function checkTokenizer(c: Check, withToken: CLIPTokenizer, placeholderId: number, initIds: number[]): void {
  const { push, I, prompts } = c;
  const base = c.sd.tokenizer;
  push(exact('tok.input_ids', prompts.flatMap((p) => withToken.call(p).inputIds), I('tok.input_ids')));
  push(exact('tok.input_ids_base', prompts.flatMap((p) => base.call(p).inputIds), I('tok.input_ids_base')));
  push(exact('tok.attention_mask', prompts.flatMap((p) => withToken.call(p).attentionMask), I('tok.attention_mask')));
  push(exact('tok.placeholder_id', [placeholderId], I('tok.placeholder_id')));
  push(exact('tok.initializer_id', initIds, I('tok.initializer_id')));
  push(exact('tok.bos_id', [withToken.bosId], I('tok.bos_id')));
  push(exact('tok.eos_id', [withToken.eosId], I('tok.eos_id')));
  push(exact('tok.pad_id', [withToken.padId], I('tok.pad_id')));
}

async function checkTextEncoder(c: Check, initRow: Float32Array): Promise<void> {
  const { sd, push, F, prompts } = c;
  push(compare('te.placeholder_row', initRow, F('te.placeholder_row')));
  const ids = prompts.flatMap((p) => sd.tokenizer.call(p).inputIds);
  push(compare('te.last_hidden_state', await sd.encodeIds(ids, prompts.length), F('te.last_hidden_state')));
}

function checkGuidanceInputs(c: Check, cond: EncodedPrompt, uncond: EncodedPrompt): void {
  const { sd, push, F, I } = c;
  push(exact('cfg.cond_input_ids', sd.tokenizer.call(c.prompts[0]).inputIds, I('cfg.cond_input_ids')));
  push(exact('cfg.uncond_input_ids', sd.tokenizer.call('').inputIds, I('cfg.uncond_input_ids')));
  push(compare('cfg.cond_embeds', cond.hidden, F('cfg.cond_embeds')));
  push(compare('cfg.uncond_embeds', uncond.hidden, F('cfg.uncond_embeds')));
}

/** One UNet call, the batched CFG call and its guidance, and a fractional timestep. */
async function checkUnet(c: Check, cond: EncodedPrompt, uncond: EncodedPrompt): Promise<void> {
  const { ref, sd, push, F, I } = c;
  const shape = ref.info('unet.latents').shape;
  const x = F('unet.latents');
  const t = I('unet.timestep')[0];
  push(compare('unet.noise_pred', await sd.unet(x, shape, [t], cond.hidden), F('unet.noise_pred')));
  const both = new Float32Array(2 * x.length);
  both.set(x);
  both.set(x, x.length);
  const ctx = new Float32Array(2 * cond.hidden.length);
  ctx.set(uncond.hidden);
  ctx.set(cond.hidden, cond.hidden.length);
  const batched = await sd.unet(both, [2, ...shape.slice(1)], [t, t], ctx);
  push(compare('unet.cfg.noise_pred_batched', batched, F('unet.cfg.noise_pred_batched')));
  const s = F('unet.cfg.guidance_scale')[0];
  const n = x.length;
  push(compare('unet.cfg.guided', Float32Array.from({ length: n }, (_, k) => batched[k] + s * (batched[n + k] - batched[k])), F('unet.cfg.guided')));
  const tf = F('unet.timestep_float')[0];
  push(compare('unet.noise_pred_float_t', await sd.unet(x, shape, [tf], cond.hidden), F('unet.noise_pred_float_t')));
}

/** Whole sampling trajectories (every step's UNet output and latents) and their decoded images. */
async function checkSampling(c: Check, cond: EncodedPrompt, uncond: EncodedPrompt): Promise<void> {
  const guidance = c.F('sample.guidance_scale')[0];
  for (const [name, spec] of SAMPLE_VARIANTS) {
    if (c.ref.has(`sample.${name}.latents`)) await checkTrajectory(c, name, spec, { guidance, cond, uncond });
  }
}

/** One textual-inversion step per reference timestep: latents, noise, prediction, loss, gradient, AdamW update. */
async function checkTextualInversion(c: Check, p: Placeholder): Promise<void> {
  const { ref, sd, push, F, I } = c;
  const d = sd.hiddenSize;
  const [lr, beta1, beta2, eps, weightDecay] = F('ti.adamw');
  const ts = I('ti.timesteps');
  const lshape = ref.info('ti.latents').shape.slice(1);
  const n = lshape.reduce((a, b) => a * b, 1);
  const enc = await sd.vaeEncode(F('ti.pixels'), ref.info('ti.pixels').shape);
  const vaeEps = F('ti.vae_eps');
  const noise = F('ti.noise');
  const noiseSched = createScheduler('ddpm', sd.ckpt.schedulerConfig);
  const step = await TrainStep.create(sd, { batch: 1, rows: 1, latent: [lshape[1], lshape[2], lshape[3]] }, true);
  const ids = I('ti.input_ids').map((id) => (id === p.id ? sd.learned.get(c.placeholder)!.ids[0] : id));
  const out: Record<string, Float32Array[]> = { latents: [], noisy: [], ehs: [], pred: [], target: [], loss: [], grad: [], after: [] };
  for (let k = 0; k < ts.length; k++) {
    const e = vaeEps.subarray(k * n, (k + 1) * n);
    const latents = Float32Array.from(enc.mean, (m, i) => (m + enc.std[i] * e[i]) * sd.scalingFactor);
    const nz = noise.subarray(k * n, (k + 1) * n);
    const noisy = noiseSched.addNoise(latents, nz, [ts[k]]);
    const target = noiseSched.trainingTarget(latents, nz, [ts[k]]);
    const r = await step.run({ ids, rows: p.initRow, noisy, t: [ts[k]], target });
    const v = Float32Array.from(p.initRow);
    adamWStep(v, r.grad, adamWState(d), { lr, beta1, beta2, eps, weightDecay });
    out.latents.push(latents); out.noisy.push(noisy); out.ehs.push(r.context!); out.pred.push(r.pred!);
    out.target.push(target); out.loss.push(Float32Array.of(r.loss)); out.grad.push(r.grad); out.after.push(v);
  }
  push(compare('ti.latents', concat(out.latents), F('ti.latents')));
  push(compare('ti.noisy_latents', concat(out.noisy), F('ti.noisy_latents')));
  push(compare('ti.encoder_hidden_states', concat(out.ehs), F('ti.encoder_hidden_states')));
  push(compare('ti.model_pred', concat(out.pred), F('ti.model_pred')));
  push(compare('ti.target', concat(out.target), F('ti.target')));
  push(compare('ti.loss', concat(out.loss), F('ti.loss')));
  const g = concat(out.grad);
  const gRef = F('ti.grad_placeholder');
  const row = compare('ti.grad_placeholder', g, gRef);
  let worstCos = 1;
  for (let k = 0; k < ts.length; k++) worstCos = Math.min(worstCos, cosine(g.subarray(k * d, (k + 1) * d), gRef.subarray(k * d, (k + 1) * d)));
  row.pass = row.pass && worstCos >= 0.9999;
  row.note = `cosine ${worstCos.toFixed(7)} (≥ 0.9999)`;
  push(row);
  push(compare('ti.placeholder_after_adamw', concat(out.after), F('ti.placeholder_after_adamw')));
}

export async function verify(modelPath: string, referencePath: string, opts: VerifyOptions = {}): Promise<VerifyRow[]> {
  const ref = SafetensorsFile.open(referencePath);
  const meta = ref.metadata;
  const sd = StableDiffusion.load(modelPath, opts);
  const rows: VerifyRow[] = [];
  const want = (prefix: string) => !opts.only || opts.only.some((p) => prefix.startsWith(p) || p.startsWith(prefix));
  const c: Check = {
    ref, sd,
    push: (r) => { rows.push(r); opts.onRow?.(r); },
    F: (n) => ref.readFloat32(n),
    I: (n) => nums(ref.read(n) as BigInt64Array),
    prompts: JSON.parse(meta.prompts ?? '[]') as string[],
    placeholder: meta.placeholder_token ?? '<cat-toy>',
  };
  if (sd.isXL) {
    await verifyXL(c, want);
    return rows;
  }
  const d = sd.hiddenSize;

  // The tokenizer with the placeholder added; the learned row starts as a copy of the initializer's row.
  const withToken = sd.ckpt.tokenizerDir ? CLIPTokenizer.fromDir(sd.ckpt.tokenizerDir) : CLIPTokenizer.bundled(sd.ckpt.family === 'sd2' ? { padToken: '!' } : {});
  const [placeholderId] = withToken.addTokens([c.placeholder]);
  const initIds = withToken.encode(meta.initializer_token ?? 'toy');
  if (want('tok.') && ref.has('tok.input_ids')) checkTokenizer(c, withToken, placeholderId, initIds);
  const initRow = sd.ckpt.textEncoder.float32('text_model.embeddings.token_embedding.weight').slice(initIds[0] * d, (initIds[0] + 1) * d);
  sd.addLearnedToken(c.placeholder, initRow, 1);

  if (want('te.') && ref.has('te.last_hidden_state')) await checkTextEncoder(c, initRow);
  const encode = async (text: string): Promise<EncodedPrompt> => ({ hidden: await sd.encodeIds(sd.tokenizer.call(text).inputIds, 1), chunks: 1, tokenCount: 0 });
  const cond = await encode(c.prompts[0] ?? '');
  const uncond = await encode('');
  if (want('cfg.') && ref.has('cfg.cond_embeds')) checkGuidanceInputs(c, cond, uncond);
  if (want('unet.') && ref.has('unet.latents')) await checkUnet(c, cond, uncond);
  if (want('vae.') && ref.has('vae.pixels')) await checkVae(c);
  if (want('sched.') && ref.has('sched.betas')) checkSchedules(c);
  if (want('sample.') && ref.has('sample.init_latents')) await checkSampling(c, cond, uncond);
  if (want('ti.') && ref.has('ti.loss')) await checkTextualInversion(c, { id: placeholderId, initRow });
  return rows;
}

export function formatVerifyTable(rows: VerifyRow[]): string {
  const w = Math.max(6, ...rows.map((r) => r.name.length));
  const fmt = (v: number) => (Number.isFinite(v) ? v.toExponential(2) : String(v));
  const lines = [`${'tensor'.padEnd(w)}  ${'max abs err'.padStart(11)}  ${'max rel err'.padStart(11)}  ${'tolerance'.padStart(9)}  result`];
  for (const r of rows) {
    lines.push(`${r.name.padEnd(w)}  ${fmt(r.maxAbs).padStart(11)}  ${fmt(r.maxRel).padStart(11)}  ${fmt(r.tol).padStart(9)}  ${r.pass ? 'pass' : 'FAIL'}${r.note ? `  (${r.note})` : ''}`);
  }
  const failed = rows.filter((r) => !r.pass).length;
  lines.push(`${rows.length - failed} passed, ${failed} failed`);
  return lines.join('\n');
}
