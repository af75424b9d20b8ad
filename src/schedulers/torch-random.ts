// A random generator that reproduces torch's CPU generator bit for bit:
// `torch.Generator("cpu").manual_seed(seed)` followed by `torch.randn`, `torch.rand`
// and `torch.randint` (float32 / int64 results). With it a seed means the same
// starting noise as diffusers on CPU, and its state can be saved and restored so a
// resumed training run draws exactly what an uninterrupted one would have.
//
// What torch does (ATen, CPUGeneratorImpl + cpu/DistributionTemplates.h):
// * the engine is a standard MT19937 seeded with the low 32 bits of the seed;
//   `random()` is one 32-bit output, `random64()` is two (first = high word).
// * float uniform: (random() & 0xFFFFFF) / 2^24; double uniform: 53 bits of random64().
// * randn of a contiguous float tensor with >= 16 elements: first fill every element
//   with a float uniform, then Box-Muller in blocks of 16 (u1 = 1 - d[j], u2 = d[j+8],
//   d[j] = r cos θ, d[j+8] = r sin θ); when the size is not a multiple of 16 the last
//   16 elements are redrawn from 16 fresh uniforms and transformed again.
//   On x86 builds with AVX2 the block transform uses float32 Cephes log/sincos
//   (avx_mathfun.h) compiled with FMA; elsewhere std::log/cos/sin in float.
// * randn with < 16 elements: per element the scalar double Box-Muller, which caches
//   its second value (r sin θ) in the generator for the next draw.

const N = 624;
const M = 397;
const MATRIX_A = 0x9908b0df;
const UPPER = 0x80000000;
const LOWER = 0x7fffffff;

/** Serialisable generator state (JSON-safe). */
export interface TorchGeneratorState {
  kind: 'torch-cpu-mt19937';
  /** The seed given to manualSeed, as a decimal string (torch seeds are uint64). */
  seed: string;
  /** Position in the 624-word state block (624 = regenerate before the next output). */
  index: number;
  /** The 624 state words. */
  mt: number[];
  /** The cached second value of the scalar double Box-Muller, or null. */
  nextDoubleNormal: number | null;
}

/** How the >= 16-element float normal transform evaluates log/sin/cos. */
export type NormalMath = 'avx2' | 'libm';

export class TorchGenerator {
  private mt = new Uint32Array(N);
  private index = N;
  private seedValue = 0n;
  private nextDoubleNormal: number | null = null;
  /** `avx2` (default) matches torch on x86-64 CPUs; `libm` matches builds without AVX2 (e.g. ARM). */
  normalMath: NormalMath = 'avx2';

  constructor(seed: number | bigint = 67280421310721n) {
    // torch's default CPU generator seed is 67280421310721.
    this.manualSeed(seed);
  }

  /** Same as `generator.manual_seed(seed)`: resets the engine and the cached normal. */
  manualSeed(seed: number | bigint): this {
    let s = typeof seed === 'bigint' ? seed : BigInt(seed);
    if (typeof seed === 'number' && !Number.isSafeInteger(seed)) throw new Error(`seed must be an integer, got ${seed}`);
    // torch takes the seed as uint64 (negative Python ints wrap around).
    s = BigInt.asUintN(64, s);
    this.seedValue = s;
    const mt = this.mt;
    mt[0] = Number(s & 0xffffffffn);
    for (let i = 1; i < N; i++) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
    this.index = N;
    this.nextDoubleNormal = null;
    return this;
  }

  /** The seed last given to manualSeed. */
  initialSeed(): bigint {
    return this.seedValue;
  }

  private twist(): void {
    const mt = this.mt;
    for (let i = 0; i < N; i++) {
      const y = (mt[i] & UPPER) | (mt[(i + 1) % N] & LOWER);
      mt[i] = mt[(i + M) % N] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
    }
    this.index = 0;
  }

  /** One 32-bit output of the engine (torch's `random()`), as an unsigned number. */
  random32(): number {
    if (this.index >= N) this.twist();
    let y = this.mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** A float32 uniform in [0, 1) exactly as `torch.rand` draws it (24 random bits). */
  uniform(): number {
    return (this.random32() & 0xffffff) / 16777216;
  }

  /** A double uniform in [0, 1) as torch's double path draws it (53 bits of random64). */
  uniformDouble(): number {
    const hi = this.random32();
    const lo = this.random32();
    // random64 = hi << 32 | lo; keep the low 53 bits: 21 bits of hi, all of lo.
    return ((hi & 0x1fffff) * 4294967296 + lo) / 9007199254740992;
  }

  /** `torch.rand(n)` (float32). */
  rand(n: number): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.uniform();
    return out;
  }

