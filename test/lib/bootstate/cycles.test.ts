/**
 * Whole boot cycles in-process: the firmware simulator picks config.txt or
 * tryboot.txt, zbunlock runs the initramfs half, zb the running-OS half.
 * Each scenario reads as the sequence of boots a real device would go through.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { TempLockSys } from "../../fakes/envlock.ts";
import { Device } from "../../fakes/device.ts";

const devices: Device[] = [];
afterAll(() => devices.forEach((d) => rmSync(d.boot, { recursive: true, force: true })));
function device(...args: ConstructorParameters<typeof Device>): Device {
  const d = new Device(...args);
  devices.push(d);
  return d;
}
const configPrefix = (d: Device) => /^os_prefix=(.*)$/m.exec(readFileSync(join(d.boot, "config.txt"), "utf8"))?.[1];

describe("boot cycles", () => {
  test("install → try → success: the try slot is committed and boots normally", () => {
    const d = device();
    expect(d.bootUntilRunning().fw).toMatchObject({ file: "config.txt", target: "a" });
    d.zb({ kind: "install-begin", slot: "b" });
    d.zb({ kind: "install-end", slot: "b", version: "2.0", serial: 7 });
    expect(d.zb({ kind: "arm-try", slot: "b" }).reboot).toEqual({ argument: "0 tryboot" });
    expect(existsSync(join(d.boot, "tryboot.txt"))).toBe(true);
    const tryBoot = d.bootUntilRunning();
    expect(tryBoot.fw).toMatchObject({ file: "tryboot.txt", target: "b" });
    expect(tryBoot.outcome?.trace).toEqual(["T1"]);
    expect(d.state().status).toBe("trying");
    d.zb({ kind: "mark-good", ...d.running() });
    expect(d.state()).toMatchObject({ committed: "b", status: "", trySlot: null });
    expect(existsSync(join(d.boot, "tryboot.txt"))).toBe(false);
    expect(configPrefix(d)).toBe("slot-b/");
    const after = d.bootUntilRunning();
    expect(after.fw).toMatchObject({ file: "config.txt", target: "b" });
    expect(d.state().slots.b).toMatchObject({ valid: true, version: "2.0", serial: 7, bootCount: 1 });
  });

  test("try → kernel panic before the initramfs: re-armed zb_try_left times, then failed; back on a", () => {
    const d = device();
    d.bootUntilRunning();
    d.crashBeforeInitramfs.add("b");
    d.zb({ kind: "arm-try", slot: "b" });
    const end = d.bootUntilRunning();
    expect(end.fw.target).toBe("a");
    // 1 try + 2 re-arms, each crashing before zbunlock could run
    expect(d.history.filter((h) => h.fw.file === "tryboot.txt").length).toBe(3);
    expect(d.history.slice(1).map((h) => h.outcome?.trace.join("+") ?? h.end)).toEqual([
      "crash-before-initramfs", "N1", "crash-before-initramfs", "N1", "crash-before-initramfs", "N2+N9",
    ]);
    expect(d.state()).toMatchObject({ committed: "a", status: "", trySlot: null });
    expect(d.state().slots.b.valid).toBe(false);
    expect(d.state().log.at(-1)).toMatch(/try of b failed: never reached its initramfs/);
    expect(existsSync(join(d.boot, "tryboot.txt"))).toBe(false);
  });

  test("try → failure after the initramfs: not re-armed; back on a with the failure recorded", () => {
    const d = device();
    d.bootUntilRunning();
    d.zb({ kind: "arm-try", slot: "b" });
    expect(d.bootUntilRunning().fw.target).toBe("b"); // T1: trying
    // the try's userspace dies: reset without mark-good
    const back = d.bootUntilRunning();
    expect(back.fw).toMatchObject({ file: "config.txt", target: "a" });
    expect(back.outcome?.trace).toEqual(["N3", "N9"]);
    expect(d.history.filter((h) => h.fw.file === "tryboot.txt").length).toBe(1);
    expect(d.state().slots.b.valid).toBe(false);
    expect(d.state().log.at(-1)).toMatch(/failed after its initramfs/);
  });

  test("power cut before the try reboot: the try is re-armed, not lost", () => {
    const d = device();
    d.bootUntilRunning();
    d.zb({ kind: "arm-try", slot: "b" });
    d.fw.powerCut(); // the flag set by the reboot is lost
    const r = d.bootUntilRunning();
    expect(r.fw).toMatchObject({ file: "tryboot.txt", target: "b" });
    expect(d.history.slice(1).map((h) => `${h.fw.file}:${h.outcome?.trace.join("+")}`)).toEqual(["config.txt:N1", "tryboot.txt:T1"]);
    d.zb({ kind: "mark-good", ...d.running() });
    expect(d.state()).toMatchObject({ committed: "b", status: "" });
  });

  test("committed slot failing N times → rollback to the other slot", () => {
    const d = device(new TempLockSys(), { committed: "a", valid: ["a", "b"] });
    const ends: string[] = [];
    for (let i = 0; i < 4; i++) ends.push(`${d.bootUntilRunning().fw.target}:${d.history.at(-1)!.outcome!.trace.join("+")}`);
    // a gets zb_boot_limit (3) boots without mark-good, then N7 rolls back
    expect(ends).toEqual(["a:N9", "a:N9", "a:N9", "b:N9"]);
    expect(d.history.at(-2)!.outcome!.trace).toEqual(["N7"]);
    expect(d.state()).toMatchObject({ committed: "b" });
    expect(configPrefix(d)).toBe("slot-b/");
    d.zb({ kind: "mark-good", ...d.running() });
    expect(d.state().slots.b.bootCount).toBe(0);
  });

  test("both slots failing → recover: config.txt goes to zboot/", () => {
    const d = device();
    let r = d.bootUntilRunning();
    for (let i = 0; i < 10 && r.end !== "zboot"; i++) r = d.bootUntilRunning();
    expect(r.end).toBe("zboot");
    expect(d.state()).toMatchObject({ mode: "recover" });
    expect(configPrefix(d)).toBe("zboot/");
    // a: 3 counted boots + the N7 rollback boot; b: 3 + the N8 boot; then zboot
    expect(d.history.map((h) => h.fw.target)).toEqual(["a", "a", "a", "a", "b", "b", "b", "b", "zboot"]);
    expect(d.history.at(-2)!.outcome!.trace).toEqual(["N8"]);
  });

  test("both slots failing without an enclave: the committed slot keeps booting (N10), config.txt never points at an empty zboot/", () => {
    const d = device(undefined, { enclave: false });
    for (let i = 0; i < 12; i++) d.bootUntilRunning();
    // a: 3 counted boots + the N7 rollback boot; b: 3 counted, then N10 boots it on, every time
    expect(d.history.slice(0, 8).map((h) => `${h.fw.target}:${h.outcome!.trace.join(",")}`)).toEqual(["a:N9", "a:N9", "a:N9", "a:N7", "b:N9", "b:N9", "b:N9", "b:N10"]);
    expect(d.history.slice(7).every((h) => h.end === "running" && h.outcome!.trace.join() === "N10")).toBe(true);
    expect(d.state()).toMatchObject({ mode: "run", committed: "b" });
    expect(configPrefix(d)).toBe("slot-b/");
    // and a mark-good at last brings the counter back: the next boot is an ordinary one
    d.zb({ kind: "mark-good", ...d.running() });
    expect(d.bootUntilRunning().outcome!.trace).toEqual(["N9"]);
  });

  test("without an enclave, mark-bad of the only valid slot and entering the enclave are refused, nothing written", () => {
    const d = device(undefined, { valid: ["a"], enclave: false });
    d.bootUntilRunning();
    const before = d.state();
    expect(() => d.zb({ kind: "mark-bad", which: "booted", ...d.running() })).toThrow(expect.objectContaining({ code: "STATE_REFUSED", message: expect.stringContaining("no recovery enclave") }));
    expect(() => d.zb({ kind: "enter-install" })).toThrow(expect.objectContaining({ code: "STATE_REFUSED", message: expect.stringContaining("no recovery enclave") }));
    expect(d.state()).toEqual(before);
  });

  test("mark-good is idempotent", () => {
    const d = device();
    d.bootUntilRunning();
    const first = d.zb({ kind: "mark-good", ...d.running() });
    const second = d.zb({ kind: "mark-good", ...d.running() });
    expect(first).toMatchObject({ envChanged: true });
    expect(second).toMatchObject({ envChanged: false });
  });

  test("rollback by hand, and mark-bad booted", () => {
    const d = device();
    d.bootUntilRunning();
    d.zb({ kind: "rollback" });
    expect(d.bootUntilRunning().fw.target).toBe("b");
    d.zb({ kind: "mark-bad", which: "booted", ...d.running() });
    expect(d.state()).toMatchObject({ committed: "a" });
    expect(d.state().slots.b.valid).toBe(false);
    expect(d.bootUntilRunning().fw.target).toBe("a");
    expect(() => d.zb({ kind: "rollback" })).toThrow(expect.objectContaining({ code: "STATE_REFUSED" }));
  });

  test("zb rollback on the try boot abandons the update: the next boot is a, b is invalid and never committed", () => {
    const d = device();
    d.bootUntilRunning();
    d.zb({ kind: "arm-try", slot: "b" });
    expect(d.bootUntilRunning().fw).toMatchObject({ file: "tryboot.txt", target: "b" });
    expect(d.zb({ kind: "rollback" }).trace).toEqual(["R3"]);
    expect(existsSync(join(d.boot, "tryboot.txt"))).toBe(false);
    d.fw.powerCut();
    const next = d.bootUntilRunning();
    expect(next.fw).toMatchObject({ file: "config.txt", target: "a" });
    expect(next.outcome?.trace).toEqual(["N9"]);
    expect(d.state()).toMatchObject({ committed: "a", status: "", trySlot: null });
    expect(d.state().slots.b.valid).toBe(false);
    expect(configPrefix(d)).toBe("slot-a/");
  });

  test("zb rollback with a try armed but not yet booted: the reboot into it starts a, not b", () => {
    const d = device();
    d.bootUntilRunning();
    d.zb({ kind: "arm-try", slot: "b" }); // the firmware holds the tryboot flag now
    d.zb({ kind: "rollback" });
    const next = d.bootUntilRunning();
    expect(next.fw).toMatchObject({ file: "config.txt", target: "a" });
    expect(d.state()).toMatchObject({ committed: "a", status: "" });
    expect(d.state().slots.b.valid).toBe(false);
  });

  test("the other slot's folder has no kernel: after the limit, recovery (not a rollback the firmware cannot boot)", () => {
    const d = device();
    rmSync(join(d.boot, "slot-b/vmlinuz"));
    d.bootUntilRunning();
    // nor by hand: zb rollback is refused, nothing written
    const before = d.state();
    expect(() => d.zb({ kind: "rollback" })).toThrow(expect.objectContaining({ code: "STATE_REFUSED", message: expect.stringContaining("slot-b/ holds no kernel") }));
    expect(d.state()).toEqual(before);
    for (let i = 0; i < 2; i++) d.bootUntilRunning(); // a boots 3 times without mark-good
    const r = d.bootUntilRunning();
    expect(r.end).toBe("zboot");
    expect(d.history.at(-2)!.outcome!.trace).toEqual(["N8"]);
    expect(d.state()).toMatchObject({ committed: "a", mode: "recover" });
  });

  test("the other slot's folder has no .dtb file and there is no enclave: the committed slot boots on (N10)", () => {
    const d = device(undefined, { enclave: false });
    rmSync(join(d.boot, "slot-b/bcm2711-rpi-4-b.dtb"));
    for (let i = 0; i < 5; i++) d.bootUntilRunning();
    expect(d.history.map((h) => `${h.fw.target}:${h.outcome!.trace.join(",")}`)).toEqual(["a:N9", "a:N9", "a:N9", "a:N10", "a:N10"]);
    expect(d.state()).toMatchObject({ committed: "a", mode: "run" });
  });

  test("enter the enclave by tryboot; a crash there falls back to the slot", () => {
    const d = device();
    d.bootUntilRunning();
    d.zb({ kind: "enter-install" });
    const z = d.powerOn();
    expect(z).toMatchObject({ end: "zboot", fw: { file: "tryboot.txt" } });
    // the enclave dies: reset, config.txt boots a, N4 clears install mode
    const back = d.bootUntilRunning();
    expect(back.fw.target).toBe("a");
    expect(back.outcome?.trace).toEqual(["N4", "N9"]);
    expect(d.state().mode).toBe("run");
  });
});
