/**
 * The boot state machine: `step(state, event) → {state, effects, trace}`.
 * Pure. TABLE below is the single source of truth; docs/boot-flow.md is
 * written from it and test/lib/bootstate/machine.test.ts has a row per row.
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
import { cloneState, DEFAULTS, logEvent, otherSlot, type BootState, type Slot } from "./state.ts";

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

const usable = (s: BootState, slot: Slot) => s.slots[slot].valid && s.slots[slot].bootCount < s.bootLimit;
const exhausted = (s: BootState, slot: Slot) => !s.slots[slot].valid || s.slots[slot].bootCount >= s.bootLimit;
/** What config.txt should boot: the committed slot, or zboot in recover mode. */
const misdirected = (s: BootState, booted: Slot) => s.mode === "recover" || booted !== s.committed;

/** End a try: clear the try variables, optionally mark the slot bad, log why. */
function endTry(s: BootState, failed: boolean, why: string): void {
  const slot = s.trySlot;
  if (slot && failed) s.slots[slot].valid = false;
  s.status = "";
  s.trySlot = null;
  s.tryLeft = 0;
  logEvent(s, why);
}

const row = <K extends EventKind>(r: Row<K>): Row => r as unknown as Row;

export const TABLE: readonly Row[] = [
  // ---- zbunlock, any boot
  row({
    id: "Z1", actor: "zbunlock", event: "boot", fallthrough: true,
    when: "kernel_status holds a value zb does not know",
    then: "kernel_status=\"\" (snapd: any other non-empty value → \"\"), a pending try failed; then as below",
    guard: (s) => s.unknownStatus !== null,
    apply: (s) => {
      const raw = s.unknownStatus;
      s.unknownStatus = null;
      if (s.trySlot) endTry(s, true, `try of ${s.trySlot} failed: kernel_status was ${JSON.stringify(raw)}`);
      else logEvent(s, `kernel_status was ${JSON.stringify(raw)}, reset`);
      return [{ kind: "delete-tryboot" }];
    },
  }),
  // ---- zbunlock, try boot (tryboot.txt was read: kernel_status=trying on the cmdline)
  row({
    id: "T1", actor: "zbunlock", event: "boot",
    when: "try boot of the slot being tried, kernel_status=try",
    then: "kernel_status=trying, count the boot, boot on (snapd: try → trying)",
    guard: (s, e) => e.tryboot && s.status === "try" && s.trySlot === e.booted,
    apply: (s, e) => {
      s.status = "trying";
      s.slots[e.booted].bootCount += 1;
      logEvent(s, `try of ${e.booted} reached its initramfs`);
      return [{ kind: "continue" }];
    },
  }),
  row({
    id: "T2", actor: "zbunlock", event: "boot",
    when: "try boot, kernel_status=try, but of another slot than zb_try_slot",
    then: "drop the try (tryboot.txt and env disagree), reboot normally",
    guard: (s, e) => e.tryboot && s.status === "try",
    apply: (s, e) => {
      endTry(s, false, `tryboot started ${e.booted} but the try was of ${s.trySlot}, try dropped`);
      return [{ kind: "delete-tryboot" }, { kind: "reboot", tryboot: false }];
    },
  }),
  row({
    id: "T3", actor: "zbunlock", event: "boot",
    when: "try boot, kernel_status=trying (the try already ran its initramfs once)",
    then: "kernel_status=\"\", the try failed, slot invalid, reboot normally (snapd: any other value → \"\")",
    guard: (s, e) => e.tryboot && s.status === "trying",
    apply: (s) => {
      endTry(s, true, `try of ${s.trySlot} failed: tried again without mark-good`);
      return [{ kind: "delete-tryboot" }, { kind: "reboot", tryboot: false }];
    },
  }),
  row({
    id: "T4", actor: "zbunlock", event: "boot",
    when: "try boot, no try pending (kernel_status empty)",
    then: "remove the stale tryboot.txt, reboot normally",
    guard: (_s, e) => e.tryboot,
    apply: (s, e) => {
      logEvent(s, `unexpected try boot of ${e.booted} with no try pending`);
      return [{ kind: "delete-tryboot" }, { kind: "reboot", tryboot: false }];
    },
  }),
  // ---- zbunlock, normal boot (config.txt was read)
  row({
    id: "N1", actor: "zbunlock", event: "boot",
    when: "normal boot, kernel_status=try, zb_try_left > 0 (the try never reached its initramfs)",
    then: "zb_try_left - 1, re-arm: reboot \"0 tryboot\"",
    guard: (s) => s.status === "try" && s.tryLeft > 0,
    apply: (s) => {
      s.tryLeft -= 1;
      logEvent(s, `try of ${s.trySlot} did not reach its initramfs, re-armed (${s.tryLeft} left)`);
      return [{ kind: "write-tryboot" }, { kind: "reboot", tryboot: true }];
    },
  }),
  row({
    id: "N2", actor: "zbunlock", event: "boot", fallthrough: true,
    when: "normal boot, kernel_status=try, zb_try_left = 0",
    then: "the try failed (never reached its initramfs): kernel_status=\"\", slot invalid; then boot as usual",
    guard: (s) => s.status === "try",
    apply: (s) => {
      endTry(s, true, `try of ${s.trySlot} failed: never reached its initramfs`);
      return [{ kind: "delete-tryboot" }];
    },
  }),
  row({
    id: "N3", actor: "zbunlock", event: "boot", fallthrough: true,
    when: "normal boot, kernel_status=trying (the try ran its initramfs, then no mark-good)",
    then: "the try failed: kernel_status=\"\", slot invalid, no re-arm; then boot as usual",
    guard: (s) => s.status === "trying",
    apply: (s) => {
      endTry(s, true, `try of ${s.trySlot} failed after its initramfs (no mark-good)`);
      return [{ kind: "delete-tryboot" }];
    },
  }),
  row({
    id: "N4", actor: "zbunlock", event: "boot", fallthrough: true,
    when: "normal boot, zb_mode=install (the enclave was entered by tryboot and did not finish)",
    then: "zb_mode=run; then boot as usual",
    guard: (s) => s.mode === "install",
    apply: (s) => {
      s.mode = "run";
      logEvent(s, "the enclave did not finish, back to run mode");
      return [{ kind: "delete-tryboot" }];
    },
  }),
  row({
    id: "N11", actor: "zbunlock", event: "boot", fallthrough: true,
    when: "normal boot, zb_mode=recover, but there is no recovery enclave (zboot/ holds no kernel)",
    then: "zb_mode=run (recovery leads nowhere: N5 would point config.txt at an empty zboot/); then boot as usual",
    guard: (s) => s.mode === "recover" && !s.enclave,
    apply: (s) => {
      s.mode = "run";
      logEvent(s, "recovery mode without a recovery enclave, back to run mode");
      return [];
    },
  }),
  row({
    id: "N5", actor: "zbunlock", event: "boot",
    when: `normal boot of another slot than zb_slot, or zb_mode=recover; fewer than ${MAX_FIXUPS} fixups in a row`,
    then: "rewrite config.txt from the env (a cut left it stale), reboot normally",
    guard: (s, e) => misdirected(s, e.booted) && s.fixups < MAX_FIXUPS,
    apply: (s, e) => {
      s.fixups += 1;
      logEvent(s, `config.txt booted ${e.booted}, env says ${s.mode === "recover" ? "zboot" : s.committed}, rewritten`);
      return [{ kind: "write-config" }, { kind: "reboot", tryboot: false }];
    },
  }),
  row({
    id: "N6", actor: "zbunlock", event: "boot",
    when: `as N5, after ${MAX_FIXUPS} fixups in a row`,
    then: "stop steering the firmware (config.txt cannot be made to work), boot on",
    guard: (s, e) => misdirected(s, e.booted),
    apply: (s, e) => {
      s.fixups = 0;
      logEvent(s, `cannot steer the firmware away from ${e.booted}, booting it`);
      return [{ kind: "continue" }];
    },
  }),
  row({
    id: "N7", actor: "zbunlock", event: "boot",
    when: "normal boot of zb_slot, which is invalid or at zb_boot_limit; the other slot is valid and below it",
    then: "roll back: zb_slot = other, rewrite config.txt, reboot normally",
    guard: (s, e) => exhausted(s, e.booted) && usable(s, otherSlot(e.booted)),
    apply: (s, e) => {
      const to = otherSlot(e.booted);
      s.committed = to;
      logEvent(s, `slot ${e.booted} failed ${s.slots[e.booted].bootCount} boots${s.slots[e.booted].valid ? "" : " (invalid)"}, rolled back to ${to}`);
      return [{ kind: "write-config" }, { kind: "reboot", tryboot: false }];
    },
  }),
  row({
    id: "N10", actor: "zbunlock", event: "boot",
    when: "as N8, but there is no recovery enclave (zboot/ holds no kernel)",
    then: "boot zb_slot on anyway, logged: nothing else can boot, and a config.txt pointing at an empty zboot/ would boot nothing",
    guard: (s, e) => exhausted(s, e.booted) && !s.enclave,
    apply: (s, e) => {
      s.fixups = 0;
      logEvent(s, `slot ${e.booted} and ${otherSlot(e.booted)} both failed and there is no recovery enclave, booting ${e.booted} anyway`);
      return [{ kind: "continue" }];
    },
  }),
  row({
    id: "N8", actor: "zbunlock", event: "boot",
    when: "normal boot of zb_slot, invalid or at the limit, and the other slot is too",
    then: "zb_mode=recover, config.txt → zboot/, reboot normally",
    guard: (s, e) => exhausted(s, e.booted),
    apply: (s, e) => {
      s.mode = "recover";
      logEvent(s, `slot ${e.booted} and ${otherSlot(e.booted)} both failed, entering recovery`);
      return [{ kind: "write-config" }, { kind: "reboot", tryboot: false }];
    },
  }),
  row({
    id: "N9", actor: "zbunlock", event: "boot",
    when: "normal boot of zb_slot below the limit",
    then: "count the boot, boot on",
    guard: () => true,
    apply: (s, e) => {
      s.slots[e.booted].bootCount += 1;
      s.fixups = 0;
      return [{ kind: "continue" }];
    },
  }),
  // ---- zbunlock, after "boot on": the root could not be unlocked
  row({
    id: "U1", actor: "zbunlock", event: "unlock-failed",
    when: "try boot of zb_try_slot (kernel_status=trying)",
    then: "the try failed: kernel_status=\"\", slot invalid, remove tryboot.txt, reboot normally (back to zb_slot)",
    guard: (s, e) => e.tryboot && s.trySlot === e.booted,
    apply: (s, e) => {
      endTry(s, true, `try of ${e.booted} failed: cannot unlock: ${e.why}`);
      return [{ kind: "delete-tryboot" }, { kind: "reboot", tryboot: false }];
    },
  }),
  row({
    id: "U4", actor: "zbunlock", event: "unlock-failed",
    when: "as U2, but the other slot is not usable (invalid, or at its limit), and there is no recovery enclave",
    then: "stop: nothing changed but the log, no reboot (the initramfs panics; a person must repair the credentials or the HSM, and the slot stays valid for that)",
    guard: (s, e) => e.permanent && !usable(s, otherSlot(e.booted)) && !s.enclave,
    apply: (s, e) => {
      logEvent(s, `cannot unlock slot ${e.booted}: ${e.why}, no other slot and no recovery enclave, stopped`);
      return [];
    },
  }),
  row({
    id: "U2", actor: "zbunlock", event: "unlock-failed",
    when: "the HSM refused for good (no-match, denied), or the credentials are malformed, another slot's, or missing while the command line has `root=/dev/mapper/zb-root`: this slot's credentials cannot work",
    then: "slot invalid; zb_slot = other if it is valid and below the limit, else zb_mode=recover; rewrite config.txt, reboot normally",
    guard: (_s, e) => e.permanent,
    apply: (s, e) => {
      const other = otherSlot(e.booted);
      s.slots[e.booted].valid = false;
      if (usable(s, other)) s.committed = other;
      else s.mode = "recover";
      logEvent(s, `cannot unlock slot ${e.booted}: ${e.why}, next boot: ${s.mode === "recover" ? "recovery" : other}`);
      return [{ kind: "write-config" }, { kind: "reboot", tryboot: false }];
    },
  }),
  row({
    id: "U5", actor: "zbunlock", event: "unlock-failed",
    when: "as U3, but the slot is at its limit or invalid (booted by N10), the other slot is not usable, and there is no recovery enclave",
    then: "stop: nothing changed but the log, no reboot (a reboot would only come back here; the initramfs panics, and with panic=N on the command line tries again after N s)",
    guard: (s, e) => !e.permanent && exhausted(s, e.booted) && !usable(s, otherSlot(e.booted)) && !s.enclave,
    apply: (s, e) => {
      logEvent(s, `cannot unlock slot ${e.booted}: ${e.why}, and nothing else can boot, stopped`);
      return [];
    },
  }),
  row({
    id: "U3", actor: "zbunlock", event: "unlock-failed",
    when: "the HSM was absent or failed, the device is missing or ambiguous, or the credentials could not be read (I/O): may be transient",
    then: "reboot normally; the boot counter (N7/N8) decides when to give up on the slot",
    guard: () => true,
    apply: (s, e) => {
      logEvent(s, `cannot unlock slot ${e.booted}: ${e.why}, retrying (boot ${s.slots[e.booted].bootCount} of ${s.bootLimit})`);
      return [{ kind: "reboot", tryboot: false }];
    },
  }),
  // ---- zb, in the running OS
  row({
    id: "G1", actor: "zb", event: "mark-good",
    when: "try boot of zb_try_slot, kernel_status=trying",
    then: "commit: zb_slot = try slot, kernel_status=\"\", counter 0, rewrite config.txt, remove tryboot.txt",
    guard: (s, e) => e.tryboot && s.status === "trying" && s.trySlot === e.booted,
    apply: (s, e) => {
      s.committed = e.booted;
      s.slots[e.booted].valid = true;
      s.slots[e.booted].bootCount = 0;
      s.fixups = 0;
      endTry(s, false, `slot ${e.booted} committed`);
      return [{ kind: "write-config" }, { kind: "delete-tryboot" }];
    },
  }),
  row({
    id: "G2", actor: "zb", event: "mark-good",
    when: "normal boot of zb_slot, no try pending, zb_mode=run",
    then: "counter of the slot := 0 (nothing written when it is 0 already)",
    guard: (s, e) => !e.tryboot && s.status === "" && s.committed === e.booted && s.mode === "run",
    apply: (s, e) => {
      s.slots[e.booted].bootCount = 0;
      return [];
    },
  }),
  row({
    id: "G3", actor: "zb", event: "mark-good",
    when: "anything else",
    then: "refused",
    guard: () => true,
    refuse: (s, e) =>
      e.tryboot && s.status === "try"
        ? `kernel_status is still "try" on a try boot of ${e.booted}: zbunlock did not run in this slot's initramfs`
        : e.tryboot
          ? `this is a try boot of ${e.booted} but no try of it is pending (kernel_status=${JSON.stringify(s.status)}, zb_try_slot=${s.trySlot ?? ""})`
          : s.committed !== e.booted
            ? `the booted slot ${e.booted} is not the committed slot ${s.committed}${s.mode === "run" ? "" : ` (zb_mode=${s.mode})`}`
            : s.status !== ""
              ? `a try of slot ${s.trySlot ?? "?"} is armed (kernel_status=${JSON.stringify(s.status)}): this normal boot of ${e.booted} is not the one to confirm`
              : `zb_mode is ${s.mode}, not run`,
  }),
  row({
    id: "B1", actor: "zb", event: "mark-bad",
    when: "mark-bad booted, on the try boot of zb_try_slot",
    then: "end the try as failed (slot invalid, tryboot.txt removed); the next boot is the committed slot",
    guard: (s, e) => e.which === "booted" && e.tryboot && s.status === "trying" && s.trySlot === e.booted,
    apply: (s, e) => {
      endTry(s, true, `slot ${e.booted} marked bad during its try`);
      return [{ kind: "delete-tryboot" }];
    },
  }),
  row({
    id: "B5", actor: "zb", event: "mark-bad",
    when: "as B2, but the other slot is not valid and there is no recovery enclave",
    then: "refused (nothing else could boot)",
    guard: (s, e) => e.which === "booted" && !e.tryboot && s.committed === e.booted && !s.slots[otherSlot(e.booted)].valid && !s.enclave,
    refuse: (_s, e) => `slot ${otherSlot(e.booted)} is not valid and there is no recovery enclave (zboot/ holds no kernel): nothing else could boot`,
  }),
  row({
    id: "B2", actor: "zb", event: "mark-bad",
    when: "mark-bad booted, on a normal boot of zb_slot",
    then: "slot invalid; zb_slot = other with a fresh counter if it is valid, else zb_mode=recover; rewrite config.txt",
    guard: (s, e) => e.which === "booted" && !e.tryboot && s.committed === e.booted,
    apply: (s, e) => {
      const other = otherSlot(e.booted);
      s.slots[e.booted].valid = false;
      // A fresh counter, as R1 gives: a person chose it, and an exhausted counter would send the next boot to N8.
      if (s.slots[other].valid) {
        s.committed = other;
        s.slots[other].bootCount = 0;
      } else s.mode = "recover";
      logEvent(s, `slot ${e.booted} marked bad, next boot: ${s.mode === "recover" ? "recovery" : other}`);
      return [{ kind: "write-config" }];
    },
  }),
  row({
    id: "B3", actor: "zb", event: "mark-bad",
    when: "mark-bad other",
    then: "the other slot invalid; a pending try of it is dropped",
    guard: (_s, e) => e.which === "other",
    apply: (s, e) => {
      const other = otherSlot(e.booted);
      s.slots[other].valid = false;
      const effects: Effect[] = [];
      if (s.trySlot === other) {
        endTry(s, false, `pending try of ${other} dropped`);
        effects.push({ kind: "delete-tryboot" });
      }
      logEvent(s, `slot ${other} marked bad`);
      return effects;
    },
  }),
  row({
    id: "B4", actor: "zb", event: "mark-bad",
    when: "mark-bad booted on any other boot",
    then: "refused",
    guard: () => true,
    refuse: (s, e) => `the booted slot ${e.booted} is neither the committed slot ${s.committed} nor the slot being tried`,
  }),
  row({
    id: "R1", actor: "zb", event: "rollback",
    when: "the other slot than zb_slot is valid, zb_mode=run",
    then: "zb_slot = other with a fresh counter, any try dropped, rewrite config.txt (takes effect at the next boot)",
    guard: (s) => s.mode === "run" && s.slots[otherSlot(s.committed)].valid,
    apply: (s) => {
      const to = otherSlot(s.committed);
      const effects: Effect[] = [{ kind: "write-config" }];
      if (s.trySlot) {
        endTry(s, false, `pending try of ${s.trySlot} dropped by rollback`);
        effects.push({ kind: "delete-tryboot" });
      }
      s.committed = to;
      s.slots[to].bootCount = 0;
      logEvent(s, `rollback to ${to} requested`);
      return effects;
    },
  }),
  row({
    id: "R2", actor: "zb", event: "rollback",
    when: "the other slot is invalid, or zb_mode is not run",
    then: "refused",
    guard: () => true,
    refuse: (s) =>
      s.mode !== "run" ? `zb_mode is ${s.mode}` : `slot ${otherSlot(s.committed)} is not valid (an interrupted install or a failed try)`,
  }),
  row({
    id: "A1", actor: "zb", event: "arm-try",
    when: "a valid slot that is not zb_slot, no try pending, zb_mode=run",
    then: `kernel_status=try, zb_try_slot, zb_try_left (default ${DEFAULTS.tryRearms}), write tryboot.txt, reboot "0 tryboot"`,
    guard: (s, e) => e.slot !== s.committed && s.slots[e.slot].valid && s.status === "" && s.mode === "run",
    apply: (s, e) => {
      s.status = "try";
      s.trySlot = e.slot;
      s.tryLeft = e.rearms ?? DEFAULTS.tryRearms;
      s.slots[e.slot].bootCount = 0;
      logEvent(s, `try of ${e.slot} armed`);
      return [{ kind: "write-tryboot" }, { kind: "reboot", tryboot: true }];
    },
  }),
  row({
    id: "A2", actor: "zb", event: "arm-try",
    when: "anything else",
    then: "refused",
    guard: () => true,
    refuse: (s, e) =>
      e.slot === s.committed
        ? `slot ${e.slot} is the committed slot`
        : !s.slots[e.slot].valid
          ? `slot ${e.slot} is not valid (zb_valid_${e.slot}=0: never installed, an interrupted install or a failed try; an install marks it valid at its end)`
          : s.status !== ""
            ? `a try of ${s.trySlot} is pending (kernel_status=${s.status})`
            : `zb_mode is ${s.mode}`,
  }),
  row({
    id: "X1", actor: "zb", event: "reboot",
    when: "always",
    then: "reboot normally (config.txt)",
    guard: () => true,
    apply: () => [{ kind: "reboot", tryboot: false }],
  }),
  row({
    id: "I1", actor: "zb", event: "enter-install",
    when: "zb_mode=run, and a recovery enclave is there (zboot/ holds a kernel)",
    then: "zb_mode=install, any try dropped, tryboot.txt → zboot/, reboot \"0 tryboot\" (a crashing enclave falls back)",
    guard: (s) => s.mode === "run" && s.enclave,
    apply: (s) => {
      if (s.trySlot) endTry(s, false, `pending try of ${s.trySlot} dropped for the enclave`);
      s.mode = "install";
      logEvent(s, "entering the enclave to install");
      return [{ kind: "write-tryboot" }, { kind: "reboot", tryboot: true }];
    },
  }),
  row({
    id: "I2", actor: "zb", event: "enter-install",
    when: "zb_mode is install or recover, or there is no recovery enclave",
    then: "refused",
    guard: () => true,
    refuse: (s) => (s.mode !== "run" ? `zb_mode is already ${s.mode}` : "there is no recovery enclave on the boot partition (zboot/ holds no kernel)"),
  }),
  row({
    id: "S1", actor: "zboot", event: "install-begin",
    when: "the slot is not zb_slot",
    then: "the slot is invalid until install-end (an interrupted install leaves it so)",
    guard: (s, e) => e.slot !== s.committed,
    apply: (s, e) => {
      s.slots[e.slot] = { valid: false, bootCount: 0, version: "", serial: 0 };
      logEvent(s, `install into ${e.slot} started`);
      return [];
    },
  }),
  row({
    id: "S2", actor: "zboot", event: "install-begin",
    when: "the slot is zb_slot",
    then: "refused (the active slot is never written)",
    guard: () => true,
    refuse: (_s, e) => `slot ${e.slot} is the committed slot`,
  }),
  row({
    id: "S3", actor: "zboot", event: "install-end",
    when: "always",
    then: "the slot is valid, with its version and serial",
    guard: () => true,
    apply: (s, e) => {
      s.slots[e.slot] = { valid: true, bootCount: 0, version: e.version, serial: e.serial };
      logEvent(s, `install into ${e.slot} finished: ${e.version}`);
      return [];
    },
  }),
];

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
    if (r.refuse) throw new ZbError("STATE_REFUSED", `cannot ${event.kind}: ${r.refuse(s, event as never)}`);
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
