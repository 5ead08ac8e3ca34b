/**
 * Do two device paths share storage? Enrolment formats the root, so a root
 * that shares bytes with the data volume destroys the data (lib/luks/enroll.ts).
 * Comparing device numbers catches two names of one device; this module also
 * follows the layers Linux stacks devices in, through sysfs:
 *
 * - a partition (`/sys/dev/block/M:N/partition` exists) is a byte range of
 *   the disk whose sysfs directory holds its own (`start` and `size`, in
 *   512-byte sectors, sysfs-rules.rst / Documentation/ABI/testing/sysfs-block);
 *   a whole disk therefore overlaps each of its partitions, two partitions of
 *   one disk do not;
 * - a loop device (`loop/backing_file`) is a byte range of its backing file
 *   (`loop/offset`, and its own `size`), so it overlaps that file and any
 *   other loop device on the same bytes. The file is the one the kernel holds,
 *   by device and inode (LOOP_GET_STATUS64, lib/sys/loopdev.ts), not the one
 *   backing_file's path names now: a mount over its folder, another mount
 *   namespace or an unlink makes the two differ. Only when the loop device
 *   cannot be asked (no node, no permission) is the path used; a path ending
 *   in " (deleted)" then names no file any argument can reach, and is its own
 *   base, shared only with loop devices on a deleted file of that name;
 * - a stacked device (device-mapper: dm-crypt, LVM, dm-linear; md RAID; any
 *   device with entries in `slaves/`) maps its bytes onto its lower devices
 *   by tables sysfs does not show, so it counts as occupying the whole of
 *   EACH lower device, followed down in turn. A byte range inside it (a loop
 *   device at an offset of it) cannot be placed either, and is widened to
 *   the same whole lower devices.
 *
 * Each path is reduced to {@link Extent}s: a base (a whole disk, a file, or
 * a path that does not exist) and a byte range on it, one per lower device a
 * stack reaches. Two paths share storage when an extent of one and an extent
 * of the other have equal bases and overlapping ranges.
 *
 * A broken sysfs must not hang the check or let it pass: a device found again
 * below itself (a cycle in `slaves/` or loop backing devices) or a stack more
 * than MAX_DEPTH layers deep is an IO error, as a malformed attribute already
 * is: the check cannot say the two paths are apart, and "they overlap" would
 * misname the problem.
 *
 * Still out of sight: where a stacked device maps its bytes (so two
 * device-mapper devices on disjoint parts of one partition count as sharing
 * it, the safe mistake), storage behind a block device that has no lower
 * devices in sysfs (nbd, iSCSI: another machine's disk), and, when a loop
 * device cannot be asked, the file its backing_file path no longer names.
 *
 * Host access: stat(2) through the caller's function (it needs st_rdev, which
 * Sys.stat does not report), sysfs through the injected Sys under `sysfs`, a
 * loop device's status through the caller's function, so tests give a fake
 * sysfs in a temp folder and fake statuses.
 */
import { basename, dirname, join, resolve } from "node:path";
import { ZbError } from "../errors.ts";
import { devNumber } from "../sys/devsize.ts";
import type { LoopStatus } from "../sys/loopdev.ts";
import type { Sys } from "../sys/sys.ts";

/** What the same-device check needs from stat(2) (node:fs Stats has it). */
export interface DeviceStat {
  dev: number;
  ino: number;
  rdev: number;
  isBlockDevice(): boolean;
}

/** Where some of a path's bytes lie. */
export interface Extent {
  /** A whole disk (`block:M:N`), a file (`inode:M:N:ino`), a deleted loop file (`deleted:/abs`) or a missing path (`path:/abs`). */
  base: string;
  /** Byte range on the base, end exclusive; Infinity: to the end of the base. */
  start: number;
  end: number;
  /** True: byte i of the path is byte start+i of the base. False: the path's bytes lie somewhere in the range (a stacked device). */
  exact: boolean;
  /** How the path was followed down to its base, outermost first, for messages: "sda2 is a partition of sda". */
  via: string[];
}

/** Host access for {@link deviceExtents}. */
export interface DeviceLookup {
  /** stat(2) following symbolic links; null when the path does not exist. */
  stat(path: string): DeviceStat | null;
  sys: Sys;
  /** Where sysfs is mounted: "/sys" on a host. */
  sysfs: string;
  /**
   * LOOP_GET_STATUS64 of the loop device node /dev/NAME (lib/sys/loopdev.ts); null when it cannot be
   * asked. Absent: backing_file's path is used, as for a sysfs that is not the host's.
   */
  loopStatus?: ((node: string) => LoopStatus | null) | undefined;
}

/** Stacks nest (LUKS on LVM on md on partitions, loops of loops), but not without end. */
const MAX_DEPTH = 8;
const SECTOR = 512;

