/**
 * What the boot-state commands share: the --boot/--root options, the host
 * objects they build, and how a planned reboot is carried out or reported.
 */
import type { ParsedArgs, OptionSpecs } from "../lib/cli/args.ts";
import { DEFAULT_BOOT_DIR } from "../lib/env/config.ts";
import { PiBoot } from "../lib/bootloader/piboot.ts";
import { readPlatform, type Platform } from "../lib/bootloader/platform.ts";
import { rebootNow } from "../lib/sys/reboot.ts";
import { HostSys, type Sys } from "../lib/sys/sys.ts";
import { out } from "./output.ts";

export const BOOT_OPTIONS: OptionSpecs = {
  boot: { value: true },
  root: { value: true },
  "no-reboot": {},
  json: {},
  help: { short: "h" },
};

export const BOOT_OPTIONS_HELP = `  --boot DIR     the mounted boot partition (default ${DEFAULT_BOOT_DIR})
  --root DIR     prefix for /proc, /sys and /dev (default /), for checks on a copied tree
  --no-reboot    report a needed reboot instead of rebooting
  --json         machine-readable output`;

export interface Host {
  sys: Sys;
  root: string;
  bootDir: string;
  backend: PiBoot;
}

export function host(args: ParsedArgs, defaultBoot = DEFAULT_BOOT_DIR): Host {
  const sys = new HostSys();
  const bootDir = args.values.get("boot") ?? defaultBoot;
  return { sys, root: args.values.get("root") ?? "/", bootDir, backend: new PiBoot(sys, bootDir) };
}

/** /proc/cmdline and the device tree, or null when they cannot be read (status only). */
export function platformOrNull(h: Host): Platform | null {
  try {
    return readPlatform(h.sys, h.root);
  } catch {
    return null;
  }
}

export function platform(h: Host): Platform {
  return readPlatform(h.sys, h.root);
}

/** The reboot hook for runTransition: reboot for real, or record it under --no-reboot. */
export function rebooter(args: ParsedArgs, tool: string): { reboot: (arg: string | null) => void; pending: () => string | null } {
  let pending: string | null = null;
  return {
    reboot: (arg) => {
      const how = arg === null ? "normal" : `"${arg}"`;
      if (args.flags.has("no-reboot")) {
        pending = how;
        if (!args.flags.has("json")) out(`${tool}: reboot (${how}) needed, not performed: --no-reboot\n`);
        return;
      }
      out(`${tool}: rebooting (${how})\n`);
      rebootNow(arg, args.values.get("root") ?? "/");
    },
    pending: () => pending,
  };
}

