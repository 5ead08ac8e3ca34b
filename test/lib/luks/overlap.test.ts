/**
 * deviceExtents / sharedExtents: two paths share storage when they are one
 * device, a disk and one of its partitions, a loop device and its backing
 * file (or two loop devices on the same bytes of it), or a stacked device
 * (device-mapper, md) and any device under it. Rows run on a fake sysfs in a
 * temp folder; the last tests use the host's sysfs and real loop devices
 * (losetup on temp files, detached afterwards).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { linkSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ZbError } from "../../../lib/errors.ts";
import { deviceExtents, deviceIdentity, sharedExtents, type DeviceLookup, type DeviceStat } from "../../../lib/luks/overlap.ts";
import { devNumber } from "../../../lib/sys/devsize.ts";
import { loopStatus } from "../../../lib/sys/loopdev.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { blockNode, fakeSysfs, makedev, type FakeBlock } from "../../fakes/sysfs.ts";
import { tempDirs } from "../../tempdirs.ts";

const tempDir = tempDirs("zb-overlap-");
const sys = new HostSys();

/** "shared (why; why)" or "separate", as the check sees two paths (each reason once, as enroll.ts says them). */
function verdict(look: DeviceLookup, a: string, b: string): string {
  const shared = sharedExtents(deviceExtents(a, look), deviceExtents(b, look));
  return shared ? `shared (${[...new Set([...shared[0].via, ...shared[1].via])].join("; ")})` : "separate";
}

const MiB = 2048; // sectors
const sda: FakeBlock = { name: "sda", major: 8, minor: 0, size: 1024 * MiB };
const sda2: FakeBlock = { name: "sda2", major: 8, minor: 2, size: 256 * MiB, partOf: "sda", start: 1 * MiB };
const sda4: FakeBlock = { name: "sda4", major: 8, minor: 4, size: 512 * MiB, partOf: "sda", start: 257 * MiB };
const sdb: FakeBlock = { name: "sdb", major: 8, minor: 16, size: 1024 * MiB };
const sdb1: FakeBlock = { name: "sdb1", major: 8, minor: 17, size: 256 * MiB, partOf: "sdb", start: 1 * MiB };
const sdb2: FakeBlock = { name: "sdb2", major: 8, minor: 18, size: 256 * MiB, partOf: "sdb", start: 257 * MiB };
const sdc: FakeBlock = { name: "sdc", major: 8, minor: 32, size: 1024 * MiB };
const sdc1: FakeBlock = { name: "sdc1", major: 8, minor: 33, size: 256 * MiB, partOf: "sdc", start: 1 * MiB };
const loop = (n: number, file: string, size: number, offset = 0, held?: string): FakeBlock => ({ name: `loop${n}`, major: 7, minor: n, size, loop: { file, offset, ...(held ? { held } : {}) } });
const dm = (n: number, name: string, slaves: string[], size = 64 * MiB): FakeBlock => ({ name: `dm-${n}`, major: 253, minor: n, size, dm: name, slaves });
const md = (n: number, slaves: string[]): FakeBlock => ({ name: `md${n}`, major: 9, minor: n, size: 256 * MiB, md: true, slaves });

