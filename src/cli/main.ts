// oneword command-line entry: dispatches subcommands.
const HELP = `oneword — textual inversion for Stable Diffusion, on ONNX Runtime

Usage: oneword <command> [options]

Commands:
  verify     check oneword's outputs against a diffusers reference file
  help       show this help

Run "oneword <command> --help" for a command's options.
`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === 'help' || command === '--help' || command === '-h') {
    process.stdout.write(HELP);
    return 0;
  }
  void rest;
  process.stderr.write(`oneword: unknown command "${command}"\n\n${HELP}`);
  return 2;
}
