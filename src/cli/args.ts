// A small, strict argument parser: --flag value, --flag=value, boolean flags, repeats.
// Unknown flags are errors (a typo must not silently fall back to a default).
import { OnewordError } from '../errors.ts';

export interface FlagSpec {
  type: 'string' | 'number' | 'boolean';
  multiple?: boolean;
  alias?: string;
}

/** A command line that cannot be run as written. */
export class UsageError extends OnewordError {
  override name = 'UsageError';
  constructor(message: string) {
    super(message, { usage: true });
  }
}

export type ParsedArgs = { flags: Record<string, string | number | boolean | Array<string | number>>; positional: string[] };

export function parseArgs(argv: string[], spec: Record<string, FlagSpec>): ParsedArgs {
  const flags: ParsedArgs['flags'] = {};
  const positional: string[] = [];
  const byAlias = new Map(Object.entries(spec).filter(([, s]) => s.alias).map(([k, s]) => [s.alias!, k]));
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (!a.startsWith('-') || a === '-') {
      positional.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    const raw = a.startsWith('--') ? a.slice(2, eq > 0 ? eq : undefined) : byAlias.get(a.slice(1)) ?? a.slice(1);
    const name = spec[raw] ? raw : byAlias.get(raw) ?? raw;
    const s = spec[name];
    if (!s) throw new UsageError(`unknown option "${a}"`);
    let value: string | boolean;
    if (s.type === 'boolean') value = eq > 0 ? a.slice(eq + 1) !== 'false' : true;
    else if (eq > 0) value = a.slice(eq + 1);
    else {
      if (i + 1 >= argv.length) throw new UsageError(`option --${name} needs a value`);
      value = argv[++i];
    }
    let v: string | number | boolean = value;
    if (s.type === 'number') {
      v = Number(value);
      if (value === '' || !Number.isFinite(v)) throw new UsageError(`option --${name} needs a number, got "${value}"`);
    }
    if (s.multiple) ((flags[name] ??= []) as Array<string | number>).push(v as string | number);
    else flags[name] = v;
  }
  return { flags, positional };
}
