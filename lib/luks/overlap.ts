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
 *   other loop device on the same bytes.
 *
 * Each path is reduced to an {@link Extent}: a base (a whole disk, a file, or
 * a path that does not exist) and the byte range on it. Two paths share
 * storage when their bases are equal and their ranges overlap. Other stacks
 * (device-mapper, md) are not looked through: their mapping is in tables sysfs
 * does not show, and such a device keeps its own number as its base.
 *
 * Host access: stat(2) through the caller's function (it needs st_rdev, which
 * Sys.stat does not report), sysfs through the injected Sys under `sysfs`, so
 * tests give a fake sysfs in a temp folder.
 */
import { basename, dirname, join, resolve } from "node:path";
import { ZbError } from "../errors.ts";
import type { Sys } from "../sys/sys.ts";

/** What the same-device check needs from stat(2) (node:fs Stats has it). */
export interface DeviceStat {
  dev: number;
  ino: number;
  rdev: number;
  isBlockDevice(): boolean;
}

/** Where a path's bytes lie. */
export interface Extent {
  /** A whole disk (`block:M:N`), a file (`inode:dev:ino`) or a missing path (`path:/abs`). */
  base: string;
  /** Byte range on the base, end exclusive; Infinity: to the end of the base. */
  start: number;
  end: number;
  /** How the path was followed down to its base, outermost first, for messages: "sda2 is a partition of sda". */
  via: string[];
}

/** Host access for {@link deviceExtent}. */
export interface DeviceLookup {
  /** stat(2) following symbolic links; null when the path does not exist. */
  stat(path: string): DeviceStat | null;
  sys: Sys;
  /** Where sysfs is mounted: "/sys" on a host. */
  sysfs: string;
}

/** Loops of loops nest, but not without end; a cycle would mean a broken sysfs. */
const MAX_DEPTH = 8;
const SECTOR = 512;

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
  return st.isBlockDevice() ? `block:${devNumber(st.rdev)}` : `inode:${st.dev}:${st.ino}`;
}

/**
 * The base and byte range a path's bytes lie on, following partitions to
 * their disk and loop devices to their backing file (module comment).
 * @throws {ZbError} IO when sysfs says a device is a partition or loop device but its attributes cannot be read (or stat fails, from `look.stat`)
 * @example deviceExtent("/dev/sda2", { stat: statSync, sys: new HostSys(), sysfs: "/sys" }) // { base: "block:8:0", start: 1048576, … }
 */
export function deviceExtent(path: string, look: DeviceLookup): Extent {
  return extentAt(path, look, 0);
}

function extentAt(path: string, look: DeviceLookup, depth: number): Extent {
  const st = look.stat(path);
  const own: Extent = { base: deviceIdentity(path, st), start: 0, end: Infinity, via: [] };
  if (st === null || !st.isBlockDevice() || depth >= MAX_DEPTH) return own;
  // /sys/dev/block/M:N links to the device's directory, whatever its /dev node is called.
  const dir = look.sys.realpath(join(look.sysfs, "dev/block", devNumber(st.rdev)));
  return dir === null ? own : sysfsExtent(dir, look, depth);
}

/**
 * Do two extents share a byte?
 * @example sharesStorage(deviceExtent("/dev/sda", look), deviceExtent("/dev/sda2", look)) // true
 */
export function sharesStorage(a: Extent, b: Extent): boolean {
  return a.base === b.base && a.start < b.end && b.start < a.end;
}

/** The extent of the block device whose sysfs directory is `dir`. */
function sysfsExtent(dir: string, look: DeviceLookup, depth: number): Extent {
  const { sys } = look;
  const name = basename(dir);
  if (depth >= MAX_DEPTH) return wholeDevice(dir, look);
  if (sys.stat(join(dir, "partition"))) {
    // A partition's directory sits inside its disk's (…/block/sda/sda2); the disk may be a loop device.
    const disk = dirname(dir);
    const outer = sysfsExtent(disk, look, depth + 1);
    return within(outer, sectors(sys, join(dir, "start")), sectors(sys, join(dir, "size")), `${name} is a partition of ${basename(disk)}`);
  }
  const backing = join(dir, "loop/backing_file");
  if (sys.stat(backing)) {
    // The kernel prints the path it opened (d_path) and a newline; a file deleted since gets " (deleted)"
    // appended, stats as missing and so matches nothing, as no argument can name it any more.
    const file = sys.readText(backing).replace(/\n$/, "");
    const outer = extentAt(file, look, depth + 1);
    return within(outer, number(sys, join(dir, "loop/offset")), sectors(sys, join(dir, "size")), `${name} is a loop device on ${file}`);
  }
  return wholeDevice(dir, look);
}

function wholeDevice(dir: string, look: DeviceLookup): Extent {
  return { base: `block:${look.sys.readText(join(dir, "dev")).trim()}`, start: 0, end: Infinity, via: [] };
}

/** `size` bytes at `start` of `outer`, no further than outer's end. */
function within(outer: Extent, start: number, size: number, why: string): Extent {
  const from = outer.start + start;
  return { base: outer.base, start: from, end: Math.min(from + size, outer.end), via: [why, ...outer.via] };
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

/**
 * "major:minor" of a device number as Linux encodes st_rdev (glibc
 * gnu_dev_major/gnu_dev_minor: the low 8 bits of the minor, then 12 of the
 * major, then 24 more of the minor from bit 20 and 20 more of the major from
 * bit 44), the form sysfs uses in `dev` files and /sys/dev/block.
 * @example devNumber(2050) // "8:2"
 */
export function devNumber(rdev: number): string {
  const d = BigInt(rdev);
  const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & 0xfffff000n);
  const minor = (d & 0xffn) | ((d >> 12n) & 0xffffff00n);
  return `${major}:${minor}`;
}
