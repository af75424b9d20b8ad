// Conformance check of an SDXL model against its reference file (FORMAT.md, "SDXL reference
// files"): both tokenizers, both encoders' penultimate states and the pooled output, the
// classifier-free-guidance conditioning (all-zero negative with force_zeros_for_empty_prompt),
// time ids, the UNet's text_time embedding and predictions, VAE, schedules, Euler and DPM++
// trajectories with pooled embeds and time ids at every step, and one textual-inversion
// step training both encoders' rows (ti.*) or encoder 1's alone (ti_te1only.*).
import { Graph, type Tensor } from '../graph/index.ts';
import { compile } from '../runtime/session.ts';
import { CLIPTokenizer } from '../models/clip-tokenizer.ts';
import { clipPoolingMask, clipPoolingPositions, clipTextHiddenStates, clipTextPooled } from '../models/clip-text.ts';
import { unetAddedEmbedding, unetTimeEmbedding, unetTimeIdsEmbedding } from '../models/unet.ts';
import { adamWState, adamWStep } from '../optim/adamw.ts';
import { createScheduler, type SchedulerKind } from '../schedulers/index.ts';
import { checkSchedules, checkTrajectory, checkVae, compare, concat, cosine, exact, SAMPLE_VARIANTS, type Check, type VerifyRow } from './verify-checks.ts';
import { decodeLatents, denoise, guidedConditioning, sdxlTimeIds, zeroPrompt, type EncodedPrompt } from './text-to-image.ts';
import { TrainStep } from './ti-step.ts';

/** The placeholder added to both tokenizers, each row a copy of the initializer's. */
interface XLPlaceholder {
  ids: [number, number];
  rows: [Float32Array, Float32Array];
}

/** Tensors of the file that are inputs (or harness settings), not results: nothing to recompute. */
export const XL_REFERENCE_INPUTS = new Set([
  'unet.latents', 'unet.timestep', 'unet.timestep_float', 'unet.time_ids_alt', 'unet.cfg.guidance_scale',
  'vae.pixels', 'vae.dec.latents', 'sample.init_latents', 'sample.guidance_scale', 'sample.num_inference_steps',
  'ti.pixels', 'ti.timesteps', 'ti.vae_eps', 'ti.noise', 'ti.adamw',
]);

function freshTokenizers(c: Check): [CLIPTokenizer, CLIPTokenizer] {
  const { ckpt } = c.sd;
  return [
    ckpt.tokenizerDir ? CLIPTokenizer.fromDir(ckpt.tokenizerDir) : CLIPTokenizer.bundled(),
    ckpt.tokenizer2Dir ? CLIPTokenizer.fromDir(ckpt.tokenizer2Dir) : CLIPTokenizer.bundled({ padToken: '!' }),
  ];
}

/** Both tokenizers with and without the placeholder (textual_inversion_sdxl.py adds it to both). */
function checkTokenizers(c: Check, tok: [CLIPTokenizer, CLIPTokenizer], p: XLPlaceholder, initIds: [number[], number[]]): void {
  const { push, I, prompts, sd } = c;
  const base = freshTokenizers(c);
  for (const k of [0, 1] as const) {
    const n = k + 1;
    push(exact(`tok.input_ids_${n}`, prompts.flatMap((q) => tok[k].call(q).inputIds), I(`tok.input_ids_${n}`)));
    push(exact(`tok.input_ids_base_${n}`, prompts.flatMap((q) => base[k].call(q).inputIds), I(`tok.input_ids_base_${n}`)));
    push(exact(`tok.placeholder_id_${n}`, [p.ids[k]], I(`tok.placeholder_id_${n}`)));
    push(exact(`tok.initializer_id_${n}`, initIds[k], I(`tok.initializer_id_${n}`)));
    push(exact(`tok.pad_id_${n}`, [tok[k].padId], I(`tok.pad_id_${n}`)));
  }
  push(exact('tok.bos_id', [sd.tokenizer.bosId], I('tok.bos_id')));
  push(exact('tok.eos_id', [sd.tokenizer.eosId], I('tok.eos_id')));
}

