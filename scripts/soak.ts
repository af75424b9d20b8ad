// Kill-and-resume soak (opt-in): `npm run soak [-- --kills 20 --steps 300 --seed N]`.
//
// Trains the tiny fixture model once without interruption, then trains the same run again
// while killing the trainer at random moments (SIGKILL mostly, SIGTERM and SIGINT too) and
// resuming it each time, as a user with a flaky machine would. The final embedding and
// training state must equal the uninterrupted run's bit for bit. Exits 1 if they differ.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Rng, randomAttributes, render, writePng } from '../src/shapes/index.ts';
import { SafetensorsFile } from '../src/io/safetensors.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = join(ROOT, 'bin', 'oneword.js');
const MODEL = join(ROOT, 'test', 'fixtures', 'sd1-tiny');

function flag(argv: string[], name: string, def: number): number {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? Number(argv[i + 1]) : def;
}

interface Exit { code: number | null; signal: NodeJS.Signals | null }

/**
 * When to kill: `afterMs` after the start (during start-up, model loading, image encoding),
 * or `afterMs` after the log reached `atLine` lines (mid-training, mid-checkpoint).
 */
interface Kill { signal: NodeJS.Signals; afterMs: number; atLine?: number; log: string }

const loggedSteps = (out: string) => (existsSync(join(out, 'train-log.jsonl')) ? readFileSync(join(out, 'train-log.jsonl'), 'utf8').trim().split('\n').filter(Boolean).length : 0);

/** Runs the trainer to its end, or until `kill` lands. */
function trainer(args: string[], kill?: Kill): Promise<Exit & { killed: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    let killed = false;
    let timer: NodeJS.Timeout | undefined;
    const fire = () => (timer = setTimeout(() => {
      killed = true;
      child.kill(kill!.signal);
    }, kill!.afterMs));
    const poll = kill?.atLine !== undefined ? setInterval(() => {
      if (loggedSteps(kill.log) >= kill.atLine!) {
        clearInterval(poll);
        fire();
      }
    }, 10) : undefined;
    if (kill && kill.atLine === undefined) fire();
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      clearInterval(poll);
      if (code !== 0 && !killed) process.stderr.write(stderr);
      resolve({ code, signal, killed });
    });
  });
}

async function main(argv: string[]): Promise<number> {
  const kills = flag(argv, 'kills', 20);
  // A kill lands a few steps after the last one, so 300 steps outlast 20 kills.
  const steps = flag(argv, 'steps', 300);
  const seed = flag(argv, 'seed', Date.now() % 1e9);
  const rng = new Rng(seed);
  const dir = mkdtempSync(join(tmpdir(), 'oneword-soak-'));
  try {
    const images = join(dir, 'images');
    mkdirSync(images);
    const art = new Rng(5);
    for (let i = 0; i < 3; i++) await writePng(render(randomAttributes(art, { shape: 'star', color: 'orange', texture: 'dotted' }), art), join(images, `${i}.png`));
    const start = (out: string) => ['train', '--model', MODEL, '--images', images, '--token', '<soak>', '--init', 'star', '--out', out, '--steps', String(steps),
      '--save-every', '3', '--resolution', '16', '--batch', '2', '--lr', '5e-3', '--seed', '3', '--threads', '1', '--progress', 'quiet'];
    const resume = (out: string) => ['train', '--resume', out, '--progress', 'quiet'];

    console.log(`soak: seed ${seed}, ${kills} kills over a ${steps}-step run`);
    const t0 = performance.now();
    const straight = join(dir, 'straight');
    const ref = await trainer(start(straight));
    if (ref.code !== 0) throw new Error(`the uninterrupted run failed (${ref.code ?? ref.signal})`);
    const runMs = performance.now() - t0;
    console.log(`  uninterrupted run: ${(runMs / 1000).toFixed(1)} s`);

    const out = join(dir, 'killed');
    let done = 0;
    let restarts = 0;
    let finished = false;
    while (done < kills) {
      const hasState = existsSync(join(out, 'train-state.safetensors'));
      // Killed before its first checkpoint: nothing to resume, so the run starts over (as a user would, after removing the folder).
      if (!hasState) {
        rmSync(out, { recursive: true, force: true });
        restarts++;
      }
      const signal: NodeJS.Signals = rng.next() < 0.7 ? 'SIGKILL' : rng.next() < 0.5 ? 'SIGTERM' : 'SIGINT';
      // A quarter of the kills land while the trainer starts up, the rest a few steps into training.
      const during = rng.next() < 0.25 ? 'start-up' : 'training';
      const logged = hasState ? loggedSteps(out) : 0;
      const kill: Kill = during === 'start-up'
        ? { signal, afterMs: Math.round(rng.next() * 3000), log: out }
        : { signal, afterMs: Math.round(rng.next() * 100), atLine: logged + 1 + Math.floor(rng.next() * 6), log: out };
      const r = await trainer(hasState ? resume(out) : start(out), kill);
      if (!r.killed || r.code === 0) {
        if (r.code !== 0) throw new Error(`a resumed run failed (exit ${r.code ?? r.signal})`);
        // It finished before the kill landed: the run is complete.
        finished = true;
        break;
      }
      done++;
      const at = existsSync(join(out, 'train-state.safetensors')) ? SafetensorsFile.open(join(out, 'train-state.safetensors')).metadata.step : 'none';
      const when = kill.atLine === undefined ? `${kill.afterMs} ms after start` : `${kill.afterMs} ms after step ${kill.atLine}`;
      console.log(`  kill ${String(done).padStart(2)}: ${signal.padEnd(7)} ${when.padEnd(24)} → exit ${r.code ?? r.signal}, checkpoint step ${at}, log ${loggedSteps(out)} lines`);
    }
    if (!finished) {
      const last = await trainer(existsSync(join(out, 'train-state.safetensors')) ? resume(out) : start(out));
      if (last.code !== 0) throw new Error(`the final resume failed (exit ${last.code ?? last.signal})`);
    }

    const same = (file: string) => readFileSync(join(straight, file)).equals(readFileSync(join(out, file)));
    const a = SafetensorsFile.open(join(straight, 'train-state.safetensors'));
    const b = SafetensorsFile.open(join(out, 'train-state.safetensors'));
    const problems: string[] = [];
    if (!same('learned_embeds.safetensors')) problems.push('learned_embeds.safetensors differs');
    if (!same('soak.safetensors')) problems.push('soak.safetensors differs');
    for (const name of ['vectors', 'adam.m', 'adam.v']) if (!Buffer.from(a.readFloat32(name).buffer).equals(Buffer.from(b.readFloat32(name).buffer))) problems.push(`state ${name} differs`);
    if (a.metadata.rng !== b.metadata.rng || a.metadata.step !== b.metadata.step) problems.push('state step or RNG differs');
    const la = readFileSync(join(straight, 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).loss);
    const lb = readFileSync(join(out, 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).loss);
    if (JSON.stringify(la) !== JSON.stringify(lb)) problems.push(`train-log.jsonl differs (${la.length} vs ${lb.length} lines)`);
    console.log(`soak: ${done} kills, ${restarts - 1} restarts before a first checkpoint, ${((performance.now() - t0) / 1000).toFixed(0)} s in all`);
    if (done < kills) problems.push(`the run ended after ${done} of ${kills} kills (pass more --steps)`);
    if (problems.length) {
      console.log(`soak: FAILED: ${problems.join('; ')}`);
      return 1;
    }
    console.log('soak: the killed-and-resumed run equals the uninterrupted one bit for bit (embeddings, state, loss log)');
    return 0;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

process.exitCode = await main(process.argv.slice(2));
