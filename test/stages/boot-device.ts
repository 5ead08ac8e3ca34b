/**
 * A device for the boot-state stage tests (boot.test.ts, boot-tryboot.test.ts):
 * a boot folder with both slots' files, taken over by `zb init`, and a root of
 * its own, driven through dist/zb-x64.
 */
import { expect } from "bun:test";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { withTempVarLock } from "../fakes/envlock.ts";

export const BIN = resolve(import.meta.dir, "../../dist/zb-x64");

export interface FreshDevice {
  boot: string;
  root: string;
  /** dist/zb-x64 with `args`, then --boot and --root of this device; ZB_NO_REBOOT=1 unless `env` says otherwise. */
  run: (args: string[], env?: Record<string, string | undefined>) => { code: number | null; out: string; err: string };
}

/** A boot partition's files before zb init: both slots' kernel and .dtb, config.txt and cmdline.txt. */
export function bootFolder(b: string): void {
  for (const s of ["slot-a", "slot-b"]) {
    mkdirSync(join(b, s), { recursive: true });
    writeFileSync(join(b, s, "vmlinuz"), "a kernel\n");
    writeFileSync(join(b, s, "bcm2711-rpi-4-b.dtb"), "a device tree\n");
  }
  writeFileSync(join(b, "config.txt"), "kernel=vmlinuz\n");
  writeFileSync(join(b, "cmdline.txt"), "console=ttyAMA0 root=/dev/mapper/zb-root\n");
}

/** A fresh boot folder under `dir` with both slots' files, taken over by zb init (slot a committed, b valid), and a root of its own. */
export function freshDevice(dir: string, name: string): FreshDevice {
  const b = join(dir, `boot-${name}`);
  const r = join(dir, `root-${name}`);
  mkdirSync(join(r, "proc/device-tree/chosen/bootloader"), { recursive: true });
  bootFolder(b);
  const run = (args: string[], env: Record<string, string | undefined> = { ...process.env, ZB_NO_REBOOT: "1" }) => {
    const p = Bun.spawnSync(withTempVarLock([BIN, ...args, "--boot", b, "--root", r]), { env });
    return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
  };
  expect(run(["init", "--slot", "a", "--valid", "a,b"]).code).toBe(0);
  writeFileSync(join(r, "proc/cmdline"), readFileSync(join(b, "slot-a/cmdline.txt")));
  return { boot: b, root: r, run };
}

/** The firmware's device-tree notes: the board and its bootloader's build time (u32 BE). */
export function bootloaderFacts(r: string, model: string, build: number): void {
  writeFileSync(join(r, "proc/device-tree/model"), `${model}\0`);
  const cell = new Uint8Array(4);
  new DataView(cell.buffer).setUint32(0, build, false);
  writeFileSync(join(r, "proc/device-tree/chosen/bootloader/build-timestamp"), cell);
}
