// The exact set of weights (diffusers names → shapes) each architecture needs for a
// given config, derived the way diffusers builds its modules. Used to validate
// checkpoints, to initialise models trained from scratch, and to make random-weight
// models for benchmarks.
import type { CLIPTextConfig } from './clip-text.ts';
import type { UNetConfig } from './unet.ts';
import type { VAEConfig } from './vae.ts';

export type WeightSpec = Map<string, number[]>;

function addNorm(s: WeightSpec, name: string, c: number) {
  s.set(`${name}.weight`, [c]);
  s.set(`${name}.bias`, [c]);
}
function addLinear(s: WeightSpec, name: string, out: number, inp: number, bias = true) {
  s.set(`${name}.weight`, [out, inp]);
  if (bias) s.set(`${name}.bias`, [out]);
}
function addConv(s: WeightSpec, name: string, out: number, inp: number, k: number) {
  s.set(`${name}.weight`, [out, inp, k, k]);
  s.set(`${name}.bias`, [out]);
}

function addResnet(s: WeightSpec, name: string, cin: number, cout: number, temb: number | null) {
  addNorm(s, `${name}.norm1`, cin);
  addConv(s, `${name}.conv1`, cout, cin, 3);
  if (temb) addLinear(s, `${name}.time_emb_proj`, cout, temb);
  addNorm(s, `${name}.norm2`, cout);
  addConv(s, `${name}.conv2`, cout, cout, 3);
  if (cin !== cout) addConv(s, `${name}.conv_shortcut`, cout, cin, 1);
}

function addTransformer(s: WeightSpec, name: string, c: number, cross: number, linearProj: boolean) {
  addNorm(s, `${name}.norm`, c);
  const proj = (n: string) => (linearProj ? addLinear(s, `${name}.${n}`, c, c) : addConv(s, `${name}.${n}`, c, c, 1));
  proj('proj_in');
  const b = `${name}.transformer_blocks.0`;
  for (const n of ['norm1', 'norm2', 'norm3']) addNorm(s, `${b}.${n}`, c);
  for (const [attn, kv] of [['attn1', c], ['attn2', cross]] as const) {
    addLinear(s, `${b}.${attn}.to_q`, c, c, false);
    addLinear(s, `${b}.${attn}.to_k`, c, kv, false);
    addLinear(s, `${b}.${attn}.to_v`, c, kv, false);
    addLinear(s, `${b}.${attn}.to_out.0`, c, c);
  }
  addLinear(s, `${b}.ff.net.0.proj`, 8 * c, c);
  addLinear(s, `${b}.ff.net.2`, c, 4 * c);
  proj('proj_out');
}

export function unetWeightSpec(cfg: UNetConfig): WeightSpec {
  const s: WeightSpec = new Map();
  const ch = cfg.block_out_channels;
  const c0 = ch[0];
  const temb = 4 * c0;
  const lin = cfg.use_linear_projection ?? false;
  const cross = cfg.cross_attention_dim;
  addConv(s, 'conv_in', c0, cfg.in_channels, 3);
  addLinear(s, 'time_embedding.linear_1', temb, c0);
  addLinear(s, 'time_embedding.linear_2', temb, temb);
  let out = c0;
  cfg.down_block_types.forEach((type, i) => {
    const inp = out;
    out = ch[i];
    for (let j = 0; j < cfg.layers_per_block; j++) {
      addResnet(s, `down_blocks.${i}.resnets.${j}`, j === 0 ? inp : out, out, temb);
      if (type.startsWith('CrossAttn')) addTransformer(s, `down_blocks.${i}.attentions.${j}`, out, cross, lin);
    }
    if (i < ch.length - 1) addConv(s, `down_blocks.${i}.downsamplers.0.conv`, out, out, 3);
  });
  const last = ch[ch.length - 1];
  addResnet(s, 'mid_block.resnets.0', last, last, temb);
  addTransformer(s, 'mid_block.attentions.0', last, cross, lin);
  addResnet(s, 'mid_block.resnets.1', last, last, temb);
  const rev = [...ch].reverse();
  out = rev[0];
  cfg.up_block_types.forEach((type, i) => {
    const prev = out;
    out = rev[i];
    const inp = rev[Math.min(i + 1, ch.length - 1)];
    for (let j = 0; j <= cfg.layers_per_block; j++) {
      const skip = j === cfg.layers_per_block ? inp : out;
      addResnet(s, `up_blocks.${i}.resnets.${j}`, (j === 0 ? prev : out) + skip, out, temb);
      if (type.startsWith('CrossAttn')) addTransformer(s, `up_blocks.${i}.attentions.${j}`, out, cross, lin);
    }
    if (i < ch.length - 1) addConv(s, `up_blocks.${i}.upsamplers.0.conv`, out, out, 3);
  });
  addNorm(s, 'conv_norm_out', c0);
  addConv(s, 'conv_out', cfg.out_channels, c0, 3);
  return s;
}

