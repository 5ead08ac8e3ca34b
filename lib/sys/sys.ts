/**
 * All host access of zb goes through one injected `Sys` object, so library code
 * stays testable in a temp root and power cuts can be injected at every write
 * or fsync (test/fakes/powercut.ts wraps this interface).
 *
 * Operations are synchronous and path based: env copies are a few KiB, and a
 * path-level API gives the fault injector one clear boundary per operation.
 */
import * as fs from "node:fs";
import { dirname } from "node:path";
import { ioError } from "../errors.ts";
import { readFileBounded, type ReadLimit } from "./bounded.ts";
import { blockDeviceSize } from "./devsize.ts";

/**
 * The default bound of {@link Sys.readText}: 1 MiB. Its callers that give
 * none read small files zb or the system writes (cmdline.txt, config.txt, an
 * install journal, /proc and sysfs entries), a few KiB at most; the files a
 * user names give their own bound and error code.
 */
export const MAX_TEXT_BYTES = 1024 * 1024;
const DEFAULT_TEXT_LIMIT: ReadLimit = { max: MAX_TEXT_BYTES, code: "IO" };

/** What `stat` reports about a path. */
export interface FileInfo {
  size: number;
  kind: "file" | "block" | "char" | "dir" | "other";
  /** Device and inode ("dev:ino"): equal for two paths of one file (links, other spellings). */
  id?: string;
  /** Permission bits (mode & 0o7777) and owner. */
  mode?: number;
  uid?: number;
  gid?: number;
  /** Hard links (st_nlink): more than 1, and a rename over this name leaves the other names on the old file. */
  links?: number;
}

/** How `writeAt` opens the file. */
export interface WriteOptions {
  create?: boolean;
  /** Permission bits of a file it creates, set exactly (whatever the umask). */
  mode?: number;
  /** Owner given to the file (root only): a copy that replaces a file keeps its owner. */
  owner?: { uid: number; gid: number };
}

/** Host access used by lib/. Every method throws ZbError IO on failure. */
export interface Sys {
  /** Read up to `length` bytes at `offset`; fewer at end of file. */
  readAt(path: string, offset: number, length: number): Uint8Array;
  /** Write all of `data` at `offset` without truncating; creates the file if `create`. */
  writeAt(path: string, offset: number, data: Uint8Array, opts?: WriteOptions): void;
  /** fsync a file or a directory (directories make renames and creates durable). */
  fsync(path: string): void;
  /** Atomically replace `to` by `from` (same directory). */
  rename(from: string, to: string): void;
  unlink(path: string): void;
  mkdirp(path: string): void;
  /** Size and kind, or null when the path does not exist. */
  stat(path: string): FileInfo | null;
  /**
   * The whole file as UTF-8 text (config files), read in sequence (a FIFO
   * works) and at most `limit.max` bytes of it (default
   * {@link MAX_TEXT_BYTES}, refused as IO): a path that names no such small
   * file (/dev/zero, a disk) is refused instead of read until memory runs out.
   * @throws {ZbError} IO when unreadable; `limit.code` when larger than `limit.max`
   */
  readText(path: string, limit?: ReadLimit): string;
  /** Names in a directory, unsorted. */
  listDir(path: string): string[];
  /** The absolute path with every symlink followed, or null when it (or a link's target) does not exist. */
  realpath(path: string): string | null;
  /** Can this process create and replace files in `dir`? @throws {ZbError} IO with the reason when not (read-only mount, permissions) */
  checkWritableDir(dir: string): void;
  /**
   * Hold the env lock other env tools share (lib/sys/flock.ts) until the
   * returned release is called; re-entrant. Optional: a Sys without it (a
   * test fake) has no other process to share the env with.
   * @throws {ZbError} IO when another process holds it too long
   */
  lockEnv?(): () => void;
}

