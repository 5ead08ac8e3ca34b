/**
 * Power cuts in the transitions that only count boots or log: an ordinary
 * boot, mark-good, and the unlock failures and exhausted slots that leave
 * the committed slot in place. The checks are powercut-harness.ts's.
 */
import { describe, expect, test } from "bun:test";
import type { Event } from "../../../lib/bootstate/machine.ts";
import type { Device } from "../../fakes/device.ts";
import { runScenario, running, setVars, type Scenario } from "./powercut-harness.ts";

const unlockFailed = (permanent: boolean): { actor: "zbunlock"; event: Event } => ({
  actor: "zbunlock",
  event: { kind: "unlock-failed", booted: "a", tryboot: false, permanent, why: permanent ? "HSM no-match" : "HSM absent" },
});
/** Without an enclave, b invalid: a is all there is. */
const onlyA = (d: Device) => setVars(d, { zb_valid_b: "0" });

const SCENARIOS: Scenario[] = [
  {
    name: "N9 an ordinary boot is counted",
    setup: () => undefined,
    act: { powerOn: true },
    rows: ["N9"],
    state: { committed: "a", slots: { a: { bootCount: 1 } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "G2 mark-good resets the counter",
    setup: running,
    act: { actor: "zb", event: { kind: "mark-good", booted: "a", tryboot: false } },
    rows: ["G2"],
    state: { committed: "a", slots: { a: { bootCount: 0 } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "U3 an unlock failure that may pass",
    setup: running,
    act: unlockFailed(false),
    rows: ["U3"],
    state: { committed: "a", slots: { a: { valid: true, bootCount: 1 } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "U4 an unlock failure for good with nothing else to boot",
    device: { enclave: false },
    setup: (d) => {
      onlyA(d);
      running(d);
    },
    act: unlockFailed(true),
    rows: ["U4"],
    state: { committed: "a", mode: "run", slots: { a: { valid: true } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "N10 a exhausted, nothing else to boot",
    device: { enclave: false },
    setup: (d) => {
      onlyA(d);
      for (let i = 0; i < 3; i++) d.bootUntilRunning();
    },
    act: { powerOn: true },
    rows: ["N10"],
    state: { committed: "a", mode: "run", slots: { a: { valid: true, bootCount: 3 } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
  {
    name: "U5 an unlock failure that may pass, a exhausted, nothing else to boot",
    device: { enclave: false },
    setup: (d) => {
      onlyA(d);
      for (let i = 0; i < 3; i++) d.bootUntilRunning();
    },
    act: unlockFailed(false),
    rows: ["U5"],
    state: { committed: "a", mode: "run", slots: { a: { valid: true, bootCount: 3 } } },
    uncut: "a",
    cut: { old: "a", new: "a" },
  },
];

describe("power cut during the transitions that count or log", () => {
  let total = 0;
  for (const s of SCENARIOS) test(s.name, () => void (total += runScenario(s)));

  test("cut points were counted", () => {
    expect(total).toBeGreaterThan(SCENARIOS.length * 3);
    console.log(`  power-cut points tried in the transitions that count or log: ${total}`);
  });
});
