/**
 * Find a LUKS device by the UUID in its header, the way zbunlock must in an
 * initramfs without udev (no /dev/disk/by-uuid): list /sys/class/block and
 * read the first bytes of each /dev node.
 *
 * The header is parsed by lib/luks/header.ts (UUID at offset 168 in LUKS1
 * and LUKS2). A device whose primary header is damaged is still found by a
 * valid LUKS2 secondary copy, since cryptsetup opens it from that copy
 * (LUKS2 on-disk format §2.1).
 */
import { basename, join } from "node:path";
import { ZbError } from "../errors.ts";
import { LUKS_PROBE_BYTES, parseLuksHeader, secondaryLuksHeader } from "../luks/header.ts";
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
 *
 * Primary headers are looked at first (one 4 KiB read per device). Only when
 * none has the UUID are the devices without a LUKS primary searched for a
 * valid LUKS2 secondary header (up to nine reads each, at 16 KiB … 4 MiB):
 * cryptsetup opens such a device from its secondary, so zbunlock must find it.
 * @throws {ZbError} LUKS_FAILED when two devices carry the UUID: a copy of
 *   the disk (a dd backup on a USB stick) must not be opened as the root
 *   because its name sorts first
 */
export function findLuksDevice(sys: Sys, root: string, uuid: string): string | null {
  const want = uuid.toLowerCase();
  const found: string[] = [];
  const noPrimary: string[] = [];
  // Holders are looked at only for a device that carries the UUID: one check, not one per device and poll.
  const take = (dev: string) => {
    try {
      if (!heldByAnother(sys, root, dev)) found.push(dev);
    } catch {
      // holders unreadable: skipped, like an unreadable device
    }
  };
  for (const dev of blockDevices(sys, root)) {
    let head: Uint8Array;
    try {
      if (!sys.stat(dev)) continue;
      head = sys.readAt(dev, 0, LUKS_PROBE_BYTES);
    } catch {
      continue;
    }
    const u = luksUuidOf(head);
    if (u === null) noPrimary.push(dev);
    else if (u === want) take(dev);
  }
  if (found.length === 0) {
    for (const dev of noPrimary) {
      if (secondaryLuksHeader((off, n) => sys.readAt(dev, off, n))?.uuid.toLowerCase() === want) take(dev);
    }
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