function addVaeMid(s: WeightSpec, name: string, c: number) {
  addResnet(s, `${name}.resnets.0`, c, c, null);
  addNorm(s, `${name}.attentions.0.group_norm`, c);
  for (const n of ['to_q', 'to_k', 'to_v', 'to_out.0']) addLinear(s, `${name}.attentions.0.${n}`, c, c);
  addResnet(s, `${name}.resnets.1`, c, c, null);
}

export function vaeWeightSpec(cfg: VAEConfig): WeightSpec {
  const s: WeightSpec = new Map();
  const ch = cfg.block_out_channels;
  const l = cfg.latent_channels;
  const last = ch[ch.length - 1];
  addConv(s, 'encoder.conv_in', ch[0], cfg.in_channels, 3);
  let out = ch[0];
  ch.forEach((c, i) => {
    const inp = out;
    out = c;
    for (let j = 0; j < cfg.layers_per_block; j++) addResnet(s, `encoder.down_blocks.${i}.resnets.${j}`, j === 0 ? inp : out, out, null);
    if (i < ch.length - 1) addConv(s, `encoder.down_blocks.${i}.downsamplers.0.conv`, out, out, 3);
  });
  addVaeMid(s, 'encoder.mid_block', last);
  addNorm(s, 'encoder.conv_norm_out', last);
  addConv(s, 'encoder.conv_out', 2 * l, last, 3);
  addConv(s, 'quant_conv', 2 * l, 2 * l, 1);
  addConv(s, 'post_quant_conv', l, l, 1);
  addConv(s, 'decoder.conv_in', last, l, 3);
  addVaeMid(s, 'decoder.mid_block', last);
  const rev = [...ch].reverse();
  out = rev[0];
  rev.forEach((c, i) => {
    const prev = out;
    out = c;
    for (let j = 0; j <= cfg.layers_per_block; j++) addResnet(s, `decoder.up_blocks.${i}.resnets.${j}`, j === 0 ? prev : out, out, null);
    if (i < ch.length - 1) addConv(s, `decoder.up_blocks.${i}.upsamplers.0.conv`, out, out, 3);
  });
  addNorm(s, 'decoder.conv_norm_out', ch[0]);
  addConv(s, 'decoder.conv_out', cfg.out_channels, ch[0], 3);
  return s;
}

export function clipTextWeightSpec(cfg: CLIPTextConfig): WeightSpec {
  const s: WeightSpec = new Map();
  const d = cfg.hidden_size;
  s.set('text_model.embeddings.token_embedding.weight', [cfg.vocab_size, d]);
  s.set('text_model.embeddings.position_embedding.weight', [cfg.max_position_embeddings, d]);
  for (let i = 0; i < cfg.num_hidden_layers; i++) {
    const p = `text_model.encoder.layers.${i}`;
    for (const n of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) addLinear(s, `${p}.self_attn.${n}`, d, d);
    addNorm(s, `${p}.layer_norm1`, d);
    addNorm(s, `${p}.layer_norm2`, d);
    addLinear(s, `${p}.mlp.fc1`, cfg.intermediate_size, d);
    addLinear(s, `${p}.mlp.fc2`, d, cfg.intermediate_size);
  }
  addNorm(s, 'text_model.final_layer_norm', d);
  return s;
}
