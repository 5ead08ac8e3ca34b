/**
 * Running the device-mapper helper programs (cryptsetup, dmsetup): one
 * child with a bare environment, its output read from the start, a time
 * limit, and a bounded wait after the kill. CryptsetupCli
 * (lib/luks/cryptsetup.ts) and dmsetupRemover (lib/luks/dmsetup.ts) share it.
 *
 * Why the wait after SIGKILL is bounded: a process inside an uninterruptible
 * device-mapper ioctl ends only when the ioctl returns. zbunlock's step
 * before a panic shell must answer in bounded time (local-top reboots when it
 * says a volume may be open), so a process that has not ended
 * {@link KILL_WAIT_MS} after its kill is given up on with an error that says
 * it may still be working ({@link stillRunning}).
 *
 * The end that counts is the process's own (its exit status), not the end
 * of its output: a child it forked may hold its pipes long after it exited,
 * and such a program ended, with a status to judge. Its output is taken as
 * far as it arrived within {@link OUTPUT_GRACE_MS} of the exit.
 *
 * Output that arrives after the caller gave up is wiped when it comes:
 * cryptsetup's stderr may echo a key.
 */
import type { Subprocess } from "bun";
import { ZbError } from "../errors.ts";
import { wipe } from "../secret.ts";

/** How long a killed child gets to end before the call stops waiting for it. */
export const KILL_WAIT_MS = 2000;
/**
 * How long output may take to reach its end after the process exited: what
 * it wrote is in the pipe by then, and only a process it left behind holding
 * the pipe keeps the end from coming.
 */
export const OUTPUT_GRACE_MS = 200;

/** What a child left: exit status, stdout as text, stderr as bytes (the caller scrubs and wipes them). */
export interface ToolOutput {
  code: number;
  stdout: string;
  stderr: Uint8Array;
  /**
   * The output had not reached its end {@link OUTPUT_GRACE_MS} after the exit
   * (a process the child left behind holds the pipe): what it printed may be
   * cut. A caller that parses stdout says so instead of reporting bad output.
   */
  cut: boolean;
}

/** A started child, as far as killing it goes. */
export type ToolProcess = Subprocess<"pipe" | "ignore", "pipe", "pipe">;

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
  /** Sends the kill; default SIGKILL. Tests pass one that does nothing: a process that does not end. */
  killer?: (proc: ToolProcess) => void;
}

/** The default {@link ToolSpec.killer}. */
const sigkill = (proc: ToolProcess): void => void proc.kill("SIGKILL");

