/**
 * Power cuts in the transitions that change which slot boots or what the
 * slots hold, with no try involved: rollback (by the counter, by hand, by
 * mark-bad, by a root that cannot unlock), recovery, a stale config.txt,
 * the enclave and its installs. The checks are powercut-harness.ts's.
 */
import { describe, expect, test } from "bun:test";
import type { Device } from "../../fakes/device.ts";
import { runScenario, running, setVars, type Scenario } from "./powercut-harness.ts";

/** `n` boots of a without mark-good. */
const boots = (n: number) => (d: Device) => {
  for (let i = 0; i < n; i++) d.bootUntilRunning();
};
/** The enclave running, entered by `zb reboot --recover` (I1). */
const inEnclave = (d: Device) => {
  running(d);
  d.zb({ kind: "enter-install" });
  d.bootUntilRunning();
};

const SCENARIOS: Scenario[] = [
  {
    name: "N4 the enclave did not finish",
    setup: (d) => {
      running(d);
      d.zb({ kind: "enter-install" });
      d.fw.powerCut(); // the enclave never ran, or crashed
    },
    act: { powerOn: true },
    rows: ["N4", "N9"],
    state: { mode: "run", committed: "a" },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "N5 config.txt left stale by an earlier cut",
    setup: (d) => {
      running(d);
      setVars(d, { zb_slot: "b" }); // the env says b, config.txt still a
    },
    act: { powerOn: true },
    rows: ["N5"],
    state: { committed: "b", fixups: 1 },
    uncut: "b",
    cut: { old: "b", new: "b" },
  },
  {
    name: "N7 roll back after the limit",
    setup: boots(3),
    act: { powerOn: true },
    rows: ["N7"],
    state: { committed: "b", mode: "run", slots: { a: { bootCount: 3 } } },
    uncut: "b",
    cut: { old: "b", new: "b" },
  },
  {
    name: "N8 enter recovery",
    setup: boots(6), // a: 3 boots, rollback, b: 3 boots; the next power-on finds b at the limit too
    act: { powerOn: true },
    rows: ["N8"],
    state: { committed: "b", mode: "recover" },
    uncut: "zboot",
    cut: { old: "zboot", new: "zboot" },
  },
  {
    name: "N11 recovery mode without an enclave",
    device: { enclave: false },
    setup: (d) => {
      running(d);
      setVars(d, { zb_mode: "recover" }); // an older zb, or zboot/ removed since
    },
    act: { powerOn: true },
    rows: ["N11", "N9"],
    state: { mode: "run", committed: "a" },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "U2 the root cannot unlock for good",
    setup: running,
    act: { actor: "zbunlock", event: { kind: "unlock-failed", booted: "a", tryboot: false, permanent: true, why: "HSM no-match" } },
    rows: ["U2"],
    state: { committed: "b", mode: "run", slots: { a: { valid: false }, b: { valid: true } } },
    uncut: "b",
    cut: { old: "a", new: "b" },
  },
  {
    name: "R1 rollback by hand",
    setup: running,
    act: { actor: "zb", event: { kind: "rollback" } },
    rows: ["R1"],
    state: { committed: "b", slots: { b: { valid: true, bootCount: 0 } } },
    uncut: "b",
    cut: { old: "a", new: "b" },
  },
  {
    name: "B2 mark-bad booted",
    setup: running,
    act: { actor: "zb", event: { kind: "mark-bad", which: "booted", booted: "a", tryboot: false } },
    rows: ["B2"],
    state: { committed: "b", mode: "run", slots: { a: { valid: false }, b: { valid: true, bootCount: 0 } } },
    uncut: "b",
    cut: { old: "a", new: "b" },
  },
  {
    name: "I1 enter the enclave",
    setup: running,
    act: { actor: "zb", event: { kind: "enter-install" } },
    rows: ["I1"],
    state: { mode: "install", committed: "a" },
    uncut: "zboot",
    // The flag is lost with the power: config.txt boots a, which ends install mode (N4).
    cut: { old: "a", new: "a" },
  },
  {
    name: "S1 the enclave begins an install",
    setup: inEnclave,
    act: { actor: "zboot", event: { kind: "install-begin", slot: "b" } },
    rows: ["S1"],
    state: { committed: "a", slots: { b: { valid: false, bootCount: 0, version: "", serial: 0 } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "S3 the enclave ends an install",
    setup: (d) => {
      inEnclave(d);
      d.zb({ kind: "install-begin", slot: "b" });
    },
    act: { actor: "zboot", event: { kind: "install-end", slot: "b", version: "2.0", serial: 7 } },
    rows: ["S3"],
    state: { committed: "a", slots: { b: { valid: true, bootCount: 0, version: "2.0", serial: 7 } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
];

describe("power cut during the transitions of the slots", () => {
  let total = 0;
  for (const s of SCENARIOS) test(s.name, () => void (total += runScenario(s)));

  test("cut points were counted", () => {
    expect(total).toBeGreaterThan(SCENARIOS.length * 3);
    console.log(`  power-cut points tried in the transitions of the slots: ${total}`);
  });
});
