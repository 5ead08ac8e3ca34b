/**
 * SIGINT (Ctrl-C), SIGTERM (`kill`, systemd stopping a service) and SIGHUP
 * (the terminal or ssh session closing) during long work: `zb image
 * install`, `verify`, `create` and `sign`, and `info` waiting for its header.
 *
 * Without a handler the runtime dies at once: no failure line on stdout, a
 * progress bar left mid-line, an install journal that says "writing", a
 * create's spool files or a sign's `.OUT.zb-new` left beside the output.
 * With one, the first signal aborts an AbortSignal that the work checks
 * between chunks (lib/image): the work fails with a typed error
 * (INTERRUPTED 130, TERMINATED 143, HANGUP 129: 128 + the signal's number,
 * as a shell reports a killed command), so every cleanup of a failure runs
 * and runStage reports it like any other.
 *
 * The handlers are removed by that first signal: a second one has its
 * default action and kills the process. Limit: the runtime catches a signal
 * natively and runs the handler (which removes itself) only when the event
 * loop turns, so while the main thread is blocked in a system call (a
 * write(2) to a full stdout pipe nobody reads, a device that hangs, the
 * worker wait of the install pipeline) every signal is queued, and only
 * SIGKILL ends the process before that call returns.
 *
 * A signal that zb's parent set to be ignored is left ignored: `nohup`
 * ignores SIGHUP so that the work outlives the terminal, and a shell script
 * ignores SIGINT in its background jobs (`zb image install … &`). A handler
 * would override that inherited SIG_IGN (Bun installs it whatever was there)
 * and stop the very work the user meant to keep going.
 */
import { readFileSync } from "node:fs";
import { constants } from "node:os";
import { ZbError, type ErrorCode } from "../lib/errors.ts";

const SIGNALS = {
  SIGHUP: { code: "HANGUP", word: "hung up" },
  SIGINT: { code: "INTERRUPTED", word: "interrupted" },
  SIGTERM: { code: "TERMINATED", word: "terminated" },
} as const satisfies Partial<Record<NodeJS.Signals, { code: ErrorCode; word: string }>>;

export interface Stopper {
  /** Aborted by the first SIGHUP, SIGINT or SIGTERM; its reason is the ZbError to fail with. */
  readonly signal: AbortSignal;
  /** The work is over: remove the handlers (a signal from now on has its default action). */
  done(): void;
}

/**
 * Catch the first SIGHUP, SIGINT or SIGTERM while `action` runs; one that
 * the parent made zb ignore stays ignored.
 * @param action what the message says could not be done (`install rootfs`), or a function that says it when a signal comes
 * @param hint the next step after an interruption, if there is one (`--resume`)
 * @returns the signal to hand to the work, and done() for when it ends
 */
export function stopOnSignals(action: string | (() => string), hint?: string): Stopper {
  const stop = new AbortController();
  const ignored = ignoredSignals();
  const handlers = (Object.keys(SIGNALS) as (keyof typeof SIGNALS)[])
    .filter((name) => !ignored.has(name))
    .map((name) => {
      const { code, word } = SIGNALS[name];
      const handler = () => {
        done();
        const what = typeof action === "string" ? action : action();
        stop.abort(new ZbError(code, `cannot ${what}: ${word} (${name})`, hint === undefined ? {} : { hint }));
      };
      process.on(name, handler);
      return [name, handler] as const;
    });
  function done(): void {
    for (const [name, handler] of handlers) process.off(name, handler);
  }
  return { signal: stop.signal, done };
}

/**
 * Run `work` with the first SIGHUP, SIGINT or SIGTERM caught (stopOnSignals),
 * and the handlers removed when it ends, however it ends; `after` runs then
 * too (a progress bar's line is ended before any failure message).
 * @returns what `work` returns
 * @throws what `work` throws (the signal's ZbError once it has stopped it)
 */
export async function untilStopped<T>(action: string | (() => string), work: (signal: AbortSignal) => Promise<T>, opts: { after?: () => void } = {}): Promise<T> {
  const stop = stopOnSignals(action);
  try {
    return await work(stop.signal);
  } finally {
    stop.done();
    opts.after?.();
  }
}

/**
 * The signals among {@link SIGNALS} that this process ignores (SIG_IGN),
 * from the `SigIgn` mask of /proc/self/status (bit N-1 for signal N).
 * Without /proc none is taken as ignored: zb then handles all three, as
 * it did before it looked.
 */
function ignoredSignals(): Set<string> {
  let mask: bigint;
  try {
    const hex = /^SigIgn:\s*([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "latin1"))?.[1];
    if (hex === undefined) return new Set();
    mask = BigInt(`0x${hex}`);
  } catch {
    return new Set();
  }
  return new Set(Object.keys(SIGNALS).filter((name) => (mask >> BigInt(constants.signals[name as keyof typeof SIGNALS] - 1)) & 1n));
}
