/**
 * waitWritable: what each poll(2) answer means for the write loop (through
 * the seam), and the real poll on real pipes: room in the pipe is `ready`
 * at once, a full pipe whose reader is gone is `closed` (POLLERR). That a
 * full pipe makes zb sleep rather than spin is shown on the binary
 * (test/stages/output.test.ts). waitReadable likewise, and with the real
 * poll on an empty pipe that another process writes to only later: the wait
 * must not come back before the byte (barring a signal or poll's timeout).
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

  test("the real poll(2): an empty pipe is waited on until a byte arrives, not returned from before", async () => {
    // waitReadable blocks this thread, so the byte comes from another process: it waits for a go
    // byte (sent just before the wait), sleeps 0.2 s, then writes one. The pipe is empty until then
    // by construction. Each wait must return with the byte readable, or for a reason of poll's own:
    // a signal (EINTR: the sleep seam runs) or its whole timeout (a writer late by a second). A wait
    // that came back early for no reason is what this catches; none of it asserts that anything was quick.
    const [r, w] = nbPipe();
    const go = new Int32Array(2);
    if (libc().pipe2(ptr(go), O_CLOEXEC) !== 0) throw new Error("pipe2 failed"); // blocking: sh reads it
    const writer = Bun.spawn(["sh", "-c", "head -c1 <&3 >/dev/null && sleep 0.2 && printf x >&4"], { stdio: ["ignore", "ignore", "ignore", go[0]!, w] });
    const buf = new Uint8Array(4);
    /** One non-blocking read: its byte count, or null on EAGAIN (nothing there yet). */
    const tryRead = (): number | null => {
      try {
        return readSync(r, buf);
      } catch (e) {
        if ((e as { code?: string }).code === "EAGAIN") return null;
        throw e;
      }
    };
    try {
      expect(tryRead()).toBeNull(); // the writer is waiting for its go
      writeSync(go[1]!, "g");
      const waits: ("byte" | "signal" | "timeout" | "early")[] = [];
      while (waits.at(-1) !== "byte" && waits.length < 10) {
        let signalled = false;
        const t0 = performance.now();
        waitReadable(r, { sleep: (ms) => ((signalled = true), Bun.sleepSync(ms)) });
        const elapsed = performance.now() - t0;
        const n = tryRead();
        waits.push(n !== null ? "byte" : signalled ? "signal" : elapsed >= POLL_TIMEOUT_MS ? "timeout" : "early");
        if (n !== null) expect(n).toBe(1);
      }
      expect(waits.filter((x) => x === "early")).toEqual([]);
      expect(waits.at(-1)).toBe("byte");
      expect(await writer.exited).toBe(0);
    } finally {
      writer.kill("SIGKILL");
      for (const fd of [r, w, go[0]!, go[1]!]) closeSync(fd);
    }
  });
});
