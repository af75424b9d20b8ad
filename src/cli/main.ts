// oneword command-line entry: dispatches subcommands.
import { UsageError } from './args.ts';

const HELP = `oneword — textual inversion for Stable Diffusion, on ONNX Runtime

Usage: oneword <command> [options]

Commands:
  demo       the whole method on the bundled shapes model, with a report (npm start)
  train      learn a new word from 3–5 images (textual inversion)
  generate   text-to-image, with learned embeddings (--embedding)
  verify     check oneword's outputs against a diffusers reference file
  shapes     render and analyze images of the bundled "shapes" world
  help       show this help

Run "oneword <command> --help" for a command's options.
`;

type Command = (argv: string[]) => Promise<number>;

const commands: Record<string, () => Promise<Command>> = {
  verify: async () => (await import('./verify.ts')).verifyCommand,
  generate: async () => (await import('./generate.ts')).generateCommand,
  train: async () => (await import('./train.ts')).trainCommand,
  demo: async () => (await import('./demo.ts')).demoCommand,
  shapes: async () => (await import('./shapes.ts')).shapesCommand,
};

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === 'help' || command === '--help' || command === '-h') {
    process.stdout.write(HELP);
    return 0;
  }
  const load = commands[command];
  if (!load) {
    process.stderr.write(`oneword: unknown command "${command}"\n\n${HELP}`);
    return 2;
  }
  try {
    return await (await load())(rest);
  } catch (e) {
    const err = e as Error;
    // Bad options are usage errors (exit 2); anything else is a failure (exit 1).
    if (e instanceof UsageError || ['TrainError', 'GenerateError'].includes(err.name)) {
      process.stderr.write(`oneword ${command}: ${err.message}\nRun "oneword ${command} --help" for usage.\n`);
      return 2;
    }
    process.stderr.write(`oneword ${command}: ${err.message}\n`);
    if (process.env.ONEWORD_DEBUG) process.stderr.write(`${err.stack}\n`);
    return 1;
  }
}
