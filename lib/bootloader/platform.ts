/**
 * What the running kernel tells about this boot: the command line and the
 * Pi firmware's device-tree notes. Read through Sys under a root prefix, so
 * tests and `--root DIR` runs use a temporary tree.
 *
 *   /proc/cmdline                                   zb.slot=X, kernel_status=trying
 *   /proc/device-tree/chosen/bootloader/tryboot     u32 BE, 1 in tryboot mode
 *   /proc/device-tree/chosen/bootloader/partition   u32 BE, the boot partition
 * (raspberrypi/documentation, bootflow-eeprom.adoc; the firmware fills them.)
 */
import { join } from "node:path";
import { ZbError } from "../errors.ts";
import type { Sys } from "../sys/sys.ts";
import type { Slot } from "../bootstate/state.ts";

export interface Platform {
  cmdline: string;
  params: Map<string, string>;
  /** The firmware's tryboot flag from the device tree; null when absent (not a Pi, or QEMU). */
  dtTryboot: boolean | null;
  dtPartition: number | null;
}

/** @throws {ZbError} IO when /proc/cmdline cannot be read */
export function readPlatform(sys: Sys, root: string): Platform {
  const cmdline = sys.readText(join(root, "proc/cmdline")).trim();
  return {
    cmdline,
    params: parseCmdline(cmdline),
    dtTryboot: flagOrNull(dtU32(sys, join(root, "proc/device-tree/chosen/bootloader/tryboot"))),
    dtPartition: dtU32(sys, join(root, "proc/device-tree/chosen/bootloader/partition")),
  };
}

/** `a=b c "d=e f"` → map; a bare word maps to "". Later duplicates win, as in the kernel. */
export function parseCmdline(cmdline: string): Map<string, string> {
  const params = new Map<string, string>();
  for (const m of cmdline.matchAll(/(?:[^\s"]+|"[^"]*")+/g)) {
    const word = m[0].replace(/"/g, "");
    const eq = word.indexOf("=");
    if (eq < 0) params.set(word, "");
    else params.set(word.slice(0, eq), word.slice(eq + 1));
  }
  return params;
}

/** The booted slot and whether this is a try boot, from the cmdline zb generated. */
export interface Booted {
  slot: Slot;
  /** `kernel_status=trying` is on the cmdline: tryboot.txt was used (snapd's marker). */
  tryboot: boolean;
}

/**
 * @throws {ZbError} STATE_REFUSED when the cmdline carries no zb.slot (not booted through zb's config)
 */
export function bootedFrom(p: Platform): Booted {
  const slot = p.params.get("zb.slot");
  if (slot !== "a" && slot !== "b") {
    throw new ZbError("STATE_REFUSED", `cannot tell the booted slot: the kernel command line has ${slot === undefined ? "no zb.slot=" : `zb.slot=${slot}`}`, {
      hint: "boot through the config.txt that `zb init` generates (it adds zb.slot=a|b)",
    });
  }
  return { slot, tryboot: p.params.get("kernel_status") === "trying" };
}

/** A device-tree cell (u32, big-endian), or null when the node is absent or shorter. @throws {ZbError} IO */
export function dtU32(sys: Sys, path: string): number | null {
  if (!sys.stat(path)) return null;
  const b = sys.readAt(path, 0, 4);
  if (b.length !== 4) return null;
  return ((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0;
}

function flagOrNull(v: number | null): boolean | null {
  return v === null ? null : v === 1;
}
