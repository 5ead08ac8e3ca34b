/**
 * zbunlock's `--json` output (docs/json.md, "zbunlock --json"): one indented
 * document per run, whatever the run does. A boot makes up to two
 * transitions (the boot's, and after a failed unlock the unlock-failed one,
 * rows U1–U5), or none when its state cannot be recorded: printed as they
 * come, a script would get two documents on one path and none on another.
 * So the boot's transition document is the top level (its fields as
 * `zb reboot --json` prints them, where a reader of the one-transition output
 * looks), and the rest is added to it: `unrecorded`, and `unlock`, which
 * holds the second transition.
 *
 * The document is printed once: before any reboot (a real one does not
 * return), else when the run ends, and before the failure line of a run that
 * fails, which comes last as for every command (stages/run.ts).
 */
import type { UnlockOutcome } from "../../lib/unlock/unlock.ts";
import type { ZbError } from "../../lib/errors.ts";
import { err, out } from "../output.ts";
import { failureJson, failureLine, type FailureJson } from "../run.ts";
import type { TransitionJson } from "../zb/boot.ts";

/**
 * A transition of zbunlock's, or the one it could not make: then `unrecorded`
 * says why, `trace` and `effects` are empty, `envChanged` is false and
 * `state` is null.
 */
export type StepJson = TransitionJson & { unrecorded: FailureJson | null };

/** The unlock, when one was attempted. */
export type UnlockJson =
  | { ok: true; opened: { name: string; device: string }[] }
  | ({ ok: false; kind: string; permanent: boolean } & FailureJson & { transition: StepJson | null });

/** The whole document. `unlock` is null when no unlock was attempted (--no-unlock, --dry-run, a reboot, no credentials). */
export type ZbunlockJson = StepJson & { unlock: UnlockJson | null };

/** A transition's document with `unrecorded` last (null when it was made), as the docs list the fields. */
function asStep(doc: TransitionJson | StepJson): StepJson {
  return { ...doc, unrecorded: "unrecorded" in doc ? doc.unrecorded : null };
}

/** A transition that could not be made: `reboot` when a plain reboot is made instead. */
export function unrecordedStep(e: ZbError, o: { reboot: boolean; rebootSuppressed: boolean }): StepJson {
  return {
    dryRun: false,
    trace: [],
    effects: [],
    envChanged: false,
    reboot: o.reboot ? { argument: null } : null,
    rebootPerformed: o.reboot && !o.rebootSuppressed,
    proceed: !o.reboot,
    stale: null,
    warnings: [],
    state: null,
    unrecorded: failureJson(e),
  };
}

/** The run's document, filled in as the run goes; without --json every method does nothing. */
export class RunDocument {
  private boot: StepJson | null = null;
  private unlock: UnlockJson | null = null;
  private printed = false;

  constructor(private readonly enabled: boolean) {}

  /** The boot transition's document (report()'s), or the unrecorded boot's. */
  bootStep(doc: TransitionJson | StepJson): void {
    this.boot = asStep(doc);
  }

  /** The unlock's outcome; a failure's transition follows with {@link failureStep}. */
  unlocked(o: UnlockOutcome): void {
    this.unlock = o.ok ? { ok: true, opened: o.opened } : { ok: false, kind: o.kind, permanent: o.permanent, ...failureJson(o.error), transition: null };
  }

  /** The transition the failed unlock made (or could not make). */
  failureStep(doc: TransitionJson | StepJson): void {
    if (this.unlock?.ok === false) this.unlock.transition = asStep(doc);
  }

  /**
   * Print the document, once; nothing before the boot step is known (a usage
   * error: the failure line alone). A stdout that cannot be written must not
   * stop a boot: stderr and the exit status say it all the same.
   */
  flush(): void {
    if (!this.enabled || this.printed || this.boot === null) return;
    this.printed = true;
    const doc: ZbunlockJson = { ...this.boot, unlock: this.unlock };
    try {
      out(JSON.stringify(doc, null, 2) + "\n");
    } catch (e) {
      err(`zbunlock: warning: cannot write the JSON document: ${(e as Error).message}\n`);
    }
  }

  /** A run that ends with a failure it returns (not throws): the document, then the failure line. */
  fail(e: ZbError): void {
    if (!this.enabled) return;
    this.flush();
    try {
      out(failureLine(e));
    } catch {
      // As stages/run.ts: stderr and the status still say it.
    }
  }
}