/** Both encoders: penultimate and last hidden states, the pooling position, pooled output, text_embeds, prompt embeds. */
async function checkTextEncoders(c: Check, p: XLPlaceholder): Promise<void> {
  const { sd, push, F, I, prompts } = c;
  const cfg2 = sd.ckpt.textEncoder2Config!;
  const b = prompts.length;
  const ids1 = prompts.flatMap((q) => sd.tokenizer.call(q).inputIds);
  const ids2 = prompts.flatMap((q) => sd.tokenizer2!.call(q).inputIds);
  const g = new Graph();
  const h1 = clipTextHiddenStates(sd.params(g, 'textEncoder').scope('text_model'), sd.ckpt.textEncoderConfig, g.input('ids1', [b, 77], 'int64'), { extraRows: g.input('extra1', [1, sd.hiddenSize]) });
  const p2 = sd.params(g, 'textEncoder2');
  const h2 = clipTextHiddenStates(p2.scope('text_model'), cfg2, g.input('ids2', [b, 77], 'int64'), { extraRows: g.input('extra2', [1, sd.hiddenSize2]) });
  const pool = g.input('pool', [b, 77]);
  const outs: Record<string, Tensor> = {
    pen1: h1.penultimate, last1: h1.last, pen2: h2.penultimate, last2: h2.last, textEmbeds: clipTextPooled(p2, cfg2, h2.last, pool),
  };
  const r = await (await compile(outs, sd.compileOptions())).run({
    ids1: BigInt64Array.from(ids1, BigInt), ids2: BigInt64Array.from(ids2, BigInt), extra1: p.rows[0], extra2: p.rows[1], pool: clipPoolingMask(cfg2, ids2, b),
  }) as Record<string, Float32Array>;
  push(compare('te1.placeholder_row', p.rows[0], F('te1.placeholder_row')));
  push(compare('te2.placeholder_row', p.rows[1], F('te2.placeholder_row')));
  push(compare('te1.penultimate_hidden_state', r.pen1, F('te1.penultimate_hidden_state')));
  push(compare('te1.last_hidden_state', r.last1, F('te1.last_hidden_state')));
  push(compare('te2.penultimate_hidden_state', r.pen2, F('te2.penultimate_hidden_state')));
  push(compare('te2.last_hidden_state', r.last2, F('te2.last_hidden_state')));
  const at = clipPoolingPositions(cfg2, ids2, b);
  push(exact('te2.pooled_index', at, I('te2.pooled_index')));
  const d2 = sd.hiddenSize2;
  push(compare('te2.pooled_output', concat(at.map((i, k) => r.last2.subarray((k * 77 + i) * d2, (k * 77 + i + 1) * d2))), F('te2.pooled_output')));
  push(compare('te2.text_embeds', r.textEmbeds, F('te2.text_embeds')));
  const both = await sd.encodeIdsXL(ids1, ids2, b);
  push(compare('te.prompt_embeds', both.hidden, F('te.prompt_embeds')));
}

/** What StableDiffusionXLPipeline.encode_prompt gives prompt 0, no negative prompt (zeros) and an explicit "". */
async function checkGuidanceInputs(c: Check, cond: EncodedPrompt, uncond: EncodedPrompt, timeIds: Float32Array): Promise<void> {
  const { sd, push, F, I } = c;
  const tok = freshTokenizers(c);
  push(exact('cfg.cond_input_ids_1', tok[0].call(c.prompts[0]).inputIds, I('cfg.cond_input_ids_1')));
  push(exact('cfg.cond_input_ids_2', tok[1].call(c.prompts[0]).inputIds, I('cfg.cond_input_ids_2')));
  push(compare('cfg.cond_embeds', cond.hidden, F('cfg.cond_embeds')));
  push(compare('cfg.cond_pooled', cond.pooled!, F('cfg.cond_pooled')));
  push(compare('cfg.uncond_embeds', uncond.hidden, F('cfg.uncond_embeds')));
  push(compare('cfg.uncond_pooled', uncond.pooled!, F('cfg.uncond_pooled')));
  push(exact('cfg.force_zeros_for_empty_prompt', [sd.ckpt.forceZerosForEmptyPrompt ? 1 : 0], I('cfg.force_zeros_for_empty_prompt')));
  const [e1, e2] = [tok[0].call('').inputIds, tok[1].call('').inputIds];
  push(exact('cfg.empty_input_ids_1', e1, I('cfg.empty_input_ids_1')));
  push(exact('cfg.empty_input_ids_2', e2, I('cfg.empty_input_ids_2')));
  const empty = await sd.encodeIdsXL(e1, e2, 1);
  push(compare('cfg.empty_embeds', empty.hidden, F('cfg.empty_embeds')));
  push(compare('cfg.empty_pooled', empty.pooled, F('cfg.empty_pooled')));
  push(compare('cfg.add_time_ids', timeIds, F('cfg.add_time_ids')));
}

