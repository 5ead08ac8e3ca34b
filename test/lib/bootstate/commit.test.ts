/**
 * runTransition reads the env once: the write builds on the read the step
 * was computed from (PiBoot.writeVars' `from`), instead of reading both
 * copies again. Counted on real files through a Sys that counts reads.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { runTransition } from "../../../lib/bootstate/commit.ts";
import { readState } from "../../../lib/bootstate/state.ts";
import { ZbError } from "../../../lib/errors.ts";
import { TempLockSys } from "../../fakes/envlock.ts";
import { Device } from "../../fakes/device.ts";

/** HostSys (the env lock a temp file) that counts readAt calls per path. */
class CountingSys extends TempLockSys {
  reads = new Map<string, number>();
  override readAt(path: string, offset: number, length: number): Uint8Array {
    this.reads.set(path, (this.reads.get(path) ?? 0) + 1);
    return super.readAt(path, offset, length);
  }
  envReads(boot: string): number {
    return [...this.reads].filter(([p]) => p.startsWith(join(boot, "zb/"))).reduce((n, [, c]) => n + c, 0);
  }
}

const devices: Device[] = [];
afterAll(() => devices.forEach((d) => rmSync(d.boot, { recursive: true, force: true })));

describe("one env read per transition", () => {
  test("a boot (N9, boot count 0 → 1): both copies read once, the count written", () => {
    const sys = new CountingSys();
    const d = new Device(sys);
    devices.push(d);
    const before = sys.envReads(d.boot);
    const rec = d.powerOn();
    expect(rec.outcome?.trace).toContain("N9");
    expect(sys.envReads(d.boot) - before).toBe(2);
    expect(d.state().slots.a.bootCount).toBe(1);
  });

  test.each([
    { name: "the Vars the last read returned: no second read", from: "last", reads: 2 },
    { name: "an equal copy of them: read again", from: "copy", reads: 4 },
    { name: "none: read again", from: "none", reads: 4 },
  ] as const)("writeVars with $name", ({ from, reads }) => {
    const sys = new CountingSys();
    const d = new Device(sys);
    devices.push(d);
    const b = d.backend();
    const start = sys.envReads(d.boot);
    const vars = b.readVars();
    const basis = from === "last" ? vars : from === "copy" ? new Map(vars) : undefined;
    b.writeVars([{ name: "zb_boot_count_a", value: "2" }], basis);
    expect(sys.envReads(d.boot) - start).toBe(reads);
    expect(readState(b.readVars()).slots.a.bootCount).toBe(2);
  });

  test("dry run: one read, nothing written", () => {
    const sys = new CountingSys();
    const d = new Device(sys);
    devices.push(d);
    const start = sys.envReads(d.boot);
    const o = runTransition(d.backend(), { kind: "boot", booted: "a", tryboot: false }, { actor: "zbunlock", dryRun: true });
    expect(o.envChanged).toBe(true);
    expect(sys.envReads(d.boot) - start).toBe(2);
    expect(d.state().slots.a.bootCount).toBe(0);
  });
});

/** HostSys (the env lock a temp file) whose renames onto config.txt fail, as on a boot partition with no room for the new file. */
class FullBootSys extends TempLockSys {
  override rename(from: string, to: string): void {
    if (to.endsWith("/config.txt")) throw new ZbError("IO", `cannot rename ${from} to ${to}: no space left on device`);
    super.rename(from, to);
  }
}

