/**
 * SIGINT (Ctrl-C) and SIGTERM (`kill`, systemd stopping a service) during
 * long work: `zb image install`, `verify` and `create`.
 *
 * Without a handler the runtime dies at once: no failure line on stdout, a
 * progress bar left mid-line, an install journal that says "writing", a
 * create's spool files left beside the output. With one, the first signal
 * aborts an AbortSignal that the work checks between chunks (lib/image):
 * the work fails with a typed error (INTERRUPTED, exit 130, or TERMINATED,
 * exit 143: 128 + the signal's number, as a shell reports a killed command),
 * so every cleanup of a failure runs and runStage reports it like any other.
 *
 * The handlers are removed by that first signal: a second one has its
 * default action and kills the process, for work that does not reach its
 * next check (a write(2) to a device that hangs).
 */
import { ZbError, type ErrorCode } from "../lib/errors.ts";

const SIGNALS = { SIGINT: { code: "INTERRUPTED", word: "interrupted" }, SIGTERM: { code: "TERMINATED", word: "terminated" } } as const satisfies Record<string, { code: ErrorCode; word: string }>;

export interface Stopper {
  /** Aborted by the first SIGINT or SIGTERM; its reason is the ZbError to fail with. */
  readonly signal: AbortSignal;
  /** The work is over: remove the handlers (a signal from now on has its default action). */
  done(): void;
}

/**
 * Catch the first SIGINT or SIGTERM while `action` runs.
 * @param action what the message says could not be done (`install rootfs`), or a function that says it when a signal comes
 * @param hint the next step after an interruption, if there is one (`--resume`)
 * @returns the signal to hand to the work, and done() for when it ends
 */
export function stopOnSignals(action: string | (() => string), hint?: string): Stopper {
  const stop = new AbortController();
  const handlers = Object.entries(SIGNALS).map(([name, { code, word }]) => {
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
