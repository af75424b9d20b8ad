// Output folders: checked before any work is done, and locked while a run writes to them.
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmdirSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { OnewordError } from '../errors.ts';

const WRITE_PROBLEMS: Record<string, string> = {
  EROFS: 'read-only file system',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  // mkdir where the file system takes no new entries (/proc) fails so.
  ENOENT: 'the file system takes no new files there',
};

function reason(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code ?? '';
  return WRITE_PROBLEMS[code] ?? (code || (e as Error).message);
}

/** The nearest path of `dir` and its ancestors that exists. */
function nearestExisting(dir: string): string {
  let at = resolve(dir);
  while (!existsSync(at)) {
    const up = dirname(at);
    if (up === at) break;
    at = up;
  }
  return at;
}

/**
 * Why `dir` cannot be used as an output folder, or null. Tried for real, leaving nothing
 * behind: a file is made and removed in `dir` when it exists, else its first missing folder
 * is made and removed (permission bits say nothing to root or on a read-only mount).
 */
export function outputFolderProblem(dir: string): string | null {
  if (!dir) return 'must name a folder';
  const at = nearestExisting(dir);
  if (!statSync(at).isDirectory()) {
    return at === resolve(dir) ? `${dir} is a file, not a folder` : `${dir}: ${at} is a file, so no folder can be made there`;
  }
  try {
    if (at === resolve(dir)) {
      const probe = join(at, `.oneword-probe-${process.pid}`);
      closeSync(openSync(probe, 'wx'));
      unlinkSync(probe);
    } else {
      const first = join(at, relative(at, resolve(dir)).split(sep)[0]);
      mkdirSync(first);
      rmdirSync(first);
    }
  } catch (e) {
    return `${dir}: cannot write to ${at} (${reason(e)})`;
  }
  return null;
}

/**
 * `mkdir -p`, one level at a time. Node's recursive mkdir loops forever where mkdir fails
 * with ENOENT under an existing folder (/proc) and reports other failures as ENOENT; here
 * the real reason is named, with the folder.
 */
export function makeFolder(dir: string): void {
  const missing: string[] = [];
  for (let at = resolve(dir); !existsSync(at); at = dirname(at)) {
    missing.unshift(at);
    if (dirname(at) === at) break;
  }
  for (const d of missing) {
    try {
      mkdirSync(d);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST' && statSync(d).isDirectory()) continue;
      throw new OnewordError(`${dir}: cannot create the folder ${d} (${reason(e)})`, { cause: e });
    }
  }
  if (!statSync(resolve(dir)).isDirectory()) throw new OnewordError(`${dir} is a file, not a folder`);
}

/** A held lock on a folder; release() removes it (and the folder, if the lock made it and it is empty). */
export interface FolderLock {
  readonly path: string;
  release(): void;
}

export const LOCK_FILE = '.oneword.lock';

export function inUse(dir: string, owner: number, option = 'out'): OnewordError {
  return OnewordError.badOption(option, `${dir} is in use by another oneword process (pid ${owner}); wait for it or choose another folder`);
}

/** Blocks the thread for `ms` (a lock being written is a matter of microseconds). */
function pause(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** True if a process with this id runs (EPERM: it runs as another user). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readOwner(path: string): number | null {
  try {
    const pid = Number(readFileSync(path, 'utf8').trim().split(/\s+/)[0]);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/** The id of the live process holding `dir`'s lock, or null when it is free (or held by a process that is gone). */
export function lockOwner(dir: string): number | null {
  const owner = readOwner(join(dir, LOCK_FILE));
  return owner !== null && owner !== process.pid && alive(owner) ? owner : null;
}

/**
 * Takes `dir`'s lock file (made with O_EXCL, holding this process id), creating the folder
 * if needed. A lock left by a process that no longer runs is taken over; a live one is a
 * usage error naming `option`. The lock is also removed when the process exits.
 */
export function lockFolder(dir: string, option = 'out'): FolderLock {
  const made = !existsSync(dir);
  makeFolder(dir);
  const path = join(dir, LOCK_FILE);
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(path, 'wx');
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      if (attempt > 3) throw OnewordError.badOption(option, `${dir}: cannot take its lock file ${LOCK_FILE}`);
    }
    const owner = readOwner(path);
    if (owner !== null && owner !== process.pid && alive(owner)) throw inUse(dir, owner, option);
    // Stale (its process is gone): remove it and try again. Two processes taking over at once
    // both retry with O_EXCL, so only one gets the lock. A lock without a pid may be one being
    // written right now; it counts as stale only once it is old.
    try {
      const stale = owner !== null || Date.now() - statSync(path).mtimeMs > 10_000;
      if (stale && readOwner(path) === owner) unlinkSync(path);
      else if (!stale) pause(200);
    } catch { /* removed by the other taker */ }
  }
  let held = true;
  const release = () => {
    if (!held) return;
    held = false;
    process.off('exit', release);
    try {
      if (readOwner(path) === process.pid) unlinkSync(path);
      if (made && readdirSync(dir).length === 0) rmdirSync(dir);
    } catch { /* already gone */ }
  };
  process.on('exit', release);
  return { path, release };
}