/** The text_time embedding's parts, one UNet call, the batched CFG call, a fractional timestep, other time ids. */
async function checkUnet(c: Check, cond: EncodedPrompt, uncond: EncodedPrompt, timeIds: Float32Array): Promise<void> {
  const { ref, sd, push, F, I } = c;
  const g = new Graph();
  const p = sd.params(g, 'unet');
  const cfg = sd.ckpt.unetConfig;
  const [tIn, textEmbeds, ids] = [g.input('t', [1]), g.input('textEmbeds', [1, sd.pooledSize]), g.input('timeIds', [1, 6])];
  const add = await (await compile({
    tEmb: unetTimeEmbedding(p, cfg, tIn), timeEmbeds: unetTimeIdsEmbedding(cfg, ids), augEmb: unetAddedEmbedding(p, cfg, { textEmbeds, timeIds: ids }),
  }, sd.compileOptions())).run({ t: Float32Array.of(I('unet.timestep')[0]), textEmbeds: cond.pooled!, timeIds }) as Record<string, Float32Array>;
  push(compare('unet.add.t_emb', add.tEmb, F('unet.add.t_emb')));
  push(compare('unet.add.time_embeds', add.timeEmbeds, F('unet.add.time_embeds')));
  push(compare('unet.add.aug_emb', add.augEmb, F('unet.add.aug_emb')));

  const shape = ref.info('unet.latents').shape;
  const x = F('unet.latents');
  const t = I('unet.timestep')[0];
  const one = (tt: number, ti: Float32Array) => sd.unet(x, shape, [tt], cond.hidden, { textEmbeds: cond.pooled!, timeIds: ti });
  push(compare('unet.noise_pred', await one(t, timeIds), F('unet.noise_pred')));
  push(compare('unet.noise_pred_float_t', await one(F('unet.timestep_float')[0], timeIds), F('unet.noise_pred_float_t')));
  push(compare('unet.noise_pred_time_ids_alt', await one(t, F('unet.time_ids_alt')), F('unet.noise_pred_time_ids_alt')));
  const both = concat([x, x]);
  const added = guidedConditioning(sd, cond, uncond, timeIds, true)!;
  const batched = await sd.unet(both, [2, ...shape.slice(1)], [t, t], concat([uncond.hidden, cond.hidden]), added);
  push(compare('unet.cfg.noise_pred_batched', batched, F('unet.cfg.noise_pred_batched')));
  const s = F('unet.cfg.guidance_scale')[0];
  const n = x.length;
  push(compare('unet.cfg.guided', Float32Array.from({ length: n }, (_, k) => batched[k] + s * (batched[n + k] - batched[k])), F('unet.cfg.guided')));
}

/** Euler (the model's own scheduler) and DPM++ 2M Karras: every step's UNet input conditioning, output and latents. */
async function checkSampling(c: Check, cond: EncodedPrompt, uncond: EncodedPrompt, timeIds: Float32Array): Promise<void> {
  const { ref, sd, push, F, I } = c;
  const shape = ref.info('sample.init_latents').shape;
  const latentShape = [shape[1], shape[2], shape[3]] as [number, number, number];
  const guidance = F('sample.guidance_scale')[0];
  const added = guidedConditioning(sd, cond, uncond, timeIds, guidance > 1)!;
  push(compare('sample.prompt_embeds', concat([uncond.hidden, cond.hidden]), F('sample.prompt_embeds')));
  push(compare('sample.add_text_embeds', added.textEmbeds, F('sample.add_text_embeds')));
  push(compare('sample.add_time_ids', added.timeIds, F('sample.add_time_ids')));
  for (const [name, spec] of SAMPLE_VARIANTS) {
    if (ref.has(`sample.${name}.latents`)) await checkTrajectory(c, name, spec, { guidance, cond, uncond, timeIds });
  }
}

/** A gradient row: close, and pointing the same way (cosine ≥ 0.9999 per case). */
function gradientRow(name: string, got: Float32Array, want: Float32Array, cases: number): VerifyRow {
  const d = want.length / cases;
  const row = compare(name, got, want);
  let worst = 1;
  for (let k = 0; k < cases; k++) worst = Math.min(worst, cosine(got.subarray(k * d, (k + 1) * d), want.subarray(k * d, (k + 1) * d)));
  row.pass = row.pass && worst >= 0.9999;
  row.note = `cosine ${worst.toFixed(7)} (≥ 0.9999)`;
  return row;
}

