/**
 * The vocabulary of the boot state machine (lib/bootstate/machine.ts): the
 * events each actor reports, the effects a row asks for, the row type, and
 * the small predicates the rows share.
 */
import { logEvent, type BootState, type Slot } from "./state.ts";

export type Actor = "zbunlock" | "zb" | "zboot";

/** What happened, as the actor sees it. `tryboot` = `kernel_status=trying` is on the kernel cmdline. */
export type Event =
  | { kind: "boot"; booted: Slot; tryboot: boolean }
  /**
   * zbunlock could not unlock the root after the boot event let the boot go on.
   * `permanent`: the HSM answered no-match/denied (another TPM, PCRs changed,
   * wrong PIN) — retrying this slot cannot help; otherwise (absent, failed)
   * it may be transient.
   */
  | { kind: "unlock-failed"; booted: Slot; tryboot: boolean; permanent: boolean; why: string }
  | { kind: "mark-good"; booted: Slot; tryboot: boolean }
  | { kind: "mark-bad"; which: "booted" | "other"; booted: Slot; tryboot: boolean }
  | { kind: "rollback" }
  | { kind: "arm-try"; slot: Slot; rearms?: number }
  | { kind: "reboot" }
  | { kind: "enter-install" }
  | { kind: "install-begin"; slot: Slot }
  | { kind: "install-end"; slot: Slot; version: string; serial: number };

export type EventKind = Event["kind"];

/** What each event does, for messages: `cannot arm a try: …`, not the event's name. */
export const EVENT_ACTION: Readonly<Record<EventKind, string>> = {
  boot: "record this boot",
  "unlock-failed": "record the failed unlock",
  "mark-good": "mark this slot good",
  "mark-bad": "mark the slot bad",
  rollback: "roll back",
  "arm-try": "arm a try",
  reboot: "reboot",
  "enter-install": "enter the recovery enclave",
  "install-begin": "begin the install",
  "install-end": "end the install",
};

export type Effect =
  /** Render tryboot.txt (and the try cmdline) from the new state. */
  | { kind: "write-tryboot" }
  /** Render config.txt (and the slot cmdline) from the new state. */
  | { kind: "write-config" }
  | { kind: "delete-tryboot" }
  | { kind: "reboot"; tryboot: boolean }
  /** zbunlock: go on booting this slot. */
  | { kind: "continue" };

type Ev<K extends EventKind> = Extract<Event, { kind: K }>;

/** One row of the table. */
export interface Row<K extends EventKind = EventKind> {
  id: string;
  actor: Actor;
  event: K;
  /** The guard, in words (docs and test names). */
  when: string;
  /** The outcome, in words. */
  then: string;
  guard: (s: BootState, e: Ev<K>) => boolean;
  /** Mutates the (cloned) state; returns the effects. */
  apply?: (s: BootState, e: Ev<K>) => Effect[];
  fallthrough?: boolean;
  /** For refusal rows: why. */
  refuse?: (s: BootState, e: Ev<K>) => string;
}

/** Fixup reboots allowed before zbunlock stops steering the firmware. */
export const MAX_FIXUPS = 2;

/**
 * A slot an automatic switch may go to: valid, below the limit, and with the
 * kernel and .dtb file the firmware needs in its folder (the firmware ignores
 * an os_prefix without them, and a config.txt pointing there boots nothing).
 */
export const usable = (s: BootState, slot: Slot) => switchable(s, slot) && s.slots[slot].bootCount < s.bootLimit;
/** A slot a person may switch to (B2, R1): valid and bootable; the counter is made fresh. */
export function switchable(s: BootState, slot: Slot): boolean {
  return s.slots[slot].valid && s.bootable[slot];
}
export const exhausted = (s: BootState, slot: Slot) => !s.slots[slot].valid || s.slots[slot].bootCount >= s.bootLimit;
/** What config.txt should boot: the committed slot, or zboot in recover mode. */
export const misdirected = (s: BootState, booted: Slot) => s.mode === "recover" || booted !== s.committed;

/**
 * For the running OS's rows (G2, G3, B2, B5): this boot counts as a normal boot. The command line
 * keeps `kernel_status=trying` until the next reboot, so once the booted slot is the committed one
 * and no try of it is pending (G1 committed this boot's try) the marker is stale: the rest of that
 * boot is a normal boot of the committed slot (A1 never tries the committed slot).
 */
export function normalBoot(s: BootState, e: { booted: Slot; tryboot: boolean }): boolean {
  return !e.tryboot || (e.booted === s.committed && s.trySlot !== e.booted);
}

/** End a try: clear the try variables, optionally mark the slot bad, log why. */
export function endTry(s: BootState, failed: boolean, why: string): void {
  const slot = s.trySlot;
  if (slot && failed) s.slots[slot].valid = false;
  s.status = "";
  s.trySlot = null;
  s.tryLeft = 0;
  logEvent(s, why);
}

export const row = <K extends EventKind>(r: Row<K>): Row => r as unknown as Row;
