/**
 * Every row of the transition table, as env text before → env text after
 * (only the variables that change; `name=` = deleted), with the rows that
 * applied and the effects. snapd's own kernel_status cases (envspec.md §2.3,
 * boot/bootstate20.go, boot/initramfs.go) are marked "snapd".
 */
import { describe, expect, test } from "bun:test";
import { step, TABLE, type Event } from "../../../lib/bootstate/machine.ts";
import { readState, stateChanges } from "../../../lib/bootstate/state.ts";

/**
 * A fresh `zb init --slot a --valid a,b` env, as text. The words `no-enclave`
 * and `no-kernel-a`/`no-kernel-b` in a row's `before` are not variables: the
 * boot partition has no zboot/ kernel, or no kernel (or .dtb) in slot-X/.
 */
const BASE =
  "zb_slot=a zb_boot_limit=3 zb_mode=run zb_serial_floor=0 zb_seq=1 " +
  "zb_valid_a=1 zb_valid_b=1 zb_boot_count_a=0 zb_boot_count_b=0 zb_serial_a=0 zb_serial_b=0";

function env(text: string): Map<string, string> {
  const vars = new Map<string, string>();
  for (const w of `${BASE} ${text}`.split(/\s+/).filter((w) => w !== "" && !FACTS.includes(w))) {
    const eq = w.indexOf("=");
    const [k, v] = [w.slice(0, eq), w.slice(eq + 1)];
    // zb_log entries hold spaces: a row writes them as underscores.
    if (v === "") vars.delete(k);
    else vars.set(k, k === "zb_log" ? v.replaceAll("_", " ") : v);
  }
  return vars;
}

const NO_ENCLAVE = "no-enclave";
const FACTS = [NO_ENCLAVE, "no-kernel-a", "no-kernel-b"];
/** The state a row's `before` describes. */
function stateOf(text: string) {
  const s = readState(env(text));
  const words = text.split(/\s+/);
  s.enclave = !words.includes(NO_ENCLAVE);
  s.bootable = { a: !words.includes("no-kernel-a"), b: !words.includes("no-kernel-b") };
  return s;
}

/** The changed variables, sorted, without the event log bookkeeping. */
function after(text: string, e: Event): { diff: string; trace: string[]; effects: string[]; log: string[]; written: boolean } {
  const before = env(text);
  const r = step(stateOf(text), e);
  const written = stateChanges(before, r.state).length > 0;
  const diff = stateChanges(before, r.state)
    .filter((c) => c.name !== "zb_seq" && c.name !== "zb_log")
    .map((c) => `${c.name}=${c.value ?? ""}`)
    .sort()
    .join(" ");
  const effects = r.effects.map((x) => (x.kind === "reboot" ? `reboot${x.tryboot ? "(tryboot)" : ""}` : x.kind));
  return { diff, trace: r.trace, effects, log: r.state.log, written };
}

const boot = (booted: "a" | "b", tryboot = false): Event => ({ kind: "boot", booted, tryboot });
const unlockFailed = (booted: "a" | "b", tryboot: boolean, permanent: boolean): Event => ({ kind: "unlock-failed", booted, tryboot, permanent, why: permanent ? "no-match" : "absent" });
const good = (booted: "a" | "b", tryboot = false): Event => ({ kind: "mark-good", booted, tryboot });

interface Case {
  name: string;
  before: string;
  event: Event;
  trace: string[];
  after: string;
  effects: string[];
  log?: RegExp;
  /** Nothing at all changes, the log and zb_seq included: the env is not written. */
  unchanged?: boolean;
}

