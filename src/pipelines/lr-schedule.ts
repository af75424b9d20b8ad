// Learning-rate schedules: diffusers' constant / linear / cosine (with warmup), and
// AUTOMATIC1111's piecewise strings such as "5e-3:100, 1e-3:1000, 1e-5".
import { OnewordError } from '../errors.ts';

export type ScheduleKind = 'constant' | 'linear' | 'cosine';

/** A learning rate or schedule the caller gave that cannot be used. */
export class ScheduleError extends OnewordError {
  override name = 'ScheduleError';
  constructor(message: string) {
    super(message, { usage: true });
  }
}

export interface LrSchedule {
  /** Learning rate for step `step` (0-based, the step about to be taken). */
  at(step: number): number;
  describe(): string;
}

/** A1111 syntax: "rate:until_step, rate:until_step, …, rate" (the last one runs to the end). */
export function parseA1111Schedule(text: string): Array<{ lr: number; until: number }> {
  const parts = text.split(',').map((p) => p.trim()).filter(Boolean);
  if (!parts.length) throw new ScheduleError(`learning rate "${text}" is empty`);
  const out: Array<{ lr: number; until: number }> = [];
  let prev = 0;
  parts.forEach((p, i) => {
    const [rate, until] = p.split(':').map((s) => s.trim());
    const lr = Number(rate);
    if (!rate || !Number.isFinite(lr) || lr <= 0) throw new ScheduleError(`learning rate "${text}": "${rate}" is not a positive number`);
    let end = Infinity;
    if (until !== undefined) {
      end = Number(until);
      if (!Number.isInteger(end) || end <= prev) throw new ScheduleError(`learning rate "${text}": step "${until}" must be a whole number after ${prev}`);
    } else if (i !== parts.length - 1) {
      throw new ScheduleError(`learning rate "${text}": only the last rate may omit ":step"`);
    }
    out.push({ lr, until: end });
    prev = end;
  });
  return out;
}

export function makeSchedule(lr: string | number, kind: ScheduleKind, totalSteps: number, warmup = 0): LrSchedule {
  if (typeof lr === 'string' && /[:,]/.test(lr)) {
    const pieces = parseA1111Schedule(lr);
    return {
      at: (step) => (pieces.find((p) => step < p.until) ?? pieces[pieces.length - 1]).lr,
      describe: () => pieces.map((p) => (Number.isFinite(p.until) ? `${p.lr}:${p.until}` : `${p.lr}`)).join(', '),
    };
  }
  const base = Number(lr);
  if (!Number.isFinite(base) || base <= 0) throw new ScheduleError(`learning rate must be a positive number or an A1111 schedule, got "${lr}"`);
  if (!['constant', 'linear', 'cosine'].includes(kind)) throw new ScheduleError(`unknown lr schedule "${kind}" (constant, linear, cosine)`);
  return {
    at: (step) => {
      // diffusers: factor step/warmup, so the very first step uses lr 0.
      if (step < warmup) return (base * step) / warmup;
      if (kind === 'constant') return base;
      const progress = (step - warmup) / Math.max(1, totalSteps - warmup);
      if (kind === 'linear') return base * Math.max(0, 1 - progress);
      return base * 0.5 * (1 + Math.cos(Math.PI * progress));
    },
    describe: () => `${base} ${kind}${warmup ? ` (warmup ${warmup})` : ''}`,
  };
}
