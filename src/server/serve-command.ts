// `oneword serve`: the train / generate / gallery page and its HTTP API on a local port.
import { parseArgs, UsageError, type FlagSpec } from '../cli/args.ts';
import { startServer } from './server.ts';

export const SERVE_HELP = `Usage: oneword serve [options]

Serves a page to train words (textual inversion), generate with them and keep them, and the
HTTP API it uses (see the README). Jobs, their logs and outputs live in --data and survive a
restart; a job the server was running when it died shows as stopped at its last checkpoint.

Options:
  --port N        port (default 7860; 0 = any free port)
  --host ADDR     address to listen on (default 127.0.0.1, this machine only); any other
                  address needs --token
  --token T       require "Authorization: Bearer T" on every API call (the page asks once)
  --data DIR      jobs, uploads and generated images (default ./oneword-data)
  --models DIR    also offer every diffusers folder and single-file .safetensors under DIR
                  (the bundled shapes model is always offered)
  --threads N     CPU threads for training and generation (default: all cores)
`;

const SPEC: Record<string, FlagSpec> = {
  port: { type: 'number' }, host: { type: 'string' }, token: { type: 'string' }, data: { type: 'string' },
  models: { type: 'string' }, threads: { type: 'number' }, help: { type: 'boolean', alias: 'h' },
};

export async function serveCommand(argv: string[]): Promise<number> {
  const { flags: f, positional } = parseArgs(argv, SPEC);
  if (f.help) {
    process.stdout.write(SERVE_HELP);
    return 0;
  }
  if (positional.length) throw new UsageError(`unexpected argument "${positional[0]}"`);
  const port = (f.port as number | undefined) ?? 7860;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port must be a whole number from 0 to 65535, got ${port}`);
  const server = await startServer({
    port, host: f.host as string | undefined, token: f.token as string | undefined, data: f.data as string | undefined,
    models: f.models as string | undefined, threads: f.threads as number | undefined,
  });
  const models = server.models.list();
  process.stdout.write(`oneword serve: ${server.url}\n`);
  process.stderr.write(`models: ${models.map((m) => m.id).join(', ')}; jobs: ${server.jobs.list().length}. Ctrl-C stops (a running job saves a checkpoint first).\n`);
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = () => {
      if (stopping) process.exit(130);
      stopping = true;
      process.stderr.write('stopping: a running job saves a checkpoint first (Ctrl-C again to quit at once)…\n');
      void server.close().then(resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  return 0;
}
