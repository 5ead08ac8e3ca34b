/**
 * Reading an installed payload back from the medium (`zb image install
 * --read-back`, and the check behind `--resume` on a "complete" journal).
 *
 * The install's final SHA-256 covers the bytes zb handed to write(2); a
 * device that acknowledges writes and fdatasync without keeping the data (a
 * failing card, a fake-capacity card that wraps its addresses) passes it.
 * This pass reads the target's first `raw.size` bytes past the page cache
 * (lib/sys/uncached.ts) and hashes them: only a match means the medium holds
 * the payload. Reads run on the I/O thread pool one buffer ahead of the hash,
 * in two 4 MiB buffers, so memory stays constant.
 */
import { ZbError } from "../errors.ts";
import { alignedBuffer, openUncached, type UncachedMode } from "../sys/uncached.ts";
import type { Payload } from "./manifest.ts";

const STEP = 4 << 20;

export interface ReadBack {
  /** Bytes the medium returned (fewer than asked when it ends early). */
  bytes: number;
  sha256: string;
  mode: UncachedMode;
}

/**
 * SHA-256 of the first `bytes` bytes of `path`, read from the medium.
 * @param progress called after each buffer with the bytes hashed so far
 * @param opts `direct: false` skips O_DIRECT (tests of the fallback)
 * @throws {ZbError} IO when it cannot be opened or read
 */
export async function readBackSha256(path: string, bytes: number, progress?: (done: number) => void, opts: { direct?: boolean } = {}): Promise<ReadBack> {
  const reader = openUncached(path, opts);
  let inFlight: Promise<number> | null = null;
  try {
    const bufs = [alignedBuffer(STEP), alignedBuffer(STEP)];
    const hash = new Bun.CryptoHasher("sha256");
    let at = 0;
    inFlight = bytes > 0 ? reader.read(bufs[0]!, 0) : null;
    for (let i = 0; inFlight; i++) {
      const got = await inFlight;
      const want = Math.min(STEP, bytes - at);
      const end = got < want;
      // The next read goes out before this buffer is hashed: the device and the hash overlap.
      inFlight = !end && at + want < bytes ? reader.read(bufs[(i + 1) % 2]!, at + STEP) : null;
      hash.update(bufs[i % 2]!.subarray(0, Math.min(got, want)));
      at += Math.min(got, want);
      progress?.(at);
    }
    return { bytes: at, sha256: hash.digest("hex"), mode: reader.mode };
  } finally {
    // A read still out on the thread pool (the hash or the progress callback threw) must end before
    // the descriptor is closed: its number could be reused by another file under it.
    await inFlight?.catch(() => undefined);
    reader.close();
  }
}

/**
 * After the install: the medium must return the payload.
 * @throws {ZbError} TARGET_MISMATCH when it does not; IO when it cannot be read
 */
export async function checkOnMedium(target: string, p: Payload, progress?: (done: number) => void): Promise<UncachedMode> {
  const back = await readBackSha256(target, p.raw.size, progress);
  const why =
    back.bytes < p.raw.size
      ? `it returns only ${back.bytes} of the ${p.raw.size} bytes written`
      : back.sha256 !== p.raw.sha256
        ? `its bytes read back have SHA-256 ${back.sha256}, what was written has ${p.raw.sha256}`
        : null;
  if (why === null) return back.mode;
  throw new ZbError("TARGET_MISMATCH", `cannot install ${p.name} into ${target}: the medium does not hold what was written: ${why}`, {
    hint: "the device acknowledged writes it did not keep (a failing or fake-capacity card?); install onto another medium",
  });
}

/**
 * Does the target hold the payload, byte for byte (its raw SHA-256 over the
 * payload's length, read from the medium)? Read-only; a target that is
 * missing, unreadable or shorter does not. `signal` is checked as the read
 * goes on (a whole SD card may take minutes).
 * @returns how it was read when it holds the payload, else null
 * @throws `signal.reason` once the signal aborts
 */
export async function targetHolds(path: string, p: Payload, signal?: AbortSignal): Promise<UncachedMode | null> {
  try {
    return await checkOnMedium(path, p, () => {
      if (signal?.aborted) throw signal.reason;
    });
  } catch (e) {
    // Stopped by a signal: that is the outcome, not "the target does not hold it" (which would restart the install at chunk 0).
    if (signal?.aborted) throw signal.reason;
    return null; // TARGET_MISMATCH, or IO: missing or unreadable
  }
}
