/**
 * A file or block device receiving a payload: reads and writes on one open
 * descriptor, fdatasync, and its size (block devices report 0 to stat; sysfs
 * tells). Injected into the install engine so tests can use files.
 *
 * Synchronous access at the descriptor's current offset uses plain
 * read(2)/write(2): in Bun 1.4 fs.readSync/writeSync with a position argument
 * run 7–14× slower for 4 MiB buffers than without (measured; the kernel sees
 * one pread64/pwrite64 either way), so sequential access takes the fast path.
 * The asynchronous writeAt is positioned (no such penalty measured) and may
 * use a second, O_DIRECT descriptor on the same open file.
 */
import * as fs from "node:fs";
import { ioError } from "../errors.ts";

/** O_DIRECT needs buffer, offset and length aligned to the logical block size: 4096 covers 512-byte and 4K devices. */
export const DIRECT_ALIGN = 4096;

export interface Target {
  readonly path: string;
  readonly blockDevice: boolean;
  /** Bytes available: the device size, or the file's current length. */
  size(): number;
  /**
   * Write `data` at `offset` on the I/O thread pool. Aligned writes
   * (DIRECT_ALIGN) go through a second descriptor opened with O_DIRECT:
   * no copy into the page cache and no writeback later — a fraction of the
   * CPU, and the running system's cache is not evicted by a slot's worth of
   * image. Unaligned writes, or a file system without O_DIRECT (tmpfs),
   * use the normal descriptor. `data` must not change until this settles.
   */
  writeAt(offset: number, data: Uint8Array): Promise<void>;
  /** Whether writeAt has used O_DIRECT (reporting, tests). */
  readonly direct: boolean;
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

/** @throws {ZbError} IO */
export function openTarget(path: string, opts: { create: boolean }): Target {
  let fd: number;
  try {
    fd = fs.openSync(path, opts.create ? fs.constants.O_RDWR | fs.constants.O_CREAT : fs.constants.O_RDWR, 0o600);
  } catch (e) {
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
  /** The O_DIRECT descriptor: undefined until first needed, null when not available. */
  let directFd: number | null | undefined;
  let usedDirect = false;
  const direct = (): number | null => {
    if (directFd === undefined) {
      try {
        // The same open file, not whatever the path names now.
        directFd = fs.openSync(`/proc/self/fd/${fd}`, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
      } catch {
        directFd = null;
      }
    }
    return directFd;
  };
  return {
    path,
    blockDevice,
    get direct() {
      return usedDirect;
    },
    writeAt(offset, data) {
      const aligned = offset % DIRECT_ALIGN === 0 && data.length % DIRECT_ALIGN === 0 && data.byteOffset % DIRECT_ALIGN === 0;
      return new Promise<void>((resolve, reject) => {
        const attempt = (viaDirect: boolean, done: number): void => {
          const d = viaDirect ? direct() : null;
          fs.write(d ?? fd, data, done, data.length - done, offset + done, (e, n) => {
            if (e && d !== null && (e as NodeJS.ErrnoException).code === "EINVAL") {
              // O_DIRECT refused after all (buffer or device alignment): plain writes from now on.
              fs.closeSync(d);
              directFd = null;
              return attempt(false, done);
            }
            if (e) return reject(ioError(`write ${path} at byte ${offset + done}`, e));
            if (d !== null) usedDirect = true;
            if (done + n < data.length) return attempt(viaDirect, done + n);
            resolve();
          });
        };
        attempt(aligned, 0);
      });
    },
    size: () => (blockDevice ? deviceSize(path) : fs.fstatSync(fd).size),
    read(offset, length) {
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
      if (typeof directFd === "number") fs.closeSync(directFd);
      directFd = null;
      fs.closeSync(fd);
    },
  };
}

function deviceSize(path: string): number {
  const name = fs.realpathSync(path).split("/").pop()!;
  return Number(fs.readFileSync(`/sys/class/block/${name}/size`, "utf8").trim()) * 512;
}
