/**
 * What a loop device is bound to, as the kernel itself knows it:
 * ioctl(LOOP_GET_STATUS64) on the loop device (linux/loop.h), read-only.
 * sysfs's `loop/backing_file` is only the path the kernel prints for the file
 * (d_path): under a mount made over its folder since, from another mount
 * namespace or after a pivot_root it names some other file, and after an
 * unlink it ends in " (deleted)". The status names the file by device and
 * inode, which no later mount or rename changes.
 *
 * Host access: open(2) of the loop device node, fstat(2), and ioctl(2)
 * through lib/sys/libc.ts.
 */
import * as fs from "node:fs";
import { jitOff } from "./jit.ts";
import { libc } from "./libc.ts";

/** The fields of struct loop_info64 the same-device check needs. */
export interface LoopStatus {
  /** st_rdev of the node that was asked, so the caller can check it is the device it meant. */
  self: number;
  /** st_dev of the file system holding the backing file, in the kernel's huge_encode_dev form (as stat(2) reports st_dev). */
  device: number;
  /** Inode number of the backing file. */
  inode: number;
  /** st_rdev of the backing file: 0 for a regular file, the device number when the loop is over a block device. */
  rdevice: number;
  /** Byte offset of the loop's first byte in the backing file. */
  offset: number;
}

/** _IO('L', 5): linux/loop.h. */
const LOOP_GET_STATUS64 = 0x4c05;
/** sizeof(struct loop_info64): five __u64, four __u32, two 64-byte names, a 32-byte key, two __u64. */
export const LOOP_INFO64_BYTES = 232;

/**
 * The status of the loop device at `node`, when it can be asked.
 * @param node the device node, e.g. /dev/loop3
 * @returns null when the node cannot be opened (missing, no permission), is not a block device, is not a bound loop
 *   device, or this process has no JIT to call libc with: the caller then falls back to sysfs's backing_file
 * @throws {ZbError} INTERNAL when libc cannot be loaded
 * @example loopStatus("/dev/loop3") // { self: 1795, device: 65024, inode: 2147552, rdevice: 0, offset: 0 }
 */
export function loopStatus(node: string): LoopStatus | null {
  if (jitOff()) return null;
  let fd: number;
  try {
    fd = fs.openSync(node, fs.constants.O_RDONLY);
  } catch {
    return null;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isBlockDevice()) return null;
    const { ptr } = require("bun:ffi") as typeof import("bun:ffi");
    const info = new Uint8Array(LOOP_INFO64_BYTES);
    // ENXIO: no file bound (any more), the caller's sysfs read raced an unbind; ENOTTY: not a loop device.
    if (libc().ioctl(fd, LOOP_GET_STATUS64, ptr(info)) !== 0) return null;
    return { self: st.rdev, ...decodeLoopInfo64(info) };
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The fields of a struct loop_info64 (native byte order, little-endian on every
 * target zb builds for) LoopStatus keeps.
 * @throws {RangeError} when `info` is shorter than the struct's first five fields
 * @example decodeLoopInfo64(new Uint8Array(232)) // { device: 0, inode: 0, rdevice: 0, offset: 0 }
 */
export function decodeLoopInfo64(info: Uint8Array): Omit<LoopStatus, "self"> {
  const v = new DataView(info.buffer, info.byteOffset, info.byteLength);
  // __u64 each: a Number rounds above 2^53 exactly as node:fs's stat rounds st_ino, so the two still compare.
  const u64 = (at: number) => Number(v.getBigUint64(at, true));
  return { device: u64(0), inode: u64(8), rdevice: u64(16), offset: u64(24) };
}
