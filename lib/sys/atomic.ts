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
import type { FileInfo, Sys, WriteOptions } from "./sys.ts";

/** Options of {@link writeFileAtomic}; none gives today's new file: mode 0644 less the umask, this process's owner. */
export interface AtomicOptions {
  /**
   * The file being replaced: the new file gets its permission bits exactly,
   * and its owner when this process is root (only root may give a file away).
   * A rename replaces the inode, so without this a 0600 file would become 0644.
   */
  sameAs?: Pick<FileInfo, "mode" | "uid" | "gid">;
}

/**
 * Replace `path` with `data`. It replaces the name, not the file: a symlink
 * at `path` becomes a regular file and other hard links keep the old content;
 * callers that must update what such links point to resolve the path first
 * ({@link resolveFile}).
 * On failure the old file is kept and the temp file removed.
 * @throws {ZbError} IO
 * @example writeFileAtomic(sys, "/boot/firmware/tryboot.txt", text)
 */
export function writeFileAtomic(sys: Sys, path: string, data: Uint8Array | string, opts: AtomicOptions = {}): void {
  const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  const dir = dirname(path);
  const tmp = atomicTemp(path);
  sys.unlink(tmp);
  try {
    sys.writeAt(tmp, 0, bytes, { create: true, ...keepFrom(opts.sameAs) });
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

/**
 * The temp file {@link writeFileAtomic} writes `path` through: `.NAME.zb-new`
 * beside it. Whatever has that name is deleted first, so a caller keeps its
 * other files off it (the install's target and image).
 */
export function atomicTemp(path: string): string {
  return join(dirname(path), `.${basename(path)}.zb-new`);
}

/** writeAt options that give a new file the mode (and, as root, the owner) of `old`. */
function keepFrom(old: AtomicOptions["sameAs"]): WriteOptions {
  if (!old) return {};
  const keep: WriteOptions = {};
  if (old.mode !== undefined) keep.mode = old.mode;
  if (old.uid !== undefined && old.gid !== undefined && process.getuid?.() === 0) keep.owner = { uid: old.uid, gid: old.gid };
  return keep;
}

/** The file a path names once its symlinks are followed, and its number of hard links. */
export interface ResolvedFile {
  /** Absolute path with no symlink in it. */
  path: string;
  /** st_nlink: more than 1 means other names share the file (and would keep the old one after a rename). */
  links: number;
}

/**
 * Follow `path`'s symlinks to the file itself and count its hard links.
 * @returns null when the path (or a symlink's target) does not exist
 * @throws {ZbError} IO when it cannot be resolved (permissions, a symlink loop)
 * @example resolveFile(sys, "/boot/uboot.env") // { path: "/boot/firmware/uboot.env", links: 1 }
 */
export function resolveFile(sys: Sys, path: string): ResolvedFile | null {
  const real = sys.realpath(path);
  if (real === null) return null;
  return { path: real, links: sys.stat(real)?.links ?? 1 };
}

/** Remove a file and make the removal durable; a missing file is fine. */
export function removeFileDurably(sys: Sys, path: string): void {
  if (!sys.stat(path)) return;
  sys.unlink(path);
  sys.fsync(dirname(path));
}
