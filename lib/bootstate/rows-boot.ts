/**
 * The rows of the boot state machine that zbunlock applies, in the
 * initramfs of the slot the firmware started: any boot (Z), a try boot (T),
 * a normal boot (N), and a root that could not be unlocked (U). Order
 * matters: machine.ts tries rows in table order.
 */
import { logEvent, logOnce, otherSlot } from "./state.ts";
import { endTry, exhausted, MAX_FIXUPS, misdirected, row, usable, type Row } from "./rules.ts";

export const BOOT_ROWS: readonly Row[] = [
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
    when: "try boot of the slot being tried, kernel_status=try, the slot valid",
    then: "kernel_status=trying, count the boot, boot on (snapd: try → trying)",
    guard: (s, e) => e.tryboot && s.status === "try" && s.trySlot === e.booted && s.slots[e.booted].valid,
    apply: (s, e) => {
      s.status = "trying";
      s.slots[e.booted].bootCount += 1;
      logEvent(s, `try of ${e.booted} reached its initramfs`);
      return [{ kind: "continue" }];
    },
  }),
  row({
    id: "T5", actor: "zbunlock", event: "boot",
    when: "as T1, but the slot is invalid (made so after the try was armed: by hand, or by a zb without B3/S1 dropping the try)",
    then: "the try failed as in T3: kernel_status=\"\", remove tryboot.txt, reboot normally (a slot known to be broken is not run, nor later committed)",
    guard: (s, e) => e.tryboot && s.status === "try" && s.trySlot === e.booted,
    apply: (s, e) => {
      endTry(s, true, `try of ${e.booted} failed: the slot is not valid`);
      return [{ kind: "delete-tryboot" }, { kind: "reboot", tryboot: false }];
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
    when: "normal boot, zb_mode=recover, but there is no recovery enclave (zboot/ holds no kernel or no .dtb file)",
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
    when: "normal boot of zb_slot, which is invalid or at zb_boot_limit; the other slot is valid, below it, and its folder holds a kernel and a .dtb file",
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
    when: "as N8, but there is no recovery enclave (zboot/ holds no kernel or no .dtb file)",
    then: "boot zb_slot on anyway, logged once: nothing else can boot, and a config.txt pointing at an empty zboot/ would boot nothing",
    guard: (s, e) => exhausted(s, e.booted) && !s.enclave,
    apply: (s, e) => {
      s.fixups = 0;
      logOnce(s, `slot ${e.booted} and ${otherSlot(e.booted)} both failed and there is no recovery enclave, booting ${e.booted} anyway`);
      return [{ kind: "continue" }];
    },
  }),
  row({
    id: "N8", actor: "zbunlock", event: "boot",
    when: "normal boot of zb_slot, invalid or at the limit, and the other slot is too, or its folder lacks a kernel or a .dtb file",
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
    when: "as U2, but the other slot is not usable (invalid, at its limit, or no kernel or no .dtb file in its folder), and there is no recovery enclave",
    then: "stop: nothing changed but the log, no reboot (the initramfs panics; a person must repair the credentials or the HSM, and the slot stays valid for that)",
    guard: (s, e) => e.permanent && !usable(s, otherSlot(e.booted)) && !s.enclave,
    apply: (s, e) => {
      logEvent(s, `cannot unlock slot ${e.booted}: ${e.why}, no other slot and no recovery enclave, stopped`);
      return [];
    },
  }),
  row({
    id: "U2", actor: "zbunlock", event: "unlock-failed",
    when: "the HSM refused for good (no-match, denied), or the credentials are malformed, another slot's, or missing while the command line has `root=/dev/mapper/zb-root`, or its /etc/zb/hsm.conf cannot be used: this slot's credentials cannot work",
    then: "slot invalid; zb_slot = other if it is valid, below the limit and holds a kernel and a .dtb file, else zb_mode=recover; rewrite config.txt, reboot normally",
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
    when: "as U3, but the slot is at its limit or invalid, the other slot is not usable, and there is no recovery enclave (the boot counter has nothing left to decide)",
    then: "reboot normally and try the slot again at every boot (an HSM that comes late), logged once: after the first round the env is not written again",
    guard: (s, e) => !e.permanent && exhausted(s, e.booted) && !usable(s, otherSlot(e.booted)) && !s.enclave,
    apply: (s, e) => {
      logOnce(s, `cannot unlock slot ${e.booted}: ${e.why}, and nothing else can boot, retrying at every boot`);
      return [{ kind: "reboot", tryboot: false }];
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
];
