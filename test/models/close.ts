// Tolerance check shared by the tests that compare against diffusers' reference tensors.
import assert from 'node:assert/strict';

/** max |got − want| ≤ rel × (1 + max |want|), the scale-relative bound verify uses, 10× tighter. */
export function close(name: string, got: ArrayLike<number>, want: ArrayLike<number>, rel = 1e-5): void {
  assert.equal(got.length, want.length, `${name}: length`);
  let err = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    err = Math.max(err, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  assert.ok(err <= rel * (1 + scale), `${name}: max abs error ${err} (scale ${scale})`);
}
