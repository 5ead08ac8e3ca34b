/**
 * waitWritable: what each poll(2) answer means for the write loop (through
 * the seam), and the real poll on real pipes: room in the pipe is `ready`
 * at once, a full pipe whose reader is gone is `closed` (POLLERR). That a
 * full pipe makes zb sleep rather than spin is shown on the binary
 * (test/stages/output.test.ts).
 */
import { describe, expect, test } from "bun:test";
import { closeSync, readSync, writeSync } from "node:fs";
import { ptr } from "bun:ffi";
import { POLL_TIMEOUT_MS, type PollFn, waitReadable, waitWritable } from "../../../lib/sys/fdwait.ts";
import { libc } from "../../../lib/sys/libc.ts";

const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;

/** A pipe with both ends O_NONBLOCK: [read end, write end]. */
function nbPipe(): [number, number] {
  const fds = new Int32Array(2);
  if (libc().pipe2(ptr(fds), O_NONBLOCK | O_CLOEXEC) !== 0) throw new Error("pipe2 failed");
  return [fds[0]!, fds[1]!];
}

/** Write to a non-blocking fd until EAGAIN; the bytes written. */
function fill(fd: number): number {
  const chunk = new Uint8Array(4096);
  let n = 0;
  for (;;) {
    try {
      n += writeSync(fd, chunk);
    } catch (e) {
      if ((e as { code?: string }).code === "EAGAIN") return n;
      throw e;
    }
  }
}

describe("waitWritable through the seam", () => {
  test.each([
    { name: "POLLOUT", n: 1, revents: 0x004, want: "ready", sleeps: 0 },
    { name: "timeout (nothing reported)", n: 0, revents: 0, want: "ready", sleeps: 0 },
    { name: "POLLERR (reader gone)", n: 1, revents: 0x008 | 0x004, want: "closed", sleeps: 0 },
    { name: "POLLHUP", n: 1, revents: 0x010, want: "closed", sleeps: 0 },
    { name: "POLLNVAL", n: 1, revents: 0x020, want: "closed", sleeps: 0 },
    { name: "poll failed (EINTR): a sleep, not a spin", n: -1, revents: 0, want: "ready", sleeps: 1 },
  ])("$name → $want", ({ n, revents, want, sleeps }) => {
    const calls: { fd: number; events: number; timeoutMs: number }[] = [];
    const poll: PollFn = (fd, events, timeoutMs) => {
      calls.push({ fd, events, timeoutMs });
      return { n, revents };
    };
    const slept: number[] = [];
    expect(waitWritable(7, { poll, sleep: (ms) => slept.push(ms) })).toBe(want as "ready" | "closed");
    expect(calls).toHaveLength(1);
    expect(calls[0]!.fd).toBe(7);
    expect(calls[0]!.events).toBe(0x004); // POLLOUT
    // Bounded, and not zero (a zero timeout would make the caller's loop a spin again).
    expect(calls[0]!.timeoutMs).toBeGreaterThan(0);
    expect(slept).toHaveLength(sleeps);
  });

  test("without poll (no JIT): one short sleep per retry", () => {
    const slept: number[] = [];
    expect(waitWritable(1, { poll: null, sleep: (ms) => slept.push(ms) })).toBe("ready");
    expect(slept).toEqual([1]);
  });
});

describe("waitWritable with the real poll(2)", () => {
  test("a pipe with room: ready", () => {
    const [r, w] = nbPipe();
    try {
      expect(waitWritable(w)).toBe("ready");
    } finally {
      closeSync(r);
      closeSync(w);
    }
  });

  test("a full pipe whose reader is gone: closed (handled as EPIPE)", () => {
    const [r, w] = nbPipe();
    try {
      expect(fill(w)).toBeGreaterThan(0);
      closeSync(r);
      expect(waitWritable(w)).toBe("closed");
    } finally {
      closeSync(w);
    }
  });

});

describe("waitReadable (a secret on a non-blocking stdin)", () => {
  test.each([
    { name: "POLLIN", n: 1, revents: 0x001, sleeps: 0 },
    { name: "POLLHUP (writer gone: the next read returns the end)", n: 1, revents: 0x010, sleeps: 0 },
    { name: "timeout", n: 0, revents: 0, sleeps: 0 },
    { name: "poll failed (EINTR): a sleep, not a spin", n: -1, revents: 0, sleeps: 1 },
  ])("$name: one bounded poll for POLLIN", ({ n, revents, sleeps }) => {
    const calls: { fd: number; events: number; timeoutMs: number }[] = [];
    const slept: number[] = [];
    waitReadable(5, { poll: (fd, events, timeoutMs) => (calls.push({ fd, events, timeoutMs }), { n, revents }), sleep: (ms) => slept.push(ms) });
    expect(calls).toEqual([{ fd: 5, events: 0x001, timeoutMs: POLL_TIMEOUT_MS }]);
    expect(POLL_TIMEOUT_MS).toBeGreaterThan(0);
    expect(slept).toHaveLength(sleeps);
  });

  test("without poll (no JIT): one short sleep per retry", () => {
    const slept: number[] = [];
    waitReadable(0, { poll: null, sleep: (ms) => slept.push(ms) });
    expect(slept).toEqual([1]);
  });

  test("the real poll(2): a pipe with bytes waiting returns, and they are still there", () => {
    const [r, w] = nbPipe();
    try {
      writeSync(w, "x");
      waitReadable(r);
      const buf = new Uint8Array(4);
      expect(readSync(r, buf)).toBe(1);
    } finally {
      closeSync(r);
      closeSync(w);
    }
  });
});
