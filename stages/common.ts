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
import { isZbError, ZbError } from "../lib/errors.ts";
import { err, out } from "./output.ts";

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

/** How a stage's reboots behave beyond the default (throw when the reboot fails). */
export interface RebooterOptions {
  /**
   * zbunlock: a reboot that cannot be started (IO, e.g. the JIT-less
   * hand-over to `zb reboot --raw` failed) becomes a pending reboot, exit 12,
   * on which the initramfs script reboots with the argument recorded (see
   * recordPending), or plainly; the state is committed already and a plain
   * reboot starts the committed slot.
   */
  pendOnFailure?: boolean;
  /**
   * With pendOnFailure: called with the argument of the reboot that became
   * pending, so the initramfs script can make that reboot (zbunlock records
   * it in /run/zb/reboot-param). A failure here is a warning: the script
   * then reboots plainly.
   */
  recordPending?: (arg: string | null) => void;
  /** Tests: instead of lib/sys/reboot.ts. */
  rebootNow?: (arg: string | null, root: string) => void;
}

/** The reboot hook for runTransition: reboot for real, or record it under --no-reboot. */
export function rebooter(args: ParsedArgs, tool: string, opts: RebooterOptions = {}): { reboot: (arg: string | null) => void; pending: () => string | null } {
  let pending: string | null = null;
  const now = opts.rebootNow ?? rebootNow;
  return {
    reboot: (arg) => {
      const how = arg === null ? "normal" : `"${arg}"`;
      if (args.flags.has("no-reboot")) {
        pending = how;
        if (!args.flags.has("json")) out(`${tool}: reboot (${how}) needed, not performed: --no-reboot\n`);
        return;
      }
      // With --json, stdout carries only the JSON document.
      (args.flags.has("json") ? err : out)(`${tool}: rebooting (${how})\n`);
      try {
        now(arg, args.values.get("root") ?? "/");
      } catch (e) {
        if (!opts.pendOnFailure || !isZbError(e, "IO")) throw e;
        err(`${tool}: ${e.message}: exit 12, a reboot (${how}) is needed\n`);
        pending = how;
        try {
          opts.recordPending?.(arg);
        } catch (f) {
          err(`${tool}: warning: cannot record the reboot argument for the boot script: ${(f as Error).message}\n`);
        }
      }
    },
    pending: () => pending,
  };
}


/**
 * The subcommand of `zb TOOL` (env, image, key, hsm, cred), checked before
 * anything else is read: none is USAGE, with the usage text on stderr;
 * `--help`/`-h` prints it on stdout (null: the command is done); an unknown
 * one is USAGE, even with --help after it.
 * @param usage the usage text as printed, newline included
 * @param named the subcommands as the message names them (default "a, b or c")
 * @throws {ZbError} USAGE
 * @example const sub = subcommand("key", argv[0], ["gen", "id"], USAGE + "\n"); if (sub === null) return 0;
 */
export function subcommand<S extends string>(tool: string, sub: string | undefined, known: readonly S[], usage: string, named = orList(known)): S | null {
  if (sub === undefined) {
    err(usage);
    throw new ZbError("USAGE", `cannot run zb ${tool}: no subcommand given (${named})`);
  }
  if (sub === "--help" || sub === "-h") {
    out(usage);
    return null;
  }
  if (!(known as readonly string[]).includes(sub)) throw new ZbError("USAGE", `cannot run zb ${tool}: unknown subcommand ${JSON.stringify(sub)}`, { hint: `see \`zb ${tool} --help\`` });
  return sub as S;
}

/** `a, b or c`. */
function orList(items: readonly string[]): string {
  return items.length < 2 ? items.join("") : `${items.slice(0, -1).join(", ")} or ${items.at(-1)}`;
}
