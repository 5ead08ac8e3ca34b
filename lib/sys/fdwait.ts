/**
 * Waiting for a non-blocking descriptor to take more bytes, or to have some.
 *
 * zb writes stdout and stderr with write(2) (stages/output.ts). O_NONBLOCK
 * belongs to the open file description, which a parent shares with zb: a
 * Node child_process pipe or a supervisor's pipe may come non-blocking, and
 * a write to it fails with EAGAIN while its reader is slow. Retrying at once
 * would spin a core until the reader catches up; this waits in poll(2)
 * instead, asleep until the kernel says there is room.
 *
 * The libc binding is loaded only here, on the first EAGAIN, so a run that
 * never meets a full pipe (zbunlock's, nearly always) pays nothing. Without
 * the JIT (zbunlock runs with BUN_JSC_useJIT=0, lib/sys/jit.ts) bun:ffi
 * cannot load libc; a short sleep per retry then stands in for poll — still
 * a sleep, not a spin.
 *
 * The same holds for reading: a secret read from a non-blocking stdin
 * (stages/secrets.ts) meets EAGAIN until its writer has written, and waits
 * in poll(2) for POLLIN rather than retrying at once.
 *
 * Host access: poll(2) through lib/sys/libc.ts, or a 1 ms sleep.
 */
import { jitOff } from "./jit.ts";
import { libc } from "./libc.ts";

// include/uapi/asm-generic/poll.h
const POLLIN = 0x001;
const POLLOUT = 0x004;
const POLLERR = 0x008;
const POLLHUP = 0x010;
const POLLNVAL = 0x020;

/**
 * One poll(2) per call is bounded: the caller tries its write again after
 * it either way, so a wake-up the kernel does not report (a descriptor that
 * another holder of it switched back to blocking meanwhile) costs at most
 * this long, never a hang.
 */
export const POLL_TIMEOUT_MS = 1000;

/**
 * What the wait found:
 * - `ready`: try the write again (room, or poll could not tell and a short sleep passed);
 * - `closed`: the reader is gone or the descriptor failed (POLLERR, POLLHUP, POLLNVAL),
 *   which the caller handles as it handles EPIPE.
 */
export type WaitResult = "ready" | "closed";

/** The poll(2) seam: returns poll's result and the revents it reported. Tests pass their own. */
export type PollFn = (fd: number, events: number, timeoutMs: number) => { n: number; revents: number };

/** struct pollfd { int fd; short events; short revents; }: 8 bytes, native byte order. */
const libcPoll: PollFn = (fd, events, timeoutMs) => {
  const buf = new Uint8Array(8);
  new Int32Array(buf.buffer, 0, 1)[0] = fd;
  const shorts = new Int16Array(buf.buffer, 4, 2);
  shorts[0] = events;
  const n = libc().poll(buf, 1, timeoutMs);
  return { n, revents: shorts[1]! & 0xffff };
};

/** How the wait is made; defaults: poll(2) through libc with the JIT on, Bun.sleepSync without it. */
export interface WaitSeams {
  poll?: PollFn | null;
  sleep?: (ms: number) => void;
}

let loaded: PollFn | null | undefined;

/** poll(2) when this process can load libc, null when it cannot (no JIT, no libc); decided once. */
function defaultPoll(): PollFn | null {
  if (loaded !== undefined) return loaded;
  loaded = null;
  if (!jitOff()) {
    try {
      libc();
      loaded = libcPoll;
    } catch {
      // libc will not load: fall back to sleeping, as without the JIT
    }
  }
  return loaded;
}

/**
 * Wait until `fd` can take bytes again after a write failed with EAGAIN:
 * one bounded poll(2) for POLLOUT, or a 1 ms sleep where poll is not
 * available (no JIT) or failed (EINTR from a signal, say). Call it from the
 * write loop on every EAGAIN; the loop then writes again.
 * @param fd the descriptor whose write just failed with EAGAIN
 * @param seams poll and sleep for tests; the defaults are the host's
 * @returns `closed` when poll reports an error or hang-up on `fd`, else `ready`
 * @example if (waitWritable(1) === "closed") return; // as on EPIPE
 */
export function waitWritable(fd: number, seams: WaitSeams = {}): WaitResult {
  const revents = waitFor(fd, POLLOUT, seams);
  return (revents & (POLLERR | POLLHUP | POLLNVAL)) !== 0 ? "closed" : "ready";
}

/**
 * Wait until `fd` has bytes (or an end) to read after a read failed with
 * EAGAIN: one bounded poll(2) for POLLIN, or a 1 ms sleep, as
 * {@link waitWritable}. Whatever poll reports, the caller reads again: a
 * hang-up means the read returns 0 (the end), an error that read(2) says what.
 * @param fd the descriptor whose read just failed with EAGAIN
 * @param seams poll and sleep for tests; the defaults are the host's
 */
export function waitReadable(fd: number, seams: WaitSeams = {}): void {
  waitFor(fd, POLLIN, seams);
}

/** One bounded wait for `events` on `fd`; the revents poll reported (0 after a sleep or a timeout). */
function waitFor(fd: number, events: number, seams: WaitSeams): number {
  const poll = seams.poll === undefined ? defaultPoll() : seams.poll;
  const sleep = seams.sleep ?? ((ms: number) => Bun.sleepSync(ms));
  if (poll === null) {
    sleep(1);
    return 0;
  }
  const { n, revents } = poll(fd, events, POLL_TIMEOUT_MS);
  if (n < 0) {
    // Interrupted or failed: no answer this time. Sleep so a poll that keeps failing cannot spin.
    sleep(1);
    return 0;
  }
  return n > 0 ? revents : 0;
}
