// DVAR's stopping rule (Voronov et al. 2023) against sequences worked out by hand, the
// recommendation of a saved step, the record a training state carries, the init pull.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkStoppingOptions, evalInterval, shouldStop, StoppingRecord, STOPPING_DEFAULTS, varianceRatio, windowValues } from '../../src/pipelines/early-stopping.ts';
import { addInitPull } from '../../src/pipelines/init-embedding.ts';

// By hand, population variances (the paper's Var):
//   [9,5,3]:         window = everything, ratio 1
//   [9,5,3,2]:       Var([5,3,2]) = 14/9, Var(all) = 7.1875  → 0.21643
//                    (sample variances would give 0.24348: the test tells them apart)
//   [9,5,3,2,3]:     Var([3,2,3]) = 2/9,  Var(all) = 6.24    → 0.035613
//   [9,5,3,2,3,2]:   Var([2,3,2]) = 2/9,  Var(all) = 6       → 1/27
const SEQ = [9, 5, 3, 2, 3, 2];

test('DVAR: Var(last window) / Var(all) with population variances, as computed by hand', () => {
  const ratios = SEQ.map((_, i) => varianceRatio(SEQ.slice(0, i + 1), 3));
  assert.equal(ratios[0], null);
  assert.equal(ratios[1], null);
  assert.equal(ratios[2], 1);
  assert.ok(Math.abs(ratios[3]! - 14 / 9 / 7.1875) < 1e-12, String(ratios[3]));
  assert.ok(Math.abs(ratios[4]! - 2 / 9 / 6.24) < 1e-12, String(ratios[4]));
  assert.ok(Math.abs(ratios[5]! - 1 / 27) < 1e-12, String(ratios[5]));
  // The rule fires at the first ratio below eps, not before.
  assert.deepEqual(SEQ.map((_, i) => shouldStop(SEQ.slice(0, i + 1), 3, 0.15)), [false, false, false, false, true, true]);
  assert.deepEqual(SEQ.map((_, i) => shouldStop(SEQ.slice(0, i + 1), 3, 0.23)), [false, false, false, true, true, true]);
  // A flat sequence has no variance to compare: no verdict rather than 0/0.
  assert.equal(varianceRatio([1, 1, 1, 1], 2), null);
});

test('DVAR: the window is given in steps and read in evaluations; the record stops once, at the right step', () => {
  assert.equal(evalInterval({ stop: 'auto', evalEvery: null }), 5);
  assert.equal(evalInterval({ stop: 'fixed', evalEvery: null }), 0);
  assert.equal(windowValues({ stop: 'auto', evalEvery: null, stopWindow: 310 }), 62);
  assert.equal(windowValues({ stop: 'auto', evalEvery: 1, stopWindow: 310 }), 310);
  const o = { ...STOPPING_DEFAULTS, stop: 'auto' as const, evalEvery: 2, stopWindow: 6, stopEps: 0.15 };
  const r = new StoppingRecord();
  const ratios = SEQ.map((v, i) => r.observe(2 * (i + 1), v, o));
  assert.equal(ratios[2], 1);
  assert.deepEqual(r.stoppedAt, { step: 10, ratio: ratios[4] });
  // stop fixed records the losses and never stops.
  const fixed = new StoppingRecord();
  for (const [i, v] of SEQ.entries()) assert.equal(fixed.observe(i + 1, v, { ...o, stop: 'fixed' }), null);
  assert.equal(fixed.stoppedAt, null);
  assert.deepEqual(fixed.history, SEQ);
});

test('recommendation: the lowest deterministic loss among saved steps, or the stopping point; it survives a state round trip', () => {
  const o = { stopWindow: 310, stopEps: 0.15 };
  const r = new StoppingRecord();
  assert.equal(r.recommend(o), null);
  r.addSaved(500, 0.31, Float32Array.of(1, 2), ['a-500']);
  r.addSaved(1000, 0.27, Float32Array.of(3, 4), ['a-1000']);
  r.addSaved(1500, 0.29, Float32Array.of(5, 6));
  r.addSaved(1000, 0.1, Float32Array.of(9, 9)); // a step is saved once
  const rec = r.recommend(o)!;
  assert.equal(rec.step, 1000);
  assert.equal(rec.evalLoss, 0.27);
  assert.match(rec.reason, /lowest deterministic loss of the 3 saved steps \(the last, step 1500, has 0\.29000\)/);
  assert.deepEqual([...r.best!.vectors], [3, 4]);

  const s = r.toState();
  const back = StoppingRecord.fromState(s.json, s.bestVectors);
  assert.deepEqual(back, r);
  assert.deepEqual(StoppingRecord.fromState(undefined, null), new StoppingRecord());

  r.stoppedAt = { step: 1500, ratio: 0.12 };
  const stopped = r.recommend(o)!;
  assert.equal(stopped.step, 1500);
  assert.match(stopped.reason, /stopped here: .* = 0\.120 < 0\.15/);
});

test('stopping options: each bad value is named with its allowed range', () => {
  const ok = { ...STOPPING_DEFAULTS, initMode: 'tokens' as const, initPull: 0 };
  checkStoppingOptions(ok);
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ stop: 'early' }, /^stop must be fixed or auto, got "early"$/],
    [{ stopWindow: 1 }, /^stopWindow must be a whole number ≥ 2, got 1$/],
    [{ stopEps: 1 }, /^stopEps must be between 0 and 1 \(exclusive\), got 1$/],
    [{ evalEvery: 2.5 }, /^evalEvery must be a whole number ≥ 0, got 2\.5$/],
    [{ stop: 'auto', evalEvery: 0 }, /^evalEvery must be at least 1 with stop auto/],
    [{ keep: 'first' }, /^keep must be best, last or all, got "first"$/],
    [{ initMode: 'output' }, /^initMode must be tokens or encoder, got "output"$/],
    [{ initPull: -1 }, /^initPull must be a number ≥ 0, got -1$/],
  ];
  for (const [bad, re] of cases) {
    assert.throws(() => checkStoppingOptions({ ...ok, ...bad } as typeof ok), (e: Error & { usage?: boolean }) => re.test(e.message) && e.usage === true, JSON.stringify(bad));
  }
});

test('init pull: adds the gradient of λ‖v − v₀‖²', () => {
  const grad = Float32Array.of(1, 1);
  addInitPull(grad, Float32Array.of(2, -1), Float32Array.of(1, 1), 0.25);
  assert.deepEqual([...grad], [1 + 2 * 0.25 * 1, 1 + 2 * 0.25 * -2]);
});
