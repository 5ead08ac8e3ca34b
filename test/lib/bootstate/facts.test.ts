/**
 * The boot-medium facts (is there an enclave, can the firmware boot slot-X/)
 * are probed only when a row's guard reads them, at most once per
 * transition (state.ts withFacts): a normal boot probes nothing, a switch
 * asks about the slot it would switch to, and an enclave probe that fails
 * fails only the transitions that need its answer.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { runTransition } from "../../../lib/bootstate/commit.ts";
import type { Event } from "../../../lib/bootstate/machine.ts";
import { cloneState, readState, withFacts, type Slot } from "../../../lib/bootstate/state.ts";
import { PiBoot } from "../../../lib/bootloader/piboot.ts";
import { ZbError } from "../../../lib/errors.ts";
import { Device } from "../../fakes/device.ts";

/** PiBoot that counts the probes, and whose enclave probe may fail. */
class CountingBoot extends PiBoot {
  probes = { enclave: 0, a: 0, b: 0 };
  enclaveError: ZbError | null = null;
  override hasEnclave(): boolean {
    this.probes.enclave++;
    if (this.enclaveError) throw this.enclaveError;
    return super.hasEnclave();
  }
  override slotBootable(slot: Slot, warn?: (message: string) => void): boolean {
    this.probes[slot]++;
    return super.slotBootable(slot, warn);
  }
}

const devices: Device[] = [];
afterAll(() => devices.forEach((d) => rmSync(d.boot, { recursive: true, force: true })));

function device(vars: Record<string, string> = {}): { d: Device; b: CountingBoot } {
  const d = new Device();
  devices.push(d);
  const b = new CountingBoot(d.sys, d.boot);
  if (Object.keys(vars).length > 0) b.writeVars(Object.entries(vars).map(([name, value]) => ({ name, value })));
  return { d, b };
}

describe("which transitions probe the boot partition", () => {
  test.each([
    { name: "a normal boot of the committed slot", vars: {}, event: { kind: "boot", booted: "a", tryboot: false }, row: "N9", probes: { enclave: 0, a: 0, b: 0 } },
    { name: "a boot at the boot limit, the other slot valid", vars: { zb_boot_count_a: "3" }, event: { kind: "boot", booted: "a", tryboot: false }, row: "N7", probes: { enclave: 0, a: 0, b: 1 } },
    { name: "a boot at the boot limit, the other slot invalid", vars: { zb_boot_count_a: "3", zb_valid_b: "0" }, event: { kind: "boot", booted: "a", tryboot: false }, row: "N8", probes: { enclave: 1, a: 0, b: 0 } },
    { name: "zb rollback", vars: {}, event: { kind: "rollback" }, row: "R1", probes: { enclave: 0, a: 0, b: 1 } },
    { name: "zb recover", vars: {}, event: { kind: "enter-install" }, row: "I1", probes: { enclave: 1, a: 0, b: 0 } },
  ] as const)("$name: $row, probes $probes", ({ vars, event, row, probes }) => {
    const { b } = device(vars);
    const actor = event.kind === "boot" ? "zbunlock" : "zb";
    const o = runTransition(b, event as Event, { actor, dryRun: true });
    expect(o.trace[0]).toBe(row);
    expect(b.probes).toEqual(probes);
  });
});

describe("an enclave probe that fails", () => {
  const io = new ZbError("IO", "cannot read zboot/: input/output error");
  test.each([
    { name: "a normal boot does not ask: it is counted", vars: {}, event: { kind: "boot", booted: "a", tryboot: false }, actor: "zbunlock", throws: false },
    { name: "zb recover asks: it fails with the probe's error", vars: {}, event: { kind: "enter-install" }, actor: "zb", throws: true },
  ] as const)("$name", ({ vars, event, actor, throws }) => {
    const { d, b } = device(vars);
    b.enclaveError = io;
    const before = d.state();
    const run = () => runTransition(b, event as Event, { actor, reboot: () => undefined });
    if (throws) {
      expect(run).toThrow(io.message);
      expect(d.state()).toEqual(before); // nothing written
    } else {
      expect(run().trace).toEqual(["N9"]);
      expect(d.state().slots.a.bootCount).toBe(before.slots.a.bootCount + 1);
    }
  });
});

describe("withFacts and cloneState", () => {
  test("a fact is probed on its first read only, and a copy made before it shares the answer", () => {
    const calls = { enclave: 0, a: 0, b: 0 };
    const s = withFacts(readState(new Map()), {
      enclave: () => (calls.enclave++, false),
      bootable: (slot) => (calls[slot]++, slot === "a"),
    });
    const copy = cloneState(s);
    expect(calls).toEqual({ enclave: 0, a: 0, b: 0 });
    expect([copy.enclave, copy.bootable.a, copy.bootable.b]).toEqual([false, true, false]);
    expect([s.enclave, s.bootable.a, s.bootable.b, copy.enclave]).toEqual([false, true, false, false]);
    expect(calls).toEqual({ enclave: 1, a: 1, b: 1 });
  });

  test("a probe that throws is asked again on the next read", () => {
    let n = 0;
    const s = withFacts(readState(new Map()), {
      enclave: () => {
        if (++n === 1) throw new ZbError("IO", "cannot read zboot/: busy");
        return true;
      },
      bootable: () => true,
    });
    expect(() => s.enclave).toThrow("busy");
    expect(s.enclave).toBe(true);
    expect(n).toBe(2);
  });

  test("cloneState still copies deeply: the copy's slots, log and facts are its own objects", () => {
    const s = readState(new Map([["zb_log", "1 a"]]));
    const c = cloneState(s);
    c.slots.a.bootCount = 7;
    c.log.push("2 b");
    c.bootable.b = false;
    expect([s.slots.a.bootCount, s.log.length, s.bootable.b]).toEqual([0, 1, true]);
  });
});