const CASES: Case[] = [
  // zbunlock
  { name: "snapd: unknown kernel_status on a normal boot → \"\"", before: "kernel_status=bogus", event: boot("a"), trace: ["Z1", "N9"], after: "kernel_status= zb_boot_count_a=1", effects: ["delete-tryboot", "continue"], log: /kernel_status was "bogus", reset/ },
  { name: "snapd: unknown kernel_status with a try pending → \"\", the try failed", before: "kernel_status=tryng zb_try_slot=b zb_try_left=1", event: boot("a"), trace: ["Z1", "N9"], after: "kernel_status= zb_boot_count_a=1 zb_try_left= zb_try_slot= zb_valid_b=0", effects: ["delete-tryboot", "continue"] },
  { name: "kernel_status=try with no zb_try_slot (set by hand) → \"\" as unknown, no re-arm of nothing", before: "kernel_status=try zb_try_left=2", event: boot("a"), trace: ["Z1", "N9"], after: "kernel_status= zb_boot_count_a=1 zb_try_left=", effects: ["delete-tryboot", "continue"], log: /kernel_status was "try", reset/ },
  { name: "snapd: try + kernel_status=trying on the cmdline → trying", before: "kernel_status=try zb_try_slot=b zb_try_left=2", event: boot("b", true), trace: ["T1"], after: "kernel_status=trying zb_boot_count_b=1", effects: ["continue"] },
  { name: "try boot of a slot made invalid after the try was armed → the try failed, never booted", before: "kernel_status=try zb_try_slot=b zb_try_left=2 zb_valid_b=0", event: boot("b", true), trace: ["T5"], after: "kernel_status= zb_try_left= zb_try_slot=", effects: ["delete-tryboot", "reboot"], log: /try of b failed: the slot is not valid/ },
  { name: "try boot of another slot than the try", before: "kernel_status=try zb_try_slot=b zb_try_left=2", event: boot("a", true), trace: ["T2"], after: "kernel_status= zb_try_left= zb_try_slot=", effects: ["delete-tryboot", "reboot"] },
  { name: "snapd: trying + trying cmdline (tried twice) → \"\", failed", before: "kernel_status=trying zb_try_slot=b", event: boot("b", true), trace: ["T3"], after: "kernel_status= zb_try_slot= zb_valid_b=0", effects: ["delete-tryboot", "reboot"] },
  { name: "snapd: empty status + trying cmdline (stale tryboot) → reboot normally", before: "", event: boot("b", true), trace: ["T4"], after: "", effects: ["delete-tryboot", "reboot"], log: /unexpected try boot of b/ },
  { name: "try never reached its initramfs, re-arms left → re-arm", before: "kernel_status=try zb_try_slot=b zb_try_left=2", event: boot("a"), trace: ["N1"], after: "zb_try_left=1", effects: ["write-tryboot", "reboot(tryboot)"], log: /re-armed \(1 left\)/ },
  { name: "snapd: try on a normal boot, no re-arms left → \"\", failed; boot a", before: "kernel_status=try zb_try_slot=b zb_try_left=0", event: boot("a"), trace: ["N2", "N9"], after: "kernel_status= zb_boot_count_a=1 zb_try_left= zb_try_slot= zb_valid_b=0", effects: ["delete-tryboot", "continue"], log: /never reached its initramfs/ },
  { name: "snapd: trying on a normal boot → \"\", failed, not re-armed", before: "kernel_status=trying zb_try_slot=b zb_try_left=2", event: boot("a"), trace: ["N3", "N9"], after: "kernel_status= zb_boot_count_a=1 zb_try_left= zb_try_slot= zb_valid_b=0", effects: ["delete-tryboot", "continue"], log: /failed after its initramfs/ },
  { name: "enclave did not finish → run mode", before: "zb_mode=install", event: boot("a"), trace: ["N4", "N9"], after: "zb_boot_count_a=1 zb_mode=run", effects: ["delete-tryboot", "continue"] },
  { name: "config.txt booted the wrong slot → rewrite it, reboot", before: "zb_slot=b", event: boot("a"), trace: ["N5"], after: "zb_fixups=1", effects: ["write-config", "reboot"] },
  { name: "recover mode but a slot booted → rewrite config.txt", before: "zb_mode=recover", event: boot("a"), trace: ["N5"], after: "zb_fixups=1", effects: ["write-config", "reboot"] },
  { name: "fixups used up → boot on", before: "zb_slot=b zb_fixups=2", event: boot("a"), trace: ["N6"], after: "zb_fixups=", effects: ["continue"], log: /cannot steer the firmware/ },
  { name: "committed slot at the limit, other fine → rollback", before: "zb_boot_count_a=3", event: boot("a"), trace: ["N7"], after: "zb_slot=b", effects: ["write-config", "reboot"], log: /slot a failed 3 boots, rolled back to b/ },
  { name: "committed slot invalid → rollback", before: "zb_valid_a=0", event: boot("a"), trace: ["N7"], after: "zb_slot=b", effects: ["write-config", "reboot"] },
  { name: "both at the limit → recover", before: "zb_boot_count_a=3 zb_boot_count_b=3", event: boot("a"), trace: ["N8"], after: "zb_mode=recover", effects: ["write-config", "reboot"] },
  { name: "at the limit, other invalid → recover", before: "zb_boot_count_a=3 zb_valid_b=0", event: boot("a"), trace: ["N8"], after: "zb_mode=recover", effects: ["write-config", "reboot"] },
  { name: "both at the limit, no enclave → boot on anyway, nothing counted", before: "zb_boot_count_a=3 zb_boot_count_b=3 no-enclave", event: boot("a"), trace: ["N10"], after: "", effects: ["continue"], log: /no recovery enclave, booting a anyway/ },
  { name: "at the limit, other invalid, no enclave → boot on anyway", before: "zb_boot_count_a=3 zb_valid_b=0 no-enclave", event: boot("a"), trace: ["N10"], after: "", effects: ["continue"] },
  { name: "at the limit, other valid but slot-b/ holds no kernel → recover, not a rollback into nothing", before: "zb_boot_count_a=3 no-kernel-b", event: boot("a"), trace: ["N8"], after: "zb_mode=recover", effects: ["write-config", "reboot"] },
  { name: "at the limit, other valid but slot-b/ holds no kernel, no enclave → boot on anyway (N10)", before: "zb_boot_count_a=3 no-kernel-b no-enclave", event: boot("a"), trace: ["N10"], after: "", effects: ["continue"] },
  { name: "invalid, other valid but slot-b/ holds no kernel → recover", before: "zb_valid_a=0 no-kernel-b", event: boot("a"), trace: ["N8"], after: "zb_mode=recover", effects: ["write-config", "reboot"] },
  { name: "at the limit, the booted slot's own folder unchecked (it booted): rollback to b as ever", before: "zb_boot_count_a=3 no-kernel-a", event: boot("a"), trace: ["N7"], after: "zb_slot=b", effects: ["write-config", "reboot"] },
  { name: "at the limit, other valid, no enclave → roll back as ever (N7)", before: "zb_boot_count_a=3 no-enclave", event: boot("a"), trace: ["N7"], after: "zb_slot=b", effects: ["write-config", "reboot"] },
  { name: "zb_mode=recover left from before, no enclave → back to run mode, boot as usual (never N5 into an empty zboot/)", before: "zb_mode=recover no-enclave", event: boot("a"), trace: ["N11", "N9"], after: "zb_boot_count_a=1 zb_mode=run", effects: ["continue"], log: /recovery mode without a recovery enclave, back to run mode/ },
  { name: "zb_mode=recover, no enclave, slot exhausted → run mode, then N10 boots it on", before: "zb_mode=recover zb_boot_count_a=3 zb_valid_b=0 no-enclave", event: boot("a"), trace: ["N11", "N10"], after: "zb_mode=run", effects: ["continue"] },
  { name: "snapd: empty status, normal boot → count, boot on", before: "zb_boot_count_a=1 zb_fixups=1", event: boot("a"), trace: ["N9"], after: "zb_boot_count_a=2 zb_fixups=", effects: ["continue"] },
  // zbunlock, unlock failed after "boot on"
  { name: "unlock fails on the try boot → try failed, back to a", before: "kernel_status=trying zb_try_slot=b zb_try_left=1 zb_boot_count_b=1", event: unlockFailed("b", true, true), trace: ["U1"], after: "kernel_status= zb_try_left= zb_try_slot= zb_valid_b=0", effects: ["delete-tryboot", "reboot"], log: /try of b failed: cannot unlock: no-match/ },
  { name: "unlock refused for good, other valid → roll back", before: "zb_boot_count_a=1", event: unlockFailed("a", false, true), trace: ["U2"], after: "zb_slot=b zb_valid_a=0", effects: ["write-config", "reboot"], log: /cannot unlock slot a: no-match, next boot: b/ },
  { name: "unlock refused for good, other invalid → recover", before: "zb_boot_count_a=1 zb_valid_b=0", event: unlockFailed("a", false, true), trace: ["U2"], after: "zb_mode=recover zb_valid_a=0", effects: ["write-config", "reboot"], log: /next boot: recovery/ },
  { name: "unlock refused for good, other exhausted → recover", before: "zb_boot_count_a=1 zb_boot_count_b=3", event: unlockFailed("a", false, true), trace: ["U2"], after: "zb_mode=recover zb_valid_a=0", effects: ["write-config", "reboot"] },
  { name: "unlock refused for good, other valid but slot-b/ holds no kernel → recover", before: "zb_boot_count_a=1 no-kernel-b", event: unlockFailed("a", false, true), trace: ["U2"], after: "zb_mode=recover zb_valid_a=0", effects: ["write-config", "reboot"], log: /next boot: recovery/ },
  { name: "unlock refused for good, slot-b/ holds no kernel, no enclave → stop (U4)", before: "zb_boot_count_a=1 no-kernel-b no-enclave", event: unlockFailed("a", false, true), trace: ["U4"], after: "", effects: [] },
  { name: "unlock refused for good, other invalid, no enclave → stop: the slot stays valid, no reboot", before: "zb_boot_count_a=1 zb_valid_b=0 no-enclave", event: unlockFailed("a", false, true), trace: ["U4"], after: "", effects: [], log: /cannot unlock slot a: no-match, no other slot and no recovery enclave, stopped/ },
  { name: "unlock refused for good, other valid, no enclave → roll back as ever (U2)", before: "zb_boot_count_a=1 no-enclave", event: unlockFailed("a", false, true), trace: ["U2"], after: "zb_slot=b zb_valid_a=0", effects: ["write-config", "reboot"] },
  { name: "transient unlock failure of an exhausted slot, nothing else, no enclave → retried at every boot, logged", before: "zb_boot_count_a=3 zb_valid_b=0 no-enclave", event: unlockFailed("a", false, false), trace: ["U5"], after: "", effects: ["reboot"], log: /cannot unlock slot a: absent, and nothing else can boot, retrying at every boot/ },
  { name: "N10 again in the next round (its entry among the newest two) → boot on, the env not written", before: "zb_boot_count_a=3 zb_valid_b=0 no-enclave zb_seq=9 zb_log=8_slot_a_and_b_both_failed_and_there_is_no_recovery_enclave,_booting_a_anyway;9_cannot_unlock_slot_a:_absent,_and_nothing_else_can_boot,_retrying_at_every_boot", event: boot("a"), trace: ["N10"], after: "", effects: ["continue"], unchanged: true },
  { name: "a try boot's unlock failure is U1 even with every slot exhausted and no enclave (the try falls back, not U5)", before: "kernel_status=trying zb_try_slot=b zb_boot_count_a=3 zb_boot_count_b=3 no-enclave", event: unlockFailed("b", true, false), trace: ["U1"], after: "kernel_status= zb_try_slot= zb_valid_b=0", effects: ["delete-tryboot", "reboot"] },
  { name: "U5 again in the next round (N10 and U5 already the newest entries) → reboot, the env not written", before: "zb_boot_count_a=3 zb_valid_b=0 no-enclave zb_seq=9 zb_log=8_slot_a_and_b_both_failed_and_there_is_no_recovery_enclave,_booting_a_anyway;9_cannot_unlock_slot_a:_absent,_and_nothing_else_can_boot,_retrying_at_every_boot", event: unlockFailed("a", false, false), trace: ["U5"], after: "", effects: ["reboot"], unchanged: true },
  { name: "transient unlock failure below the limit, no enclave → reboot as ever (U3)", before: "zb_boot_count_a=1 zb_valid_b=0 no-enclave", event: unlockFailed("a", false, false), trace: ["U3"], after: "", effects: ["reboot"] },
  { name: "HSM absent → reboot, the counter decides", before: "zb_boot_count_a=2", event: unlockFailed("a", false, false), trace: ["U3"], after: "", effects: ["reboot"], log: /retrying \(boot 2 of 3\)/ },
  // zb
  { name: "snapd MarkBootSuccessful: trying → \"\", try slot committed", before: "kernel_status=trying zb_try_slot=b zb_try_left=1 zb_boot_count_b=1", event: good("b", true), trace: ["G1"], after: "kernel_status= zb_boot_count_b=0 zb_slot=b zb_try_left= zb_try_slot=", effects: ["write-config", "delete-tryboot"], log: /slot b committed/ },
  { name: "mark-good on a normal boot resets the counter", before: "zb_boot_count_a=2", event: good("a"), trace: ["G2"], after: "zb_boot_count_a=0", effects: [] },
  { name: "mark-good twice changes nothing", before: "", event: good("a"), trace: ["G2"], after: "", effects: [] },
  // After G1 the command line keeps kernel_status=trying until the next reboot: the rest of that boot is a normal boot of the committed slot.
  { name: "committed try boot (the cmdline still says trying), mark-good again → G2, nothing written", before: "zb_slot=b", event: good("b", true), trace: ["G2"], after: "", effects: [], unchanged: true },
  { name: "committed try boot, mark-good again with the counter at 1 → G2 resets it", before: "zb_slot=b zb_boot_count_b=1", event: good("b", true), trace: ["G2"], after: "zb_boot_count_b=0", effects: [] },
  { name: "committed try boot, mark-bad → B2: b invalid, a committed again", before: "zb_slot=b", event: { kind: "mark-bad", which: "booted", booted: "b", tryboot: true }, trace: ["B2"], after: "zb_slot=a zb_valid_b=0", effects: ["write-config"] },
  { name: "committed try boot, a try of a armed since, mark-bad → B2 drops it as on a normal boot", before: "zb_slot=b kernel_status=try zb_try_slot=a zb_try_left=2", event: { kind: "mark-bad", which: "booted", booted: "b", tryboot: true }, trace: ["B2"], after: "kernel_status= zb_slot=a zb_try_left= zb_try_slot= zb_valid_b=0", effects: ["write-config", "delete-tryboot"] },
  { name: "mark-bad booted during a try", before: "kernel_status=trying zb_try_slot=b", event: { kind: "mark-bad", which: "booted", booted: "b", tryboot: true }, trace: ["B1"], after: "kernel_status= zb_try_slot= zb_valid_b=0", effects: ["delete-tryboot"] },
  { name: "mark-bad booted, other valid → hand over", before: "", event: { kind: "mark-bad", which: "booted", booted: "a", tryboot: false }, trace: ["B2"], after: "zb_slot=b zb_valid_a=0", effects: ["write-config"] },
  { name: "mark-bad booted, other valid but at its limit → hand over with a fresh counter", before: "zb_boot_count_b=3", event: { kind: "mark-bad", which: "booted", booted: "a", tryboot: false }, trace: ["B2"], after: "zb_boot_count_b=0 zb_slot=b zb_valid_a=0", effects: ["write-config"] },
  { name: "mark-bad booted with a try of b armed → the try is dropped, b committed", before: "kernel_status=try zb_try_slot=b zb_try_left=2", event: { kind: "mark-bad", which: "booted", booted: "a", tryboot: false }, trace: ["B2"], after: "kernel_status= zb_slot=b zb_try_left= zb_try_slot= zb_valid_a=0", effects: ["write-config", "delete-tryboot"] },
  { name: "mark-bad booted, other valid but slot-b/ holds no kernel → recover", before: "no-kernel-b", event: { kind: "mark-bad", which: "booted", booted: "a", tryboot: false }, trace: ["B2"], after: "zb_mode=recover zb_valid_a=0", effects: ["write-config"] },
  { name: "mark-bad booted, other invalid → recover", before: "zb_valid_b=0", event: { kind: "mark-bad", which: "booted", booted: "a", tryboot: false }, trace: ["B2"], after: "zb_mode=recover zb_valid_a=0", effects: ["write-config"] },
  { name: "mark-bad other from an invalid committed slot, with an enclave to recover in", before: "zb_valid_a=0", event: { kind: "mark-bad", which: "other", booted: "a", tryboot: false }, trace: ["B3"], after: "zb_valid_b=0", effects: [] },
  { name: "mark-bad other drops its pending try", before: "kernel_status=try zb_try_slot=b zb_try_left=2", event: { kind: "mark-bad", which: "other", booted: "a", tryboot: false }, trace: ["B3"], after: "kernel_status= zb_try_left= zb_try_slot= zb_valid_b=0", effects: ["delete-tryboot"] },
  { name: "rollback by hand", before: "zb_boot_count_b=2", event: { kind: "rollback" }, trace: ["R1"], after: "zb_boot_count_b=0 zb_slot=b", effects: ["write-config"] },
  { name: "mender/rauc: rollback on the try boot of b → the update abandoned: b invalid, a stays committed", before: "kernel_status=trying zb_try_slot=b zb_try_left=2 zb_boot_count_b=1", event: { kind: "rollback" }, trace: ["R3"], after: "kernel_status= zb_try_left= zb_try_slot= zb_valid_b=0", effects: ["delete-tryboot"], log: /update to b abandoned by rollback/ },
  { name: "mender: rollback with a try of b armed, not yet booted → the update abandoned, a stays committed", before: "kernel_status=try zb_try_slot=b zb_try_left=2", event: { kind: "rollback" }, trace: ["R3"], after: "kernel_status= zb_try_left= zb_try_slot= zb_valid_b=0", effects: ["delete-tryboot"] },
  { name: "rollback with zb_try_slot left over without a kernel_status (a hand edit) → R1, the variable cleared", before: "zb_try_slot=b", event: { kind: "rollback" }, trace: ["R1"], after: "zb_slot=b zb_try_slot=", effects: ["write-config", "delete-tryboot"] },
  { name: "arm a try", before: "zb_boot_count_b=1", event: { kind: "arm-try", slot: "b" }, trace: ["A1"], after: "kernel_status=try zb_boot_count_b=0 zb_try_left=2 zb_try_slot=b", effects: ["write-tryboot", "reboot(tryboot)"] },
  { name: "arm a try with 5 re-arms", before: "", event: { kind: "arm-try", slot: "b", rearms: 5 }, trace: ["A1"], after: "kernel_status=try zb_try_left=5 zb_try_slot=b", effects: ["write-tryboot", "reboot(tryboot)"] },
  { name: "plain reboot", before: "", event: { kind: "reboot" }, trace: ["X1"], after: "", effects: ["reboot"] },
  { name: "enter the enclave", before: "", event: { kind: "enter-install" }, trace: ["I1"], after: "zb_mode=install", effects: ["write-tryboot", "reboot(tryboot)"] },
  // zboot
  { name: "install begins: the slot is invalid", before: "zb_version_b=1.0 zb_serial_b=3", event: { kind: "install-begin", slot: "b" }, trace: ["S1"], after: "zb_installing=b zb_serial_b=0 zb_valid_b=0 zb_version_b=", effects: [] },
  { name: "install begins into the slot a try is armed for → the try dropped", before: "kernel_status=try zb_try_slot=b zb_try_left=2", event: { kind: "install-begin", slot: "b" }, trace: ["S1"], after: "kernel_status= zb_installing=b zb_try_left= zb_try_slot= zb_valid_b=0", effects: ["delete-tryboot"] },
  { name: "install ends: valid, version, serial", before: "zb_valid_b=0 zb_installing=b", event: { kind: "install-end", slot: "b", version: "2.0", serial: 9 }, trace: ["S3"], after: "zb_installing= zb_serial_b=9 zb_valid_b=1 zb_version_b=2.0", effects: [] },
];

