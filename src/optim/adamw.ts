// AdamW exactly as torch.optim.AdamW (decoupled weight decay, bias-corrected moments),
// on Float32Array parameters in place. State is plain data so checkpoints can save it.
export interface AdamWOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
}

export interface AdamWState {
  step: number;
  m: Float32Array;
  v: Float32Array;
}

export function adamWState(size: number): AdamWState {
  return { step: 0, m: new Float32Array(size), v: new Float32Array(size) };
}

/** One step; `lr` may change between steps (schedules). */
export function adamWStep(param: Float32Array, grad: ArrayLike<number>, state: AdamWState, o: AdamWOptions): void {
  const b1 = o.beta1 ?? 0.9;
  const b2 = o.beta2 ?? 0.999;
  const eps = o.eps ?? 1e-8;
  const wd = o.weightDecay ?? 1e-2;
  state.step += 1;
  const bc1 = 1 - b1 ** state.step;
  const bc2Sqrt = Math.sqrt(1 - b2 ** state.step);
  const stepSize = o.lr / bc1;
  const decay = 1 - o.lr * wd;
  const { m, v } = state;
  for (let i = 0; i < param.length; i++) {
    const g = grad[i];
    param[i] *= decay;
    m[i] += (g - m[i]) * (1 - b1);
    v[i] = v[i] * b2 + g * g * (1 - b2);
    param[i] -= (stepSize * m[i]) / (Math.sqrt(v[i]) / bc2Sqrt + eps);
  }
}

/** Scales `grads` in place so their global L2 norm is at most `maxNorm`; returns the norm before. */
export function clipGradNorm(grads: Float32Array[], maxNorm: number): number {
  let sq = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) sq += g[i] * g[i];
  const norm = Math.sqrt(sq);
  const coef = maxNorm / (norm + 1e-6);
  if (coef < 1) for (const g of grads) for (let i = 0; i < g.length; i++) g[i] *= coef;
  return norm;
}
