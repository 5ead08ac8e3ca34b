/**
 * lib/sys/target.ts writeAt: aligned chunks go through O_DIRECT where the
 * file system has it, unaligned ones (and file systems without it) through
 * plain writes; either way the bytes land where asked. (The EINVAL fallback
 * for a device with stricter alignment cannot be provoked here: this VM's
 * virtio disk takes O_DIRECT from any 8-byte-aligned buffer.)
 */
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DIRECT_ALIGN, openTarget } from "../../../lib/sys/target.ts";

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/** Whether files in `dir` open with O_DIRECT (ext4 does; tmpfs only since Linux 6.6). */
function directWorks(dir: string): boolean {
  const probe = join(dir, `zb-direct-probe-${process.pid}`);
  writeFileSync(probe, "");
  try {
    closeSync(openSync(probe, constants.O_WRONLY | constants.O_DIRECT));
    return true;
  } catch {
    return false;
  } finally {
    rmSync(probe);
  }
}

function place(parent: string, size: number) {
  const dir = mkdtempSync(join(parent, "zb-target-"));
  dirs.push(dir);
  const path = join(dir, "t.img");
  writeFileSync(path, new Uint8Array(size).fill(0x55));
  return path;
}

/** Bytes 0..n-1 in a page-aligned buffer (a SharedArrayBuffer, as the install pipeline uses). */
function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(new SharedArrayBuffer(n));
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

describe.each([
  { where: tmpdir(), expectDirect: directWorks(tmpdir()) },
  { where: "/dev/shm", expectDirect: directWorks("/dev/shm") },
])("writeAt in $where", ({ where, expectDirect }) => {
  test.each([
    { what: "aligned chunks", offset: 2 * DIRECT_ALIGN, length: 4 * DIRECT_ALIGN, direct: expectDirect },
    { what: "an unaligned length (a payload's last chunk)", offset: 2 * DIRECT_ALIGN, length: 4 * DIRECT_ALIGN - 100, direct: false },
    { what: "an unaligned offset", offset: 1000, length: 4 * DIRECT_ALIGN, direct: false },
  ])("$what: the bytes land at the offset, the rest is untouched", async ({ offset, length, direct }) => {
    const path = place(where, 16 * DIRECT_ALIGN);
    const t = openTarget(path, { create: false });
    const data = pattern(length, offset & 0xff);
    await t.writeAt(offset, data);
    t.sync();
    expect(t.direct).toBe(direct);
    t.close();
    const file = readFileSync(path);
    expect(file.length).toBe(16 * DIRECT_ALIGN);
    expect(Buffer.compare(file.subarray(offset, offset + length), Buffer.from(data))).toBe(0);
    expect(file.subarray(0, offset).every((b) => b === 0x55)).toBe(true);
    expect(file.subarray(offset + length).every((b) => b === 0x55)).toBe(true);
  });

  test("a sequence of aligned writes then an unaligned tail, then read back through the same target", async () => {
    const path = place(where, 0);
    const t = openTarget(path, { create: false });
    const parts = [pattern(8 * DIRECT_ALIGN, 1), pattern(8 * DIRECT_ALIGN, 2), pattern(1234, 3)];
    let at = 0;
    for (const p of parts) {
      await t.writeAt(at, p);
      at += p.length;
    }
    expect(t.read(0, at)).toEqual(new Uint8Array(Buffer.concat(parts.map((p) => Buffer.from(p)))));
    expect(t.direct).toBe(expectDirect);
    t.close();
  });
});
