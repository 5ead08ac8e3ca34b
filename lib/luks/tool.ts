/**
 * Running the device-mapper helper programs (cryptsetup, dmsetup): one
 * child with a bare environment, its output read from the start, a time
 * limit, and a bounded wait after the kill. CryptsetupCli
 * (lib/luks/cryptsetup.ts) and dmsetupRemover (lib/luks/dmsetup.ts) share it.
 *
 * Why the wait after SIGKILL is bounded: a process inside an uninterruptible
 * device-mapper ioctl ends only when the ioctl returns, and a grandchild may
 * hold its output pipes open after it ended. zbunlock's step before a panic
 * shell must answer in bounded time (local-top reboots when it says a volume
 * may be open), so after {@link KILL_WAIT_MS} the call gives up with an
 * error that says the program may still be working ({@link stillRunning}).
 *
 * Output that arrives after the caller gave up is wiped when it comes:
 * cryptsetup's stderr may echo a key.
 */
import type { Subprocess } from "bun";
import { ZbError } from "../errors.ts";
import { wipe } from "../secret.ts";

/** How long a killed child gets to end before the call stops waiting for it. */
export const KILL_WAIT_MS = 2000;

/** What a child left: exit status, stdout as text, stderr as bytes (the caller scrubs and wipes them). */
export interface ToolOutput {
  code: number;
  stdout: string;
  stderr: Uint8Array;
}

export interface ToolSpec {
  /** The program's name in messages ("cryptsetup", "dmsetup"). */
  program: string;
  /** Its resolved path ({@link resolveBinary}). */
  exe: string;
  args: string[];
  /** What failed, for the message: `cannot <what>: …`. */
  what: string;
  /** A pipe on stdin (for a key), else none. */
  stdin: boolean;
  /** Descriptors the child inherits as fd 3, 4, … */
  extraFds?: number[];
  /** Default {@link KILL_WAIT_MS}. */
  killWaitMs?: number;
}

/** A started helper program. */
export class ToolRun {
  readonly proc: Subprocess<"pipe" | "ignore", "pipe", "pipe">;
  private readonly output: Promise<ToolOutput>;
  private readonly spec: ToolSpec;

  /**
   * Spawn it. No time limit yet: a prepared cryptsetup open waits for a key
   * that may take a person minutes (a PIN), and that wait is not its work.
   * @throws {ZbError} LUKS_FAILED when it cannot be started
   */
  constructor(spec: ToolSpec) {
    this.spec = spec;
    try {
      this.proc = Bun.spawn([spec.exe, ...spec.args], { stdio: [spec.stdin ? "pipe" : "ignore", "pipe", "pipe", ...(spec.extraFds ?? [])], env: childEnv() });
    } catch (e) {
      throw new ZbError("LUKS_FAILED", `cannot ${spec.what}: cannot run ${spec.exe}: ${(e as Error).message}`, { cause: e });
    }
    // Read its output from the start: a child blocked writing to a full pipe would never ask for its key.
    const p = this.proc;
    this.output = Promise.all([new Response(p.stdout).text(), new Response(p.stderr).bytes(), p.exited]).then(([stdout, stderr, code]) => ({ code, stdout, stderr }));
    this.output.catch(() => undefined);
  }

  /** SIGKILL, then wait (bounded) for it to end. Never throws. @returns false when it had not ended by then */
  async kill(): Promise<boolean> {
    this.proc.kill("SIGKILL");
    const r = await within(this.output.catch(() => null), this.killWaitMs());
    if (r === LATE) {
      this.abandon();
      return false;
    }
    if (r !== null) wipe(r.stderr);
    return true;
  }

  /**
   * Wait for its end; after `timeoutMs` (counted from now) kill it and wait
   * at most the kill bound more. `feed` (the key handover) runs under the
   * same clock.
   * @throws {ZbError} LUKS_FAILED when it was killed by a signal, or did not
   *   end after the kill ({@link stillRunning} is true of that one); what `feed` throws
   */
  async result(timeoutMs: number, feed?: () => Promise<void>): Promise<ToolOutput> {
    const { program, what } = this.spec;
    let timedOut = false;
    let gaveUp: () => void = () => undefined;
    const late = new Promise<typeof LATE>((resolve) => (gaveUp = () => resolve(LATE)));
    let kill: ReturnType<typeof setTimeout> | undefined;
    const timer = setTimeout(() => {
      timedOut = true;
      this.proc.kill("SIGKILL");
      kill = setTimeout(gaveUp, this.killWaitMs());
    }, timeoutMs);
    let r: ToolOutput | typeof LATE;
    try {
      r = await Promise.race([(async () => (await feed?.(), await this.output))(), late]);
    } catch (e) {
      this.abandon();
      throw e;
    } finally {
      clearTimeout(timer);
      clearTimeout(kill);
    }
    const limit = `timeout ${timeoutMs / 1000} s`;
    if (r === LATE) {
      this.abandon();
      throw new ZbError("LUKS_FAILED", `cannot ${what}: ${program} did not end within ${this.killWaitMs() / 1000} s of SIGKILL (${limit}); it may still be changing the device`, { cause: { stillRunning: true } });
    }
    if (this.proc.signalCode) {
      wipe(r.stderr);
      throw new ZbError("LUKS_FAILED", `cannot ${what}: ${program} was killed by ${this.proc.signalCode}${timedOut ? ` (${limit})` : ""}`);
    }
    return r;
  }

  private killWaitMs(): number {
    return this.spec.killWaitMs ?? KILL_WAIT_MS;
  }

  /** No one waits for its output any more: wipe it when it comes. */
  private abandon(): void {
    this.output.then((o) => wipe(o.stderr), () => undefined);
  }
}

const LATE = Symbol("late");

/** `p`'s value, or LATE when it takes longer than `ms`. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | typeof LATE> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([p, new Promise<typeof LATE>((resolve) => (timer = setTimeout(() => resolve(LATE), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * True for the error of a helper that did not end after its kill: it may
 * still be creating or removing a device, so its device counts as open.
 * @example stillRunning(e) // after `await crypt.close("zb-root")` threw
 */
export function stillRunning(e: unknown): boolean {
  return e instanceof ZbError && (e.cause as { stillRunning?: boolean } | undefined)?.stillRunning === true;
}

/**
 * The last lines of a helper's stderr for a message: each line once (cryptsetup
 * repeats some, once per retry), at most 4 and 600 characters.
 * @example stderrDetail("busy\nbusy\n") // "busy"
 */
export function stderrDetail(stderr: string): string {
  const lines = [...new Set(stderr.split("\n").map((l) => l.trim()).filter((l) => l.length > 0))];
  return lines.slice(-4).join("; ").slice(0, 600);
}

/**
 * The program's path: `binary` itself when it has a '/', else found on PATH
 * plus the sbin directories (an initramfs PATH may lack them).
 * @throws {ZbError} LUKS_FAILED with `hint` when it is not found
 */
export function resolveBinary(binary: string, what: string, hint: string): string {
  if (binary.includes("/")) return binary;
  const found = Bun.which(binary, { PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin:/usr/bin:/bin` });
  if (!found) throw new ZbError("LUKS_FAILED", `cannot ${what}: ${binary} not found`, { hint });
  return found;
}

/** Only what the helpers need: a PATH for theirs, and untranslated messages (zb matches on them). */
function childEnv(): Record<string, string> {
  return { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" };
}
