// CPU threads for ONNX Runtime: more than the machine's cores only adds contention (999
// threads ran at a load average of 700 and made no progress), so the count is bounded.
import { availableParallelism } from 'node:os';

/** This machine's logical cores: the most threads a session may use. */
export const MAX_THREADS = availableParallelism();

/** Why `threads` is not a usable thread count, or null (undefined means all cores). */
export function threadsProblem(threads: unknown): string | null {
  if (threads === undefined) return null;
  if (typeof threads !== 'number' || !Number.isInteger(threads) || threads < 1 || threads > MAX_THREADS) {
    return `must be a whole number from 1 to ${MAX_THREADS} (this machine's cores), got ${threads}`;
  }
  return null;
}
