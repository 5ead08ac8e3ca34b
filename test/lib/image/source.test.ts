/**
 * Image sources stopped by an AbortSignal (lib/image/source.ts stoppable,
 * untilAborted): what `zb image install|verify` rely on when SIGINT or
 * SIGTERM comes. A stream waiting for bytes that do not come is ended at
 * once with the signal's reason; a direct reader refuses the next read.
 * Also how stdin and FIFOs are read: a file on stdin as that file, a pipe
 * with reads straight into the caller's buffer.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, constants, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { ZbError } from "../../../lib/errors.ts";
import { unlessAborted } from "../../../lib/image/pull.ts";
import { fileSource, stoppable, streamReader, untilAborted, type ImageSource } from "../../../lib/image/source.ts";

const root = mkdtempSync(join(tmpdir(), "zb-source-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const file = join(root, "bytes");
writeFileSync(file, new Uint8Array(3000).map((_, i) => i & 0xff));
const reason = new ZbError("INTERRUPTED", "cannot install rootfs: interrupted (SIGINT)");

/** How a pending or next read ends: the error it throws, or "bytes"/"end". */
const settle = (p: Promise<IteratorResult<Uint8Array>>) => p.then((r) => (r.done ? "end" : "bytes"), (e: unknown) => e);

describe("a stream", () => {
  test.each([
    { when: "while it waits for bytes that do not come (a stalled pipe or server)", abortFirst: false },
    { when: "before the next read", abortFirst: true },
  ])("aborted $when: the read ends with the signal's reason and the stream is destroyed", async ({ abortFirst }) => {
    const pipe = new PassThrough();
    pipe.write(new Uint8Array([1, 2, 3]));
    const stop = new AbortController();
    const parts = untilAborted(pipe, stop.signal)[Symbol.asyncIterator]();
    expect(await settle(parts.next())).toBe("bytes");
    if (abortFirst) stop.abort(reason);
    const waiting = settle(parts.next());
    if (!abortFirst) stop.abort(reason);
    expect({ read: await waiting, destroyed: pipe.destroyed }).toEqual({ read: reason, destroyed: true });
  });

  test("never aborted: every byte, then the end, as from the stream itself", async () => {
    const stop = new AbortController();
    let n = 0;
    for await (const part of untilAborted((await fileSource(file).open(0)) as AsyncIterable<Uint8Array>, stop.signal)) n += part.length;
    expect(n).toBe(3000);
  });
});

describe("stoppable(a file source)", () => {
  test.each([
    { way: "open()", read: async (s: ImageSource) => void ((await s.open(0)) as unknown as { cancel(): void }).cancel() },
    {
      way: "direct().read()",
      read: async (s: ImageSource) => {
        const r = s.direct!();
        try {
          r.read(new Uint8Array(10));
        } finally {
          r.close();
        }
      },
    },
  ])("$way: reads before the abort, throws the reason after it", async ({ read }) => {
    const stop = new AbortController();
    const s = stoppable(fileSource(file), stop.signal);
    const before = await read(s).then(() => "ok", (e: unknown) => e);
    stop.abort(reason);
    const after = await read(s).then(() => "ok", (e: unknown) => e);
    expect({ before, after, name: s.name, seekable: s.seekable, file: s.file }).toEqual({ before: "ok", after: reason, name: file, seekable: true, file });
  });
});

describe("memory while streaming", () => {
  // An image streamed from stdin, a FIFO or a URL passes through untilAborted part by part; what
  // the consumer let go of must be collectable while the stream is still being read. Before, each
  // read was raced against one promise pending for the whole stream, and every race left its read's
  // bytes reachable from it: 256 MiB read, 256 MiB kept.
  test("256 parts of 1 MiB read: the parts already consumed are not kept alive", async () => {
    const PARTS = 256;
    const MiB = 1 << 20;
    async function* source(): AsyncGenerator<Uint8Array> {
      for (let i = 0; i < PARTS; i++) yield new Uint8Array(MiB).fill(i & 0xff);
    }
    const signal = new AbortController().signal;
    Bun.gc(true);
    const before = process.memoryUsage().heapUsed; // typed-array bytes count here in Bun (arrayBuffers stays 0)
    let read = 0;
    let held = Number.NaN;
    for await (const part of untilAborted(source(), signal)) {
      read += part.length;
      if (read === PARTS * MiB) {
        // Measured before the stream ends: its end releases whatever the reads had left reachable.
        Bun.gc(true);
        held = process.memoryUsage().heapUsed - before;
      }
    }
    expect(read).toBe(PARTS * MiB);
    expect(held).toBeLessThan(32 * MiB);
  });
});

