/**
 * The boot state machine: `step(state, event) → {state, effects, trace}`.
 * Pure. TABLE is the single source of truth (its rows in rows-boot.ts and
 * rows-os.ts, their vocabulary in rules.ts); docs/boot-flow.md is written
 * from it and test/lib/bootstate/machine.test.ts has a row per row.
 *
 * Each row names its actor: `zbunlock` (the initramfs of a slot), `zb` (the
 * running OS) or `zboot` (the enclave). Rows are tried in order; the first
 * whose guard holds applies. A row marked `fallthrough` cleans up and lets the
 * same event be evaluated again on the cleaned state (at most once per row).
 * A row with `refuse` rejects the event with STATE_REFUSED and changes nothing.
 *
 * Effects are *what* to do; commit.ts decides the power-safe *order*. A
 * changed state always implies an env write, so rows do not list it.
 */
import { ZbError } from "../errors.ts";
import { cloneState, type BootState } from "./state.ts";
import { BOOT_ROWS } from "./rows-boot.ts";
import { OS_ROWS } from "./rows-os.ts";
import { EVENT_ACTION, type Actor, type Effect, type Event, type Row } from "./rules.ts";

export type { Actor, Effect, Event, EventKind, Row } from "./rules.ts";
export { MAX_FIXUPS } from "./rules.ts";

/** Every row, zbunlock's first: the order in which step() tries them. */
export const TABLE: readonly Row[] = [...BOOT_ROWS, ...OS_ROWS];

/** What step() decided. */
export interface Step {
  state: BootState;
  effects: Effect[];
  /** Ids of the rows that applied, in order. */
  trace: string[];
}

/**
 * Apply an event.
 * @throws {ZbError} STATE_REFUSED when the event is not allowed in this state
 */
export function step(state: BootState, event: Event, actor?: Actor): Step {
  const s = cloneState(state);
  const effects: Effect[] = [];
  const trace: string[] = [];
  for (let guard = 0; guard < TABLE.length; guard++) {
    const r = TABLE.find((x) => x.event === event.kind && !trace.includes(x.id) && x.guard(s, event as never));
    if (!r) throw new ZbError("INTERNAL", `internal error: no transition for ${event.kind}`);
    if (actor && r.actor !== actor) throw new ZbError("INTERNAL", `internal error: ${actor} cannot ${event.kind} (row ${r.id} belongs to ${r.actor})`);
    trace.push(r.id);
    if (r.refuse) throw new ZbError("STATE_REFUSED", `cannot ${EVENT_ACTION[event.kind]}: ${r.refuse(s, event as never)}`);
    effects.push(...(r.apply?.(s, event as never) ?? []));
    if (!r.fallthrough) return { state: s, effects: dedupe(effects), trace };
  }
  throw new ZbError("INTERNAL", "internal error: transition loop");
}

function dedupe(effects: Effect[]): Effect[] {
  const seen = new Set<string>();
  return effects.filter((e) => {
    const k = JSON.stringify(e);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}
