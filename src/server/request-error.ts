// A request the server refuses: a 4xx status and one line saying what to change.
import { OnewordError } from '../index.ts';

export class RequestError extends Error {
  constructor(message: string, readonly status: 400 | 401 | 403 | 404 | 409 | 413 = 400) {
    super(message);
  }
}

/** A library usage error as the API says it: the option named by its field (`negativePrompt` → `negative`). */
export function fromLibrary(e: unknown, fieldNames: Record<string, string> = {}): unknown {
  if (!(e instanceof OnewordError) || !e.usage) return e;
  if (!e.option || e.problem === undefined) return new RequestError(e.message);
  const field = fieldNames[e.option] ?? e.option.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
  return new RequestError(`${field} ${e.problem}`);
}