describe("transition table, row by row", () => {
  test.each(CASES)("$trace $name", (c) => {
    const r = after(c.before, c.event);
    expect(r.trace).toEqual(c.trace);
    expect(r.diff).toBe(c.after);
    expect(r.effects).toEqual(c.effects);
    if (c.log) expect(r.log.at(-1)).toMatch(c.log);
    if (c.unchanged) expect(r.written).toBe(false);
  });
});

const REFUSALS: { name: string; before: string; event: Event; row: string; why: RegExp }[] = [
  { name: "mark-good while kernel_status is still try", before: "kernel_status=try zb_try_slot=b", event: good("b", true), row: "G3", why: /zbunlock did not run/ },
  { name: "mark-good on the try boot of a slot made invalid during the try", before: "kernel_status=trying zb_try_slot=b zb_valid_b=0", event: good("b", true), row: "G4", why: /slot b is not valid .*it cannot be committed/ },
  { name: "mark-good on a slot that is not committed", before: "", event: good("b"), row: "G3", why: /not the committed slot a/ },
  { name: "mark-good on a stray try boot", before: "", event: good("b", true), row: "G3", why: /no try of it is pending/ },
  { name: "mark-good on a normal boot while a try of the other slot is armed", before: "kernel_status=try zb_try_slot=b", event: good("a"), row: "G3", why: /a try of slot b is armed \(kernel_status="try"\): this normal boot of a is not the one to confirm/ },
  { name: "mark-good of the committed slot in recovery mode", before: "zb_mode=recover", event: good("a"), row: "G3", why: /: zb_mode is recover, not run$/ },
  { name: "committed try boot, a try of a armed since, mark-good → G3 names the armed try (not \"zbunlock did not run\")", before: "zb_slot=b kernel_status=try zb_try_slot=a zb_try_left=2", event: good("b", true), row: "G3", why: /a try of slot a is armed \(kernel_status="try"\)/ },
  { name: "committed try boot, mark-bad with a invalid and no enclave → B5 (not B2 into an empty zboot/)", before: "zb_slot=b zb_valid_a=0 no-enclave", event: { kind: "mark-bad", which: "booted", booted: "b", tryboot: true }, row: "B5", why: /slot a is not valid and there is no recovery enclave/ },
  { name: "mark-bad booted on a non-committed normal boot", before: "", event: { kind: "mark-bad", which: "booted", booted: "b", tryboot: false }, row: "B4", why: /neither the committed/ },
  { name: "rollback to an invalid slot", before: "zb_valid_b=0", event: { kind: "rollback" }, row: "R2", why: /slot b is not valid/ },
  { name: "rollback to a valid slot whose folder holds no kernel", before: "no-kernel-b", event: { kind: "rollback" }, row: "R2", why: /slot-b\/ holds no kernel or no \.dtb file, so the firmware would boot nothing/ },
  { name: "mark-bad the only bootable slot without an enclave (slot-b/ holds no kernel)", before: "no-kernel-b no-enclave", event: { kind: "mark-bad", which: "booted", booted: "a", tryboot: false }, row: "B5", why: /slot-b\/ holds no kernel .* and there is no recovery enclave/ },
  { name: "try the committed slot", before: "", event: { kind: "arm-try", slot: "a" }, row: "A2", why: /is the committed slot/ },
  { name: "try an invalid slot", before: "zb_valid_b=0", event: { kind: "arm-try", slot: "b" }, row: "A2", why: /not valid/ },
  { name: "try while a try is pending", before: "kernel_status=trying zb_try_slot=b", event: { kind: "arm-try", slot: "b" }, row: "A2", why: /a try of b is pending/ },
  { name: "enter the enclave twice", before: "zb_mode=install", event: { kind: "enter-install" }, row: "I2", why: /already install/ },
  { name: "enter an enclave that is not there", before: "no-enclave", event: { kind: "enter-install" }, row: "I2", why: /there is no recovery enclave on the boot partition/ },
  { name: "mark-bad the only valid slot without an enclave", before: "zb_valid_b=0 no-enclave", event: { kind: "mark-bad", which: "booted", booted: "a", tryboot: false }, row: "B5", why: /slot b is not valid and there is no recovery enclave/ },
  { name: "mark-bad other on the try boot of b: a is the committed slot the device falls back to", before: "kernel_status=trying zb_try_slot=b", event: { kind: "mark-bad", which: "other", booted: "b", tryboot: true }, row: "B6", why: /slot a is the committed slot, which the device falls back to: confirm b first \(zb mark-good\), then mark a bad/ },
  { name: "mark-bad other on a normal boot of b while a is committed", before: "", event: { kind: "mark-bad", which: "other", booted: "b", tryboot: false }, row: "B6", why: /make b the committed slot first \(zb rollback\)/ },
  { name: "mark-bad other from an invalid committed slot without an enclave", before: "zb_valid_a=0 no-enclave", event: { kind: "mark-bad", which: "other", booted: "a", tryboot: false }, row: "B6", why: /slot a is not valid and there is no recovery enclave .*nothing could boot/ },
  { name: "install into the committed slot", before: "", event: { kind: "install-begin", slot: "a" }, row: "S2", why: /is the committed slot/ },
  { name: "install-end of the committed slot", before: "zb_installing=b", event: { kind: "install-end", slot: "a", version: "x", serial: 1 }, row: "S4", why: /slot a is the committed slot/ },
  { name: "install-end without install-begin", before: "zb_valid_b=0", event: { kind: "install-end", slot: "b", version: "x", serial: 1 }, row: "S4", why: /no install into slot b was begun/ },
  { name: "install-end of a valid slot nothing began to install into", before: "", event: { kind: "install-end", slot: "b", version: "x", serial: 1 }, row: "S4", why: /no install into slot b was begun/ },
];

