/**
 * The rows of the boot state machine applied in the running OS (`zb`:
 * mark-good G, mark-bad B, rollback R, arm-try A, reboot X, enter the
 * enclave I) and by the enclave (`zboot`: installs S). Order matters:
 * machine.ts tries rows in table order.
 */
import { DEFAULTS, logEvent, otherSlot, type BootState, type Slot } from "./state.ts";
import { endTry, normalBoot, row, switchable, type Effect, type Row } from "./rules.ts";

/** Why a person cannot switch to `slot` (B5, R2), for a refusal. */
const notSwitchable = (s: BootState, slot: Slot) =>
  !s.slots[slot].valid ? `slot ${slot} is not valid` : `slot-${slot}/ holds no kernel or no .dtb file, so the firmware would boot nothing`;

/** End a try still armed or running, without failing it (B2, R1, S1): the slot is left as it is. */
function dropTry(s: BootState, why: string, effects: Effect[]): void {
  if (!s.trySlot) return;
  endTry(s, false, `pending try of ${s.trySlot} dropped ${why}`);
  effects.push({ kind: "delete-tryboot" });
}

export const OS_ROWS: readonly Row[] = [
  // ---- zb, in the running OS
  row({
    id: "G4", actor: "zb", event: "mark-good",
    when: "as G1, but the try slot is invalid (made so during the try: by hand, or by a zb without B3/S1 dropping the try)",
    then: "refused: a slot known to be broken is never committed (the try fails at the next reset, N3)",
    guard: (s, e) => e.tryboot && s.status === "trying" && s.trySlot === e.booted && !s.slots[e.booted].valid,
    refuse: (_s, e) => `slot ${e.booted} is not valid (zb_valid_${e.booted}=0): it cannot be committed; \`zb mark-bad\` ends the try now`,
  }),
  row({
    id: "G1", actor: "zb", event: "mark-good",
    when: "try boot of zb_try_slot, kernel_status=trying, the slot valid",
    then: "commit: zb_slot = try slot, kernel_status=\"\", counter 0, rewrite config.txt, remove tryboot.txt",
    guard: (s, e) => e.tryboot && s.status === "trying" && s.trySlot === e.booted && s.slots[e.booted].valid,
    apply: (s, e) => {
      s.committed = e.booted;
      s.slots[e.booted].bootCount = 0;
      s.fixups = 0;
      endTry(s, false, `slot ${e.booted} committed`);
      return [{ kind: "write-config" }, { kind: "delete-tryboot" }];
    },
  }),
  row({
    id: "G2", actor: "zb", event: "mark-good",
    when: "normal boot of zb_slot (or the rest of the try boot G1 committed: the cmdline keeps kernel_status=trying until the next reboot), no try pending, zb_mode=run",
    then: "counter of the slot := 0 (nothing written when it is 0 already)",
    guard: (s, e) => normalBoot(s, e) && s.status === "" && s.committed === e.booted && s.mode === "run",
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
      !normalBoot(s, e) && s.status === "try"
        ? `kernel_status is still "try" on a try boot of ${e.booted}: zbunlock did not run in this slot's initramfs`
        : !normalBoot(s, e)
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
    when: "as B2, but the other slot is not valid or its folder holds no kernel or no .dtb file, and there is no recovery enclave",
    then: "refused (nothing else could boot)",
    guard: (s, e) => e.which === "booted" && normalBoot(s, e) && s.committed === e.booted && !switchable(s, otherSlot(e.booted)) && !s.enclave,
    refuse: (s, e) => `${notSwitchable(s, otherSlot(e.booted))} and there is no recovery enclave (zboot/ holds no kernel or no .dtb file): nothing else could boot`,
  }),
  row({
    id: "B2", actor: "zb", event: "mark-bad",
    when: "mark-bad booted, on a normal boot of zb_slot (or the rest of the try boot G1 committed)",
    then: "slot invalid, any try dropped; zb_slot = other with a fresh counter if it is valid and its folder holds a kernel and a .dtb file, else zb_mode=recover; rewrite config.txt",
    guard: (s, e) => e.which === "booted" && normalBoot(s, e) && s.committed === e.booted,
    apply: (s, e) => {
      const other = otherSlot(e.booted);
      const effects: Effect[] = [{ kind: "write-config" }];
      // A try armed from here is moot once the committed slot changes (or recovery begins); left
      // in place it would name the committed slot as the one being tried.
      dropTry(s, "by mark-bad", effects);
      s.slots[e.booted].valid = false;
      // A fresh counter, as R1 gives: a person chose it, and an exhausted counter would send the next boot to N8.
      if (switchable(s, other)) {
        s.committed = other;
        s.slots[other].bootCount = 0;
      } else s.mode = "recover";
      logEvent(s, `slot ${e.booted} marked bad, next boot: ${s.mode === "recover" ? "recovery" : other}`);
      return effects;
    },
  }),
  row({
    id: "B6", actor: "zb", event: "mark-bad",
    when: "mark-bad other, when the other slot is zb_slot (this boot is a try or not the committed slot), or when this slot is invalid and there is no recovery enclave",
    then: "refused (it would take away the slot the device falls back to, or leave nothing bootable)",
    guard: (s, e) => e.which === "other" && (otherSlot(e.booted) === s.committed || (!s.slots[e.booted].valid && !s.enclave)),
    refuse: (s, e) =>
      otherSlot(e.booted) === s.committed
        ? `slot ${s.committed} is the committed slot, which the device falls back to: ${e.tryboot ? `confirm ${e.booted} first (zb mark-good)` : `make ${e.booted} the committed slot first (zb rollback)`}, then mark ${s.committed} bad`
        : `slot ${e.booted} is not valid and there is no recovery enclave (zboot/ holds no kernel or no .dtb file): with ${otherSlot(e.booted)} marked bad nothing could boot`,
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
    id: "R3", actor: "zb", event: "rollback",
    when: "a try is armed or running (kernel_status try or trying)",
    then: "abandon the update: the try failed (the try slot invalid, tryboot.txt removed), zb_slot kept: the next boot is the committed slot",
    // The untested slot is the one being abandoned: "the other slot than zb_slot" is the try slot
    // itself here, and R1 would commit it without a mark-good (mender rollback, rauc mark-bad booted).
    guard: (s) => s.status !== "" && s.trySlot !== null,
    apply: (s) => {
      endTry(s, true, `update to ${s.trySlot} abandoned by rollback, the try failed`);
      return [{ kind: "delete-tryboot" }];
    },
  }),
  row({
    id: "R1", actor: "zb", event: "rollback",
    when: "no try, the other slot than zb_slot is valid and its folder holds a kernel and a .dtb file, zb_mode=run",
    then: "zb_slot = other with a fresh counter, rewrite config.txt (takes effect at the next boot)",
    guard: (s) => s.mode === "run" && switchable(s, otherSlot(s.committed)),
    apply: (s) => {
      const to = otherSlot(s.committed);
      const effects: Effect[] = [{ kind: "write-config" }];
      // Only zb_try_slot left without a kernel_status (a hand edit): R3 took every real try.
      dropTry(s, "by rollback", effects);
      s.committed = to;
      s.slots[to].bootCount = 0;
      logEvent(s, `rollback to ${to} requested`);
      return effects;
    },
  }),
  row({
    id: "R2", actor: "zb", event: "rollback",
    when: "the other slot is invalid or its folder holds no kernel or no .dtb file, or zb_mode is not run",
    then: "refused",
    guard: () => true,
    refuse: (s) => {
      const other = otherSlot(s.committed);
      if (s.mode !== "run") return `zb_mode is ${s.mode}`;
      return s.slots[other].valid ? notSwitchable(s, other) : `slot ${other} is not valid (an interrupted install or a failed try)`;
    },
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
      // Not dropTry: its delete-tryboot would remove the tryboot.txt written for the enclave (commit.ts deletes last).
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
    refuse: (s) => (s.mode !== "run" ? `zb_mode is already ${s.mode}` : "there is no recovery enclave on the boot partition (zboot/ holds no kernel or no .dtb file)"),
  }),
  row({
    id: "S1", actor: "zboot", event: "install-begin",
    when: "the slot is not zb_slot",
    then: "the slot is invalid until install-end (an interrupted install leaves it so), zb_installing = the slot; a pending try of it is dropped",
    guard: (s, e) => e.slot !== s.committed,
    apply: (s, e) => {
      const effects: Effect[] = [];
      // A try of the slot being overwritten would boot half-written files.
      if (s.trySlot === e.slot) dropTry(s, "for an install into it", effects);
      s.slots[e.slot] = { valid: false, bootCount: 0, version: "", serial: 0 };
      s.installing = e.slot;
      logEvent(s, `install into ${e.slot} started`);
      return effects;
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
    id: "S4", actor: "zboot", event: "install-end",
    when: "the slot is zb_slot, or no install into it was begun (zb_installing is not the slot)",
    then: "refused (only a slot S1 made invalid before writing it may be made valid)",
    guard: (s, e) => e.slot === s.committed || s.installing !== e.slot,
    refuse: (s, e) =>
      e.slot === s.committed
        ? `slot ${e.slot} is the committed slot`
        : `no install into slot ${e.slot} was begun (zb_installing=${s.installing ?? ""}): install-begin first, so that an interrupted write leaves the slot invalid`,
  }),
  row({
    id: "S3", actor: "zboot", event: "install-end",
    when: "the slot is zb_installing",
    then: "the slot is valid, with its version and serial; zb_installing cleared",
    guard: () => true,
    apply: (s, e) => {
      s.slots[e.slot] = { valid: true, bootCount: 0, version: e.version, serial: e.serial };
      s.installing = null;
      logEvent(s, `install into ${e.slot} finished: ${e.version}`);
      return [];
    },
  }),
];