describe("deviceExtents on a fake sysfs: before (devices, two paths) / after (shared and why, or separate)", () => {
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
    {
      name: "two loop devices on one deleted file (no status: the same name might be the same file)",
      before: [[loop(3, "/IMG (deleted)", 64 * MiB), loop(5, "/IMG (deleted)", 64 * MiB)], "/dev/loop3", "/dev/loop5"],
      after: "shared (loop3 is a loop device on /IMG (deleted); loop5 is a loop device on /IMG (deleted))",
    },
    {
      name: "a loop device on \"/OTHER (deleted)\", and a live file of that very name",
      before: [[loop(3, "/OTHER (deleted)", 64 * MiB)], "/dev/loop3", "/OTHER (deleted)"],
      after: "shared (loop3 is a loop device on /OTHER (deleted))",
    },
    // LOOP_GET_STATUS64 names the file the kernel holds; backing_file's path may name another one now.
    {
      name: "backing_file names /IMG, the kernel holds /OTHER: the loop and /IMG",
      before: [[loop(3, "/IMG", 64 * MiB, 0, "/OTHER")], "/dev/loop3", "/IMG"],
      after: "separate",
    },
    {
      name: "backing_file names /IMG, the kernel holds /OTHER: the loop and /OTHER",
      before: [[loop(3, "/IMG", 64 * MiB, 0, "/OTHER")], "/dev/loop3", "/OTHER"],
      after: "shared (loop3 is a loop device on the file once at /IMG)",
    },
    {
      name: "backing_file says deleted, the kernel holds /OTHER (a hard link lives on)",
      before: [[loop(3, "/IMG (deleted)", 64 * MiB, 0, "/OTHER")], "/dev/loop3", "/OTHER"],
      after: "shared (loop3 is a loop device on /IMG (deleted))",
    },
    {
      name: "the kernel holds the partition sda2 (a block device): the loop and the whole disk",
      before: [[sda, sda2, loop(3, "/IMG", 256 * MiB, 0, "/dev/sda2")], "/dev/loop3", "/dev/sda"],
      after: "shared (loop3 is a loop device on /IMG; sda2 is a partition of sda)",
    },
    // Stacked devices: the whole of each device under them, followed down.
    { name: "dm on a partition, and that partition", before: [[sdb, sdb2, dm(0, "zb-data", ["sdb2"])], "/dev/dm-0", "/dev/sdb2"], after: "shared (zb-data is a device-mapper device on sdb2; sdb2 is a partition of sdb)" },
    { name: "dm on a partition, and the whole disk", before: [[sdb, sdb2, dm(0, "zb-data", ["sdb2"])], "/dev/sdb", "/dev/dm-0"], after: "shared (zb-data is a device-mapper device on sdb2; sdb2 is a partition of sdb)" },
    { name: "dm on sdb2, and sdb1", before: [[sdb, sdb1, sdb2, dm(0, "zb-data", ["sdb2"])], "/dev/dm-0", "/dev/sdb1"], after: "separate" },
    {
      name: "dm over two partitions of two disks (an LV on two PVs), and the second",
      before: [[sdb, sdb1, sdc, sdc1, dm(0, "vg-lv", ["sdb1", "sdc1"])], "/dev/dm-0", "/dev/sdc1"],
      after: "shared (vg-lv is a device-mapper device on sdc1; sdc1 is a partition of sdc)",
    },
    {
      name: "md over two partitions, and the whole disk of one",
      before: [[sdb, sdb1, sdc, sdc1, md(0, ["sdb1", "sdc1"])], "/dev/md0", "/dev/sdc"],
      after: "shared (md0 is an md array on sdc1; sdc1 is a partition of sdc)",
    },
    { name: "md over partitions of sdb and sdc, and sda", before: [[sda, sdb, sdb1, sdc, sdc1, md(0, ["sdb1", "sdc1"])], "/dev/md0", "/dev/sda"], after: "separate" },
    {
      name: "dm (LUKS) on dm (LV) on a loop device on a file, and that file",
      before: [[loop(3, "/IMG", 64 * MiB), dm(0, "vg-lv", ["loop3"]), dm(1, "zb-root", ["dm-0"])], "/dev/dm-1", "/IMG"],
      after: "shared (zb-root is a device-mapper device on dm-0; vg-lv is a device-mapper device on loop3; loop3 is a loop device on /IMG)",
    },
    { name: "two dm devices on two partitions of one disk", before: [[sdb, sdb1, sdb2, dm(0, "a", ["sdb1"]), dm(1, "b", ["sdb2"])], "/dev/dm-0", "/dev/dm-1"], after: "separate" },
    {
      name: "two dm devices on one partition (where each maps to is not in sysfs: shared)",
      before: [[sdb, sdb2, dm(0, "a", ["sdb2"]), dm(1, "b", ["sdb2"])], "/dev/dm-0", "/dev/dm-1"],
      after: "shared (a is a device-mapper device on sdb2; sdb2 is a partition of sdb; b is a device-mapper device on sdb2)",
    },
    {
      name: "loops on disjoint ranges of a dm device (ranges inside it cannot be placed: shared)",
      before: [[sdb, sdb2, dm(0, "a", ["sdb2"]), loop(3, "/dev/dm-0", 16 * MiB, 0), loop(5, "/dev/dm-0", 16 * MiB, 16 << 20)], "/dev/loop3", "/dev/loop5"],
      after: "shared (loop3 is a loop device on /dev/dm-0; a is a device-mapper device on sdb2; sdb2 is a partition of sdb; loop5 is a loop device on /dev/dm-0)",
    },
    { name: "a dm device with no device under it (the zero target), and a disk", before: [[sdb, dm(0, "zeros", [])], "/dev/dm-0", "/dev/sdb"], after: "separate" },
    {
      name: "one md member reached two ways (a diamond), and the disk",
      before: [[sdb, sdb1, dm(0, "a", ["sdb1"]), dm(1, "b", ["sdb1"]), md(0, ["dm-0", "dm-1"])], "/dev/md0", "/dev/sdb"],
      after: "shared (md0 is an md array on dm-0; a is a device-mapper device on sdb1; sdb1 is a partition of sdb)",
    },
  ];
  test.each(rows)("$name → $after", ({ before, after }) => {
    const dir = tempDir();
    writeFileSync(join(dir, "IMG"), "");
    writeFileSync(join(dir, "OTHER"), "");
    writeFileSync(join(dir, "OTHER (deleted)"), "");
    // The rows' paths are in the temp folder: /dev/sda is DIR/dev/sda (fakeSysfs's node), /IMG and /OTHER two image files.
    const [blocks, a, b] = before;
    const inDir = (p: string) => join(dir, p);
    const fake = fakeSysfs(dir, blocks.map((x) => (x.loop ? { ...x, loop: { ...x.loop, file: inDir(x.loop.file), ...(x.loop.held ? { held: inDir(x.loop.held) } : {}) } } : x)));
    expect(verdict({ ...fake, sys }, inDir(a), inDir(b)).replaceAll(dir, "")).toBe(after);
  });

  test("a status from a node that is another device is not used (a /dev that is not this sysfs's)", () => {
    const dir = tempDir();
    for (const f of ["IMG", "OTHER"]) writeFileSync(join(dir, f), "");
    const fake = fakeSysfs(dir, [loop(3, join(dir, "IMG"), 64 * MiB, 0, join(dir, "OTHER"))]);
    const elsewhere = (node: string) => ({ ...fake.loopStatus(node)!, self: makedev(7, 4) });
    expect(verdict({ ...fake, sys, loopStatus: elsewhere }, fake.dev("loop3"), join(dir, "IMG"))).not.toBe("separate");
    expect(verdict({ ...fake, sys, loopStatus: elsewhere }, fake.dev("loop3"), join(dir, "OTHER"))).toBe("separate");
  });

  const broken: { name: string; before: FakeBlock[]; after: RegExp }[] = [
    { name: "two dm devices, each under the other", before: [dm(0, "a", ["dm-1"]), dm(1, "b", ["dm-0"])], after: /they form a cycle \(dm-0 → dm-1 → dm-0\)/ },
    { name: "a dm device under itself", before: [dm(0, "a", ["dm-0"])], after: /they form a cycle \(dm-0 → dm-0\)/ },
    { name: "two loop devices, each on the other", before: [loop(3, "/dev/loop5", 64 * MiB), loop(5, "/dev/loop3", 64 * MiB)], after: /they form a cycle \(loop3 → loop5 → loop3\)/ },
    {
      name: "nine dm devices, each on the next",
      before: Array.from({ length: 9 }, (_, n) => dm(n, `l${n}`, n < 8 ? [`dm-${n + 1}`] : [])),
      after: /cannot follow the block device layers in .*: more than 8 under dm-0/,
    },
  ];
  test.each(broken)("a broken sysfs: $name → IO error, not a hang or a pass", ({ before, after }) => {
    const dir = tempDir();
    const fake = fakeSysfs(dir, before.map((x) => (x.loop ? { ...x, loop: { ...x.loop, file: join(dir, x.loop.file) } } : x)));
    let err: unknown;
    try {
      deviceExtents(fake.dev(before[0]!.name), { ...fake, sys });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ZbError);
    expect([(err as ZbError).code, (err as ZbError).message]).toEqual(["IO", expect.stringMatching(after)]);
  });

  test("a partition whose start is not a number is an IO error, not a guess", () => {
    const dir = tempDir();
    const fake = fakeSysfs(dir, [sda, sda2]);
    writeFileSync(join(fake.sysfs, "devices/virtual/block/sda/sda2/start"), "garbage\n");
    expect(() => deviceExtents(fake.dev("sda2"), { ...fake, sys })).toThrow(/cannot read .*sda2\/start: "garbage" is not a number/);
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
  const host: DeviceLookup = { stat: (p) => statSync(p, { throwIfNoEntry: false }) ?? null, sys, sysfs: "/sys", loopStatus };
  /** The same host with no LOOP_GET_STATUS64: backing_file's path only, as before the status was asked. */
  const pathOnly: DeviceLookup = { ...host, loopStatus: undefined };

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

  test("a folder mounted over after losetup: backing_file names the file now at that path, the kernel holds the hidden one", () => {
    const dir = tempDir();
    const mnt = join(dir, "mnt");
    mkdirSync(mnt);
    const [img, kept] = [join(mnt, "p4.img"), join(dir, "kept.img")];
    writeFileSync(img, new Uint8Array(1 << 20));
    linkSync(img, kept); // the loop's file, still reachable by this name once its folder is hidden
    const dev = attach(img);
    const mount = Bun.spawnSync(["mount", "-t", "tmpfs", "zb-overlap-test", mnt], { stderr: "pipe" });
    if (mount.exitCode !== 0) throw new Error(`mount failed: ${mount.stderr}`);
    try {
      writeFileSync(img, "another file at the loop's path");
      expect(readFileSync(`/sys/block/${dev.slice("/dev/".length)}/loop/backing_file`, "utf8").trim()).toBe(img);
      expect({
        withStatus: { pathNow: verdict(host, dev, img) !== "separate", heldFile: verdict(host, dev, kept) !== "separate" },
        pathOnly: { pathNow: verdict(pathOnly, dev, img) !== "separate", heldFile: verdict(pathOnly, dev, kept) !== "separate" },
      }).toEqual({ withStatus: { pathNow: false, heldFile: true }, pathOnly: { pathNow: true, heldFile: false } });
    } finally {
      Bun.spawnSync(["umount", mnt]);
    }
  });

  test("the loop's file unlinked (a hard link lives on) and another put at its path: the link shares, the new file does not", () => {
    const dir = tempDir();
    const [img, kept] = [join(dir, "p4.img"), join(dir, "kept.img")];
    writeFileSync(img, new Uint8Array(1 << 20));
    linkSync(img, kept);
    const dev = attach(img);
    rmSync(img);
    writeFileSync(img, "another file at the loop's path");
    expect(readFileSync(`/sys/block/${dev.slice("/dev/".length)}/loop/backing_file`, "utf8").trim()).toBe(`${img} (deleted)`);
    expect({
      withStatus: { pathNow: verdict(host, dev, img) !== "separate", heldFile: verdict(host, dev, kept) !== "separate" },
      pathOnly: { pathNow: verdict(pathOnly, dev, img) !== "separate", heldFile: verdict(pathOnly, dev, kept) !== "separate" },
    }).toEqual({ withStatus: { pathNow: false, heldFile: true }, pathOnly: { pathNow: false, heldFile: false } });
  });

  test("the loop's file renamed and another put at its old path: backing_file follows the rename, both ways agree", () => {
    const dir = tempDir();
    const [img, moved] = [join(dir, "p4.img"), join(dir, "moved.img")];
    writeFileSync(img, new Uint8Array(1 << 20));
    const dev = attach(img);
    renameSync(img, moved);
    writeFileSync(img, "another file at the loop's old path");
    expect({
      withStatus: { oldPath: verdict(host, dev, img) !== "separate", moved: verdict(host, dev, moved) !== "separate" },
      pathOnly: { oldPath: verdict(pathOnly, dev, img) !== "separate", moved: verdict(pathOnly, dev, moved) !== "separate" },
    }).toEqual({ withStatus: { oldPath: false, moved: true }, pathOnly: { oldPath: false, moved: true } });
  });
});
