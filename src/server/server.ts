// Starts `oneword serve`: the data folder (locked to one server), the engine process,
// the job queue and the HTTP server.
import { existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { createApp } from './app.ts';
import { EngineClient } from './engine-client.ts';
import { Generations } from './generation.ts';
import { JobManager } from './jobs.ts';
import { ModelRegistry } from './models.ts';
import { OnewordError } from '../index.ts';
import { alive } from '../io/output-folder.ts';

export interface ServeOptions {
  port?: number;
  host?: string;
  data?: string;
  models?: string;
  token?: string;
  threads?: number;
}

export interface RunningServer {
  url: string;
  models: ModelRegistry;
  jobs: JobManager;
  /** Stops the running job at a checkpoint, then the engine and the HTTP server. */
  close(): Promise<void>;
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127(\.\d{1,3}){3}$/.test(host);
}


/** One server per data folder; a lock left by a server that died is taken over. */
function lockData(dir: string): void {
  const lock = join(dir, 'server.pid');
  if (existsSync(lock)) {
    const pid = Number(readFileSync(lock, 'utf8'));
    if (pid && pid !== process.pid && alive(pid)) throw new OnewordError(`${dir} is in use by another oneword serve (pid ${pid})`, { usage: true, option: 'data', problem: `${dir} is in use by another oneword serve (pid ${pid})` });
  }
  writeFileSync(lock, String(process.pid));
}

/**
 * An engine left running by a server that was killed (it ends itself when it notices, but
 * not in the middle of a long ONNX Runtime call): end it before its job is touched again.
 */
function endOrphanEngine(pidFile: string): void {
  if (!existsSync(pidFile)) return;
  const pid = Number(readFileSync(pidFile, 'utf8'));
  rmSync(pidFile, { force: true });
  if (!pid || !alive(pid)) return;
  try {
    // Only our own engine (where /proc says what a process is).
    const cmd = existsSync(`/proc/${pid}/cmdline`) ? readFileSync(`/proc/${pid}/cmdline`, 'utf8') : 'engine.';
    if (/server[/\\]engine\.(ts|js)/.test(cmd)) process.kill(pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

export async function startServer(o: ServeOptions = {}): Promise<RunningServer> {
  const host = o.host ?? '127.0.0.1';
  if (!isLoopback(host) && !o.token) throw OnewordError.badOption('token', `is required to listen on ${host} (anyone who can reach it could train and generate): add --token SECRET`);
  const data = resolve(o.data ?? 'oneword-data');
  mkdirSync(join(data, 'jobs'), { recursive: true });
  lockData(data);
  const enginePid = join(data, 'engine.pid');
  endOrphanEngine(enginePid);
  const models = new ModelRegistry(o.models ? resolve(o.models) : undefined);
  const engineLog = openSync(join(data, 'engine.log'), 'a');
  const engine = new EngineClient(enginePid, engineLog);
  const jobs = new JobManager(join(data, 'jobs'), engine, o.threads);
  const generations = new Generations(engine, models, jobs, data, o.threads);
  const app = createApp({ models, jobs, generations, token: o.token, loopbackOnly: isLoopback(host) && !o.token });

  const server = await new Promise<ReturnType<typeof serve>>((ok, fail) => {
    const s = serve({ fetch: app.fetch, port: o.port ?? 7860, hostname: host }, () => ok(s));
    s.once('error', fail);
  });
  const { port } = server.address() as AddressInfo;
  const shown = host.includes(':') ? `[${host}]` : host;
  return {
    url: `http://${shown}:${port}/`,
    models,
    jobs,
    close: async () => {
      await jobs.close();
      engine.kill();
      await new Promise<void>((r) => {
        server.close(() => r());
        (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
      });
      rmSync(join(data, 'server.pid'), { force: true });
    },
  };
}
