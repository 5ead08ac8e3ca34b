/**
 * Power cuts in the transitions of a try (arm, reach, re-arm, fail, commit,
 * drop): every row that writes while a try is armed, running or ending.
 * The checks are powercut-harness.ts's.
 */
import { describe, expect, test } from "bun:test";
import { armed, runScenario, running, setVars, trying, writeTryboot, type Scenario } from "./powercut-harness.ts";

const SCENARIOS: Scenario[] = [
  {
    name: "A1 arm a try",
    setup: running,
    act: { actor: "zb", event: { kind: "arm-try", slot: "b" } },
    rows: ["A1"],
    state: { status: "try", trySlot: "b", tryLeft: 2, committed: "a" },
    uncut: "b",
    // Armed, the flag lost: the normal boot re-arms (N1) and the try runs.
    cut: { old: "a", new: "b" },
  },
  {
    name: "T1 try reaches its initramfs",
    setup: (d) => armed(d),
    act: { powerOn: true },
    rows: ["T1"],
    state: { status: "trying", trySlot: "b", committed: "a", slots: { b: { bootCount: 1 } } },
    uncut: "b",
    // Not yet recorded: re-armed (N1); recorded as trying: the reset fails the try (N3).
    cut: { old: "b", new: "a" },
  },
  {
    name: "T2 try boot of another slot than zb_try_slot",
    setup: (d) => {
      armed(d);
      writeTryboot(d, "a"); // tryboot.txt and the env disagree
    },
    act: { powerOn: true },
    rows: ["T2"],
    state: { status: "", trySlot: null, committed: "a", slots: { a: { valid: true }, b: { valid: true } } },
    uncut: "a",
    cut: { old: "b", new: "a" },
  },
  {
    name: "T3 try boot again after the try ran its initramfs",
    setup: (d) => {
      trying(d);
      d.fw.reboot("0 tryboot"); // the try system rebooted into tryboot.txt once more
    },
    act: { powerOn: true },
    rows: ["T3"],
    state: { status: "", trySlot: null, committed: "a", slots: { b: { valid: false } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "T4 try boot with no try pending (a stale tryboot.txt)",
    setup: (d) => {
      running(d);
      writeTryboot(d, "b");
      d.fw.reboot("0 tryboot");
    },
    act: { powerOn: true },
    rows: ["T4"],
    state: { status: "", trySlot: null, committed: "a", slots: { b: { valid: true } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "Z1 unknown kernel_status on the try boot",
    setup: (d) => {
      armed(d);
      setVars(d, { kernel_status: "tried" }); // a hand edit, or another tool
    },
    act: { powerOn: true },
    rows: ["Z1", "T4"],
    state: { status: "", unknownStatus: null, trySlot: null, committed: "a", slots: { b: { valid: false } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "N1 re-arm a lost try",
    setup: (d) => {
      armed(d);
      d.fw.powerCut();
    },
    act: { powerOn: true },
    rows: ["N1"],
    state: { status: "try", trySlot: "b", tryLeft: 1 },
    uncut: "b",
    cut: { old: "b", new: "b" },
  },
  {
    name: "N2 the last re-arm is used up",
    setup: (d) => {
      armed(d, 0);
      d.fw.powerCut();
    },
    act: { powerOn: true },
    rows: ["N2", "N9"],
    state: { status: "", trySlot: null, tryLeft: 0, committed: "a", slots: { a: { bootCount: 2 }, b: { valid: false } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "N3 record a failed try",
    setup: trying, // b runs its try, then the power goes before mark-good
    act: { powerOn: true },
    rows: ["N3", "N9"],
    state: { status: "", trySlot: null, committed: "a", slots: { b: { valid: false } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "U1 the try cannot unlock its root",
    setup: trying,
    act: { actor: "zbunlock", event: { kind: "unlock-failed", booted: "b", tryboot: true, permanent: false, why: "HSM absent" } },
    rows: ["U1"],
    state: { status: "", trySlot: null, committed: "a", slots: { b: { valid: false } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "G1 commit a try (mark-good)",
    setup: trying,
    act: { actor: "zb", event: { kind: "mark-good", booted: "b", tryboot: true } },
    rows: ["G1"],
    state: { status: "", trySlot: null, committed: "b", fixups: 0, slots: { b: { valid: true, bootCount: 0 } } },
    uncut: "b",
    // Before the commit the reset fails the try (N3); after it b is committed.
    cut: { old: "a", new: "b" },
  },
  {
    name: "B1 mark-bad on the try boot",
    setup: trying,
    act: { actor: "zb", event: { kind: "mark-bad", which: "booted", booted: "b", tryboot: true } },
    rows: ["B1"],
    state: { status: "", trySlot: null, committed: "a", slots: { b: { valid: false } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "B3 mark-bad other drops its armed try",
    setup: (d) => armed(d), // the flag is set; a still runs until the reboot
    act: { actor: "zb", event: { kind: "mark-bad", which: "other", booted: "a", tryboot: false } },
    rows: ["B3"],
    state: { status: "", trySlot: null, committed: "a", slots: { b: { valid: false } } },
    uncut: "a",
    cut: { old: "b", new: "a" },
  },
];

describe("power cut during the transitions of a try", () => {
  let total = 0;
  for (const s of SCENARIOS) test(s.name, () => void (total += runScenario(s)));

  test("cut points were counted", () => {
    expect(total).toBeGreaterThan(SCENARIOS.length * 3);
    console.log(`  power-cut points tried in the transitions of a try: ${total}`);
  });
});
