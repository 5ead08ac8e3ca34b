/**
 * deviceExtent / sharesStorage: two paths share storage when they are one
 * device, a disk and one of its partitions, or a loop device and its backing
 * file (or two loop devices on the same bytes of it). Rows run on a fake
 * sysfs in a temp folder; the last tests use the host's sysfs and real loop
 * devices (losetup on temp files, detached afterwards).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { deviceExtent, deviceIdentity, devNumber, sharesStorage, type DeviceLookup, type DeviceStat } from "../../../lib/luks/overlap.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { blockNode, fakeSysfs, makedev, type FakeBlock } from "../../fakes/sysfs.ts";
import { tempDirs } from "../../tempdirs.ts";

const tempDir = tempDirs("zb-overlap-");
const sys = new HostSys();

/** "shared (why; why)" or "separate", as the check sees two paths. */
function verdict(look: DeviceLookup, a: string, b: string): string {
  const [ea, eb] = [deviceExtent(a, look), deviceExtent(b, look)];
  return sharesStorage(ea, eb) ? `shared (${[...ea.via, ...eb.via].join("; ")})` : "separate";
}

const MiB = 2048; // sectors
const sda: FakeBlock = { name: "sda", major: 8, minor: 0, size: 1024 * MiB };
const sda2: FakeBlock = { name: "sda2", major: 8, minor: 2, size: 256 * MiB, partOf: "sda", start: 1 * MiB };
const sda4: FakeBlock = { name: "sda4", major: 8, minor: 4, size: 512 * MiB, partOf: "sda", start: 257 * MiB };
const sdb: FakeBlock = { name: "sdb", major: 8, minor: 16, size: 1024 * MiB };
const sdb1: FakeBlock = { name: "sdb1", major: 8, minor: 17, size: 256 * MiB, partOf: "sdb", start: 1 * MiB };
const loop = (n: number, file: string, size: number, offset = 0): FakeBlock => ({ name: `loop${n}`, major: 7, minor: n, size, loop: { file, offset } });

describe("deviceExtent on a fake sysfs: before (devices, two paths) / after (shared and why, or separate)", () => {
  const rows: { name: string; before: [FakeBlock[], string, string]; after: string }[] = [
    { name: "a whole disk and one of its partitions", before: [[sda, sda2], "/dev/sda", "/dev/sda2"], after: "shared (sda2 is a partition of sda)" },
    { name: "a partition and its whole disk", before: [[sda, sda4], "/dev/sda4", "/dev/sda"], after: "shared (sda4 is a partition of sda)" },
    { name: "two partitions of one disk", before: [[sda, sda2, sda4], "/dev/sda2", "/dev/sda4"], after: "separate" },
    { name: "partitions of two disks", before: [[sda, sda2, sdb, sdb1], "/dev/sda2", "/dev/sdb1"], after: "separate" },
    { name: "a disk and another disk's partition", before: [[sda, sdb, sdb1], "/dev/sda", "/dev/sdb1"], after: "separate" },
    { name: "a loop device and its backing file", before: [[loop(3, "/IMG", 64 * MiB)], "/dev/loop3", "/IMG"], after: "shared (loop3 is a loop device on /IMG)" },
    { name: "two loop devices on one file", before: [[loop(3, "/IMG", 64 * MiB), loop(5, "/IMG", 64 * MiB)], "/dev/loop3", "/dev/loop5"], after: "shared (loop3 is a loop device on /IMG; loop5 is a loop device on /IMG)" },
    { name: "a loop device on another file", before: [[loop(3, "/OTHER", 64 * MiB)], "/dev/loop3", "/IMG"], after: "separate" },
    {
      name: "two loop devices on disjoint ranges of one file (losetup --offset)",
      before: [[loop(3, "/IMG", 16 * MiB, 0), loop(5, "/IMG", 16 * MiB, 16 << 20)], "/dev/loop3", "/dev/loop5"],
      after: "separate",
    },
    {
      name: "two loop devices on overlapping ranges of one file",
      before: [[loop(3, "/IMG", 16 * MiB, 0), loop(5, "/IMG", 16 * MiB, 8 << 20)], "/dev/loop3", "/dev/loop5"],
      after: "shared (loop3 is a loop device on /IMG; loop5 is a loop device on /IMG)",
    },
    {
      name: "a partition of a loop device and the loop's backing file",
      before: [[loop(3, "/IMG", 64 * MiB), { name: "loop3p2", major: 259, minor: 0, size: 16 * MiB, partOf: "loop3", start: 2048 }], "/dev/loop3p2", "/IMG"],
      after: "shared (loop3p2 is a partition of loop3; loop3 is a loop device on /IMG)",
    },
    {
      name: "a loop device on a partition, and the whole disk",
      before: [[sda, sda2, loop(3, "/dev/sda2", 256 * MiB)], "/dev/loop3", "/dev/sda"],
      after: "shared (loop3 is a loop device on /dev/sda2; sda2 is a partition of sda)",
    },
    {
      name: "a loop device on a partition, and the disk's other partition",
      before: [[sda, sda2, sda4, loop(3, "/dev/sda2", 256 * MiB)], "/dev/loop3", "/dev/sda4"],
      after: "separate",
    },
    {
      name: "a loop device whose file was deleted, and a new file at that path",
      before: [[loop(3, "/IMG (deleted)", 64 * MiB)], "/dev/loop3", "/IMG"],
      after: "separate",
    },
  ];
  test.each(rows)("$name → $after", ({ before, after }) => {
    const dir = tempDir();
    writeFileSync(join(dir, "IMG"), "");
    writeFileSync(join(dir, "OTHER"), "");
    // The rows' paths are in the temp folder: /dev/sda is DIR/dev/sda (fakeSysfs's node), /IMG and /OTHER two image files.
    const [blocks, a, b] = before;
    const inDir = (p: string) => join(dir, p);
    const fake = fakeSysfs(dir, blocks.map((x) => (x.loop ? { ...x, loop: { ...x.loop, file: inDir(x.loop.file) } } : x)));
    expect(verdict({ ...fake, sys }, inDir(a), inDir(b)).replaceAll(dir, "")).toBe(after);
  });

  test("a partition whose start is not a number is an IO error, not a guess", () => {
    const dir = tempDir();
    const fake = fakeSysfs(dir, [sda, sda2]);
    writeFileSync(join(fake.sysfs, "devices/virtual/block/sda/sda2/start"), "garbage\n");
    expect(() => deviceExtent(fake.dev("sda2"), { ...fake, sys })).toThrow(/cannot read .*sda2\/start: "garbage" is not a number/);
  });
});

