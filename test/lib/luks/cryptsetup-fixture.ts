/**
 * What the CryptsetupCli tests share (cryptsetup.test.ts against the real
 * binary, cryptsetup-fake.test.ts against recording fakes).
 */

/** Keys with the bytes that break line-oriented key input: '\n' and NUL, also at the ends. */
export function awkwardKey(seed: number, n = 32): Uint8Array {
  const k = Uint8Array.from({ length: n }, (_, i) => (i * 131 + seed * 17 + 1) & 0xff);
  k[0] = 0x0a;
  k[3] = 0x00;
  k[n >> 1] = 0x0a;
  k[n - 1] = 0x00;
  return k;
}
