/**
 * Find a LUKS device by the UUID in its header, the way zbunlock must in an
 * initramfs without udev (no /dev/disk/by-uuid): list /sys/class/block and
 * read the first bytes of each /dev node.
 *
 * The header is parsed by lib/luks/header.ts (UUID at offset 168 in LUKS1
 * and LUKS2); only a primary header names a device.
 */
import { join } from "node:path";
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
 * caller retries until its deadline). Unreadable devices are skipped.
 */
export function findLuksDevice(sys: Sys, root: string, uuid: string): string | null {
  const want = uuid.toLowerCase();
  for (const dev of blockDevices(sys, root)) {
    let head: Uint8Array;
    try {
      if (!sys.stat(dev)) continue;
      head = sys.readAt(dev, 0, LUKS_PROBE_BYTES);
    } catch {
      continue;
    }
    if (luksUuidOf(head) === want) return dev;
  }
  return null;
}
