/**
 * Output of the stages: stdout, stderr and new output files.
 *
 * Synchronous write(2): process.stdout in Bun builds a Node stream on first
 * use, which costs ~10 ms of start-up — more than the whole run of
 * `zb env print` otherwise (bench/env-print.ts measures it). Plain write(2)
 * on fd 1/2 also needs no draining before process.exit.
 */
import { closeSync, fchmodSync, fsyncSync, openSync, rmSync, writeSync } from "node:fs";
import { ZbError, ioError } from "../lib/errors.ts";
import { waitWritable } from "../lib/sys/fdwait.ts";
import { isNullDevice } from "../lib/sys/sys.ts";

/**
 * Write all bytes to a file descriptor, retrying short writes and EAGAIN.
 * EAGAIN comes from a non-blocking pipe that is full (the flag is the
 * parent's, shared with zb): zb then waits in poll(2) for room rather than
 * retrying at once, which would spin a core until the reader caught up
 * (lib/sys/fdwait.ts). A reader that went away (EPIPE, `| head`, or poll's
 * POLLERR while waiting) ends the output quietly unless the bytes must
 * arrive (a secret or a sealed blob on stdout).
 */
function writeAll(fd: number, data: Uint8Array, what: string, mustArrive: boolean): void {
  const readerGone = (): void => {
    if (mustArrive) throw new ZbError("IO", `cannot write to ${what}: the reader went away (broken pipe); nothing was delivered in full`);
  };
  let done = 0;
  while (done < data.length) {
    try {
      done += writeSync(fd, data, done, data.length - done);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === "EAGAIN") {
        if (waitWritable(fd) === "closed") return readerGone();
        continue;
      }
      if (code === "EPIPE") return readerGone();
      throw ioError(`write to ${what}`, e);
    }
  }
}

/**
 * Text (UTF-8) or raw bytes to stdout.
 * @throws {ZbError} IO when stdout fails (a full disk), or is a closed pipe and `mustArrive`
 */
export function out(data: string | Uint8Array, opts: { mustArrive?: boolean } = {}): void {
  if (opts.mustArrive && isNullDevice(1)) {
    // A closed stdout (`>&-`) is reopened on /dev/null by the runtime: the bytes would vanish and zb say success.
    throw new ZbError("IO", "cannot write to stdout: it is /dev/null (closed when zb started?), and this output must arrive", { hint: "give -o FILE, or send stdout to a file or a pipe" });
  }
  writeAll(1, typeof data === "string" ? Buffer.from(data, "utf8") : data, "stdout", opts.mustArrive === true);
}

/** Text to stderr; a stderr that cannot be written has nobody to tell. */
export function err(text: string): void {
  try {
    writeAll(2, Buffer.from(text, "utf8"), "stderr", false);
  } catch {
    /* nowhere to report it */
  }
}

/** Clean-up on a path that already fails: the first error is the one to tell. */
function bestEffort(f: () => void): void {
  try {
    f();
  } catch {
    /* the caller throws the error that matters */
  }
}

/** An output file claimed before the work that fills it. */
export interface NewFile {
  /** Write `data`, fsync and close. @throws {ZbError} IO (the file is removed) */
  finish(data: Uint8Array): void;
  /** The work failed: close and remove the file. */
  abandon(): void;
}

/**
 * Create `path` for output, exclusively: an existing file (a key, a device,
 * an input of the same command, a dangling link) is never replaced. Commands
 * claim their output this way before they do work that cannot be undone, so
 * a path that cannot be written fails first. The mode is set exactly
 * (umask-independent).
 * @param setMode fchmod(2) by default; tests make it fail
 * @throws {ZbError} USAGE when the path exists; IO when it cannot be created (nothing is left behind)
 */
export function createNew(path: string, mode: number, what: string, setMode: (fd: number, mode: number) => void = fchmodSync): NewFile {
  let fd: number;
  try {
    fd = openSync(path, "wx", mode);
  } catch (e) {
    if ((e as { code?: string }).code === "EEXIST") {
      throw new ZbError("USAGE", `cannot write ${what} to ${path}: the file exists (zb never replaces an output file)`, { hint: "choose a new path, or remove the old file first" });
    }
    throw ioError(`create ${path}`, e);
  }
  try {
    setMode(fd, mode);
  } catch (e) {
    // The file is zb's and empty (vfat refuses chmod 0600 with EPERM): left behind,
    // the next run would refuse it as an existing output file.
    bestEffort(() => closeSync(fd));
    bestEffort(() => rmSync(path, { force: true }));
    throw ioError(`create ${path}`, e);
  }
  let open = true;
  const drop = () => {
    if (open) closeSync(fd);
    open = false;
    rmSync(path, { force: true });
  };
  return {
    finish(data) {
      try {
        writeAll(fd, data, path, true);
        fsyncSync(fd);
        closeSync(fd);
        open = false;
      } catch (e) {
        drop();
        throw e instanceof ZbError ? e : ioError(`write ${path}`, e);
      }
    },
    abandon: drop,
  };
}
