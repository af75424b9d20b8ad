// Small file helpers of the server: atomic JSON, paths kept inside their root.
import { randomBytes } from 'node:crypto';
import { readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';

/** Writes JSON through a temp file and a rename, so a crash leaves the old or the new file, never half of one. */
export function writeJsonAtomic(path: string, value: unknown): void {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    writeFileSync(tmp, `${JSON.stringify(value, null, 2)}\n`);
    renameSync(tmp, path);
  } catch (e) {
    try { unlinkSync(tmp); } catch { /* not created */ }
    throw e;
  }
}

export function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(path, 'utf8')) as T;
}

/** `root/...parts` when it stays inside `root`; null when it would leave it (`..`, absolute parts). */
export function inside(root: string, ...parts: string[]): string | null {
  const base = resolve(root);
  const p = resolve(base, ...parts);
  const rel = relative(base, p);
  if (rel === '' || (!rel.startsWith('..') && !isAbsolute(rel))) return p;
  return null;
}

/** A name safe as one path component (and in a Content-Disposition header). */
export function safeFileName(name: string, fallback = 'file'): string {
  const s = name.replace(/[^\p{L}\p{N}._-]+/gu, '_').replace(/^[._]+/, '');
  return s || fallback;
}
