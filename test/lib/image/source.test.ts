/**
 * Image sources stopped by an AbortSignal (lib/image/source.ts stoppable,
 * untilAborted): what `zb image install|verify` rely on when SIGINT or
 * SIGTERM comes. A stream waiting for bytes that do not come is ended at
 * once with the signal's reason; a direct reader refuses the next read.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { ZbError } from "../../../lib/errors.ts";
import { fileSource, stoppable, untilAborted, type ImageSource } from "../../../lib/image/source.ts";

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
