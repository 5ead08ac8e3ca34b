/**
 * A whole device in-process: a boot folder laid out by `zb init`, the
 * firmware simulator, and the two actors (zbunlock in the slot's initramfs,
 * zb in the running OS) calling the same library code as the stages.
 * Scenario knobs say which slots crash where. The env lock is the test
 * process's own (fakes/envlock.ts), not the host's /var/lock.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runTransition, type Outcome } from "../../lib/bootstate/commit.ts";
import type { Event } from "../../lib/bootstate/machine.ts";
import { readState, type BootState, type Slot } from "../../lib/bootstate/state.ts";
import { PiBoot } from "../../lib/bootloader/piboot.ts";
import { initBoot } from "../../lib/bootstate/init.ts";
import { parseCmdline } from "../../lib/bootloader/platform.ts";
import type { Sys } from "../../lib/sys/sys.ts";
import { TempLockSys } from "./envlock.ts";
import { PiFirmware, type FirmwareBoot } from "./firmware.ts";

/** How one power-on ended. */
export interface BootRecord {
  fw: FirmwareBoot;
  /** Where it stopped: a running slot, zboot, a crash, or a reboot by zbunlock. */
  end: "running" | "zboot" | "crash-before-initramfs" | "reboot";
  outcome?: Outcome;
}

export const REFERENCE_CONFIG = "kernel=vmlinuz\ninitramfs initrd.img followkernel\n[pi4]\narm_boost=1\n[all]\n";
export const REFERENCE_CMDLINE = "console=serial0,115200 rootwait\n";

export class Device {
  readonly boot: string;
  readonly fw: PiFirmware;
  /** Slots whose kernel dies before the initramfs (bad kernel, bad initrd). */
  readonly crashBeforeInitramfs = new Set<Slot>();
  readonly history: BootRecord[] = [];

  constructor(
    public sys: Sys = new TempLockSys(),
    opts: { committed?: Slot; valid?: Slot[]; enclave?: boolean } = {},
  ) {
    this.boot = mkdtempSync(join(tmpdir(), "zb-device-"));
    mkdirSync(join(this.boot, "zb"), { recursive: true });
    writeFileSync(join(this.boot, "zb/config.txt"), REFERENCE_CONFIG);
    writeFileSync(join(this.boot, "zb/cmdline.txt"), REFERENCE_CMDLINE);
    // enclave: false leaves zboot/ without a kernel and device tree (this build has no enclave to install there).
    for (const d of ["slot-a", "slot-b", "zboot"]) {
      mkdirSync(join(this.boot, d), { recursive: true });
      if (d === "zboot" && opts.enclave === false) continue;
      writeFileSync(join(this.boot, d, "vmlinuz"), d);
      writeFileSync(join(this.boot, d, "initrd.img"), d);
      writeFileSync(join(this.boot, d, "bcm2711-rpi-4-b.dtb"), d);
    }
    writeFileSync(join(this.boot, "zboot/cmdline.txt"), "zboot\n");
    initBoot(new TempLockSys(), join(this.boot), { slot: opts.committed ?? "a", valid: opts.valid ?? ["a", "b"] });
    this.fw = new PiFirmware(this.boot);
  }

  backend(sys: Sys = this.sys): PiBoot {
    return new PiBoot(sys, this.boot);
  }

  state(): BootState {
    return readState(this.backend(new TempLockSys()).readVars());
  }

  /** Power on (or reset): firmware, then zbunlock if the kernel gets that far. */
  powerOn(): BootRecord {
    const fw = this.fw.boot();
    const rec: BootRecord = { fw, end: "running" };
    this.history.push(rec);
    if (fw.target === "zboot") return ((rec.end = "zboot"), rec);
    if (this.crashBeforeInitramfs.has(fw.target)) return ((rec.end = "crash-before-initramfs"), rec);
    const params = parseCmdline(fw.cmdline);
    const event: Event = { kind: "boot", booted: fw.target, tryboot: params.get("kernel_status") === "trying" };
    rec.outcome = runTransition(this.backend(), event, { actor: "zbunlock", reboot: (arg) => this.fw.reboot(arg) });
    if (rec.outcome.reboot) rec.end = "reboot";
    return rec;
  }

  /** An action of zb in the running OS of the last boot (a reboot it asks for reaches the firmware). */
  zb(event: Event): Outcome {
    const actor = event.kind.startsWith("install") ? "zboot" : "zb";
    return runTransition(this.backend(), event, { actor, reboot: (arg) => this.fw.reboot(arg) });
  }

  /** The running OS of the last boot: which slot, and whether it is a try boot. */
  running(): { booted: Slot; tryboot: boolean } {
    const last = this.history.at(-1);
    if (!last || last.end !== "running" || last.fw.target === "zboot") throw new Error("device: no slot is running");
    return { booted: last.fw.target, tryboot: parseCmdline(last.fw.cmdline).get("kernel_status") === "trying" };
  }

  /** Boot until a slot runs (or zboot), at most `max` power-ons. */
  bootUntilRunning(max = 12): BootRecord {
    for (let i = 0; i < max; i++) {
      const r = this.powerOn();
      if (r.end === "running" || r.end === "zboot") return r;
    }
    throw new Error(`device: nothing ran after ${max} boots: ${this.trace()}`);
  }

  /** One line per boot, for failure messages. */
  trace(): string {
    return this.history.map((h) => `${h.fw.file}:${h.fw.target}:${h.end}${h.outcome ? `[${h.outcome.trace.join(",")}]` : ""}`).join(" → ");
  }
}

export function writeProcCmdline(root: string, cmdline: string): void {
  mkdirSync(join(root, "proc"), { recursive: true });
  writeFileSync(join(root, "proc/cmdline"), cmdline + "\n");
}
