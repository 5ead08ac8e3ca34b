/**
 * openTarget (lib/sys/target.ts) on a real block device whose node is not
 * the kernel's name for it — a loop device reached through a node made with
 * mknod in a temp folder, as a container's `--device=/dev/sdb3:/dev/slot-b`
 * or a hand-made node gives it: its size comes from sysfs by device number;
 * a sysfs that does not know the number is IO naming the node, never a
 * runtime ENOENT (exit 70 with a stack trace). Needs root, losetup and
 * mknod; the loop devices are detached afterwards.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { devNumber } from "../../../lib/sys/devsize.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { openTarget } from "../../../lib/sys/target.ts";
import { tempDirs } from "../../tempdirs.ts";

const tempDir = tempDirs("zb-target-");

describe("a block device node of another name (mknod)", () => {
  const loops: string[] = [];
  afterAll(() => loops.forEach((l) => Bun.spawnSync(["losetup", "-d", l])));

  /** A loop device over a file of `size` bytes, and a node for it called slot-b in a temp folder. */
  function renamedLoop(size: number) {
    const dir = tempDir();
    const file = join(dir, "backing.img");
    writeFileSync(file, new Uint8Array(size));
    const r = Bun.spawnSync(["losetup", "--find", "--show", file], { stderr: "pipe" });
    const loop = r.stdout.toString().trim();
    if (r.exitCode !== 0 || !loop.startsWith("/dev/loop")) throw new Error(`losetup failed: ${r.stderr}`);
    loops.push(loop);
    const no = devNumber(statSync(loop).rdev);
    const node = join(dir, "slot-b");
    const mk = Bun.spawnSync(["mknod", node, "b", ...no.split(":")], { stderr: "pipe" });
    if (mk.exitCode !== 0) throw new Error(`mknod failed: ${mk.stderr}`);
    return { dir, node, no };
  }

  test("its size is the device's, found in sysfs by number", () => {
    const { node } = renamedLoop(3 << 20);
    const t = openTarget(node, { create: false });
    try {
      expect({ blockDevice: t.blockDevice, size: t.size() }).toEqual({ blockDevice: true, size: 3 << 20 });
    } finally {
      t.close();
    }
  });

  test("a sysfs that does not know its number: IO naming the node and the number", () => {
    const { dir, node, no } = renamedLoop(1 << 20);
    const sysfs = join(dir, "empty-sys");
    mkdirSync(sysfs);
    const t = openTarget(node, { create: false, sysfs: { sys: new HostSys(), sysfs } });
    let e: unknown = null;
    try {
      t.size();
    } catch (x) {
      e = x;
    } finally {
      t.close();
    }
    expect({ name: (e as Error).name, code: (e as { code?: string }).code, message: (e as Error).message }).toEqual({
      name: "ZbError", code: "IO",
      message: `cannot find the size of block device ${node}: sysfs gives no size for device ${no} (${sysfs}/dev/block/${no}/size: no such file or directory)`,
    });
  });
});

describe("a file target that does not exist yet", () => {
  test.each([
    // Before: the folder was never synced; fdatasync makes the bytes durable, not the name.
    { name: "is created 0600 and its folder synced once", before: "missing", synced: 1, mode: 0o600 },
    { name: "an existing file is opened as it is, no folder sync", before: "file", synced: 0, mode: 0o644 },
  ])("$name", ({ before, synced, mode }) => {
    const dir = tempDir();
    const path = join(dir, "slot.img");
    if (before === "file") writeFileSync(path, "old", { mode: 0o644 });
    const calls: string[] = [];
    const t = openTarget(path, { create: true, syncFolder: (d) => calls.push(d) });
    t.close();
    expect({ calls, mode: statSync(path).mode & 0o777 }).toEqual({ calls: Array(synced).fill(dir), mode });
  });

  test("a folder that cannot be synced: IO, and the file just created is removed", () => {
    const dir = tempDir();
    const path = join(dir, "slot.img");
    const fail = () => {
      throw Object.assign(new Error("input/output error"), { code: "EIO" });
    };
    expect(() => openTarget(path, { create: true, syncFolder: fail })).toThrow(/^cannot open the install target .*slot\.img: input\/output error/);
    expect(existsSync(path)).toBe(false);
  });

  test("a dangling symbolic link under the name is not followed to create its target", () => {
    // Before: O_CREAT followed it and made the file it names (for a link to /dev/sdx3, a file in /dev).
    const dir = tempDir();
    const path = join(dir, "slot.img");
    symlinkSync(join(dir, "elsewhere.img"), path);
    expect(() => openTarget(path, { create: true, syncFolder: () => undefined })).toThrow(/^cannot open the install target .*slot\.img: no such file or directory/);
    expect(existsSync(join(dir, "elsewhere.img"))).toBe(false);
  });
});
