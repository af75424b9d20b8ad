// The base of every error oneword throws on purpose. One flag tells callers what to do:
// `usage` errors mean the call itself is wrong (an option or value to fix); the others
// mean the work failed (a file, the runtime). The CLI maps them to exit codes 2 and 1.

export interface ErrorDetails {
  usage?: boolean;
  /** The option at fault, named as the library names it (camelCase). */
  option?: string;
  /** What is wrong with that option, without its name (callers may name it their way). */
  problem?: string;
  cause?: unknown;
}

export class OnewordError extends Error {
  override name = 'OnewordError';
  readonly usage: boolean;
  readonly option?: string;
  readonly problem?: string;

  constructor(message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.usage = details.usage ?? false;
    this.option = details.option;
    this.problem = details.problem;
  }

  /** A bad value for `option`: a usage error reading "<option> <problem>". */
  static badOption<E extends OnewordError>(this: new (message: string, details?: ErrorDetails) => E, option: string, problem: string): E {
    return new this(`${option} ${problem}`, { usage: true, option, problem });
  }
}