/** The training images' latents, noisy latents and targets per reference timestep (as for SD). */
async function tiInputs(c: Check): Promise<{ latents: Float32Array[]; noisy: Float32Array[]; target: Float32Array[] }> {
  const { ref, sd, F, I } = c;
  const ts = I('ti.timesteps');
  const n = ref.info('ti.latents').shape.slice(1).reduce((a, b) => a * b, 1);
  const enc = await sd.vaeEncode(F('ti.pixels'), ref.info('ti.pixels').shape);
  const [vaeEps, noise] = [F('ti.vae_eps'), F('ti.noise')];
  const sched = createScheduler('ddpm', sd.ckpt.schedulerConfig);
  const out = { latents: [] as Float32Array[], noisy: [] as Float32Array[], target: [] as Float32Array[] };
  ts.forEach((t, k) => {
    const e = vaeEps.subarray(k * n, (k + 1) * n);
    const latents = Float32Array.from(enc.mean, (m, i) => (m + enc.std[i] * e[i]) * sd.scalingFactor);
    const nz = noise.subarray(k * n, (k + 1) * n);
    out.latents.push(latents);
    out.noisy.push(sched.addNoise(latents, nz, [t]));
    out.target.push(sched.trainingTarget(latents, nz, [t]));
  });
  return out;
}

/**
 * One textual_inversion_sdxl.py step per reference timestep: with the placeholder in both
 * tokenizers and both rows trained (ti.*), and as diffusers 0.27.2 shipped it, encoder 1 only
 * (ti_te1only.*: tokenizer 2 splits the placeholder, encoder 2 frozen).
 */
async function checkTextualInversion(c: Check, p: XLPlaceholder, te1only: boolean): Promise<void> {
  const { ref, sd, push, F, I } = c;
  const pre = te1only ? 'ti_te1only' : 'ti';
  const [lr, beta1, beta2, eps, weightDecay] = F('ti.adamw');
  const ts = I('ti.timesteps');
  const lshape = ref.info('ti.latents').shape.slice(1);
  const tiIds = (tok: CLIPTokenizer) => tok.call(ref.metadata.ti_prompt ?? 'a photo of <cat-toy>').inputIds;
  const ids = tiIds(sd.tokenizer);
  const ids2 = te1only ? tiIds(freshTokenizers(c)[1]) : tiIds(sd.tokenizer2!);
  const meta = (k: string) => JSON.parse(ref.metadata[k]) as [number, number];
  const timeIds = sdxlTimeIds({ originalSize: meta('ti_original_size'), cropsCoordsTopLeft: meta('ti_crops_coords_top_left'), targetSize: meta('ti_target_size') });
  const step = await TrainStep.create(sd, { batch: 1, rows: 1, rows2: 1, latent: [lshape[1], lshape[2], lshape[3]] }, true);
  const inp = await tiInputs(c);
  const out: Record<string, Float32Array[]> = { ehs: [], text: [], pred: [], loss: [], grad: [], grad2: [], after: [], after2: [] };
  for (let k = 0; k < ts.length; k++) {
    const r = await step.run({ ids, ids2, rows: p.rows[0], rows2: p.rows[1], noisy: inp.noisy[k], t: [ts[k]], target: inp.target[k], timeIds });
    const [v1, v2] = [Float32Array.from(p.rows[0]), Float32Array.from(p.rows[1])];
    adamWStep(v1, r.grad, adamWState(v1.length), { lr, beta1, beta2, eps, weightDecay });
    adamWStep(v2, r.grad2!, adamWState(v2.length), { lr, beta1, beta2, eps, weightDecay });
    out.ehs.push(r.context!); out.text.push(r.textEmbeds!); out.pred.push(r.pred!); out.loss.push(Float32Array.of(r.loss));
    out.grad.push(r.grad); out.grad2.push(r.grad2!); out.after.push(v1); out.after2.push(v2);
  }
  if (te1only) {
    push(exact('ti_te1only.input_ids_2', ids2, I('ti_te1only.input_ids_2')));
  } else {
    push(exact('ti.input_ids_1', ids, I('ti.input_ids_1')));
    push(exact('ti.input_ids_2', ids2, I('ti.input_ids_2')));
    push(compare('ti.add_time_ids', timeIds, F('ti.add_time_ids')));
    push(exact('ti.pooled_index_2', clipPoolingPositions(sd.ckpt.textEncoder2Config!, ids2, 1), I('ti.pooled_index_2')));
    push(compare('ti.placeholder_init_1', p.rows[0], F('ti.placeholder_init_1')));
    push(compare('ti.placeholder_init_2', p.rows[1], F('ti.placeholder_init_2')));
    push(compare('ti.latents', concat(inp.latents), F('ti.latents')));
    push(compare('ti.noisy_latents', concat(inp.noisy), F('ti.noisy_latents')));
    push(compare('ti.target', concat(inp.target), F('ti.target')));
    push(compare('ti.encoder_hidden_states', concat(out.ehs), F('ti.encoder_hidden_states')));
    push(compare('ti.text_embeds', concat(out.text), F('ti.text_embeds')));
    push(gradientRow('ti.grad_placeholder_2', concat(out.grad2), F('ti.grad_placeholder_2'), ts.length));
    push(compare('ti.placeholder_after_adamw_2', concat(out.after2), F('ti.placeholder_after_adamw_2')));
  }
  push(compare(`${pre}.model_pred`, concat(out.pred), F(`${pre}.model_pred`)));
  push(compare(`${pre}.loss`, concat(out.loss), F(`${pre}.loss`)));
  push(gradientRow(`${pre}.grad_placeholder_1`, concat(out.grad), F(`${pre}.grad_placeholder_1`), ts.length));
  push(compare(`${pre}.placeholder_after_adamw_1`, concat(out.after), F(`${pre}.placeholder_after_adamw_1`)));
}

