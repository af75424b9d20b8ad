// oneword command-line entry: dispatches subcommands.
import { OnewordError } from '../errors.ts';

const HELP = `oneword — textual inversion for Stable Diffusion, on ONNX Runtime

Usage: oneword <command> [options]

Commands:
  demo       the whole method on the bundled shapes model, with a report (npm start)
  train      learn a new word from 3–5 images (textual inversion)
  generate   text-to-image, with learned embeddings (--embedding)
  verify     check oneword's outputs against a diffusers reference file
  shapes     render and analyze images of the bundled "shapes" world
  serve      a local page (and HTTP API) to train, generate and keep words
  help       show this help

Run "oneword <command> --help" for a command's options.
`;

type Command = (argv: string[]) => Promise<number>;

interface CommandModule {
  run: Command;
  /** Flags whose names differ from their library option's name in kebab-case. */
  optionFlags?: Record<string, string>;
}

const commands: Record<string, () => Promise<CommandModule>> = {
  verify: async () => ({ run: (await import('./verify.ts')).verifyCommand }),
  generate: async () => {
    const m = await import('./generate.ts');
    return { run: m.generateCommand, optionFlags: m.GENERATE_OPTION_FLAGS };
  },
  train: async () => ({ run: (await import('./train.ts')).trainCommand }),
  demo: async () => ({ run: (await import('./demo.ts')).demoCommand }),
  shapes: async () => ({ run: (await import('./shapes.ts')).shapesCommand }),
  serve: async () => ({ run: (await import('../server/serve-command.ts')).serveCommand }),
};

/** A library error as the command line says it: the option at fault named by its flag. */
function describeForCli(e: OnewordError, optionFlags: Record<string, string> = {}): string {
  if (!e.option || e.problem === undefined) return e.message;
  const flag = optionFlags[e.option] ?? `--${e.option.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
  return `${flag} ${e.problem}`;
}

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
  let mod: CommandModule | undefined;
  try {
    mod = await load();
    return await mod.run(rest);
  } catch (e) {
    // The caller's mistake (a bad option or value) exits with 2; a failed run with 1.
    if (e instanceof OnewordError && e.usage) {
      process.stderr.write(`oneword ${command}: ${describeForCli(e, mod?.optionFlags)}\nRun "oneword ${command} --help" for usage.\n`);
      return 2;
    }
    const err = e as Error;
    process.stderr.write(`oneword ${command}: ${err.message}\n`);
    if (process.env.ONEWORD_DEBUG) process.stderr.write(`${err.stack}\n`);
    return 1;
  }
}