  /**
   * `torch.randint(low, high, (n,))`: low + random() % (high - low). Ranges of 2^32
   * or more use random64 as torch does. Returns plain numbers (exact below 2^53).
   */
  randint(low: number, high: number, n = 1): number[] {
    if (!Number.isInteger(low) || !Number.isInteger(high) || high <= low) {
      throw new Error(`randint: need integers low < high, got ${low}, ${high}`);
    }
    const range = high - low;
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      if (range >= 2 ** 32) {
        const hi = BigInt(this.random32());
        const lo = BigInt(this.random32());
        out.push(low + Number(((hi << 32n) | lo) % BigInt(range)));
      } else {
        out.push(low + (this.random32() % range));
      }
    }
    return out;
  }

  /** One standard normal from torch's scalar double path (with its one-value cache). */
  normalDouble(): number {
    if (this.nextDoubleNormal !== null) {
      const v = this.nextDoubleNormal;
      this.nextDoubleNormal = null;
      return v;
    }
    const u1 = this.uniformDouble();
    const u2 = this.uniformDouble();
    const r = Math.sqrt(-2 * Math.log(1 - u2));
    const theta = 2 * Math.PI * u1;
    this.nextDoubleNormal = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /**
   * `torch.randn(shape, generator=g)` in float32. `shape` may be a number (element
   * count) or a shape array; only the element count matters to torch's algorithm.
   */
  randn(shape: number | readonly number[]): Float32Array {
    const n = typeof shape === 'number' ? shape : shape.reduce((a, b) => a * b, 1);
    const out = new Float32Array(n);
    if (n < 16) {
      for (let i = 0; i < n; i++) out[i] = this.normalDouble();
      return out;
    }
    for (let i = 0; i < n; i++) out[i] = this.uniform();
    const block = this.normalMath === 'avx2' ? boxMuller16Avx2 : boxMuller16Libm;
    for (let i = 0; i + 16 <= n; i += 16) block(out, i);
    if (n % 16 !== 0) {
      const start = n - 16;
      for (let i = 0; i < 16; i++) out[start + i] = this.uniform();
      block(out, start);
    }
    return out;
  }

  getState(): TorchGeneratorState {
    return {
      kind: 'torch-cpu-mt19937',
      seed: this.seedValue.toString(),
      index: this.index,
      mt: Array.from(this.mt),
      nextDoubleNormal: this.nextDoubleNormal,
    };
  }

  setState(state: TorchGeneratorState): this {
    if (state.kind !== 'torch-cpu-mt19937' || state.mt.length !== N || !(state.index >= 0 && state.index <= N)) {
      throw new Error('TorchGenerator.setState: not a torch-cpu-mt19937 state');
    }
    this.seedValue = BigInt(state.seed);
    this.index = state.index;
    this.mt.set(state.mt);
    this.nextDoubleNormal = state.nextDoubleNormal;
    return this;
  }

  /** An independent generator with the same state. */
  clone(): TorchGenerator {
    const g = new TorchGenerator(0);
    g.normalMath = this.normalMath;
    return g.setState(this.getState());
  }
}

// ---- float32 emulation -------------------------------------------------------

const f32 = Math.fround;
const f32buf = new Float32Array(1);
const i32buf = new Int32Array(f32buf.buffer);

/** The float32 next to finite r in the direction of `toward` (r !== toward). */
function nextFloat(r: number, toward: number): number {
  if (r === 0) return toward > 0 ? 1.401298464324817e-45 : -1.401298464324817e-45;
  f32buf[0] = r;
  i32buf[0] += (toward > r) === (r > 0) ? 1 : -1;
  return f32buf[0];
}

/**
 * Single-rounded float32 fused multiply-add. For float inputs a*b is exact in double and
 * the double sum s is off from the exact sum by err (TwoSum). Rounding s to float is then
 * correct unless s sits exactly on a midpoint between two floats, where err decides.
 */
export function fmaf(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const r = f32(s);
  if (r === s || !Number.isFinite(r)) return r;
  const bb = s - p;
  const err = (p - (s - bb)) + (c - bb);
  if (err === 0) return r;
  const other = nextFloat(r, s);
  if (s !== (r + other) / 2) return r;
  return err > 0 ? Math.max(r, other) : Math.min(r, other);
}