const fileNode = (dev: number, ino: number): DeviceStat => ({ dev, ino, rdev: 0, isBlockDevice: () => false });

describe("deviceIdentity before (two paths and their stat) / after (one device or two)", () => {
  const rows: { name: string; before: [string, DeviceStat | null, string, DeviceStat | null]; after: "same" | "different" }[] = [
    { name: "two nodes of one block device", before: ["/dev/dm-0", blockNode(11, 64768), "/dev/mapper/data", blockNode(12, 64768)], after: "same" },
    { name: "two block devices", before: ["/dev/mmcblk0p3", blockNode(11, 45827), "/dev/mmcblk0p4", blockNode(12, 45828)], after: "different" },
    { name: "two names of one image file (links)", before: ["p4.img", fileNode(2049, 77), "alias", fileNode(2049, 77)], after: "same" },
    { name: "one inode number on two file systems", before: ["/a/p4.img", fileNode(2049, 77), "/b/p4.img", fileNode(2050, 77)], after: "different" },
    { name: "a file and a block device whose numbers happen to match", before: ["p4.img", fileNode(0, 45828), "/dev/mmcblk0p4", { ...blockNode(45828, 45828), dev: 0 }], after: "different" },
    { name: "one missing path, spelled two ways", before: ["/dev/../dev/zb-none", null, "/dev/zb-none", null], after: "same" },
    { name: "two missing paths", before: ["/dev/zb-none-1", null, "/dev/zb-none-2", null], after: "different" },
  ];
  test.each(rows)("$name → $after", ({ before: [a, sa, b, sb], after }) => {
    expect(deviceIdentity(a, sa) === deviceIdentity(b, sb) ? "same" : "different").toBe(after);
  });
});

describe("devNumber before (st_rdev) / after (major:minor as sysfs spells it)", () => {
  test.each([
    { before: makedev(8, 2), after: "8:2" },
    { before: makedev(179, 4), after: "179:4" },
    { before: makedev(259, 70000), after: "259:70000" },
    { before: makedev(4100, 1), after: "4100:1" },
  ])("$before → $after", ({ before, after }) => {
    expect(devNumber(before)).toBe(after);
  });

  test("every block device of this host: the number of its /dev node is its sysfs dev attribute", () => {
    const seen = readdirSync("/sys/class/block").flatMap((name) => {
      try {
        const st = statSync(`/dev/${name}`);
        return st.isBlockDevice() ? [[devNumber(st.rdev), readFileSync(`/sys/class/block/${name}/dev`, "utf8").trim()]] : [];
      } catch {
        return []; // no /dev node for it in this container
      }
    });
    expect(seen.length).toBeGreaterThan(0);
    for (const [fromStat, fromSysfs] of seen) expect(fromStat).toBe(fromSysfs);
  });
});

describe("real loop devices (losetup on temp files)", () => {
  const loops: string[] = [];
  afterAll(() => loops.forEach((l) => Bun.spawnSync(["losetup", "-d", l])));
  const attach = (file: string, extra: string[] = []) => {
    const r = Bun.spawnSync(["losetup", "--find", "--show", ...extra, file], { stderr: "pipe" });
    const dev = r.stdout.toString().trim();
    if (r.exitCode !== 0 || !dev.startsWith("/dev/loop")) throw new Error(`losetup failed: ${r.stderr}`);
    loops.push(dev);
    return dev;
  };
  const host: DeviceLookup = { stat: (p) => statSync(p, { throwIfNoEntry: false }) ?? null, sys, sysfs: "/sys" };

  test("a loop device shares storage with its file and with a second loop on it, not with another file or a disjoint range", () => {
    const dir = tempDir();
    const [img, other] = [join(dir, "p4.img"), join(dir, "other.img")];
    for (const f of [img, other]) writeFileSync(f, new Uint8Array(8 << 20));
    const [a, b, c] = [attach(img), attach(img), attach(other)];
    const [lo, hi] = [attach(img, ["--offset", "0", "--sizelimit", String(4 << 20)]), attach(img, ["--offset", String(4 << 20)])];
    expect({
      loopAndFile: verdict(host, a, img) !== "separate",
      twoLoops: verdict(host, a, b) !== "separate",
      loopAndOtherFile: verdict(host, c, img) !== "separate",
      disjointRanges: verdict(host, lo, hi) !== "separate",
      rangeAndWhole: verdict(host, hi, a) !== "separate",
    }).toEqual({ loopAndFile: true, twoLoops: true, loopAndOtherFile: false, disjointRanges: false, rangeAndWhole: true });
  });
});
