/**
 * Power cuts inside every transition that writes: cut before each write,
 * fsync, rename, unlink and mkdir, and inside each write at every 512-byte
 * offset (test/fakes/powercut.ts). After the cut the tryboot flag is gone
 * (it is volatile), the env must still decode, and powering on again must
 * reach a running slot — or the enclave, when recovery was being entered —
 * within a few boots, with zbunlock never failing on the way.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import type { Event } from "../../../lib/bootstate/machine.ts";
import type { Slot } from "../../../lib/bootstate/state.ts";
import type { HostSys } from "../../../lib/sys/sys.ts";
import { TempLockSys } from "../../fakes/envlock.ts";
import { CuttingSys, cutPoints, PowerCut, type CutPlan } from "../../fakes/powercut.ts";
import { Device } from "../../fakes/device.ts";

const host = new TempLockSys(); // the env lock in a temp folder, not the host's /var/lock
const devices: Device[] = [];
afterAll(() => devices.forEach((d) => rmSync(d.boot, { recursive: true, force: true })));

interface Scenario {
  name: string;
  /** Bring a fresh device to the state just before the transition (no cuts). */
  setup(d: Device): void;
  /** The transition under test: a zb action, or the next power-on (zbunlock). */
  act: { zb: Event } | { powerOn: true };
  /** Slots allowed to be running afterwards ("zboot" for the enclave). */
  endsOn: (Slot | "zboot")[];
}

const arm = (d: Device) => {
  d.bootUntilRunning();
  d.zb({ kind: "arm-try", slot: "b" });
};
const SCENARIOS: Scenario[] = [
  { name: "A1 arm a try", setup: (d) => void d.bootUntilRunning(), act: { zb: { kind: "arm-try", slot: "b" } }, endsOn: ["a", "b"] },
  { name: "T1 try reaches its initramfs", setup: arm, act: { powerOn: true }, endsOn: ["a", "b"] },
  {
    name: "G1 commit a try (mark-good)",
    setup: (d) => {
      arm(d);
      d.bootUntilRunning();
    },
    act: { zb: { kind: "mark-good", booted: "b", tryboot: true } },
    endsOn: ["a", "b"],
  },
  {
    name: "N1 re-arm a lost try",
    setup: (d) => {
      arm(d);
      d.fw.powerCut();
    },
    act: { powerOn: true },
    endsOn: ["a", "b"],
  },
  {
    name: "N3 record a failed try",
    setup: (d) => {
      arm(d);
      d.bootUntilRunning(); // b, trying; then it dies
    },
    act: { powerOn: true },
    endsOn: ["a"],
  },
  { name: "N7 roll back after the limit", setup: (d) => [1, 2, 3].forEach(() => d.bootUntilRunning()), act: { powerOn: true }, endsOn: ["a", "b"] },
  {
    name: "N8 enter recovery",
    setup: (d) => {
      // a: 3 boots, rollback, b: 3 boots; the next power-on finds b at the limit too
      for (let i = 0; i < 6; i++) d.bootUntilRunning();
    },
    act: { powerOn: true },
    endsOn: ["b", "zboot"],
  },
  { name: "R1 rollback by hand", setup: (d) => void d.bootUntilRunning(), act: { zb: { kind: "rollback" } }, endsOn: ["a", "b"] },
  { name: "B2 mark-bad booted", setup: (d) => void d.bootUntilRunning(), act: { zb: { kind: "mark-bad", which: "booted", booted: "a", tryboot: false } }, endsOn: ["a", "b"] },
  { name: "I1 enter the enclave", setup: (d) => void d.bootUntilRunning(), act: { zb: { kind: "enter-install" } }, endsOn: ["a"] },
];

/** Run the transition on `d` through `sys`; PowerCut escapes. */
function act(d: Device, s: Scenario, sys: HostSys | CuttingSys): void {
  d.sys = sys;
  try {
    if ("zb" in s.act) d.zb(s.act.zb);
    else d.powerOn();
  } finally {
    d.sys = host;
  }
}

function fresh(s: Scenario): Device {
  const d = new Device(host);
  devices.push(d);
  s.setup(d);
  return d;
}

let total = 0;
describe("power cut during boot-state transitions", () => {
  for (const s of SCENARIOS) {
    test(s.name, () => {
      const dry = new CuttingSys(host, { never: true });
      act(fresh(s), s, dry);
      expect(dry.ops.length).toBeGreaterThan(0);
      const plans: CutPlan[] = cutPoints(dry.ops);
      const seen = new Set<string>();
      for (const plan of plans) {
        const d = fresh(s);
        try {
          act(d, s, new CuttingSys(host, plan));
        } catch (e) {
          if (!(e instanceof PowerCut)) throw e;
        }
        d.fw.powerCut();
        expect(() => d.state()).not.toThrow(); // the env decodes
        const end = d.bootUntilRunning(8);
        const on = end.fw.target;
        if (!s.endsOn.includes(on)) throw new Error(`${s.name}: after cut ${JSON.stringify(plan)} the device runs ${on}: ${d.trace()}`);
        if (on !== "zboot") expect(d.state().slots[on].valid).toBe(true);
        seen.add(on);
      }
      total += plans.length;
      console.log(`  ${s.name}: ${dry.ops.length} operations, ${plans.length} cut points, ends on ${[...seen].join("/")}`);
    });
  }

  test("cut points were counted", () => {
    expect(total).toBeGreaterThan(SCENARIOS.length * 3);
    console.log(`  boot-state power-cut points tried in total: ${total}`);
  });
});