/** One reduction of one path: sysfs folders done (a diamond is walked once) and those being walked (a cycle). */
interface Walk {
  look: DeviceLookup;
  done: Map<string, Extent[]>;
  open: string[];
}

/**
 * Which device or file a path names, equal for every spelling of it: a block
 * device is its device number (st_rdev: /dev/dm-0 and a /dev/mapper node made
 * without udev are one device), anything else its inode (dev:ino: symbolic and
 * hard links), a missing path its absolute spelling.
 * @param st stat(2) of `path` following symbolic links, or null when it does not exist
 * @returns a string to compare with ===
 * @example deviceIdentity("/dev/mmcblk0p4", statSync("/dev/mmcblk0p4")) // "block:179:4"
 */
export function deviceIdentity(path: string, st: DeviceStat | null): string {
  if (st === null) return `path:${resolve(path)}`;
  return st.isBlockDevice() ? `block:${devNumber(st.rdev)}` : fileBase(st.dev, st.ino);
}

/** A file by its file system's device number, spelled as sysfs does so stat(2) and LOOP_GET_STATUS64 agree, and inode. */
function fileBase(dev: number, ino: number): string {
  return `inode:${devNumber(dev)}:${ino}`;
}

/**
 * The bases and byte ranges a path's bytes lie on, following partitions to
 * their disk, loop devices to their backing file and stacked devices to each
 * of their lower devices (module comment).
 * @returns one extent per base reached, never empty
 * @throws {ZbError} IO when sysfs says a device is a partition, loop or stacked device but its attributes cannot be
 *   read, when it shows a cycle or more than 8 layers (or stat fails, from `look.stat`)
 * @example deviceExtents("/dev/sda2", { stat: statSync, sys: new HostSys(), sysfs: "/sys" }) // [{ base: "block:8:0", start: 1048576, … }]
 */
export function deviceExtents(path: string, look: DeviceLookup): Extent[] {
  return pathExtents(path, { look, done: new Map(), open: [] });
}

/**
 * Do two extents share a byte?
 * @example sharesStorage(deviceExtents("/dev/sda", look)[0], deviceExtents("/dev/sda2", look)[0]) // true
 */
function sharesStorage(a: Extent, b: Extent): boolean {
  return a.base === b.base && a.start < b.end && b.start < a.end;
}

/**
 * The first extent of `a` and the first of `b` that share a byte: the reason two paths share storage.
 * @returns null when no extent of one overlaps an extent of the other
 * @example sharedExtents(deviceExtents("/dev/mapper/data", look), deviceExtents("/dev/sdb2", look)) // [{ via: ["data is a device-mapper device on sdb2"], … }, { via: [], … }]
 */
export function sharedExtents(a: Extent[], b: Extent[]): [Extent, Extent] | null {
  for (const x of a) for (const y of b) if (sharesStorage(x, y)) return [x, y];
  return null;
}

function pathExtents(path: string, walk: Walk): Extent[] {
  const st = walk.look.stat(path);
  if (st === null || !st.isBlockDevice()) return [whole(deviceIdentity(path, st))];
  return numberExtents(devNumber(st.rdev), walk);
}

/** The extents of the block device numbered `devNo` ("M:N"). */
function numberExtents(devNo: string, walk: Walk): Extent[] {
  // /sys/dev/block/M:N links to the device's directory, whatever its /dev node is called.
  const dir = walk.look.sys.realpath(join(walk.look.sysfs, "dev/block", devNo));
  return dir === null ? [whole(`block:${devNo}`)] : sysfsExtents(dir, walk);
}

/** The extents of the block device whose sysfs directory is `dir`, each device walked once per path. */
function sysfsExtents(dir: string, walk: Walk): Extent[] {
  const known = walk.done.get(dir);
  if (known) return known;
  if (walk.open.includes(dir)) {
    const loop = [...walk.open.slice(walk.open.indexOf(dir)), dir].map((d) => basename(d)).join(" → ");
    throw new ZbError("IO", `cannot follow the block device layers in ${walk.look.sysfs}: they form a cycle (${loop})`);
  }
  if (walk.open.length >= MAX_DEPTH) {
    throw new ZbError("IO", `cannot follow the block device layers in ${walk.look.sysfs}: more than ${MAX_DEPTH} under ${basename(walk.open[0]!)}`);
  }
  walk.open.push(dir);
  try {
    const found = layerExtents(dir, walk);
    walk.done.set(dir, found);
    return found;
  } finally {
    walk.open.pop();
  }
}

