// `oneword verify`: recompute a diffusers reference file's tensors and compare.
import { formatVerifyTable, verify } from '../pipelines/verify.ts';
import { parseArgs, UsageError } from './args.ts';

export const VERIFY_HELP = `Usage: oneword verify --model <folder or .safetensors> [--config DIR] --reference <ref.safetensors> [--only PREFIX…]

Recomputes every tensor a diffusers/transformers reference file holds (tokenizer, text
encoder, UNet, VAE, schedules, sampling trajectories, one textual-inversion step) from its
stored inputs with oneword, prints max abs/rel errors per tensor, and exits with 1 if any
tensor is outside tolerance. SD 1.x/2.x and SDXL (both tokenizers and encoders, pooled
embeds, time ids) reference files alike.

Options:
  --model PATH       diffusers folder or single-file checkpoint
  --config DIR       for a single file: a diffusers folder whose */config.json describe it
  --reference PATH   reference .safetensors file
  --only PREFIX      check only tensors starting with PREFIX (repeatable: tok. te. cfg. unet. vae. sched. sample. ti.;
                     SDXL also te1. te2. ti_te1only.)
  --json             print one JSON object per tensor instead of the table
`;

export async function verifyCommand(argv: string[]): Promise<number> {
  const { flags } = parseArgs(argv, {
    model: { type: 'string' },
    config: { type: 'string' },
    reference: { type: 'string' },
    only: { type: 'string', multiple: true },
    json: { type: 'boolean' },
    help: { type: 'boolean', alias: 'h' },
  });
  if (flags.help) {
    process.stdout.write(VERIFY_HELP);
    return 0;
  }
  if (!flags.model || !flags.reference) throw new UsageError('verify needs --model and --reference');
  const rows = await verify(String(flags.model), String(flags.reference), { only: flags.only as string[] | undefined, config: flags.config as string | undefined });
  if (flags.json) for (const r of rows) process.stdout.write(`${JSON.stringify(r)}\n`);
  else process.stdout.write(`${formatVerifyTable(rows)}\n`);
  return rows.every((r) => r.pass) ? 0 : 1;
}