/** The real host, through node:fs. */
export class HostSys implements Sys {
  readAt(path: string, offset: number, length: number): Uint8Array {
    const fd = open(path, "r", "read");
    try {
      const buf = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const n = fs.readSync(fd, buf, done, length - done, offset + done);
        if (n === 0) break;
        done += n;
      }
      return done === length ? buf : buf.subarray(0, done);
    } catch (e) {
      throw ioError(`read ${path}`, e);
    } finally {
      fs.closeSync(fd);
    }
  }

  writeAt(path: string, offset: number, data: Uint8Array, opts: WriteOptions = {}): void {
    // "r+" never truncates; block devices and env files inside larger files need that.
    const flags = opts.create ? fs.constants.O_RDWR | fs.constants.O_CREAT : fs.constants.O_RDWR;
    const fd = open(path, flags, "write", opts.mode ?? 0o644);
    try {
      if (opts.create && opts.mode !== undefined) fs.fchmodSync(fd, opts.mode);
      if (opts.owner) fs.fchownSync(fd, opts.owner.uid, opts.owner.gid);
      let done = 0;
      while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, offset + done);
    } catch (e) {
      throw ioError(`write ${path}`, e);
    } finally {
      fs.closeSync(fd);
    }
  }

  fsync(path: string): void {
    const fd = open(path, "r", "sync");
    try {
      fs.fsyncSync(fd);
    } catch (e) {
      throw ioError(`sync ${path}`, e);
    } finally {
      fs.closeSync(fd);
    }
  }

  rename(from: string, to: string): void {
    try {
      fs.renameSync(from, to);
    } catch (e) {
      throw ioError(`rename ${from} to ${to}`, e);
    }
  }

  unlink(path: string): void {
    try {
      fs.unlinkSync(path);
    } catch (e) {
      if ((e as { code?: string }).code !== "ENOENT") throw ioError(`remove ${path}`, e);
    }
  }

  mkdirp(path: string): void {
    try {
      fs.mkdirSync(path, { recursive: true });
    } catch (e) {
      throw ioError(`create directory ${path}`, e);
    }
  }

  stat(path: string): FileInfo | null {
    let st: fs.Stats;
    try {
      st = fs.statSync(path);
    } catch (e) {
      if ((e as { code?: string }).code === "ENOENT") return null;
      throw ioError(`stat ${path}`, e);
    }
    const who = { id: `${st.dev}:${st.ino}`, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, links: st.nlink };
    if (st.isBlockDevice()) return { size: deviceSize(this, path, st.rdev), kind: "block", ...who };
    const kind = st.isFile() ? "file" : st.isDirectory() ? "dir" : st.isCharacterDevice() ? "char" : "other";
    return { size: st.size, kind, ...who };
  }

  readText(path: string, limit: ReadLimit = DEFAULT_TEXT_LIMIT): string {
    const bytes = readFileBounded(path, limit);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("utf8");
  }

  listDir(path: string): string[] {
    try {
      return fs.readdirSync(path);
    } catch (e) {
      throw ioError(`list ${path}`, e);
    }
  }

  realpath(path: string): string | null {
    try {
      return fs.realpathSync(path);
    } catch (e) {
      if ((e as { code?: string }).code === "ENOENT") return null;
      throw ioError(`resolve ${path}`, e);
    }
  }
  checkWritableDir(dir: string): void {
    try {
      fs.accessSync(dir, fs.constants.W_OK);
    } catch (e) {
      throw ioError(`write in ${dir}`, e);
    }
  }
  lockEnv(): () => void {
    return (require("./flock.ts") as typeof import("./flock.ts")).lockFile();
  }

}

function open(path: string, flags: string | number, what: string, mode?: number): number {
  try {
    return fs.openSync(path, flags, mode);
  } catch (e) {
    throw ioError(`${what} ${path}`, e);
  }
}

/** stat() reports 0 for block devices; sysfs has the size by device number (devsize.ts), else 0 here. */
function deviceSize(sys: HostSys, path: string, rdev: number): number {
  try {
    return blockDeviceSize(path, rdev, { sys, sysfs: "/sys" });
  } catch {
    return 0;
  }
}

/** Directory of a path, for fsyncing after create/rename. */
export function parentDir(path: string): string {
  return dirname(path);
}

/**
 * Is descriptor `fd` the null device (the same device number as /dev/null)?
 * A descriptor 0–2 closed when the process started (`<&-`, `>&-`) is opened
 * on /dev/null by the runtime, so this is also how such a closed one shows.
 * False when either cannot be checked.
 */
export function isNullDevice(fd: number): boolean {
  try {
    const st = fs.fstatSync(fd);
    return st.isCharacterDevice() && st.rdev === fs.statSync("/dev/null").rdev;
  } catch {
    return false;
  }
}
