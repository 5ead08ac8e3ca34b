/**
 * The one bounded reader of zb: a small input read whole (a config file, an
 * env script, a sealed blob, a key or PIN file, a secret on stdin), in
 * sequence and never more than one byte past its limit.
 *
 * Why: such a path is a user's to give, and a slip names something that is
 * no small file — `-c /dev/zero`, `--script /dev/mmcblk0p1` on a Pi, a FIFO
 * that never ends. A whole-file read (readFileSync) then reads until memory
 * runs out (4 GB RSS, then ENOMEM, or the OOM killer). Read in sequence (not
 * at offsets), so a FIFO or `<(…)` works as well as a file, and one byte past
 * the limit, so a file of exactly the limit is still taken.
 *
 * Host access: node:fs (open, fstat, read, close) on the path or descriptor given.
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { ioError, ZbError, type ErrorCode } from "../errors.ts";
import { wipe } from "../secret.ts";

/** How much of an input to take, and what to say about more. */
export interface ReadLimit {
  /** The most bytes accepted; a larger input is refused after `max` + 1 are read. */
  max: number;
  /**
   * The code for an input over the limit, the one the caller gives any bad
   * input of this kind: USAGE for a file the command line names, CONFIG for a
   * config file, CRED_INVALID for a sealed blob, KEY_INVALID for a key file.
   */
  code: ErrorCode;
  /** The input in messages (`script /tmp/s`, `the HSM config /etc/zb/hsm.conf`); default the path. */
  what?: string;
  /** It may hold a secret: every buffer but the returned one is wiped, and the returned one is exactly as long as the input. */
  secret?: boolean;
  /** Called on EAGAIN (a non-blocking descriptor whose writer has not written yet) before reading again; without it EAGAIN is an IO error. */
  wait?: (fd: number) => void;
}

/** First buffer for an input of unknown length: most inputs fit, and a large limit is not allocated up front. */
const FIRST_CHUNK = 64 * 1024;

/**
 * The error for an input over its limit.
 * @example throw tooLarge({ max: 1024, code: "CONFIG", what: "PIN file /etc/zb/pin" })
 */
export function tooLarge(limit: ReadLimit, fallback = "the input"): ZbError {
  return new ZbError(limit.code, `cannot read ${limit.what ?? fallback}: larger than ${limit.max} bytes (is it the right file?)`);
}

/**
 * All bytes of descriptor `fd` from its current position to EOF, at most
 * `limit.max`; the descriptor stays open.
 * @param sizeHint the input's length when known (a regular file's size): the first buffer is made to hold it
 * @throws {ZbError} `limit.code` when there are more; IO when a read fails
 * @example readFdBounded(0, { max: 4096, code: "USAGE", what: "the secret on stdin", secret: true })
 */
export function readFdBounded(fd: number, limit: ReadLimit, sizeHint?: number): Uint8Array {
  const cap = limit.max + 1;
  // A regular file's size sizes the buffer (at least a page: /proc files say 0).
  let buf: Uint8Array = new Uint8Array(Math.min(cap, sizeHint !== undefined ? Math.max(sizeHint + 1, 4096) : FIRST_CHUNK));
  let n = 0;
  try {
    for (;;) {
      if (n === buf.length) buf = grow(buf, Math.min(cap, buf.length * 2), limit.secret);
      let got: number;
      try {
        got = readSync(fd, buf, n, buf.length - n, null);
      } catch (e) {
        if ((e as { code?: string }).code !== "EAGAIN" || !limit.wait) throw e;
        limit.wait(fd);
        continue;
      }
      if (got === 0) break;
      n += got;
      if (n > limit.max) throw tooLarge(limit, `descriptor ${fd}`);
    }
  } catch (e) {
    if (limit.secret) wipe(buf);
    throw e instanceof ZbError ? e : ioError(`read ${limit.what ?? `descriptor ${fd}`}`, e);
  }
  if (!limit.secret) return buf.subarray(0, n);
  const exact = buf.slice(0, n);
  wipe(buf);
  return exact;
}

/**
 * All bytes of the file at `path` (a regular file, a FIFO, a device: read in
 * sequence from its start), at most `limit.max`.
 * @throws {ZbError} `limit.code` when there are more; IO when it cannot be opened or read
 * @example readFileBounded("/etc/zb/hsm.conf", { max: 65536, code: "CONFIG", what: "the HSM config /etc/zb/hsm.conf" })
 */
export function readFileBounded(path: string, limit: ReadLimit): Uint8Array {
  const what = { ...limit, what: limit.what ?? path };
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw ioError(`read ${what.what}`, e);
  }
  try {
    return readFdBounded(fd, what, regularSize(fd));
  } finally {
    closeSync(fd);
  }
}

/** A regular file's size, to size the buffer in one go; undefined for anything else (a device reports 0, a FIFO nothing useful). */
function regularSize(fd: number): number | undefined {
  try {
    const st = fstatSync(fd);
    return st.isFile() ? st.size : undefined;
  } catch {
    return undefined;
  }
}

function grow(buf: Uint8Array, size: number, secret?: boolean): Uint8Array {
  const next = new Uint8Array(size);
  next.set(buf);
  if (secret) wipe(buf);
  return next;
}
