/**
 * A block device's size and number as sysfs knows them. stat(2) reports 0
 * bytes for a block device; sysfs has its size in 512-byte sectors
 * (Documentation/ABI/stable/sysfs-block, `size`). The device is found by its
 * number (st_rdev, as /sys/dev/block/M:N names it: sysfs-rules.rst), never by
 * the name of its /dev node: a node made with mknod, a container's
 * `--device=/dev/sdb3:/dev/slot-b` or a udev symlink's target may be called
 * anything, and /sys/class/block knows only the kernel's names.
 *
 * Host access: sysfs through the caller's Sys under `sysfs`, so tests give a
 * fake sysfs in a temp folder (test/fakes/sysfs.ts).
 */
import { join } from "node:path";
import { ZbError } from "../errors.ts";
import type { Sys } from "./sys.ts";

/** Where sysfs is and how to read it; the host's by default. */
export interface SysfsLook {
  sys: Pick<Sys, "readText">;
  /** Where sysfs is mounted: "/sys" on a host. */
  sysfs: string;
}

const SECTOR = 512;

/**
 * "major:minor" of a device number as Linux encodes st_rdev (glibc
 * gnu_dev_major/gnu_dev_minor: the low 8 bits of the minor, then 12 of the
 * major, then 24 more of the minor from bit 20 and 20 more of the major from
 * bit 44), the form sysfs uses in `dev` files and /sys/dev/block. The
 * kernel's own 32-bit encoding (huge_encode_dev, LOOP_GET_STATUS64's
 * lo_device) is the same for every number the kernel hands out.
 * @example devNumber(2050) // "8:2"
 */
export function devNumber(rdev: number): string {
  const d = BigInt(rdev);
  const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & 0xfffff000n);
  const minor = (d & 0xffn) | ((d >> 12n) & 0xffffff00n);
  return `${major}:${minor}`;
}

/**
 * The size in bytes of the block device numbered `rdev`, read from
 * `SYSFS/dev/block/M:N/size`.
 * @param path the device's path as the user gave it, for messages
 * @param rdev st_rdev of the device (fstat of the descriptor the caller holds, so it is the device written)
 * @throws {ZbError} IO naming the path and the number when the attribute cannot be read or is not a number
 * @example blockDeviceSize("/dev/slot-b", fstatSync(fd).rdev, { sys: new HostSys(), sysfs: "/sys" }) // 4294967296
 */
export function blockDeviceSize(path: string, rdev: number, look: SysfsLook): number {
  const no = devNumber(rdev);
  const file = join(look.sysfs, "dev/block", no, "size");
  let text: string;
  try {
    text = look.sys.readText(file).trim();
  } catch (e) {
    const said = e instanceof Error ? e.message : String(e);
    const why = said.startsWith(`cannot read ${file}: `) ? said.slice(`cannot read ${file}: `.length) : said;
    throw new ZbError("IO", `cannot find the size of block device ${path}: sysfs gives no size for device ${no} (${file}: ${why})`, {
      cause: e,
      hint: `zb reads a device's size from sysfs by its number: is sysfs mounted at ${look.sysfs}, and is ${path} a device of this kernel?`,
    });
  }
  if (!/^\d+$/.test(text)) throw new ZbError("IO", `cannot find the size of block device ${path}: ${file} says ${JSON.stringify(text.slice(0, 40))}, not a number`);
  return Number(text) * SECTOR;
}