function layerExtents(dir: string, walk: Walk): Extent[] {
  const { sys } = walk.look;
  const name = basename(dir);
  if (sys.stat(join(dir, "partition"))) {
    // A partition's directory sits inside its disk's (…/block/sda/sda2); the disk may be a loop device.
    const disk = dirname(dir);
    const [start, size] = [sectors(sys, join(dir, "start")), sectors(sys, join(dir, "size"))];
    return sysfsExtents(disk, walk).map((o) => within(o, start, size, `${name} is a partition of ${basename(disk)}`));
  }
  if (sys.stat(join(dir, "loop/backing_file"))) return loopExtents(dir, walk);
  const lower = sys.stat(join(dir, "slaves")) ? sys.listDir(join(dir, "slaves")).sort() : [];
  if (lower.length > 0) return stackExtents(dir, lower, walk);
  return [whole(`block:${deviceNumber(sys, dir)}`)];
}

/** A loop device: its byte range of the file the kernel holds (module comment). */
function loopExtents(dir: string, walk: Walk): Extent[] {
  const { sys } = walk.look;
  const name = basename(dir);
  // The kernel prints the path it opened (d_path) and a newline, used for the message in any case.
  const file = sys.readText(join(dir, "loop/backing_file")).replace(/\n$/, "");
  const size = sectors(sys, join(dir, "size"));
  const why = `${name} is a loop device on ${file}`;
  const status = walk.look.loopStatus?.(join("/dev", name)) ?? null;
  // devtmpfs names the node after the device, but a /dev that is not (a container's) may hold another device there.
  if (status !== null && devNumber(status.self) === deviceNumber(sys, dir)) {
    if (status.rdevice !== 0) return numberExtents(devNumber(status.rdevice), walk).map((o) => within(o, status.offset, size, why));
    const held = fileBase(status.device, status.inode);
    // The message names the path the user knows, and says when it leads elsewhere now.
    const moved = !file.endsWith(" (deleted)") && deviceIdentity(file, walk.look.stat(file)) !== held;
    return [within(whole(held), status.offset, size, moved ? `${name} is a loop device on the file once at ${file}` : why)];
  }
  const offset = number(sys, join(dir, "loop/offset"));
  if (!file.endsWith(" (deleted)")) return pathExtents(file, walk).map((o) => within(o, offset, size, why));
  // Unlinked: no path reaches the file any more. A file really named "… (deleted)" may also be it.
  const named = walk.look.stat(file) === null ? [] : pathExtents(file, walk);
  return [whole(`deleted:${resolve(file.slice(0, -" (deleted)".length))}`), ...named].map((o) => within(o, offset, size, why));
}

/** A stacked device: the whole of each lower device, wherever in them its bytes are mapped. */
function stackExtents(dir: string, lower: string[], walk: Walk): Extent[] {
  const { sys } = walk.look;
  const name = basename(dir);
  const dmName = sys.stat(join(dir, "dm/name")) ? sys.readText(join(dir, "dm/name")).trim() : "";
  const what =
    dmName !== "" ? `${dmName} is a device-mapper device`
    : sys.stat(join(dir, "dm")) ? `${name} is a device-mapper device`
    : sys.stat(join(dir, "md")) ? `${name} is an md array`
    : `${name} is stacked`;
  const seen = new Map<string, Extent>();
  for (const s of lower) {
    // Each entry links to the lower device's own sysfs directory (a partition's sits inside its disk's).
    const below = sys.realpath(join(dir, "slaves", s));
    if (below === null) continue; // removed since the listing: it holds none of this device's bytes any more
    for (const o of sysfsExtents(below, walk)) {
      const e: Extent = { base: o.base, start: o.start, end: o.end, exact: false, via: [`${what} on ${s}`, ...o.via] };
      const key = `${e.base} ${e.start} ${e.end}`;
      if (!seen.has(key)) seen.set(key, e);
    }
  }
  return seen.size > 0 ? [...seen.values()] : [whole(`block:${deviceNumber(sys, dir)}`)];
}

function whole(base: string): Extent {
  return { base, start: 0, end: Infinity, exact: true, via: [] };
}

/** `size` bytes at `start` of `outer`, no further than outer's end; all of it when outer's bytes are not in order. */
function within(outer: Extent, start: number, size: number, why: string): Extent {
  const via = [why, ...outer.via];
  if (!outer.exact) return { ...outer, via };
  const from = outer.start + start;
  return { base: outer.base, start: from, end: Math.min(from + size, outer.end), exact: true, via };
}

/** The `dev` attribute of a sysfs block device directory: "M:N". */
function deviceNumber(sys: Sys, dir: string): string {
  return sys.readText(join(dir, "dev")).trim();
}

function sectors(sys: Sys, path: string): number {
  return number(sys, path) * SECTOR;
}

/** A decimal sysfs attribute. @throws {ZbError} IO when it is not one: guessing could miss an overlap */
function number(sys: Sys, path: string): number {
  const text = sys.readText(path).trim();
  if (!/^\d+$/.test(text)) throw new ZbError("IO", `cannot read ${path}: ${JSON.stringify(text.slice(0, 40))} is not a number`);
  return Number(text);
}
