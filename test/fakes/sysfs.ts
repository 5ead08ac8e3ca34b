/**
 * A fake sysfs for the block-device layers lib/luks/overlap.ts follows: the
 * device directories under devices/, partitions inside their disk's, the
 * dev/block/M:N links, and the attributes Linux puts there (dev, size, start,
 * partition, loop/backing_file, loop/offset, slaves/ links to the lower
 * devices' directories, dm/name, md/). A loop device may also answer a fake
 * LOOP_GET_STATUS64 (`loopStatus`, for /dev/NAME) naming the file the
 * kernel holds, which need not be the one backing_file names. Device nodes are not made: the
 * returned `stat` answers for `dev(NAME)` (DIR/dev/NAME, a path no host
 * device has, so code that missed the check formats nothing real) as stat(2)
 * would for a block device, and for any other path with the real stat (image
 * files in a temp folder).
 */
import { mkdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import type { DeviceStat } from "../../lib/luks/overlap.ts";
import type { LoopStatus } from "../../lib/sys/loopdev.ts";

export interface FakeBlock {
  name: string;
  major: number;
  minor: number;
  /** 512-byte sectors. */
  size: number;
  /** A partition of this disk, starting at `start` sectors. */
  partOf?: string;
  start?: number;
  /**
   * A loop device on this file (as backing_file prints it), from byte `offset`; `held`: the file the
   * kernel holds, reported by the fake LOOP_GET_STATUS64 (none: the device cannot be asked).
   */
  loop?: { file: string; offset?: number; held?: string };
  /** A stacked device on these devices (listed before or after it: a broken sysfs may loop). */
  slaves?: string[];
  /** dm/name of a device-mapper device; `md`: an md array. */
  dm?: string;
  md?: boolean;
}

/**
 * Lay the devices out under `dir`/sys.
 * @returns where sysfs is, the node path of a device, and stat(2) for those nodes (other paths: the real one, null when missing)
 */
export function fakeSysfs(
  dir: string,
  blocks: FakeBlock[],
): { sysfs: string; dev: (name: string) => string; stat: (path: string) => DeviceStat | null; loopStatus: (node: string) => LoopStatus | null } {
  const sysfs = join(dir, "sys");
  const dev = (name: string) => join(dir, "dev", name);
  const where = new Map<string, string>();
  const nodes = new Map<string, DeviceStat>();
  for (const b of blocks) {
    const parent = b.partOf === undefined ? join(sysfs, "devices/virtual/block") : where.get(b.partOf);
    if (parent === undefined) throw new Error(`fakeSysfs: ${b.name} is listed before its disk ${b.partOf}`);
    const d = join(parent, b.name);
    where.set(b.name, d);
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, "dev"), `${b.major}:${b.minor}\n`);
    writeFileSync(join(d, "size"), `${b.size}\n`);
    if (b.partOf !== undefined) {
      writeFileSync(join(d, "partition"), `${b.minor}\n`);
      writeFileSync(join(d, "start"), `${b.start ?? 0}\n`);
    }
    if (b.loop) {
      mkdirSync(join(d, "loop"));
      writeFileSync(join(d, "loop/backing_file"), `${b.loop.file}\n`);
      writeFileSync(join(d, "loop/offset"), `${b.loop.offset ?? 0}\n`);
    }
    mkdirSync(join(d, "slaves"));
    if (b.dm !== undefined) {
      mkdirSync(join(d, "dm"));
      writeFileSync(join(d, "dm/name"), `${b.dm}\n`);
    }
    if (b.md) mkdirSync(join(d, "md"));
    const link = join(sysfs, "dev/block", `${b.major}:${b.minor}`);
    mkdirSync(join(sysfs, "dev/block"), { recursive: true });
    symlinkSync(relative(join(sysfs, "dev/block"), d), link);
    nodes.set(dev(b.name), blockNode(1000 + nodes.size, makedev(b.major, b.minor)));
  }
  for (const b of blocks) {
    for (const s of b.slaves ?? []) {
      const below = where.get(s);
      if (below === undefined) throw new Error(`fakeSysfs: ${b.name}'s slave ${s} is not listed`);
      symlinkSync(relative(join(where.get(b.name)!, "slaves"), below), join(where.get(b.name)!, "slaves", s));
    }
  }
  const stat = (path: string): DeviceStat | null => {
    const node = nodes.get(path);
    if (node) return node;
    try {
      return statSync(path);
    } catch {
      return null;
    }
  };
  const loopStatus = (node: string): LoopStatus | null => {
    const b = blocks.find((x) => node === `/dev/${x.name}` && x.loop?.held !== undefined);
    const st = b ? stat(b.loop!.held!) : null;
    if (!b || !st) return null;
    return { self: makedev(b.major, b.minor), device: st.dev, inode: st.ino, rdevice: st.isBlockDevice() ? st.rdev : 0, offset: b.loop!.offset ?? 0 };
  };
  return { sysfs, dev, stat, loopStatus };
}

/** stat(2) of a block device node: inode `ino` on devtmpfs (dev 5), device number `rdev`. */
export function blockNode(ino: number, rdev: number): DeviceStat {
  return { dev: 5, ino, rdev, isBlockDevice: () => true };
}

/** st_rdev as Linux encodes it (glibc gnu_dev_makedev). */
export function makedev(major: number, minor: number): number {
  const [ma, mi] = [BigInt(major), BigInt(minor)];
  return Number((mi & 0xffn) | ((ma & 0xfffn) << 8n) | ((mi & ~0xffn) << 12n) | ((ma & ~0xfffn) << 32n));
}
