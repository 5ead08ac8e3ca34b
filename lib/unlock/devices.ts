/**
 * Find a LUKS device by the UUID in its header, the way zbunlock must in an
 * initramfs without udev (no /dev/disk/by-uuid): list /sys/class/block and
 * read the first bytes of each /dev node.
 *
 * LUKS1 and LUKS2 both start with the magic "LUKS\xba\xbe" and keep the UUID
 * as a NUL-padded ASCII string of 40 bytes at offset 168 (LUKS2 on-disk
 * format spec §2.1 "binary header"; LUKS1 spec "phdr" layout). A LUKS2
 * device also has a second header at 16 KiB; the primary is enough to name it.
 */
import { join } from "node:path";
import type { Sys } from "../sys/sys.ts";

const MAGIC = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe];
const UUID_OFFSET = 168;
const UUID_LENGTH = 40;

/** The UUID of a LUKS header, or null when `head` is not one. Pure. */
export function luksUuidOf(head: Uint8Array): string | null {
  if (head.byteLength < UUID_OFFSET + UUID_LENGTH) return null;
  if (!MAGIC.every((b, i) => head[i] === b)) return null;
  const raw = head.subarray(UUID_OFFSET, UUID_OFFSET + UUID_LENGTH);
  const end = raw.indexOf(0);
  const text = new TextDecoder().decode(end < 0 ? raw : raw.subarray(0, end));
  return /^[0-9a-fA-F-]{8,40}$/.test(text) ? text.toLowerCase() : null;
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
      head = sys.readAt(dev, 0, UUID_OFFSET + UUID_LENGTH);
    } catch {
      continue;
    }
    if (luksUuidOf(head) === want) return dev;
  }
  return null;
}
