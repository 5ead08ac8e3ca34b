/**
 * zb's one binding of libc through bun:ffi, opened lazily on first use (no
 * start-up cost for commands that never need it):
 * - pipe2(2), for passing keys to cryptsetup on an inherited pipe;
 * - sync(2) and syscall(2), for reboot(2) with LINUX_REBOOT_CMD_RESTART2;
 * - posix_fadvise(2), to drop a file's cached pages before reading it back;
 * - flock(2), for the env lock other env tools share (lib/sys/flock.ts);
 * - prctl(2) and getppid(2), to tie zbunlock's JIT child to its parent (lib/sys/jit.ts);
 * - ioctl(2), for LOOP_GET_STATUS64: which file a loop device is bound to (lib/sys/loopdev.ts);
 * - poll(2), to wait for a full non-blocking stdout or stderr to drain (lib/sys/fdwait.ts);
 * - free/memcpy/explicit_bzero, to take ownership of a buffer a C library
 *   allocated with malloc() and handed back through a `uint8_t**`
 *   out-parameter (Zymbit's zk_app_utils does this for every output; the
 *   caller owns the buffer): copy it out, wipe it, free it.
 *
 * The copy is made with memcpy into a fresh JS buffer rather than through
 * bun:ffi's toArrayBuffer(), so no JS object ever aliases C memory that is
 * about to be freed. Wiping uses explicit_bzero(3) (glibc ≥ 2.25, musl ≥ 1.1.20),
 * which the compiler may not elide, so a secret does not linger in the freed
 * heap chunk. libc is the one zb itself runs on: the compiled Bun binary links
 * glibc's libc.so.6, so the `free` found here is the one the library's malloc
 * pairs with.
 *
 * Host access: dlopen of libc, lazily on first use.
 */
import type { Pointer } from "bun:ffi";
import { ZbError } from "../errors.ts";
import { systemLibrary } from "./dlopen.ts";

/** A C pointer as bun:ffi passes it: a number from a `ptr` return, or a bigint read from an out-cell. */
export type CPtr = Pointer | bigint;

const LIBC_NAME = "libc.so.6";

const LIBC_SYMBOLS = {
  free: { args: ["ptr"], returns: "void" },
  memcpy: { args: ["ptr", "ptr", "u64"], returns: "ptr" },
  explicit_bzero: { args: ["ptr", "u64"], returns: "void" },
  pipe2: { args: ["ptr", "i32"], returns: "i32" },
  sync: { args: [], returns: "void" },
  syscall: { args: ["i64", "i64", "i64", "i64", "ptr"], returns: "i64" },
  posix_fadvise: { args: ["i32", "i64", "i64", "i32"], returns: "i32" },
  flock: { args: ["i32", "i32"], returns: "i32" },
  // prctl is variadic in C; glibc reads four further arguments whatever the option, so four are passed.
  prctl: { args: ["i32", "u64", "u64", "u64", "u64"], returns: "i32" },
  getppid: { args: [], returns: "i32" },
  // ioctl is variadic in C; every request zb makes passes one pointer.
  ioctl: { args: ["i32", "u64", "ptr"], returns: "i32" },
  // poll(struct pollfd *fds, nfds_t nfds, int timeout); nfds_t is unsigned long.
  poll: { args: ["ptr", "u64", "i32"], returns: "i32" },
} as const;

export type LibcSymbols = {
  free(p: CPtr): void;
  memcpy(dst: Uint8Array, src: CPtr, n: number): unknown;
  explicit_bzero(p: CPtr, n: number): void;
  pipe2(fds: Pointer, flags: number): number;
  sync(): void;
  syscall(nr: number, a: number, b: number, c: number, p: Pointer): number | bigint;
  posix_fadvise(fd: number, offset: number, len: number, advice: number): number;
  flock(fd: number, op: number): number;
  prctl(option: number, a: number, b: number, c: number, d: number): number;
  getppid(): number;
  ioctl(fd: number, request: number, arg: Pointer): number;
  poll(fds: Uint8Array, nfds: number, timeoutMs: number): number;
};

let cached: LibcSymbols | undefined;

/**
 * The libc symbols zb uses.
 * @throws {ZbError} INTERNAL when libc cannot be loaded
 */
export function libc(): LibcSymbols {
  if (cached) return cached;
  try {
    const { dlopen } = require("bun:ffi") as typeof import("bun:ffi");
    // By absolute path from the system's library folders (lib/sys/dlopen.ts: a bare name may reach the
    // working directory); elsewhere the loader's own answer, which for libc is the copy already loaded.
    cached = dlopen(systemLibrary(LIBC_NAME) ?? LIBC_NAME, LIBC_SYMBOLS).symbols as unknown as LibcSymbols;
  } catch (e) {
    throw new ZbError("INTERNAL", `internal error: cannot load ${LIBC_NAME}: ${(e as Error).message}`, { cause: e });
  }
  return cached;
}

/** True for a NULL pointer in either representation. */
export function isNull(p: CPtr | null | undefined): p is null | undefined {
  return p === null || p === undefined || p === 0 || p === 0n;
}

/**
 * free(3) a buffer a C library malloc'd. NULL is a no-op, as in C.
 * @throws {ZbError} INTERNAL when libc cannot be loaded
 * @example cFree(cell[0]!)
 */
export function cFree(p: CPtr | null): void {
  if (isNull(p)) return;
  libc().free(p);
}

/**
 * Overwrite `n` bytes at `p` with zeros (explicit_bzero(3)).
 * @throws {ZbError} INTERNAL when libc cannot be loaded
 * @example cWipe(p, 32)
 */
export function cWipe(p: CPtr, n: number): void {
  if (isNull(p) || n <= 0) return;
  libc().explicit_bzero(p, n);
}

/**
 * A JS copy of `n` bytes at `p` (memcpy into a new buffer).
 * @throws {ZbError} INTERNAL when libc cannot be loaded
 * @example const bytes = cCopy(p, n)
 */
export function cCopy(p: CPtr, n: number): Uint8Array {
  const out = new Uint8Array(n);
  if (n > 0 && !isNull(p)) libc().memcpy(out, p, n);
  return out;
}

/**
 * Take ownership of a malloc'd output buffer: copy `n` bytes out, wipe the C
 * copy when it held a secret, and free it — the free happens whatever else
 * fails. The returned copy belongs to the caller (who wipes it if secret).
 * @param n the size the library reported; out of [0, maxBytes] means the
 *   buffer is freed without being read (its real size is unknown, so it
 *   cannot be wiped either) and null is returned
 * @throws {ZbError} INTERNAL when libc cannot be loaded
 * @example const ct = takeMalloced(cell[0]!, size[0]!, { secret: false, maxBytes: 65536 })
 */
export function takeMalloced(p: CPtr, n: number, opts: { secret: boolean; maxBytes: number }): Uint8Array | null {
  try {
    if (isNull(p) || !Number.isSafeInteger(n) || n < 0 || n > opts.maxBytes) return null;
    const out = cCopy(p, n);
    if (opts.secret) cWipe(p, n);
    return out;
  } finally {
    cFree(p);
  }
}
