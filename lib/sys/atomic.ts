/**
 * Replace a whole file so that a power cut leaves the old or the new content,
 * never a mix: temp file in the same directory, fsync, rename, fsync of the
 * renamed file, fsync of the directory (the rename is durable only then).
 *
 * The fsync after the rename is for FAT (the Pi's boot partition): Linux's
 * vfat_rename over an existing file moves the new inode into the target's
 * directory slot but only marks that inode dirty, while the directory fsync
 * (fat_file_fsync on the folder) writes the directory buffers and the FAT,
 * where the replaced file's clusters are already free. Until writeback the
 * entry on disk would name freed clusters; fsync of the file itself writes
 * its entry (fat_write_inode). Even so a FAT rename is several unordered
 * metadata writes, not one: the env pair (written in place) is what the
 * state relies on, and zbunlock re-derives config.txt from it (row N5).
 */
import { basename, dirname, join } from "node:path";
import type { Sys } from "./sys.ts";

/** On failure the old file is kept and the temp file removed. @throws {ZbError} IO */
export function writeFileAtomic(sys: Sys, path: string, data: Uint8Array | string): void {
  const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.zb-new`);
  sys.unlink(tmp);
  try {
    sys.writeAt(tmp, 0, bytes, { create: true });
    sys.fsync(tmp);
    sys.rename(tmp, path);
    sys.fsync(path);
  } catch (e) {
    // Leave no half-written temp file behind (a full disk would keep it); the old file is untouched.
    try {
      sys.unlink(tmp);
    } catch {
      // The first error is the one to report.
    }
    throw e;
  }
  sys.fsync(dir);
}

/** Remove a file and make the removal durable; a missing file is fine. */
export function removeFileDurably(sys: Sys, path: string): void {
  if (!sys.stat(path)) return;
  sys.unlink(path);
  sys.fsync(dirname(path));
}
