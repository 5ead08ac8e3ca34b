/**
 * A file or block device receiving a payload: reads and writes on one open
 * descriptor, fdatasync, and its size (block devices report 0 to stat; sysfs
 * tells). Injected into the install engine so tests can use files and the
 * engine never opens the target twice.
 *
 * Access at the descriptor's current offset uses plain read(2)/write(2): in
 * Bun 1.4 fs.readSync/writeSync with a position argument run 7–14× slower
 * for 4 MiB buffers than without (measured; the kernel sees one pread64/
 * pwrite64 either way). The install engine reads and writes sequentially,
 * so it always takes the fast path; other offsets still work.
 */
import * as fs from "node:fs";
import { dirname } from "node:path";
import { ioError, ZbError } from "../errors.ts";
import { blockDeviceSize, type SysfsLook } from "./devsize.ts";
import { tryLockFd } from "./flock.ts";
import { HostSys } from "./sys.ts";

export interface Target {
  readonly path: string;
  readonly blockDevice: boolean;
  /** Bytes available: the device size, or the file's current length. */
  size(): number;
  /** The byte the next sequential write(2) lands on (the descriptor's file offset). */
  readonly offset: number;
  /**
   * Lend the descriptor to another thread that writes sequentially from
   * `offset` on; no other access until `handBack(bytes it wrote)`.
   */
  handOff(): number;
  handBack(written: number): void;
  read(offset: number, length: number): Uint8Array;
  write(offset: number, data: Uint8Array): void;
  /** Data durable on the medium (fdatasync). */
  sync(): void;
  /** fdatasync on the I/O thread pool, so decompression goes on meanwhile. */
  syncInBackground(): Promise<void>;
  /** Cut a regular file to `size` bytes (no-op for a block device). */
  truncate(size: number): void;
  close(): void;
}

/**
 * Open the target for reading and writing. A block device is opened with
 * O_EXCL, which Linux turns into an exclusive claim: it fails with EBUSY
 * while the device is mounted, is held by device-mapper (an open LUKS volume,
 * LVM) or claimed by another exclusive opener such as a second install
 * (open(2), "O_EXCL … block devices"). So the running system's slot is never
 * written under its file system. A device's size comes from sysfs by its
 * device number (lib/sys/devsize.ts), so a node of any name works (mknod, a
 * container's `--device=/dev/sdb3:/dev/slot-b`).
 *
 * O_EXCL claims only block devices; a regular file gets an exclusive
 * flock(2) on this descriptor instead, held until close(): without it a
 * second install into the same file could finish and write its journal
 * "complete" while the first one, still running, goes on overwriting the
 * bytes (lib/sys/flock.ts tryLockFd).
 * @throws {ZbError} IO, TARGET_BUSY (a block device in use, a file another install is writing)
 */
export function openTarget(path: string, opts: { create: boolean; sysfs?: SysfsLook; syncFolder?: (dir: string) => void }): Target {
  let fd: number;
  const device = isBlockDevice(path);
  // A device is opened with O_EXCL alone (a claim, above); with O_CREAT it would mean "must not exist".
  const flags = fs.constants.O_RDWR | (device ? fs.constants.O_EXCL : 0);
  try {
    fd = (!device && opts.create ? createNew(path, opts.syncFolder ?? ((dir) => HOST.fsync(dir))) : null) ?? fs.openSync(path, flags);
  } catch (e) {
    if (device && (e as { code?: string }).code === "EBUSY") {
      throw new ZbError("TARGET_BUSY", `cannot install into ${path}: it is in use (mounted, an open LUKS or device-mapper volume, or opened by another install)`, { cause: e });
    }
    throw ioError(`open the install target ${path}`, e);
  }
  const st = fs.fstatSync(fd);
  /** The kernel's file offset: moved by plain read/write, not by positioned ones. */
  let pos = 0;
  const blockDevice = st.isBlockDevice();
  if (!blockDevice && !st.isFile()) {
    fs.closeSync(fd);
    throw ioError(`use ${path} as an install target`, new Error("not a regular file or block device"));
  }
  if (!blockDevice) claimFile(fd, path);
  let lent = false;
  const own = () => {
    if (lent) throw new Error(`internal error: ${path} is lent to another thread`);
  };
  return {
    path,
    blockDevice,
    get offset() {
      return pos;
    },
    handOff() {
      own();
      lent = true;
      return fd;
    },
    handBack(written) {
      lent = false;
      pos += written;
    },
    size: () => (blockDevice ? blockDeviceSize(path, st.rdev, opts.sysfs ?? HOST_SYSFS) : fs.fstatSync(fd).size),
    read(offset, length) {
      own();
      const buf = new Uint8Array(length);
      let done = 0;
      const sequential = offset === pos;
      try {
        while (done < length) {
          const n = fs.readSync(fd, buf, done, length - done, sequential ? null : offset + done);
          if (n === 0) break;
          done += n;
        }
        if (sequential) pos += done;
      } catch (e) {
        throw ioError(`read ${path}`, e);
      }
      return buf.subarray(0, done);
    },
    write(offset, data) {
      own();
      const sequential = offset === pos;
      try {
        let done = 0;
        while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, sequential ? null : offset + done);
        if (sequential) pos += done;
      } catch (e) {
        throw ioError(`write ${path} at byte ${offset}`, e);
      }
    },
    sync() {
      try {
        fs.fdatasyncSync(fd);
      } catch (e) {
        throw ioError(`sync ${path}`, e);
      }
    },
    syncInBackground() {
      return new Promise((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(ioError(`sync ${path}`, e)) : resolve())));
    },
    truncate(size) {
      if (blockDevice) return;
      try {
        fs.ftruncateSync(fd, size);
      } catch (e) {
        throw ioError(`truncate ${path}`, e);
      }
    },
    close() {
      fs.closeSync(fd);
    },
  };
}

