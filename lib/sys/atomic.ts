/**
 * Replace a whole file so that a power cut leaves the old or the new content,
 * never a mix: temp file in the same directory, fsync, rename, fsync of the
 * directory (the rename is durable only then). On FAT (the Pi's boot
 * partition) rename replaces the directory entry in one sector write, the
 * best the file system offers.
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
