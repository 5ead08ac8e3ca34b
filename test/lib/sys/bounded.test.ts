/**
 * The bounded reader (lib/sys/bounded.ts) on real inputs: a file at, under
 * and over its limit, /dev/zero, a FIFO fed forever, a large sparse file —
 * each taken whole or refused with the caller's code once limit + 1 bytes
 * are read. Nothing here asserts speed: an input read to its end would not
 * end at all (/dev/zero, the FIFO) or take gigabytes (the sparse file).
 */
import { expect, test } from "bun:test";
import { closeSync, ftruncateSync, openSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readFdBounded, readFileBounded, tooLarge, type ReadLimit } from "../../../lib/sys/bounded.ts";
import { HostSys, MAX_TEXT_BYTES } from "../../../lib/sys/sys.ts";
import { tempDirs } from "../../tempdirs.ts";

const tempDir = tempDirs("zb-bounded-");
const LIMIT: ReadLimit = { max: 1000, code: "CONFIG", what: "the test config" };
const OVER = { code: "CONFIG", message: "cannot read the test config: larger than 1000 bytes (is it the right file?)" };

/** A FIFO with a writer that never stops (yes(1)); the writer ends on EPIPE once the reader closes, or is killed after. */
function endlessFifo(dir: string): { path: string; stop: () => void } {
  const path = join(dir, "fifo");
  expect(Bun.spawnSync(["mkfifo", path]).exitCode).toBe(0);
  const writer = Bun.spawn(["sh", "-c", 'exec yes > "$0"', path], { stdout: "ignore", stderr: "ignore" });
  return { path, stop: () => writer.kill() };
}

function sparse(dir: string, size: number): string {
  const path = join(dir, "sparse");
  const fd = openSync(path, "w");
  ftruncateSync(fd, size);
  closeSync(fd);
  return path;
}

test.each([
  { name: "an empty file", size: 0, out: 0 },
  { name: "a file under the limit", size: 10, out: 10 },
  { name: "a file of exactly the limit", size: 1000, out: 1000 },
  { name: "a file one byte over", size: 1001, out: null },
  { name: "a file far over", size: 200_000, out: null },
])("$name ($size bytes)", ({ size, out }) => {
  const path = join(tempDir(), "f");
  writeFileSync(path, new Uint8Array(size).fill(0x61));
  const read = () => readFileBounded(path, LIMIT);
  if (out === null) expect(read).toThrow(expect.objectContaining(OVER));
  else expect(read().byteLength).toBe(out);
});

test.each([
  { name: "/dev/zero", source: () => ({ path: "/dev/zero", stop: () => undefined }) },
  { name: "a FIFO fed forever", source: () => endlessFifo(tempDir()) },
  { name: "an 8 GiB sparse file", source: () => ({ path: sparse(tempDir(), 8 * 1024 ** 3), stop: () => undefined }) },
])("$name: refused with the caller's code, and the read ends", ({ source }) => {
  const { path, stop } = source();
  try {
    expect(() => readFileBounded(path, LIMIT)).toThrow(expect.objectContaining(OVER));
  } finally {
    stop();
  }
});

test("a missing file: IO naming the input", () => {
  expect(() => readFileBounded(join(tempDir(), "nope"), LIMIT)).toThrow(expect.objectContaining({ code: "IO", message: "cannot read the test config: no such file or directory" }));
});

test("without `what`, messages name the path (or the descriptor)", () => {
  expect(() => readFileBounded("/dev/zero", { max: 10, code: "USAGE" })).toThrow(expect.objectContaining({ code: "USAGE", message: "cannot read /dev/zero: larger than 10 bytes (is it the right file?)" }));
  expect(tooLarge({ max: 10, code: "USAGE" }).message).toBe("cannot read the input: larger than 10 bytes (is it the right file?)");
});

test("secret: the bytes come back in a buffer of their own length (nothing else of the read buffer is kept)", () => {
  const path = join(tempDir(), "s");
  writeFileSync(path, "1234\n");
  const [file, zero] = [openSync(path, "r"), openSync("/dev/zero", "r")];
  try {
    const got = readFdBounded(file, { max: 100_000, code: "CONFIG", secret: true });
    expect([got.byteLength, got.buffer.byteLength]).toEqual([5, 5]);
    expect(() => readFdBounded(zero, { max: 100_000, code: "USAGE", what: "the secret", secret: true })).toThrow(expect.objectContaining({ code: "USAGE" }));
  } finally {
    closeSync(file);
    closeSync(zero);
  }
});

test("an input that grows past the first buffer is read whole (buffers double up to the limit)", () => {
  const path = join(tempDir(), "big");
  const bytes = new Uint8Array(300_000).map((_, i) => i & 0xff);
  writeFileSync(path, bytes);
  // On a pipe (no size to go by), in a child whose stdin it is.
  const p = Bun.spawnSync(["sh", "-c", 'cat "$0" | "$1" -e "$2"', path, process.execPath, `
    const { readFdBounded } = await import(${JSON.stringify(join(import.meta.dir, "../../../lib/sys/bounded.ts"))});
    const b = readFdBounded(0, { max: 300000, code: "USAGE" });
    process.stdout.write(String(b.byteLength) + " " + Bun.hash(b));`]);
  expect(p.stdout.toString()).toBe(`300000 ${Bun.hash(bytes)}`);
});

test.each([
  { name: "default limit: IO past MAX_TEXT_BYTES", size: MAX_TEXT_BYTES + 1, limit: undefined, code: "IO", message: /larger than 1048576 bytes/ },
  { name: "default limit: a file of MAX_TEXT_BYTES is read", size: MAX_TEXT_BYTES, limit: undefined, code: null, message: null },
  { name: "the caller's limit and code", size: 1001, limit: LIMIT, code: "CONFIG", message: /^cannot read the test config: larger than 1000 bytes/ },
])("HostSys.readText, $name", ({ size, limit, code, message }) => {
  const path = join(tempDir(), "t");
  writeFileSync(path, "#".repeat(size));
  const read = () => new HostSys().readText(path, limit);
  if (code === null) expect(read().length).toBe(size);
  else expect(read).toThrow(expect.objectContaining({ code, message: expect.stringMatching(message!) }));
});
