// Attention's backward pass a group of heads at a time (what big score tensors get, to keep
// the TI step's memory down): the same gradients as the all-heads form, checked against
// central differences and in ONNX Runtime, with the grouping forced on small shapes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as o from '../../src/graph/index.ts';
import { mhaBackward } from '../../src/graph/autodiff.ts';
import { gradCheck, ortCheck, type Case } from './helpers.ts';

const sh = (shape: number[]) => ({ shape });
const cases: Case[] = [
  {
    name: '4 heads, cross attention, value width ≠ key width',
    inputs: { q: sh([2, 3, 8]), k: sh([2, 5, 8]), v: sh([2, 5, 12]) },
    build: (x) => o.multiHeadAttention(x.q, x.k, x.v, { heads: 4 }),
  },
  {
    name: '6 heads, causal self-attention',
    inputs: { q: sh([1, 4, 12]), k: sh([1, 4, 12]), v: sh([1, 4, 12]) },
    build: (x) => o.multiHeadAttention(x.q, x.k, x.v, { heads: 6, causal: true }),
  },
];

/** Runs `fn` with the score budget of `heads` heads per group (`bytes` per head = B·Lq·Lk·4). */
async function grouped<T>(bytes: number, fn: () => T | Promise<T>): Promise<T> {
  const saved = mhaBackward.maxScoreBytes;
  mhaBackward.maxScoreBytes = bytes;
  try {
    return await fn();
  } finally {
    mhaBackward.maxScoreBytes = saved;
  }
}

for (const c of cases) {
  for (const groupOf of [1, 2]) {
    test(`attention backward in groups of ${groupOf} head(s): ${c.name} — central differences and ORT`, async () => {
      const [b, lq] = c.inputs.q.shape;
      const lk = c.inputs.k.shape[1];
      const budget = groupOf * b * lq * lk * 4;
      const err = await grouped(budget, () => gradCheck(c));
      assert.ok(err < 1e-6, `relative error ${err}`);
      const ortErr = await grouped(budget, () => ortCheck(c));
      assert.ok(ortErr < 1e-5, `ORT relative error ${ortErr}`);
    });
  }
}

test('attention backward groups heads only when the scores are big, in whole groups', () => {
  const g = new o.Graph();
  const q = g.input('q', [1, 3, 12]);
  const y = o.multiHeadAttention(q, q, q, { heads: 6 });
  const slices = (bytes: number) => {
    const saved = mhaBackward.maxScoreBytes;
    mhaBackward.maxScoreBytes = bytes;
    try {
      const [dq] = o.grad(o.reduceSum(y, [0, 1, 2]), [q]);
      // The feature offsets the backward slices its inputs at: one per group of heads.
      const starts = new Set<number>();
      const seen = new Set<o.Tensor>();
      const walk = (t: o.Tensor) => {
        if (seen.has(t)) return;
        seen.add(t);
        if (t.op === 'slice') starts.add((t.attrs.starts as number[])[0]);
        t.inputs.forEach(walk);
      };
      walk(dq);
      return [...starts].sort((a, b) => a - b);
    } finally {
      mhaBackward.maxScoreBytes = saved;
    }
  };
  const perHead = 3 * 3 * 4;
  assert.deepEqual(slices(64 * 2 ** 20), [], 'small scores: all heads at once');
  // 4 heads fit the budget, but 6 heads split into whole groups: 2 groups of 3 (2 features each).
  assert.deepEqual(slices(4 * perHead), [0, 6]);
  assert.deepEqual(slices(perHead), [0, 2, 4, 6, 8, 10]);
});
