// Reading a diffusers / transformers config.json: each field with its library default when
// absent or null, and one-line errors naming the file, the key and what is allowed.
import { CheckpointError } from '../io/weights.ts';

/** A parsed config.json as written. */
export type ConfigJson = Record<string, unknown>;

export class Fields {
  constructor(readonly json: ConfigJson, readonly path: string) {}
  private fail(key: string, want: string): never {
    throw new CheckpointError(this.path, `"${key}" must be ${want}, got ${JSON.stringify(this.json[key])}`);
  }
  private raw(key: string): unknown { const v = this.json[key]; return v === null ? undefined : v; }
  int(key: string, def: number, min = 0): number {
    const v = this.raw(key) ?? def;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) this.fail(key, `an integer ≥ ${min}`);
    return v;
  }
  num(key: string, def: number): number {
    const v = this.raw(key) ?? def;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(key, 'a number');
    return v;
  }
  nullableNum(key: string): number | null {
    const v = this.raw(key);
    if (v === undefined) return null;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(key, 'a number or null');
    return v;
  }
  bool(key: string, def: boolean): boolean {
    const v = this.raw(key) ?? def;
    if (typeof v !== 'boolean') this.fail(key, 'true or false');
    return v;
  }
  oneOf<T extends string>(key: string, def: T, allowed: readonly T[], what: string): T {
    const v = this.raw(key) ?? def;
    if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
      throw new CheckpointError(this.path, `unsupported ${what} ${JSON.stringify(v)} in "${key}" (oneword supports ${allowed.join(', ')})`);
    }
    return v as T;
  }
  intList(key: string, def: number[], min = 1): number[] {
    const v = this.raw(key) ?? def;
    if (!Array.isArray(v) || v.length === 0 || !v.every((x) => Number.isInteger(x) && x >= min)) this.fail(key, `a non-empty list of integers ≥ ${min}`);
    return (v as number[]).slice();
  }
  intOrList(key: string, def: number | number[]): number | number[] {
    const v = this.raw(key) ?? def;
    if (Array.isArray(v)) {
      if (v.length === 0 || !v.every((x) => Number.isInteger(x) && x >= 1)) this.fail(key, 'a positive integer or a list of them');
      return (v as number[]).slice();
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) this.fail(key, 'a positive integer or a list of them');
    return v;
  }
  blockList<T extends string>(key: string, def: T[], allowed: readonly T[], what: string): T[] {
    const v = this.raw(key) ?? def;
    if (!Array.isArray(v) || v.length === 0) this.fail(key, 'a non-empty list of block types');
    for (const b of v as unknown[]) {
      if (typeof b !== 'string' || !(allowed as readonly string[]).includes(b)) {
        throw new CheckpointError(this.path, `unknown ${what} ${JSON.stringify(b)} in "${key}" (oneword supports ${allowed.join(', ')})`);
      }
    }
    return (v as T[]).slice();
  }
}

/** A per-block setting (one value for all blocks, or a list) as one value per block. */
export function perBlock(v: number | number[], n: number): number[] {
  return Array.isArray(v) ? v.slice() : new Array<number>(n).fill(v);
}
