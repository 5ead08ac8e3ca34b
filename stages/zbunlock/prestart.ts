/**
 * zbunlock started early: `zbunlock --go-file FILE` loads everything it will
 * need and then waits, touching nothing, until FILE exists.
 *
 * Why: the initramfs script init-top/prestart-zb starts zbunlock before udev
 * loads the drivers, and local-top/zb creates FILE when the devices are
 * there (initramfs-hooks/scripts/zb-functions). The runtime's start and the
 * module evaluation then overlap udev's work instead of following it: on a
 * Pi that is tens of milliseconds, under QEMU's TCG most of zbunlock's time
 * (every instruction the runtime executes the first time is translated).
 *
 * Polling a file, not reading a FIFO: a blocking read has no timeout, and
 * zbunlock must give up by itself after zb.prestart_wait. A 10 ms poll costs
 * nothing measurable and bounds the added latency.
 *
 * Taking the go renames FILE to FILE.taken: from then on zbunlock may change
 * state, so the boot script must not run a second zbunlock even if it never
 * learns this one's exit status; without FILE.taken it knows nothing was done.
 *
 * `--status-fd N` (the prestart FIFO, held open by the wrapper shell): the
 * exit status goes there as "exited STATUS" the moment process.exit starts,
 * so the boot script goes on without waiting for the runtime's teardown and
 * the wrapper's wake-up (about 0.02 s under QEMU, qemu/README.md Timings;
 * the wrapper still writes the same line once the process is gone, for a
 * zbunlock that dies without exiting).
 */
import { existsSync, renameSync, writeSync } from "node:fs";
import { ZbError } from "../../lib/errors.ts";

/** How often the go file is looked for. */
export const GO_POLL_MS = 10;
/** How long zbunlock waits for the go file unless zb.prestart_wait= says otherwise (udev's settle alone may take 120 s). */
export const DEFAULT_GO_WAIT_S = 180;

export interface GoSeams {
  exists(path: string): boolean;
  rename(from: string, to: string): void;
  now(): number;
  sleep(ms: number): Promise<void> | void;
}

// An asynchronous sleep: the HSM backend's warm-up (started before the wait, main.ts) goes on between the polls.
const host: GoSeams = { exists: existsSync, rename: renameSync, now: () => performance.now(), sleep: (ms) => Bun.sleep(ms) };

/**
 * Wait until `file` exists, then take it (rename to `file`.taken); the seconds waited.
 * @throws {ZbError} NOT_STARTED when it does not appear within `waitS` (nothing was done); IO when it cannot be taken
 */
export async function awaitGo(file: string, waitS: number, seams: GoSeams = host): Promise<number> {
  const start = seams.now();
  for (;;) {
    if (seams.exists(file)) {
      try {
        seams.rename(file, `${file}.taken`);
      } catch (e) {
        // Without the mark the boot script would take this run for one that did nothing.
        throw new ZbError("IO", `cannot take the go: renaming ${file}: ${(e as Error).message}; zbunlock did nothing`, { cause: e });
      }
      return (seams.now() - start) / 1000;
    }
    if (seams.now() - start >= waitS * 1000) {
      throw new ZbError("NOT_STARTED", `cannot go on: ${file} did not appear within ${waitS} s; zbunlock did nothing (the boot script runs it again)`);
    }
    await seams.sleep(GO_POLL_MS);
  }
}

/**
 * Write "exited STATUS" to descriptor `fdText` when the process exits (a
 * process.on("exit") handler: it runs before the runtime's teardown). A
 * failed write is ignored: the wrapper shell reports the status as well.
 * @throws {ZbError} USAGE when `fdText` is not a descriptor number above 2
 */
export function reportExitTo(fdText: string, on: (handler: (code: number) => void) => void = (h) => void process.on("exit", h), write: (fd: number, text: string) => void = (fd, t) => void writeSync(fd, t)): void {
  if (!/^\d{1,4}$/.test(fdText) || Number(fdText) < 3) throw new ZbError("USAGE", `cannot use --status-fd ${JSON.stringify(fdText)}: expected a descriptor number from 3 up`);
  const fd = Number(fdText);
  on((code) => {
    try {
      write(fd, `exited ${code}\n`);
    } catch {
      // The wrapper's line still comes.
    }
  });
}
