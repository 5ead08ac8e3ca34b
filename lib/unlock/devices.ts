/**
 * Find a LUKS device by the UUID in its header, the way zbunlock must in an
 * initramfs without udev (no /dev/disk/by-uuid): list /sys/class/block and
 * read the first bytes of each /dev node.
 *
 * The header is parsed by lib/luks/header.ts (UUID at offset 168 in LUKS1
 * and LUKS2); only a primary header names a device.
 */
import { basename, join } from "node:path";
import { ZbError } from "../errors.ts";
import { LUKS_PROBE_BYTES, parseLuksHeader } from "../luks/header.ts";
import type { Sys } from "../sys/sys.ts";

/** The UUID of a primary LUKS header, or null when `head` is not one. Pure. */
export function luksUuidOf(head: Uint8Array): string | null {
  const h = parseLuksHeader(head);
  return h && !h.secondary ? h.uuid.toLowerCase() : null;
}

/** Block device nodes the kernel knows, as /dev paths under `root` (partitions included). */
export function blockDevices(sys: Sys, root: string): string[] {
  const dir = join(root, "sys/class/block");
  if (!sys.stat(dir)) return [];
  return sys.listDir(dir).sort().map((name) => join(root, "dev", name));
}

/**
 * The device whose LUKS header has `uuid`, or null (not there yet: the
 * caller retries until its deadline). Unreadable devices are skipped, and so
 * are devices held by another (a member of a RAID1 whose metadata sits at
 * its end shows the array's header too; /sys/class/block/X/holders names
 * the array).
 * @throws {ZbError} LUKS_FAILED when two devices carry the UUID: a copy of
 *   the disk (a dd backup on a USB stick) must not be opened as the root
 *   because its name sorts first
 */
export function findLuksDevice(sys: Sys, root: string, uuid: string): string | null {
  const want = uuid.toLowerCase();
  const found: string[] = [];
  for (const dev of blockDevices(sys, root)) {
    let head: Uint8Array;
    try {
      if (!sys.stat(dev) || heldByAnother(sys, root, dev)) continue;
      head = sys.readAt(dev, 0, LUKS_PROBE_BYTES);
    } catch {
      continue;
    }
    if (luksUuidOf(head) === want) found.push(dev);
  }
  if (found.length > 1) {
    throw new ZbError("LUKS_FAILED", `cannot choose the device with LUKS UUID ${want}: ${found.length} devices carry it (${found.join(", ")})`, {
      hint: "a copy of the disk is attached? remove it, or give the copy a new UUID (cryptsetup luksUUID --uuid)",
    });
  }
  return found[0] ?? null;
}

function heldByAnother(sys: Sys, root: string, dev: string): boolean {
  const holders = join(root, "sys/class/block", basename(dev), "holders");
  return sys.stat(holders) !== null && sys.listDir(holders).length > 0;
}
