/**
 * Can this board's bootloader honour "0 tryboot"? A Pi 4, Pi 400 or Compute
 * Module 4 boots through a bootloader in its SPI EEPROM, and builds before
 * 2021-03-18 do not know the tryboot flag: `reboot "0 tryboot"` then boots
 * config.txt, the try never reaches its initramfs (N1, N1, N2) and the new
 * slot is marked invalid for a fault of the bootloader. snapd's piboot
 * refuses such EEPROMs the same way (bootloader/piboot.go).
 *
 * The facts come from the device tree the firmware fills, read through Sys
 * under a root prefix (tests and `--root DIR` use a temporary tree):
 *
 *   /proc/device-tree/model                           NUL-terminated text
 *   /proc/device-tree/chosen/bootloader/build-timestamp
 *                                                     u32 BE, seconds since
 *                                                     1970 (UTC) of the build
 *
 * Other boards (Pi 5 and later have tryboot in every bootloader build; older
 * Pis load the firmware from the boot medium), and a machine without these
 * nodes (QEMU, a test rig), are not checked: nothing here can tell.
 */
import { join } from "node:path";
import { ZbError } from "../errors.ts";
import type { Sys } from "../sys/sys.ts";
import { dtU32 } from "./platform.ts";

/** BUILD_TIMESTAMP of pieeprom-2021-03-18, the first release with tryboot (snapd uses the same number). */
export const TRYBOOT_MIN_BUILD = 1616057651;

/** What the device tree says about the board and its bootloader; null where a node is absent. */
export interface BootloaderFacts {
  model: string | null;
  buildTimestamp: number | null;
}

/** @throws {ZbError} IO when a node exists but cannot be read */
export function readBootloaderFacts(sys: Sys, root: string): BootloaderFacts {
  const modelPath = join(root, "proc/device-tree/model");
  const model = sys.stat(modelPath) ? sys.readText(modelPath).replace(/\0+$/, "").trim() : null;
  return { model, buildTimestamp: dtU32(sys, join(root, "proc/device-tree/chosen/bootloader/build-timestamp")) };
}

/**
 * Boards whose bootloader lives in an EEPROM that may predate tryboot:
 * "Raspberry Pi 4 Model B …", "Raspberry Pi 400 …", "Raspberry Pi Compute
 * Module 4 …". Not the Compute Module 4S ("… 4S …"), which has no EEPROM.
 */
export function bootloaderInEeprom(model: string): boolean {
  return /^Raspberry Pi (?:4|400|Compute Module 4)(?: |$)/.test(model);
}

/** Why this bootloader cannot do tryboot, or null when it can (or nothing tells). */
export function trybootProblem(facts: BootloaderFacts): string | null {
  if (facts.model === null || !bootloaderInEeprom(facts.model) || facts.buildTimestamp === null) return null;
  if (facts.buildTimestamp >= TRYBOOT_MIN_BUILD) return null;
  return `the bootloader in the EEPROM of this ${facts.model} was built ${buildDate(facts.buildTimestamp)}, before tryboot (2021-03-18): "0 tryboot" would boot config.txt`;
}

/** The hint that goes with {@link trybootProblem}. */
export const EEPROM_HINT = "update the bootloader EEPROM (rpi-eeprom-update -a, then reboot) and try again";

/**
 * Refuse to arm a try (A1) or enter the enclave (I1) on a bootloader that
 * would ignore the one-shot flag: the try would be lost at every re-arm and
 * the slot marked invalid for it. Nothing is read or changed in the env.
 * @param what what was asked, for the message ("arm a try", "enter the recovery enclave")
 * @throws {ZbError} STATE_REFUSED with {@link EEPROM_HINT}; IO when the device tree cannot be read
 */
export function requireTryboot(sys: Sys, root: string, what: string): void {
  const problem = trybootProblem(readBootloaderFacts(sys, root));
  if (problem !== null) throw new ZbError("STATE_REFUSED", `cannot ${what}: ${problem}`, { hint: EEPROM_HINT });
}

/** 2020-09-03, UTC. */
function buildDate(seconds: number): string {
  return new Date(seconds * 1000).toISOString().slice(0, 10);
}
