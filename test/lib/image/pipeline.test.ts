/**
 * The install's chunk pipeline (lib/image/pipeline.ts), threaded and on one
 * thread, against real files: what goes in comes out on the target and in
 * the whole-payload digest; a chunk whose stored bytes do not match is
 * reported before anything of it could be decoded; a resume's re-read is
 * hashed but not written; a failed write in the worker reaches the caller
 * as IO naming the chunk and the byte it starts at (a full disk, a resumed
 * run whose descriptor was lent mid-file) as on one thread; closing waits for writes still in flight; a worker that stops
 * making progress fails the install instead of hanging it.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ioError, ZbError } from "../../../lib/errors.ts";
import { chunkPipeline, type ChunkPipeline } from "../../../lib/image/pipeline.ts";
import { openTarget, type Target } from "../../../lib/sys/target.ts";
import { sha256, tmpfsMounts, variedBytes } from "./fixture.ts";

const root = mkdtempSync(join(tmpdir(), "zb-pipeline-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let seq = 0;
const CHUNK = 64 * 1024;
const smallDisk = tmpfsMounts();

/** `raw` cut into chunks; the "stored" form is the raw bytes reversed, so decoding is visible. */
function chunksOf(raw: Uint8Array) {
  const out: { raw: Uint8Array; stored: Uint8Array; sha: string }[] = [];
  for (let at = 0; at < raw.length; at += CHUNK) {
    const r = raw.subarray(at, at + CHUNK);
    const stored = r.slice().reverse();
    out.push({ raw: r, stored, sha: sha256(stored) });
  }
  return out;
}

function freshTarget(): Target {
  const path = join(root, `t${seq++}`);
  writeFileSync(path, "");
  return openTarget(path, { create: false });
}

/** Drive the pipeline as install.ts does: check, keep `ahead` queued, take, decode (reverse), commit. */
async function drive(pipe: ChunkPipeline, chunks: ReturnType<typeof chunksOf>, opts: { corrupt?: number; readIntoSlot?: boolean; first?: number } = {}) {
  const taken: { index: number; ok: boolean; shared: boolean }[] = [];
  let next = 0;
  const writeNext = () => {
    const { stored, ok } = pipe.take();
    taken.push({ index: next, ok, shared: stored.buffer instanceof SharedArrayBuffer });
    if (ok) {
      const out = pipe.rawSlot(stored.length);
      for (let i = 0; i < stored.length; i++) out[i] = stored[stored.length - 1 - i]!;
      pipe.commit(out, (opts.first ?? 0) + next);
    }
    next++;
  };
  for (const [i, c] of chunks.entries()) {
    const slot = opts.readIntoSlot ? pipe.storedSlot(c.stored.length) : null;
    const bytes = slot ?? new Uint8Array(c.stored.length);
    bytes.set(c.stored);
    pipe.check(bytes, i === opts.corrupt ? sha256(new Uint8Array([1])) : c.sha);
    if (pipe.threaded && !slot) bytes.fill(0xee); // the threaded pipeline copied it: the source may be reused at once
    while (pipe.queued > pipe.ahead) writeNext();
  }
  while (pipe.queued > 0) writeNext();
  return taken;
}