/**
 * The target held for reading while a `--resume` of a "complete" journal
 * reads it back ("already installed"), which writes nothing: opened
 * read-only, so a read-only target, or a device mounted as the running
 * system's slot, can still be found installed. A file gets the exclusive
 * flock(2) openTarget takes (flock needs no write access), so a file another
 * install is writing is TARGET_BUSY, as for a write. A block device is not
 * claimed: O_EXCL fails while it is mounted, and a mounted slot that holds the
 * payload is the common case of running the same install again, while a
 * concurrent install into it is rare and its differing bytes fail the
 * read-back (the install then claims the device for writing, and is refused).
 *
 * Opened O_NONBLOCK and O_NOCTTY: a read-only open of a FIFO would wait on
 * this thread for a writer (no signal handler runs meanwhile), and a terminal
 * could become the controlling one. Neither can hold a payload.
 * @returns close(), or null when the target does not exist or is neither a
 *   regular file nor a block device (openTarget then says why it cannot be used)
 * @throws {ZbError} TARGET_BUSY (a file another install is writing); IO when it cannot be opened
 */
export function holdForCheck(path: string): { close(): void } | null {
  let fd: number;
  try {
    fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOCTTY);
  } catch (e) {
    if ((e as { code?: string }).code === "ENOENT") return null;
    throw ioError(`open the install target ${path}`, e);
  }
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    throw ioError(`open the install target ${path}`, e);
  }
  if (!st.isFile() && !st.isBlockDevice()) {
    fs.closeSync(fd);
    return null;
  }
  if (st.isFile()) claimFile(fd, path); // closes fd when it throws
  return { close: () => fs.closeSync(fd) };
}

/** The file's exclusive lock, or TARGET_BUSY (the descriptor is closed then). */
function claimFile(fd: number, path: string): void {
  let got: ReturnType<typeof tryLockFd>;
  try {
    got = tryLockFd(fd);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  if (got !== "busy") return;
  fs.closeSync(fd);
  throw new ZbError("TARGET_BUSY", `cannot install into ${path}: another install is writing it`, {
    hint: "wait for it to end (its journal says how far it got); on a file system that refuses flock(2) locks, install elsewhere",
  });
}

/**
 * Create a file target that does not exist yet, and make its directory entry
 * durable at once: fdatasync makes the file's bytes and size durable, not its
 * name, and the journal (perhaps in another folder) must never count chunks
 * of a file a power cut can take away. O_EXCL also means a symbolic link
 * under that name is never followed to create its target (a dangling link
 * to /dev/sdx3 would make a file in /dev): such a name falls through to the
 * plain open, which fails on it.
 * @returns the descriptor, or null when something already has that name (the caller opens it)
 * @throws the errno of open(2) or of the folder's fsync
 */
function createNew(path: string, syncFolder: (dir: string) => void): number | null {
  let fd: number;
  try {
    fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  } catch (e) {
    if ((e as { code?: string }).code === "EEXIST") return null;
    throw e;
  }
  try {
    syncFolder(dirname(path));
  } catch (e) {
    // Not left behind empty: the install fails before anything was written.
    fs.closeSync(fd);
    fs.rmSync(path, { force: true });
    throw e;
  }
  return fd;
}

function isBlockDevice(path: string): boolean {
  try {
    return fs.statSync(path).isBlockDevice();
  } catch {
    return false; // opening it reports why
  }
}

const HOST = new HostSys();
const HOST_SYSFS: SysfsLook = { sys: HOST, sysfs: "/sys" };
