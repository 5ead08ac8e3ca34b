/**
 * The env lock: an exclusive flock(2) on /var/lock/fw_printenv.lock, the
 * lock file U-Boot's fw_printenv/fw_setenv, libubootenv and SWUpdate take
 * around their reads and writes of the env. zb holds it across a whole
 * read-compute-write (a boot transition, `zb env set`), so a concurrent
 * `zb mark-good` and `fw_setenv` cannot each write a copy computed from the
 * same old env and silently undo the other.
 *
 * Re-entrant within the process (a transition's env write takes it again):
 * flock locks belong to an open file description, so a second open and
 * flock in the same process would wait for itself. Without /var/lock, or
 * without bun:ffi (a run without the JIT cannot bind libc: zbunlock as the
 * initramfs starts it, where it is the only writer anyway) the lock is
 * skipped. initramfs-tools' init does make /var/lock, so a zbunlock re-run
 * with the JIT (pkcs11, zymkey) takes it there, alone.
 *
 * Host access: open(2) of the lock file and flock(2) through lib/sys/libc.ts.
 */
import * as fs from "node:fs";
import { dirname } from "node:path";
import { ZbError } from "../errors.ts";
import { jitOff } from "./jit.ts";
import { libc } from "./libc.ts";

/** The lock file of U-Boot's tools/env/fw_env_main.c and libubootenv. */
export const ENV_LOCK = "/var/lock/fw_printenv.lock";

/** How long zb waits for another holder before it gives up (fw_setenv holds it for milliseconds). */
const WAIT_MS = 10_000;
const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;

const held = new Map<string, { fd: number; depth: number }>();

/**
 * Take the exclusive lock on `path`, waiting up to 10 s for another holder.
 * @returns the release; calling it twice is harmless
 * @throws {ZbError} IO when another process holds the lock for longer
 */
export function lockFile(path: string = ENV_LOCK): () => void {
  const mine = held.get(path);
  if (mine) {
    mine.depth += 1;
    return once(() => release(path));
  }
  if (!fs.existsSync(dirname(path)) || jitOff()) return () => undefined;
  let fd: number;
  try {
    fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
  } catch {
    return () => undefined; // a read-only /var/lock: nobody else can take it either
  }
  const deadline = performance.now() + WAIT_MS;
  try {
    while (libc().flock(fd, LOCK_EX | LOCK_NB) !== 0) {
      if (performance.now() >= deadline) {
        throw new ZbError("IO", `cannot lock the env: another process has held ${path} for ${WAIT_MS / 1000} s`, {
          hint: "a fw_setenv or zb run that hangs holds it; it is released when that process ends",
        });
      }
      Bun.sleepSync(20);
    }
  } catch (e) {
    fs.closeSync(fd); // libc may not load either: the descriptor goes in every case
    throw e;
  }
  held.set(path, { fd, depth: 1 });
  return once(() => release(path));
}

function release(path: string): void {
  const h = held.get(path);
  if (!h) return;
  h.depth -= 1;
  if (h.depth > 0) return;
  held.delete(path);
  libc().flock(h.fd, LOCK_UN);
  fs.closeSync(h.fd);
}

function once(f: () => void): () => void {
  let done = false;
  return () => {
    if (!done) f();
    done = true;
  };
}

/**
 * Try once to take an exclusive flock(2) on an open descriptor, without
 * waiting: the lock belongs to that open file description and goes when it is
 * closed, so it lasts exactly as long as the caller keeps the file open (no
 * release to forget, none left behind by a killed process). A second open of
 * the same file, in this process or another, is refused too. Unlike
 * {@link lockFile} it is neither re-entrant nor tied to a path.
 *
 * flock(2) fails with EWOULDBLOCK while another description holds a lock;
 * otherwise only with ENOLCK (no lock records left, or an NFS mount whose
 * lock manager does not answer). bun:ffi does not hand out errno, so both
 * read as "busy": the caller refuses, the safe side for an exclusive writer.
 * @returns "held" once taken; "busy" when another holder has it; "skipped"
 *   without bun:ffi (a run without the JIT cannot call libc), as lockFile
 * @throws {ZbError} INTERNAL when libc cannot be loaded
 * @example if (tryLockFd(fd) === "busy") throw new ZbError("TARGET_BUSY", …)
 */
export function tryLockFd(fd: number): "held" | "busy" | "skipped" {
  if (jitOff()) return "skipped";
  return libc().flock(fd, LOCK_EX | LOCK_NB) === 0 ? "held" : "busy";
}
