/**
 * Commit a step's effects in the one power-safe order used for every
 * transition. The env pair is the single source of truth and its write is
 * the commit point (a redundant-pair save is atomic: lib/env/store.ts);
 * every firmware file is derived from it and zbunlock re-derives config.txt
 * on the next boot when a cut left it stale (row N5).
 *
 *   1. tryboot.txt (and the try cmdline)  only read under the one-shot flag,
 *      which only zb sets, after step 2; a stale copy is harmless
 *   2. the env                             the commit point
 *   3. config.txt (and the slot cmdline)  stale until written → N5 fixes it
 *   4. remove tryboot.txt                 after the env no longer wants it
 *   5. reboot, or report "continue"
 *
 * So a cut before 2 leaves the old state in force (its files are intact or
 * only unread extras), and a cut after 2 leaves the new state in force with
 * derived files that the next boot repairs. test/lib/bootstate/powercut-*.test.ts
 * cut at every write, fsync and rename of every transition and check this order.
 *
 * A failure after 2 (config.txt cannot be replaced: a full or failing boot
 * partition) is treated the same way: the decision is recorded, so the
 * transition goes on with it (reboot or boot on) and reports the stale file
 * (Outcome.stale) instead of failing as if nothing had been recorded; the next
 * boot repairs the file (N5) or, when it keeps failing, boots on (N6).
 */
import type { Vars } from "../env/codec.ts";
import { ZbError } from "../errors.ts";
import type { Bootloader, GeneratedConfig, RebootArgs } from "../bootloader/types.ts";
import { step, type Actor, type Event, type Step } from "./machine.ts";
import { readState, stateChanges, withFacts } from "./state.ts";

export type Backend = Bootloader & GeneratedConfig & RebootArgs;

/** What a transition did. */
export interface Outcome extends Step {
  /** The env changed (and was written, unless dry-run). */
  envChanged: boolean;
  /** The reboot requested, if any: null argument = plain restart. */
  reboot: { argument: string | null } | null;
  /** zbunlock may boot on. */
  proceed: boolean;
  /** A derived file that could not be written after the env was (see above); the decision stands. */
  stale?: ZbError;
  /** What the user should hear though the transition went on (a slot folder that could not be read). */
  warnings: string[];
}

export interface RunOptions {
  actor: Actor;
  /** Compute and report, write nothing, reboot nothing. */
  dryRun?: boolean;
  /** Called last when the step wants a reboot; a real one does not return. */
  reboot?: (argument: string | null) => void;
  /** Called once everything is written, before any reboot: the last chance to tell the user. */
  announce?: (outcome: Outcome) => void;
}

/**
 * Read the state, apply the event, commit the effects in the documented order.
 * @throws {ZbError} STATE_INVALID, STATE_REFUSED, IO, ENV_*
 */
export function runTransition(backend: Backend, event: Event, opts: RunOptions): Outcome {
  // From the read to the last write under the env lock (lib/sys/flock.ts): another tool's write
  // in between would be undone by ours, computed from what it replaced. Released before any reboot.
  const release = backend.lock?.() ?? (() => undefined);
  let outcome: Outcome;
  try {
    outcome = commitStep(backend, event, opts);
  } finally {
    release();
  }
  opts.announce?.(outcome);
  if (outcome.reboot && !opts.dryRun) {
    if (!opts.reboot) throw new ZbError("INTERNAL", "internal error: a reboot was planned without a way to reboot");
    opts.reboot(outcome.reboot.argument);
  }
  return outcome;
}

/** Read, step, write: everything of a transition but telling and rebooting. */
function commitStep(backend: Backend, event: Event, opts: RunOptions): Outcome {
  const before: Vars = backend.readVars();
  // Without an enclave, recover and install lead nowhere bootable: the rows that would
  // enter them boot on, leave recovery, stop, retry or refuse instead (rows-boot.ts N10, N11,
  // U4, U5; rows-os.ts B5, I2).
  // Likewise a switch to a slot whose folder has no kernel or .dtb (N7, U2, B2, R1): those rows
  // fall through to recovery, booting on, or a refusal instead (rules.ts usable, switchable).
  // A folder that cannot be read counts as bootable, with a warning: an IO error there must
  // not stop every transition (zbunlock would boot unrecorded at every boot).
  // Both are looked up only when a row asks (state.ts withFacts), inside step(): an error of
  // the enclave's probe fails this transition as before, and only the transitions that need it.
  const warnings: string[] = [];
  const warn = (message: string) => warnings.push(message);
  const state = withFacts(readState(before), { enclave: () => backend.hasEnclave(), bootable: (slot) => backend.slotBootable(slot, warn) });
  const result = step(state, event, opts.actor);
  const changes = stateChanges(before, result.state);
  const rebootEffect = result.effects.find((e) => e.kind === "reboot");
  const outcome: Outcome = {
    ...result,
    envChanged: changes.length > 0,
    reboot: rebootEffect && rebootEffect.kind === "reboot" ? { argument: backend.rebootArgument(rebootEffect.tryboot) } : null,
    proceed: result.effects.some((e) => e.kind === "continue"),
    warnings,
  };
  if (opts.dryRun) return outcome;

  const has = (kind: string) => result.effects.some((e) => e.kind === kind);
  if (has("write-tryboot")) backend.writeTryboot(result.state);
  // Built on the read above: the env is read once per transition.
  if (changes.length > 0) backend.writeVars(changes, before);
  try {
    if (has("write-config")) backend.writeConfig(result.state);
    if (has("delete-tryboot")) backend.removeTryboot();
  } catch (e) {
    // Nothing recorded yet: the old state stands, and the caller hears the failure.
    if (changes.length === 0 || !(e instanceof ZbError)) throw e;
    outcome.stale = e;
  }
  return outcome;
}
