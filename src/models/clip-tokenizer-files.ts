// Writes the SD 1.x CLIP tokenizer as a diffusers `tokenizer/` folder (vocab.json, merges.txt,
// tokenizer_config.json, special_tokens_map.json) from the vocabulary oneword ships, byte for
// byte as transformers' CLIPTokenizer.save_pretrained writes them.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { bundledClipVocabulary } from './clip-tokenizer.ts';

const BOS = '<|startoftext|>';
const EOS = '<|endoftext|>';

/** A special token as save_pretrained records it. */
const token = (content: string, special?: boolean) => ({
  content, lstrip: false, normalized: true, rstrip: false, single_word: false, ...(special === undefined ? {} : { special }),
});

const TOKENIZER_CONFIG = {
  added_tokens_decoder: { 49406: token(BOS, true), 49407: token(EOS, true) },
  bos_token: BOS,
  clean_up_tokenization_spaces: true,
  eos_token: EOS,
  errors: 'replace',
  model_max_length: 77,
  pad_token: EOS,
  tokenizer_class: 'CLIPTokenizer',
  unk_token: EOS,
};

const SPECIAL_TOKENS_MAP = { bos_token: token(BOS), eos_token: token(EOS), pad_token: EOS, unk_token: token(EOS) };

/** json.dumps(vocab, indent=2, sort_keys=True, ensure_ascii=False): keys in code-point order (JS objects would put "0"…"9" first). */
function vocabJson(vocab: ReadonlyMap<string, number>): string {
  const keys = [...vocab.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return `{\n${keys.map((k) => `  ${JSON.stringify(k)}: ${vocab.get(k)}`).join(',\n')}\n}\n`;
}

export function writeClipTokenizer(dir: string): void {
  const { mergesText, vocab } = bundledClipVocabulary();
  writeFileSync(join(dir, 'vocab.json'), vocabJson(vocab));
  writeFileSync(join(dir, 'merges.txt'), mergesText);
  writeFileSync(join(dir, 'tokenizer_config.json'), `${JSON.stringify(TOKENIZER_CONFIG, null, 2)}\n`);
  writeFileSync(join(dir, 'special_tokens_map.json'), `${JSON.stringify(SPECIAL_TOKENS_MAP, null, 2)}\n`);
}
