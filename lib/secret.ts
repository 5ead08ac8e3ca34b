/**
 * Secret hygiene helpers. Secrets are Uint8Array (never strings: a JS string
 * cannot be wiped), wiped as soon as they are no longer needed, and passed to
 * other programs on stdin or an inherited fd — never in argv, the
 * environment, logs or plain files (DEVELOPERS.md, BRIEF §4).
 */

/** Overwrite every byte with zero. Safe on undefined and on detached buffers. */
export function wipe(...bufs: (Uint8Array | undefined | null)[]): void {
  for (const b of bufs) {
    if (b && b.byteLength > 0) b.fill(0);
  }
}

/** `n` bytes from the kernel CSPRNG. */
export function randomSecret(n: number): Uint8Array {
  const b = new Uint8Array(n);
  crypto.getRandomValues(b);
  return b;
}