describe("stdin (stdinSource, in a child process whose stdin is set up)", () => {
  const SOURCE = join(import.meta.dir, "../../../lib/image/source.ts");
  const child = join(root, "stdin-child.ts");
  // Seekable: the bytes from offset 10; a stream: how many bytes one read of 5000 gets, and the first three.
  writeFileSync(
    child,
    `import { stdinSource, streamReader } from ${JSON.stringify(SOURCE)};
const s = stdinSource();
let bytes = [];
if (s.seekable) for await (const p of await s.open(10)) bytes.push(...p.subarray(0, 3 - bytes.length));
else {
  const buf = new Uint8Array(5000);
  const n = await streamReader(await s.open(0)).read(buf);
  bytes = [n, ...buf.subarray(0, 3)];
}
console.log(JSON.stringify({ name: s.name, seekable: s.seekable, direct: s.direct !== undefined, bytes }));`,
  );
  /** The child with `stdin` as its descriptor 0, or "pipe": the file through cat (bytes given to spawnSync come as a file). */
  const run = (stdin: number | "pipe") => {
    const cmd = stdin === "pipe" ? ["sh", "-c", 'cat "$1" | "$0" "$2"', process.execPath, file, child] : [process.execPath, child];
    const p = Bun.spawnSync(cmd, { stdin: stdin === "pipe" ? "ignore" : stdin, stderr: "pipe" });
    return p.exitCode === 0 ? JSON.parse(p.stdout.toString()) : p.stderr.toString();
  };
  test.each([
    // `zb image install - < IMAGE`: read as the file (direct reads, resume with a seek), not as a stream.
    { stdin: "a regular file at its start", at: 0, want: { name: "stdin", seekable: true, direct: true, bytes: [10, 11, 12] } },
    // Someone read the first 100 bytes before zb: the image starts there, so it is a stream from there.
    { stdin: "a regular file 100 bytes in", at: 100, want: { name: "stdin", seekable: false, direct: false, bytes: [2900, 100, 101, 102] } },
    { stdin: "a pipe", at: null, want: { name: "stdin", seekable: false, direct: false, bytes: [3000, 0, 1, 2] } },
  ])("$stdin: $want.seekable seekable, direct reads $want.direct", ({ at, want }) => {
    if (at === null) return void expect(run("pipe")).toEqual(want);
    const fd = openSync(file, "r");
    try {
      if (at > 0) readSync(fd, new Uint8Array(at), 0, at, null); // moves the offset the child shares
      expect(run(fd)).toEqual(want);
    } finally {
      closeSync(fd);
    }
  });
});

describe("unlessAborted: one wait raced with the abort (untilAborted's reads, a stream reader's)", () => {
  /** A wait that settles when the test says; started or not, stopped or not, as the helper left it. */
  test.each<{ name: string; abortBefore?: boolean; settle?: "resolve" | "reject"; abortDuring?: boolean; abortAfter?: boolean; want: { got: unknown; started: boolean; stops: number } }>([
    { name: "aborted already: not started, stopped, the reason", abortBefore: true, want: { got: reason, started: false, stops: 1 } },
    { name: "aborted while it waits: stopped, the reason at once", abortDuring: true, want: { got: reason, started: true, stops: 1 } },
    { name: "aborted while it waits, the wait failing later: the reason, the late failure handled", abortDuring: true, settle: "reject", want: { got: reason, started: true, stops: 1 } },
    { name: "settled: its value; an abort after it stops nothing (the listener is gone)", settle: "resolve", abortAfter: true, want: { got: 7, started: true, stops: 0 } },
    { name: "failed, not aborted: its own error", settle: "reject", want: { got: "EIO", started: true, stops: 0 } },
  ])("$name", async ({ abortBefore, settle: how, abortDuring, abortAfter, want }) => {
    const stop = new AbortController();
    let started = false;
    let stops = 0;
    let done: { resolve(n: number): void; reject(e: unknown): void } | null = null;
    const start = () => {
      started = true;
      return new Promise<number>((resolve, reject) => (done = { resolve, reject }));
    };
    if (abortBefore) stop.abort(reason);
    const waiting = unlessAborted(start, stop.signal, () => stops++).then((n) => n, (e: unknown) => e);
    if (abortDuring) stop.abort(reason);
    if (how === "resolve") done!.resolve(7);
    if (how === "reject") done!.reject("EIO");
    const got = await waiting;
    if (abortAfter) stop.abort(reason);
    await Bun.sleep(0); // a late failure left unhandled would fail the test run here
    expect({ got, started, stops }).toEqual(want);
  });
});

