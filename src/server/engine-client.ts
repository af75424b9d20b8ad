// The server's side of the engine process: starts it on first use (and again after it
// died), routes its messages, and fails whatever it had in hand when it exits.
import { fork, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { rmSync, writeFileSync } from 'node:fs';
import type { FromEngine, GenerateRequest, ToEngine } from './protocol.ts';

/** In a clone the sources run through tsx; an installed package runs dist/*.js as is. */
function engineEntry(): { file: string; execArgv: string[] } {
  const fromSources = import.meta.url.endsWith('.ts');
  const file = new URL(`./engine.${fromSources ? 'ts' : 'js'}`, import.meta.url).pathname;
  return { file, execArgv: fromSources ? ['--import', import.meta.resolve('tsx')] : [] };
}

export interface EngineExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Emits 'message' (FromEngine) and 'exit' (EngineExit). */
export class EngineClient extends EventEmitter {
  private child: ChildProcess | null = null;

  /** @param pidFile where the engine's pid is kept, so a restarted server can end an orphan. */
  constructor(private readonly pidFile: string, private readonly logFd?: number) {
    super();
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  private start(): ChildProcess {
    const { file, execArgv } = engineEntry();
    const out = this.logFd ?? 'ignore';
    const child = fork(file, [], { execArgv, stdio: ['ignore', out, out, 'ipc'], serialization: 'advanced' });
    child.on('message', (m: FromEngine) => this.emit('message', m));
    child.once('exit', (code, signal) => {
      if (this.child === child) this.child = null;
      rmSync(this.pidFile, { force: true });
      this.emit('exit', { code, signal } satisfies EngineExit);
    });
    if (child.pid) writeFileSync(this.pidFile, String(child.pid));
    this.child = child;
    return child;
  }

  send(m: ToEngine): void {
    const child = this.child ?? this.start();
    child.send(m);
  }

  stopJob(job: string): void {
    this.child?.send({ type: 'stop', job });
  }

  generate(r: GenerateRequest): void {
    this.send(r);
  }

  /** Ends the engine (at shutdown, after a running job has saved its checkpoint). */
  kill(): void {
    this.child?.kill('SIGKILL');
  }
}
