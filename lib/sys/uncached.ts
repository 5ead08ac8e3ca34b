/**
 * Reading a file or block device from the medium, not from the page cache.
 *
 * After write(2) and fdatasync(2) the page cache still holds what was
 * written, so a plain read returns those pages whatever the device kept. A
 * failing card, or a fake-capacity one whose controller drops the high
 * address bits, acknowledges every write and fdatasync; only a read that
 * reaches the device finds the loss. Two ways past the cache, best first:
 *
 *  - "direct": a second descriptor opened O_DIRECT (open(2): transfers go
 *    straight between the device and the buffer). It needs the buffer, the
 *    offset and the length aligned to the logical block size; 4096 covers
 *    every block size Linux allows for a page-sized system, so buffers come
 *    from {@link alignedBuffer} and reads are whole buffers at multiples of
 *    their size (the last one comes back short at the end of the file).
 *  - "dropped": where O_DIRECT is refused (EINVAL: tmpfs, some FUSE and
 *    network file systems), posix_fadvise(POSIX_FADV_DONTNEED) over the whole
 *    file first; the kernel drops the clean pages, so the reads that follow
 *    go to the device (posix_fadvise(2), through lib/sys/libc.ts).
 *  - "cached": neither worked (libc could not be loaded); the reads may come from the
 *    cache, and callers say so.
 */
import * as fs from "node:fs";
import { ioError } from "../errors.ts";
import { libc } from "./libc.ts";

export type UncachedMode = "direct" | "dropped" | "cached";

export interface UncachedReader {
  readonly mode: UncachedMode;
  /** Read up to `buf.length` bytes at `offset` on the I/O thread pool. @returns bytes read (fewer only at the end) @throws {ZbError} IO */
  read(buf: Uint8Array, offset: number): Promise<number>;
  close(): void;
}

/** The alignment of {@link alignedBuffer} and of O_DIRECT transfers. */
export const DIRECT_ALIGN = 4096;

/** A buffer of `size` bytes whose address is a multiple of {@link DIRECT_ALIGN} (O_DIRECT needs it). */
export function alignedBuffer(size: number): Uint8Array {
  const { ptr } = require("bun:ffi") as typeof import("bun:ffi");
  const whole = new Uint8Array(size + DIRECT_ALIGN);
  const skew = Number(ptr(whole)) % DIRECT_ALIGN;
  return whole.subarray(skew === 0 ? 0 : DIRECT_ALIGN - skew, (skew === 0 ? 0 : DIRECT_ALIGN - skew) + size);
}

/**
 * Open `path` read-only for reads that reach the medium.
 * @param opts `direct: false` goes straight to the fallback (tests; tmpfs accepts O_DIRECT since Linux 6.6)
 * @throws {ZbError} IO when it cannot be opened at all
 */
export function openUncached(path: string, opts: { direct?: boolean } = {}): UncachedReader {
  let fd: number;
  let mode: UncachedMode = "direct";
  try {
    if (opts.direct === false) throw Object.assign(new Error("O_DIRECT not asked for"), { code: "EINVAL" });
    fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
  } catch (e) {
    if ((e as { code?: string }).code !== "EINVAL") throw ioError(`open ${path} to read it back`, e);
    try {
      fd = fs.openSync(path, fs.constants.O_RDONLY);
    } catch (e2) {
      throw ioError(`open ${path} to read it back`, e2);
    }
    mode = dropCache(fd) ? "dropped" : "cached";
  }
  return {
    mode,
    read(buf, offset) {
      return new Promise((resolve, reject) => {
        let done = 0;
        const more = () =>
          fs.read(fd, buf, done, buf.length - done, offset + done, (e, n) => {
            if (e) return reject(ioError(`read ${path} back at byte ${offset + done}`, e));
            done += n;
            // A direct read stops short only at the end; a buffered one may stop anywhere.
            if (n === 0 || done === buf.length || mode === "direct") resolve(done);
            else more();
          });
        more();
      });
    },
    close() {
      fs.closeSync(fd);
    },
  };
}

const POSIX_FADV_DONTNEED = 4; // <linux/fadvise.h>, the same on every architecture Debian builds

/** posix_fadvise(fd, 0, 0, DONTNEED): drop the file's clean cached pages. @returns false when it could not be asked */
function dropCache(fd: number): boolean {
  try {
    // It returns the error number itself (not -1 and errno).
    return libc().posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) === 0;
  } catch {
    return false; // libc could not be loaded
  }
}