/** The placeholder in both tokenizers (and registered with the model), each row a copy of its encoder's initializer row. */
function addPlaceholder(c: Check): { tok: [CLIPTokenizer, CLIPTokenizer]; p: XLPlaceholder; initIds: [number[], number[]] } {
  const { sd } = c;
  const tok = freshTokenizers(c);
  const init = c.ref.metadata.initializer_token ?? 'toy';
  const initIds: [number[], number[]] = [tok[0].encode(init), tok[1].encode(init)];
  const row = (w: { float32(n: string): Float32Array }, id: number, d: number) => w.float32('text_model.embeddings.token_embedding.weight').slice(id * d, (id + 1) * d);
  const rows: [Float32Array, Float32Array] = [row(sd.ckpt.textEncoder, initIds[0][0], sd.hiddenSize), row(sd.ckpt.textEncoder2!, initIds[1][0], sd.hiddenSize2)];
  const ids: [number, number] = [tok[0].addTokens([c.placeholder])[0], tok[1].addTokens([c.placeholder])[0]];
  sd.addLearnedToken(c.placeholder, rows[0], 1, rows[1]);
  return { tok, p: { ids, rows }, initIds };
}

/** Every check of an SDXL reference file whose group `want` selects. */
export async function verifyXL(c: Check, want: (prefix: string) => boolean): Promise<void> {
  const { ref, sd } = c;
  const { tok, p, initIds } = addPlaceholder(c);
  if (want('tok.')) checkTokenizers(c, tok, p, initIds);
  if (want('te')) await checkTextEncoders(c, p);
  const base = freshTokenizers(c);
  const prompt0 = c.prompts[0] ?? '';
  const enc = await sd.encodeIdsXL(base[0].call(prompt0).inputIds, base[1].call(prompt0).inputIds, 1);
  const cond: EncodedPrompt = { hidden: enc.hidden, pooled: enc.pooled, chunks: 1, tokenCount: 0 };
  const uncond = zeroPrompt(sd, cond);
  const [h, w] = [Number(ref.metadata.height), Number(ref.metadata.width)];
  const timeIds = sdxlTimeIds({ originalSize: [h, w], cropsCoordsTopLeft: [0, 0], targetSize: [h, w] });
  if (want('cfg.')) await checkGuidanceInputs(c, cond, uncond, timeIds);
  if (want('unet.')) await checkUnet(c, cond, uncond, timeIds);
  if (want('vae.')) await checkVae(c);
  if (want('sched.')) checkSchedules(c);
  if (want('sample.')) await checkSampling(c, cond, uncond, timeIds);
  if (want('ti.') && ref.has('ti.loss')) await checkTextualInversion(c, p, false);
  if (want('ti_te1only.') && ref.has('ti_te1only.loss')) await checkTextualInversion(c, p, true);
}
