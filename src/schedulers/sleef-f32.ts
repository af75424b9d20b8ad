// float32 exp and log as torch's CPU kernels compute them on x86 (vectorised SLEEF,
// `Sleef_expf8_u10` / `Sleef_logf8_u10`, AVX2 with FMA). These are accurate to ~1 ulp
// but not always correctly rounded, and DPM-Solver's step coefficients (exp(-h), log
// alpha - log sigma) are torch float32 scalars: using the same algorithms keeps our
// sampling trajectories bit-identical to diffusers' instead of drifting by an ulp per step.
// Algorithms: SLEEF's xexpf and xlogf_u1 (Cody-Waite reduction + polynomial; log via
// double-float arithmetic), re-expressed with Math.fround and a fused multiply-add.

import { fmaf } from './torch-random.ts';

const f32 = Math.fround;
const fbuf = new Float32Array(1);
const ibuf = new Int32Array(fbuf.buffer);

const bits = (x: number): number => { fbuf[0] = x; return ibuf[0]; };
const fromBits = (b: number): number => { ibuf[0] = b; return fbuf[0]; };
/** 2^q as a float built from exponent bits (valid for the q ranges used here). */
const pow2i = (q: number): number => fromBits((q + 0x7f) << 23);

/** Round half to even, as _mm256_cvtps_epi32 does under the default rounding mode. */
function rintEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

const R_LN2 = f32(1.442695040888963407359924681001892137426645954152985934135449406931);
const L2U = f32(0.693145751953125);
const L2L = f32(1.428606765330187045e-06);
const EXP_C = [0.000198527617612853646278381, 0.00139304355252534151077271, 0.00833336077630519866943359,
  0.0416664853692054748535156, 0.166666671633720397949219, 0.5].map(f32);

/** SLEEF expf (u10) on a float32 value. */
export function sleefExpf(d: number): number {
  d = f32(d);
  if (Number.isNaN(d)) return NaN;
  if (d > 100) return Infinity;
  if (d < -104) return 0;
  const q = rintEven(f32(d * R_LN2));
  let s = fmaf(q, -L2U, d);
  s = fmaf(q, -L2L, s);
  let u = EXP_C[0];
  for (let k = 1; k < EXP_C.length; k++) u = fmaf(u, s, EXP_C[k]);
  u = f32(1 + fmaf(f32(s * s), u, s));
  const h = q >> 1;
  return f32(f32(u * pow2i(h)) * pow2i(q - h));
}

const LN2_HI = f32(0.69314718246459960938);
const LN2_LO = f32(-1.904654323148236017e-09);
const FOUR_THIRDS = f32(1 / 0.75);
const FLT_MIN = 1.1754943508222875e-38;

/** SLEEF logf (u10, `xlogf_u1`) on a float32 value. */
export function sleefLogf(d: number): number {
  d = f32(d);
  if (Number.isNaN(d) || d < 0) return NaN;
  if (d === 0) return -Infinity;
  if (d === Infinity) return Infinity;
  const tiny = d < FLT_MIN;
  if (tiny) d = f32(d * 18446744073709551616); // 2^64
  let e = ((bits(f32(d * FOUR_THIRDS)) >>> 23) & 0xff) - 0x7f;
  const m = fromBits(bits(d) + ((-e) << 23)); // d / 2^e, in [0.75, 1.5)
  if (tiny) e -= 64;
  // s = ln2 * e as a double-float (hi, lo).
  let sx = f32(LN2_HI * e);
  let sy = fmaf(LN2_LO, e, fmaf(LN2_HI, e, -sx));
  // x = (m - 1) / (m + 1) as a double-float.
  const [nx, ny] = twoSumF(-1, m);
  const [dx, dy] = twoSumF(1, m);
  const t0 = f32(1 / dx);
  const q0 = f32(nx * t0);
  const u0 = fmaf(t0, nx, -q0);
  const v0 = fmaf(-dy, t0, fmaf(-dx, t0, 1));
  const xx = q0;
  const xy = fmaf(q0, v0, fmaf(ny, t0, u0));
  const x2 = f32(xx * xx);
  let t = f32(0.3027294874);
  t = fmaf(t, x2, f32(0.3996108174));
  t = fmaf(t, x2, f32(0.6666694880));
  // s += 2x (double-float + double-float)
  {
    const yx = f32(xx * 2);
    const yy = f32(xy * 2);
    const r = f32(sx + yx);
    sy = f32(f32(f32(f32(sx - r) + yx) + sy) + yy);
    sx = r;
  }
  // s += x^3 * t (double-float + float)
  {
    const y = f32(f32(x2 * xx) * t);
    const r = f32(sx + y);
    sy = f32(f32(f32(sx - r) + y) + sy);
    sx = r;
  }
  return f32(sx + sy);
}

/** Exact float32 sum a + b as (rounded sum, error), SLEEF's dfadd2. */
function twoSumF(a: number, b: number): [number, number] {
  const s = f32(a + b);
  const v = f32(s - a);
  return [s, f32(f32(a - f32(s - v)) + f32(b - v))];
}