/** A started helper program. */
export class ToolRun {
  readonly proc: ToolProcess;
  private readonly spec: ToolSpec;
  private readonly stdout: Sink;
  private readonly stderr: Sink;
  /** Its exit status or signal is known (Bun sets exitCode or signalCode when it reaped it). */
  private readonly exited: Promise<unknown>;

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
    this.stdout = new Sink(this.proc.stdout);
    this.stderr = new Sink(this.proc.stderr);
    this.exited = this.proc.exited.catch(() => undefined);
  }

  /** Kill it, then wait (bounded) for it to end. Never throws. @returns false when it had not ended by then */
  async kill(): Promise<boolean> {
    this.sendKill();
    await within(this.exited, this.killWaitMs());
    this.abandon();
    return this.ended();
  }

  /**
   * Wait for its end; after `timeoutMs` (counted from now) kill it and wait
   * at most the kill bound more. `feed` (the key handover) runs under the
   * same clock. When `feed` fails, the child is killed as at a timeout (the
   * killer, then the bounded wait): it waits for input that is not coming,
   * and part of a key may be in its stdin already.
   * @throws {ZbError} LUKS_FAILED when it was killed by a signal, or did not
   *   end after the kill ({@link stillRunning} is true of that one); what `feed`
   *   throws, once the child ended (else that error, marked still running)
   */
  async result(timeoutMs: number, feed?: () => Promise<void>): Promise<ToolOutput> {
    const { program, what } = this.spec;
    let timedOut = false;
    let gaveUp: () => void = () => undefined;
    const late = new Promise<typeof LATE>((resolve) => (gaveUp = () => resolve(LATE)));
    let kill: ReturnType<typeof setTimeout> | undefined;
    const timer = setTimeout(() => {
      timedOut = true;
      this.sendKill();
      kill = setTimeout(gaveUp, this.killWaitMs());
    }, timeoutMs);
    let r: typeof LATE | undefined;
    try {
      r = await Promise.race([(async () => (await feed?.(), void (await this.exited)))(), late]);
    } catch (e) {
      clearTimeout(timer);
      throw await this.failedFeed(e);
    } finally {
      clearTimeout(timer);
      clearTimeout(kill);
    }
    const limit = `timeout ${timeoutMs / 1000} s`;
    // The bound passed, but it may have ended just now: only a process with neither status is running.
    if (r === LATE && !this.ended()) {
      this.abandon();
      throw new ZbError("LUKS_FAILED", `cannot ${what}: ${program} did not end within ${this.killWaitMs() / 1000} s of SIGKILL (${limit}); it may still be changing the device`, { cause: { stillRunning: true } });
    }
    const drained = await within(Promise.all([this.stdout.done, this.stderr.done]), OUTPUT_GRACE_MS);
    const out: ToolOutput = { code: this.proc.exitCode ?? -1, stdout: new TextDecoder().decode(this.stdout.take()), stderr: this.stderr.take(), cut: drained === LATE };
    this.abandon(); // a process it left behind may still write
    if (this.proc.signalCode) {
      wipe(out.stderr);
      throw new ZbError("LUKS_FAILED", `cannot ${what}: ${program} was killed by ${this.proc.signalCode}${timedOut ? ` (${limit})` : ""}`);
    }
    return out;
  }

  /**
   * The error for a `feed` that threw, after the child's kill: `e` itself
   * when the child ended within the kill bound, else `e` marked still running
   * (it may have read a key and go on to open the device).
   */
  private async failedFeed(e: unknown): Promise<unknown> {
    if (await this.kill()) return e;
    const { program } = this.spec;
    const code = e instanceof ZbError ? e.code : "LUKS_FAILED";
    const msg = `${(e as Error).message}; ${program} did not end within ${this.killWaitMs() / 1000} s of SIGKILL, it may still be changing the device`;
    return new ZbError(code, msg, { cause: { stillRunning: true, error: e } });
  }

  private ended(): boolean {
    return this.proc.exitCode !== null || this.proc.signalCode !== null;
  }

  private sendKill(): void {
    try {
      (this.spec.killer ?? sigkill)(this.proc);
    } catch {
      // Gone already: what counts is whether it ended, seen through its status.
    }
  }

  private killWaitMs(): number {
    return this.spec.killWaitMs ?? KILL_WAIT_MS;
  }

  /** No one waits for its output any more: wipe what came and what comes. */
  private abandon(): void {
    this.stdout.discard();
    this.stderr.discard();
  }
}

/** A child's output stream, read to its end as it comes; pieces wiped once taken or discarded. */
class Sink {
  private parts: Uint8Array[] = [];
  private discarded = false;
  readonly done: Promise<void>;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = (async () => {
      const reader = stream.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        if (this.discarded) wipe(value);
        else this.parts.push(value);
      }
    })().catch(() => undefined);
  }

  /** What arrived so far, in one piece; the pieces are wiped. */
  take(): Uint8Array {
    const all = new Uint8Array(this.parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of this.parts) {
      all.set(p, at);
      at += p.length;
      wipe(p);
    }
    this.parts = [];
    return all;
  }

  /** Wipe what arrived and whatever still comes. */
  discard(): void {
    this.discarded = true;
    wipe(this.take());
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