describe("a boot file that cannot be written after the env was (the commit point)", () => {
  test.each([
    {
      name: "N7 (a exhausted, b valid): rolled back in the env, config.txt stale; the reboot still happens, stale reported",
      before: { zb_boot_count_a: "3" },
      after: { committed: "b", trace: ["N7"] as string[], reboot: true, stale: /no space left on device/, prefix: "slot-a/" },
    },
    {
      name: "N9 (an ordinary boot, config.txt not rewritten): nothing stale",
      before: {},
      after: { committed: "a", trace: ["N9"] as string[], reboot: false, stale: null, prefix: "slot-a/" },
    },
  ])("$name", ({ before, after }) => {
    const d = new Device(new FullBootSys());
    devices.push(d);
    const b = d.backend(new TempLockSys());
    b.writeVars(Object.entries(before).map(([name, value]) => ({ name, value })));
    const reboots: (string | null)[] = [];
    const o = runTransition(d.backend(), { kind: "boot", booted: "a", tryboot: false }, { actor: "zbunlock", reboot: (arg) => void reboots.push(arg) });
    expect(o.trace).toEqual(after.trace);
    expect(d.state().committed).toBe(after.committed);
    expect(reboots.length > 0).toBe(after.reboot);
    if (after.stale) expect(o.stale?.message).toMatch(after.stale);
    else expect(o.stale).toBeUndefined();
    expect(readFileSync(join(d.boot, "config.txt"), "utf8")).toContain(`os_prefix=${after.prefix}`);
  });

  test("config.txt that stays stale: N5 twice (each reboots, stale reported), then N6 boots the slot the firmware chose", () => {
    const d = new Device(new FullBootSys());
    devices.push(d);
    d.backend(new TempLockSys()).writeVars([{ name: "zb_slot", value: "b" }]); // the env says b, config.txt still says a
    const traces: string[] = [];
    for (let i = 0; i < 3; i++) {
      const reboots: (string | null)[] = [];
      const o = runTransition(d.backend(), { kind: "boot", booted: "a", tryboot: false }, { actor: "zbunlock", reboot: (arg) => void reboots.push(arg) });
      traces.push(`${o.trace.join(",")}${reboots.length ? " reboot" : ""}${o.stale ? " stale" : ""}${o.proceed ? " proceed" : ""}`);
    }
    expect(traces).toEqual(["N5 reboot stale", "N5 reboot stale", "N6 proceed"]);
  });
});

/** HostSys (the env lock a temp file) that cannot list slot-b/, as a corrupt FAT directory fails (EIO). */
class CorruptSlotBSys extends TempLockSys {
  override listDir(path: string): string[] {
    if (path.endsWith("/slot-b")) throw new ZbError("IO", `cannot list ${path}: input/output error`);
    return super.listDir(path);
  }
}

describe("a slot folder that cannot be read (the bootable fact unknown)", () => {
  test.each([
    // N9 needs no fact about slot-b/ (withFacts): it is not read, so nothing to warn about.
    { name: "an ordinary boot of a: N9, boots on, slot-b/ not asked about", before: {}, after: { trace: ["N9"], committed: "a", proceed: true }, warned: false },
    { name: "a exhausted: N7 rolls back to b, taken as bootable as before zb looked, warned", before: { zb_boot_count_a: "3" }, after: { trace: ["N7"], committed: "b", proceed: false }, warned: true },
  ] as { name: string; before: Record<string, string>; after: { trace: string[]; committed: "a" | "b"; proceed: boolean }; warned: boolean }[])("$name", ({ before, after, warned }) => {
    const d = new Device(new CorruptSlotBSys());
    devices.push(d);
    d.backend(new TempLockSys()).writeVars(Object.entries(before).map(([name, value]) => ({ name, value })));
    const o = runTransition(d.backend(), { kind: "boot", booted: "a", tryboot: false }, { actor: "zbunlock", reboot: () => undefined });
    expect({ trace: o.trace, committed: d.state().committed, proceed: o.proceed }).toEqual(after);
    expect(o.warnings).toEqual(warned ? [expect.stringMatching(/^cannot tell whether slot-b\/ holds a kernel and a \.dtb file \(cannot list .*slot-b: input\/output error\): taking slot b as bootable$/)] : []);
  });

  test("a readable device: no warnings", () => {
    const d = new Device();
    devices.push(d);
    expect(runTransition(d.backend(), { kind: "boot", booted: "a", tryboot: false }, { actor: "zbunlock" }).warnings).toEqual([]);
  });
});
