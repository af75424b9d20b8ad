#!/usr/bin/env python3
"""Loads an SDXL word trained by oneword into the real diffusers and generates with it.

Not part of the test suite (it needs torch and diffusers >= 0.30, which the CI machine does
not have). Run it where they are installed, on a run folder written by

  oneword train --model test/fixtures/sdxl-tiny --images DIR --token "<blue-heart>" \
      --init toy --steps 6 --resolution 32 --out RUN

  python3 test/formats/gen/check_sdxl_in_diffusers.py test/fixtures/sdxl-tiny RUN "<blue-heart>"

It checks both files oneword writes for an SDXL word:
  * diffusers' pair: learned_embeds.safetensors into text_encoder/tokenizer and
    learned_embeds_2.safetensors into text_encoder_2/tokenizer_2 (load_textual_inversion twice);
  * <name>.safetensors (clip_l / clip_g, kohya / A1111 / ComfyUI), loaded the way diffusers'
    documentation shows: state_dict["clip_l"] / state_dict["clip_g"] into each encoder.
Each must put oneword's vectors in both embedding tables, and a prompt with the token must
generate (and differ from the same prompt without the word's vectors). Prints ALL OK.
"""
import sys

import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file


def rows(pipe, token):
    out = []
    for tok, enc in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        tid = tok.convert_tokens_to_ids(token)
        assert tid != tok.unk_token_id, f'{token} not in a tokenizer'
        out.append(enc.get_input_embeddings().weight[tid].detach().clone())
    return out


def generate(pipe, prompt):
    g = torch.Generator('cpu').manual_seed(0)
    return pipe(prompt, num_inference_steps=3, height=32, width=32, generator=g, output_type='np').images[0]


def main(model, run, token):
    l_name = token.strip('<>')
    pair = StableDiffusionXLPipeline.from_pretrained(model, torch_dtype=torch.float32)
    baseline = generate(pair, f'a photo of {token}')
    pair.load_textual_inversion(f'{run}/learned_embeds.safetensors', text_encoder=pair.text_encoder, tokenizer=pair.tokenizer)
    pair.load_textual_inversion(f'{run}/learned_embeds_2.safetensors', text_encoder=pair.text_encoder_2, tokenizer=pair.tokenizer_2)
    want1 = load_file(f'{run}/learned_embeds.safetensors')[token][0]
    want2 = load_file(f'{run}/learned_embeds_2.safetensors')[token][0]
    got1, got2 = rows(pair, token)
    assert torch.equal(got1, want1) and torch.equal(got2, want2), 'pair: rows differ'
    with_word = generate(pair, f'a photo of {token}')
    assert abs(with_word - baseline).max() > 0, 'pair: the word changed nothing'

    kohya = StableDiffusionXLPipeline.from_pretrained(model, torch_dtype=torch.float32)
    sd = load_file(f'{run}/{l_name}.safetensors')
    kohya.load_textual_inversion(sd['clip_l'], token=token, text_encoder=kohya.text_encoder, tokenizer=kohya.tokenizer)
    kohya.load_textual_inversion(sd['clip_g'], token=token, text_encoder=kohya.text_encoder_2, tokenizer=kohya.tokenizer_2)
    k1, k2 = rows(kohya, token)
    assert torch.equal(k1, want1) and torch.equal(k2, want2), 'clip_l/clip_g: rows differ from the pair'
    assert abs(generate(kohya, f'a photo of {token}') - with_word).max() == 0, 'the two files generate differently'
    print('ALL OK')


if __name__ == '__main__':
    main(*sys.argv[1:4])
