/**
 * blockDeviceSize (lib/sys/devsize.ts) against a fake sysfs in a temp folder
 * (test/fakes/sysfs.ts): a device is found by its number (st_rdev →
 * /sys/dev/block/M:N), whatever its node is called; a number sysfs does not
 * know, or a size that is not a number, is IO naming the path and the
 * number, never a runtime error.
 */
import { describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { blockDeviceSize, devNumber } from "../../../lib/sys/devsize.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { fakeSysfs, makedev } from "../../fakes/sysfs.ts";
import { tempDirs } from "../../tempdirs.ts";

const tempDir = tempDirs("zb-devsize-");
const sys = new HostSys();

describe("blockDeviceSize: by device number, not by node name", () => {
  const dir = tempDir();
  const { sysfs } = fakeSysfs(dir, [
    { name: "sda", major: 8, minor: 0, size: 1 << 21 },
    { name: "sda3", major: 8, minor: 3, size: 409600, partOf: "sda", start: 2048 },
    // Minor numbers past 255 and majors past 4095 take the high bits of st_rdev (NVMe partitions, dynamic majors).
    { name: "nvme0n1p300", major: 259, minor: 70000, size: 8 },
    { name: "big", major: 5000, minor: 1, size: 2 ** 40 },
  ]);
  // A size that is not a number (a broken sysfs): its own device number.
  mkdirSync(join(sysfs, "devices/virtual/block/odd"), { recursive: true });
  writeFileSync(join(sysfs, "devices/virtual/block/odd/size"), "lots\n");
  Bun.spawnSync(["ln", "-s", "../../devices/virtual/block/odd", join(sysfs, "dev/block/7:9")]);

  test.each([
    { name: "a partition whose node is called slot-b (mknod, a container's --device=/dev/sda3:/dev/slot-b)", node: "/dev/slot-b", major: 8, minor: 3, want: 409600 * 512 },
    { name: "its disk", node: "/dev/whole", major: 8, minor: 0, want: (1 << 21) * 512 },
    { name: "a minor past 255", node: "/dev/disk/by-partlabel/b", major: 259, minor: 70000, want: 8 * 512 },
    { name: "a major past 4095, 512 TiB", node: "/dev/x", major: 5000, minor: 1, want: 2 ** 49 },
    { name: "a number sysfs does not know", node: "/dev/gone", major: 8, minor: 7, want: "IO: cannot find the size of block device /dev/gone: sysfs gives no size for device 8:7 (SYSFS/dev/block/8:7/size: no such file or directory)" },
    { name: "a size that is not a number", node: "/dev/odd", major: 7, minor: 9, want: `IO: cannot find the size of block device /dev/odd: SYSFS/dev/block/7:9/size says "lots", not a number` },
  ])("$name → $want", ({ node, major, minor, want }) => {
    let got: number | string;
    try {
      got = blockDeviceSize(node, makedev(major, minor), { sys, sysfs });
    } catch (e) {
      const z = e as { code?: string; message?: string };
      got = `${z.code}: ${z.message?.replaceAll(sysfs, "SYSFS")}`;
    }
    expect(got).toBe(want);
  });

  test("the hint says where zb looked", () => {
    const e = (() => {
      try {
        blockDeviceSize("/dev/gone", makedev(8, 7), { sys, sysfs: "/nowhere" });
      } catch (x) {
        return x as { hint?: string };
      }
    })();
    expect(e?.hint).toBe("zb reads a device's size from sysfs by its number: is sysfs mounted at /nowhere, and is /dev/gone a device of this kernel?");
  });
});

describe("devNumber before (st_rdev) / after (major:minor as sysfs spells it)", () => {
  test.each([
    [makedev(8, 2), "8:2"],
    [makedev(259, 70000), "259:70000"],
    [makedev(5000, 1), "5000:1"],
    [0, "0:0"],
  ])("%d → %s", (rdev, want) => expect(devNumber(rdev)).toBe(want));
});
