// The files a training run writes into its folder, and the rules that keep them from ever
// replacing a user's files: names derived from the token are checked to be plain file names
// (so every file lands inside the folder), and a folder that already holds a run's files is
// continued only when the caller asks to resume it.
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { OnewordError } from '../errors.ts';
import { inUse, lockOwner, outputFolderProblem } from '../io/output-folder.ts';

export const STATE_FILE = 'train-state.safetensors';
export const LOG_FILE = 'train-log.jsonl';
export const PREVIEW_FOLDER = 'previews';
const DIFFUSERS_STEM = 'learned_embeds';

// Separators, control characters and what Windows forbids in names; ".", ".." and device names.
const UNSAFE_CHARS = /[/\\:*?"<>|\u0000-\u001f\u007f]/u;
const RESERVED_NAMES = /^(?:\.{1,2}|con|prn|aux|nul|com\d|lpt\d)$/i;
/** Leaves room for "-steps-<n>.safetensors" in a 255-byte file name. */
const MAX_STEM_BYTES = 200;

/**
 * Why `token` cannot name the AUTOMATIC1111 file (`<name>.safetensors`, name = the token
 * without its outer <>), or null when it can. Refused rather than rewritten: a user looks for
 * the file by the word they chose.
 */
export function tokenFileNameProblem(token: string): string | null {
  const stem = token.replace(/^<|>$/g, '');
  if (!stem) return `"${token}" names no file; put a word inside the brackets, e.g. "<my-cat>"`;
  const bad = UNSAFE_CHARS.exec(stem);
  if (bad) return `"${token}" cannot name a file: ${JSON.stringify(bad[0])} is not allowed (no / \\ : * ? " < > | or control characters inside the word)`;
  if (RESERVED_NAMES.test(stem)) return `"${token}" cannot name a file ("${stem}" is reserved)`;
  if (Buffer.byteLength(stem) > MAX_STEM_BYTES) return `"${token.slice(0, 20)}…" is too long to name a file (at most ${MAX_STEM_BYTES} bytes)`;
  return null;
}

/** The AUTOMATIC1111 file stem of a token (the token without its outer <>); throws for names that are not plain file names. */
export function embeddingFileStem(token: string): string {
  const problem = tokenFileNameProblem(token);
  if (problem) throw OnewordError.badOption('token', problem);
  return token.replace(/^<|>$/g, '');
}

/** `learned_embeds<suffix>.safetensors` (diffusers) and `<stem><suffix>.safetensors` (A1111 / ComfyUI). */
export function embeddingFileNames(token: string, suffix = ''): { diffusers: string; a1111: string } {
  return { diffusers: `${DIFFUSERS_STEM}${suffix}.safetensors`, a1111: `${embeddingFileStem(token)}${suffix}.safetensors` };
}

/** The files and folders in `dir` that a run training `token` would write over. */
export function existingRunFiles(dir: string, token: string): string[] {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) return [];
  const { a1111 } = embeddingFileNames(token);
  const stem = a1111.slice(0, -'.safetensors'.length);
  const ours = (name: string) =>
    name === STATE_FILE || name === LOG_FILE || name === PREVIEW_FOLDER || name === a1111 ||
    new RegExp(`^(?:${DIFFUSERS_STEM}(?:_2)?|${stem.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')})(?:-steps-\\d+)?\\.safetensors$`).test(name);
  return readdirSync(dir).filter(ours).sort();
}

/**
 * Checks the output folder of a training run before any work: it must be a folder that can
 * be written, and it may hold a run's files only when that run is being resumed (`resume`
 * is the same folder). Throws a usage error naming `out`.
 */
export function checkRunFolder(out: string, token: string, resume?: string): void {
  const problem = outputFolderProblem(out);
  if (problem) throw OnewordError.badOption('out', problem);
  const owner = lockOwner(out);
  if (owner !== null) throw inUse(out, owner);
  if (resume !== undefined && resolve(resume) === resolve(out)) return;
  const found = existingRunFiles(out, token);
  if (found.includes(STATE_FILE)) {
    throw OnewordError.badOption('out', `${out} already holds a training run (${STATE_FILE}); pass --resume ${out} to continue it, or choose another --out`);
  }
  if (found.length) throw OnewordError.badOption('out', `${out} already holds ${found.join(', ')}, which this run would overwrite; choose another --out`);
}

/**
 * On resume, drops the log lines of steps after the checkpoint (they are trained again and
 * would otherwise appear twice), and a line torn by a kill in mid-write.
 */
export function keepLogThrough(path: string, step: number): void {
  if (!existsSync(path)) return;
  const lines = readFileSync(path, 'utf8').split('\n').filter((l) => l.trim());
  const kept = lines.filter((l) => {
    try {
      return (JSON.parse(l) as { step?: number }).step! <= step;
    } catch {
      return false;
    }
  });
  if (kept.length !== lines.length) writeFileSync(path, kept.map((l) => `${l}\n`).join(''));
}

/** The folder a run writes its previews to. */
export function previewFolder(out: string): string {
  return join(out, PREVIEW_FOLDER);
}