const bitsOf = (x: number): number => { f32buf[0] = x; return i32buf[0]; };
const fromBits = (b: number): number => { i32buf[0] = b; return f32buf[0]; };

// Cephes single-precision constants as avx_mathfun.h declares them (rounded to float).
const SQRTHF = f32(0.707106781186547524);
const LOG_P = [7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
  -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1].map(f32);
const LOG_Q1 = f32(-2.12194440e-4);
const LOG_Q2 = f32(0.693359375);
const DP1 = f32(-0.78515625);
const DP2 = f32(-2.4187564849853515625e-4);
const DP3 = f32(-3.77489497744594108e-8);
const SIN_P = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1].map(f32);
const COS_P = [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2].map(f32);
const FOPI = f32(1.27323954473516);
const TWO_PI_F = f32(2 * Math.PI);

// The AVX2 kernel is built with -mfma, so GCC contracts each `mul` feeding a single
// `add`/`sub` into one fused operation; the emulation below follows that.

/** log256_ps for one lane, x in (0, 1]. */
function logAvx(x: number): number {
  let bits = bitsOf(x);
  if (bits < 0x00800000) bits = 0x00800000; // max with the smallest normal
  let e = f32((bits >>> 23) - 0x7f + 1);
  let m = fromBits((bits & ~0x7f800000) | 0x3f000000); // mantissa in [0.5, 1)
  const small = m < SQRTHF;
  const tmp = small ? m : 0;
  m = f32(m - 1);
  if (small) e = f32(e - 1);
  m = f32(m + tmp);
  const z = f32(m * m);
  let y = LOG_P[0];
  for (let k = 1; k < 9; k++) y = fmaf(y, m, LOG_P[k]);
  y = f32(y * m);
  // GCC fuses the first multiply of each `mul; add` pair it meets in statement
  // order: y*z takes e*q1 (already rounded) as its addend.
  y = fmaf(y, z, f32(e * LOG_Q1));
  y = fmaf(-z, 0.5, y); // z/2 is exact, so fused or not this is y - z/2 rounded once
  return fmaf(e, LOG_Q2, f32(m + y));
}

/** sincos256_ps for one lane, theta >= 0. Returns [sin, cos]. */
function sincosAvx(theta: number): [number, number] {
  let x = Math.abs(theta);
  let j = Math.trunc(f32(x * FOPI));
  j = (j + 1) & ~1;
  const y = f32(j);
  const swapSin = (j & 4) !== 0;
  const polySin = (j & 2) === 0; // true: sine uses the sine polynomial
  x = fmaf(y, DP1, x);
  x = fmaf(y, DP2, x);
  x = fmaf(y, DP3, x);
  const cosNeg = ((~(j - 2)) & 4) !== 0;
  const z = f32(x * x);
  let c = COS_P[0];
  c = fmaf(c, z, COS_P[1]);
  c = fmaf(c, z, COS_P[2]);
  c = f32(c * z);
  c = fmaf(c, z, -0.5 * z); // z/2 is exact
  c = f32(c + 1);
  let s = SIN_P[0];
  s = fmaf(s, z, SIN_P[1]);
  s = fmaf(s, z, SIN_P[2]);
  s = f32(s * z);
  s = fmaf(s, x, x);
  let sin = polySin ? s : c;
  let cos = polySin ? c : s;
  if (theta < 0 !== swapSin) sin = -sin;
  if (cosNeg) cos = -cos;
  return [sin, cos];
}

function boxMuller16Avx2(d: Float32Array, o: number): void {
  for (let j = 0; j < 8; j++) {
    const u1 = f32(1 - d[o + j]);
    const u2 = d[o + j + 8];
    const radius = f32(Math.sqrt(f32(-2 * logAvx(u1))));
    const theta = f32(TWO_PI_F * u2);
    const [s, c] = sincosAvx(theta);
    d[o + j] = radius * c; // fmadd(n, std=1, mean=0) is exact
    d[o + j + 8] = radius * s;
  }
}

function boxMuller16Libm(d: Float32Array, o: number): void {
  for (let j = 0; j < 8; j++) {
    const u1 = f32(1 - d[o + j]);
    const u2 = d[o + j + 8];
    const radius = f32(Math.sqrt(f32(-2 * f32(Math.log(u1)))));
    // `2.0f * pi<double> * u2` is evaluated in double, then stored as float.
    const theta = f32(2 * Math.PI * u2);
    d[o + j] = f32(radius * f32(Math.cos(theta)));
    d[o + j + 8] = f32(radius * f32(Math.sin(theta)));
  }
}
