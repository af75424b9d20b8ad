// Seeded PRNG for the shapes world. Our own (not Math.random) so that a seed reproduces the
// same images and captions on every platform and Node version.

/** mulberry32 core plus a splitmix-style seed scramble, so nearby seeds (0, 1, 2…) diverge at once. */
export class Rng {
  private state: number;

  constructor(seed: number | string = 0) {
    this.state = scramble(typeof seed === 'string' ? hashString(seed) : Math.floor(seed) >>> 0);
  }

  /** Uniform in [0, 1), 32 bits of resolution. */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    if (!(n >= 1)) throw new RangeError(`Rng.int: n must be >= 1, got ${n}`);
    return Math.floor(this.next() * n);
  }

  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError('Rng.pick: empty list');
    return items[this.int(items.length)];
  }

  /** Standard normal (Box–Muller; the second value is discarded to keep the state simple). */
  normal(): number {
    const u = 1 - this.next(); // (0, 1]: log(0) impossible
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  /** An independent generator derived from this one (advances this one by one step). */
  fork(): Rng {
    return new Rng(Math.floor(this.next() * 4294967296));
  }
}

function scramble(x: number): number {
  // splitmix32 finaliser
  x = (x + 0x9e3779b9) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b) >>> 0;
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

function hashString(s: string): number {
  // FNV-1a, 32-bit
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}
