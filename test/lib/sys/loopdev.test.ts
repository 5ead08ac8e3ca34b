/**
 * loopStatus / decodeLoopInfo64: LOOP_GET_STATUS64 names a loop device's
 * backing file by the same st_dev and st_ino stat(2) gives for it (checked on
 * a real loop device over a temp file, detached afterwards), and is not asked
 * of anything that is not a bound loop device.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { decodeLoopInfo64, LOOP_INFO64_BYTES, loopStatus } from "../../../lib/sys/loopdev.ts";
import { tempDirs } from "../../tempdirs.ts";

const tempDir = tempDirs("zb-loopdev-");

describe("decodeLoopInfo64 before (struct loop_info64 bytes) / after (the fields kept)", () => {
  test("lo_device, lo_inode, lo_rdevice and lo_offset are the first four little-endian __u64; the rest is ignored", () => {
    const info = new Uint8Array(LOOP_INFO64_BYTES).fill(0xee);
    const v = new DataView(info.buffer);
    [65024n, 2147552n, 2050n, 1n << 40n].forEach((x, i) => v.setBigUint64(i * 8, x, true));
    expect(decodeLoopInfo64(info)).toEqual({ device: 65024, inode: 2147552, rdevice: 2050, offset: 2 ** 40 });
  });
});

describe("loopStatus on the host", () => {
  const loops: string[] = [];
  afterAll(() => loops.forEach((l) => Bun.spawnSync(["losetup", "-d", l])));

  test("a real loop device: the file's st_dev and st_ino as stat(2) gives them, its offset, the node's own number", () => {
    const img = join(tempDir(), "p4.img");
    writeFileSync(img, new Uint8Array(1 << 20));
    const r = Bun.spawnSync(["losetup", "--find", "--show", "--offset", "4096", img], { stderr: "pipe" });
    const dev = r.stdout.toString().trim();
    if (r.exitCode !== 0 || !dev.startsWith("/dev/loop")) throw new Error(`losetup failed: ${r.stderr}`);
    loops.push(dev);
    const st = statSync(img);
    expect(loopStatus(dev)).toEqual({ self: statSync(dev).rdev, device: st.dev, inode: st.ino, rdevice: 0, offset: 4096 });
  });

  test("not asked of a missing node, a character device or a regular file", () => {
    // (An unbound loop device answers ENXIO, also null; which one is free races other tests' losetup.)
    const file = join(tempDir(), "file");
    writeFileSync(file, "");
    expect([loopStatus("/dev/zb-none"), loopStatus("/dev/null"), loopStatus(file)]).toEqual([null, null, null]);
  });
});