describe("refusals change nothing", () => {
  test.each(REFUSALS)("$row $name", (c) => {
    const before = stateOf(c.before);
    expect(() => step(before, c.event)).toThrow(expect.objectContaining({ code: "STATE_REFUSED", message: expect.stringMatching(c.why) }));
    expect(stateOf(c.before)).toEqual(before);
  });
});

test("every row of the table is exercised above", () => {
  const used = new Set([...CASES.flatMap((c) => c.trace), ...REFUSALS.map((r) => r.row)]);
  expect(TABLE.map((r) => r.id).filter((id) => !used.has(id))).toEqual([]);
});

test("each event kind belongs to one actor", () => {
  const byEvent = new Map<string, Set<string>>();
  for (const r of TABLE) byEvent.set(r.event, (byEvent.get(r.event) ?? new Set()).add(r.actor));
  for (const [event, actors] of byEvent) expect([event, actors.size]).toEqual([event, 1]);
});

test("an actor cannot apply another actor's row", () => {
  expect(() => step(readState(env("")), boot("a"), "zb")).toThrow(expect.objectContaining({ code: "INTERNAL" }));
});

test("an install begun into the slot being tried: its try boot neither runs nor commits it", () => {
  let s = step(stateOf("kernel_status=try zb_try_slot=b zb_try_left=2"), { kind: "install-begin", slot: "b" }).state;
  expect(s).toMatchObject({ status: "", trySlot: null, installing: "b" });
  const t = step(s, boot("b", true)); // the firmware still had the flag: tryboot.txt was already read
  expect(t.trace).toEqual(["T4"]);
  expect(t.effects).toContainEqual({ kind: "reboot", tryboot: false });
  s = t.state;
  expect(() => step(s, good("b", true))).toThrow(expect.objectContaining({ code: "STATE_REFUSED" }));
  expect(s.slots.b.valid).toBe(false);
});