describe("streamReader", () => {
  test.each<{ parts: number[][]; reads: number[]; want: number[][] }>([
    { parts: [[1, 2, 3], [4, 5], [6, 7, 8, 9]], reads: [4, 4, 4], want: [[1, 2, 3, 4], [5, 6, 7, 8], [9]] },
    { parts: [[1, 2, 3, 4, 5, 6, 7, 8]], reads: [2, 10, 1], want: [[1, 2], [3, 4, 5, 6, 7, 8], []] },
    { parts: [[], [1], [], [2, 3]], reads: [3, 3], want: [[1, 2, 3], []] },
  ])("parts $parts read $reads at a time: each read filled across parts, short only at the end", async ({ parts, reads, want }) => {
    async function* source(): AsyncGenerator<Uint8Array> {
      for (const p of parts) yield new Uint8Array(p);
    }
    const r = streamReader(source());
    const got: number[][] = [];
    for (const n of reads) {
      const buf = new Uint8Array(n);
      got.push([...buf.subarray(0, await r.read(buf))]);
    }
    expect({ got, position: r.position }).toEqual({ got: want, position: want.flat().length });
  });

  test("close() ends the stream it reads (an HTTP body's connection goes)", async () => {
    const pipe = new PassThrough();
    pipe.write(new Uint8Array([1, 2, 3]));
    const r = streamReader(pipe);
    expect(await r.read(new Uint8Array(2))).toBe(2);
    r.close();
    await new Promise<void>((resolve) => (pipe.destroyed ? resolve() : pipe.once("close", () => resolve())));
    expect(pipe.destroyed).toBe(true);
  });
});

describe("a FIFO read with its reader (read(2) on the thread pool into the caller's buffer)", () => {
  let n = 0;
  const mkfifo = () => {
    const path = join(root, `fifo${n++}`);
    expect(Bun.spawnSync(["mkfifo", path]).exitCode).toBe(0);
    return path;
  };

  test("every byte, straight into the buffer given, then the end", async () => {
    const fifo = mkfifo();
    const writer = Bun.spawn(["sh", "-c", 'cat "$0" > "$1"', file, fifo]);
    const r = streamReader(await fileSource(fifo).open(0));
    const buf = new Uint8Array(4000);
    const got = await r.read(buf);
    expect({ got, position: r.position, last: buf[2999], end: await r.read(buf) }).toEqual({ got: 3000, position: 3000, last: 2999 & 0xff, end: 0 });
    r.close();
    expect(await writer.exited).toBe(0);
  });

  test.each([
    // The open itself waits (for a writer) on the thread pool.
    { writer: "never opens it", sends: false },
    { writer: "opens it and sends nothing", sends: true },
  ])("stoppable, aborted while the writer $writer: the read ends with the signal's reason at once", async ({ sends }) => {
    const fifo = mkfifo();
    const held = sends ? openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK) : null;
    const stop = new AbortController();
    const r = streamReader(await stoppable(fileSource(fifo), stop.signal).open(0));
    const reading = r.read(new Uint8Array(10)).then((x) => x, (e: unknown) => e);
    stop.abort(reason);
    expect(await reading).toBe(reason);
    expect(await r.read(new Uint8Array(10)).then((x) => x, (e: unknown) => e)).toBe(reason);
    // The open or read left behind in the thread pool ends once the FIFO has had a writer that is gone
    // (a shell's open for writing waits for that open to have begun: no race).
    if (held !== null) closeSync(held);
    else expect(await Bun.spawn(["sh", "-c", ': > "$0"', fifo]).exited).toBe(0);
  });
});