describe.each([
  { mode: "threaded", threads: true },
  { mode: "one thread", threads: false },
])("chunk pipeline ($mode)", ({ threads }) => {
  const raw = variedBytes(10 * CHUNK + 1234, 31, 0.4);
  const chunks = chunksOf(raw);

  test.each([
    { how: "chunks copied in by check", readIntoSlot: false },
    { how: "chunks read straight into the stored slots", readIntoSlot: true },
  ])("$how: the target and the digest are the raw payload", async ({ readIntoSlot }) => {
    const t = freshTarget();
    const pipe = chunkPipeline(t, { raw: CHUNK, stored: CHUNK }, { threads });
    expect(pipe.threaded).toBe(threads);
    const taken = await drive(pipe, chunks, { readIntoSlot });
    const digest = await pipe.finish();
    expect(pipe.written()).toBe(chunks.length);
    pipe.close();
    t.close();
    expect(taken.every((x) => x.ok)).toBe(true);
    expect({ digest, file: sha256(readFileSync(t.path)) }).toEqual({ digest: sha256(raw), file: sha256(raw) });
    expect(t.offset).toBe(raw.length); // the descriptor came back with its offset accounted for
    if (readIntoSlot) expect(taken.every((x) => x.shared)).toBe(threads); // no copy when threaded
  });

  test("a stored chunk that does not match is reported by take(), and nothing of it is written", async () => {
    const t = freshTarget();
    const pipe = chunkPipeline(t, { raw: CHUNK, stored: CHUNK }, { threads });
    const taken = await drive(pipe, chunks.slice(0, 4), { corrupt: 2 });
    await pipe.finish();
    pipe.close();
    t.close();
    expect(taken.map((x) => [x.index, x.ok])).toEqual([[0, true], [1, true], [2, false], [3, true]]);
    // chunk 2 was never decoded: the file is chunks 0, 1, 3 back to back
    expect(readFileSync(t.path)).toEqual(Buffer.concat([chunks[0]!.raw, chunks[1]!.raw, chunks[3]!.raw]));
  });

  test("rehash: a resume's re-read counts in the digest, is not written again and not counted as written", async () => {
    const t = freshTarget();
    const pipe = chunkPipeline(t, { raw: CHUNK, stored: CHUNK }, { threads });
    const before = raw.subarray(0, 3 * CHUNK);
    pipe.rehash(before);
    await drive(pipe, chunks.slice(3));
    const digest = await pipe.finish();
    expect(pipe.written()).toBe(chunks.length - 3);
    pipe.close();
    t.close();
    expect(digest).toBe(sha256(raw));
    expect(sha256(readFileSync(t.path))).toBe(sha256(raw.subarray(3 * CHUNK)));
  });

  test("a write that fails (read-only descriptor) is IO with the system's reason", async () => {
    const path = join(root, `ro${seq++}`);
    writeFileSync(path, "");
    const fd = openSync(path, "r");
    // The threaded pipeline writes to the lent descriptor, the one-thread pipeline through target.write.
    const t: Target = { ...freshTarget(), path, handOff: () => fd, handBack: () => {}, write(_, data) {
      try {
        writeSync(fd, data);
      } catch (e) {
        throw ioError(`write ${path}`, e); // as lib/sys/target.ts does
      }
    } };
    const pipe = chunkPipeline(t, { raw: CHUNK, stored: CHUNK }, { threads });
    let err: unknown;
    try {
      await drive(pipe, chunks.slice(0, 6));
      await pipe.finish();
    } catch (e) {
      err = e;
    } finally {
      pipe.close();
      closeSync(fd);
    }
    expect(err).toBeInstanceOf(ZbError);
    expect((err as ZbError).code).toBe("IO");
    expect((err as ZbError).message).toMatch(new RegExp(`^cannot write ${path} at chunk 0 \\(byte 0\\): .*(EBADF|bad file descriptor)`, "i"));
    expect(readFileSync(path).length).toBe(0);
  });

  test.each([
    { name: "from chunk 0", first: 0 },
    { name: "resumed at chunk 3 (the descriptor lent at byte 196608)", first: 3 },
  ])("a full disk at chunk 4, $name: IO naming the chunk and the byte it starts at on the target", async ({ first }) => {
    // 256 KiB of room: chunks 0–3 fit exactly, chunk 4's write(2) fails with ENOSPC.
    const path = join(smallDisk("size=256k"), "slot.img");
    writeFileSync(path, raw.subarray(0, first * CHUNK));
    const t = openTarget(path, { create: false });
    const pipe = chunkPipeline(t, { raw: CHUNK, stored: CHUNK }, { threads });
    let err: unknown;
    try {
      pipe.rehash(t.read(0, first * CHUNK)); // as a resume does: the descriptor's offset moves past them
      await drive(pipe, chunks.slice(first), { first });
      await pipe.finish();
    } catch (e) {
      err = e;
    } finally {
      pipe.close();
      t.close();
    }
    expect({ code: (err as ZbError).code, message: (err as ZbError).message }).toEqual({
      code: "IO", message: `cannot write ${path} at chunk 4 (byte ${4 * CHUNK}): no space left on device`,
    });
  });
});

test("threaded: close() right after commits waits for the worker's writes (the descriptor is not closed under it)", async () => {
  const raw = variedBytes(8 * CHUNK, 32, 0.4);
  const t = freshTarget();
  const pipe = chunkPipeline(t, { raw: CHUNK, stored: CHUNK });
  await drive(pipe, chunksOf(raw));
  pipe.close(); // no finish(): an install that failed after its last commit
  t.close();
  expect(sha256(readFileSync(t.path))).toBe(sha256(raw));
});

test("threaded: a worker stuck in write(2) (a FIFO nobody reads) fails the install after the stall limit instead of hanging it", async () => {
  const fifo = join(root, `fifo${seq++}`);
  expect(Bun.spawnSync(["mkfifo", fifo]).exitCode).toBe(0);
  const fd = openSync(fifo, "r+"); // O_RDWR: opening does not wait for a reader
  const t: Target = { ...freshTarget(), path: fifo, handOff: () => fd, handBack: () => {} };
  const pipe = chunkPipeline(t, { raw: CHUNK, stored: CHUNK }, { stallMs: 300 });
  let err: unknown;
  try {
    // The pipe holds 64 KiB: the worker blocks on chunk 2. Without the limit this test hangs until its timeout.
    await drive(pipe, chunksOf(variedBytes(8 * CHUNK, 33, 0.4)));
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ZbError);
  // The medium, not zb: IO (exit 5), not INTERNAL (exit 70).
  expect({ code: (err as ZbError).code, says: /^cannot write \S+ at chunk [12]: the install worker made no progress for 0.3 s \(a write to the device did not return/.test((err as ZbError).message) }).toEqual({ code: "IO", says: true });
  // Drain the FIFO so the worker's write returns and close() can finish.
  const drain = Bun.spawn(["cat", fifo], { stdout: "ignore" });
  pipe.close();
  drain.kill();
  closeSync(fd);
});
