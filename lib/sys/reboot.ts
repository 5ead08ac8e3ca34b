/**
 * Restart the machine, optionally with an argument for the firmware
 * ("0 tryboot": the Pi firmware reads tryboot.txt once; raspberrypi/linux
 * drivers/firmware/raspberrypi.c passes it on through the reboot notifier).
 *
 * Under systemd (the running OS) `systemctl reboot ARG` stores the argument
 * in /run/systemd/reboot-param and shuts down cleanly. Without an init
 * system (initramfs, enclave) zb calls reboot(2) itself with
 * LINUX_REBOOT_CMD_RESTART2 through bun:ffi, after sync(2). A process
 * started without the JIT (zbunlock, lib/sys/jit.ts) cannot use bun:ffi: it
 * hands the reboot to `zb reboot --raw [--param ARG]`, the same binary with
 * the JIT on, which does exactly that and never returns.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { ZbError } from "../errors.ts";
import { writeFileAtomic } from "./atomic.ts";
import { jitOff, runWithJit, type JitSpawner } from "./jit.ts";
import { libc } from "./libc.ts";
import type { Sys } from "./sys.ts";

// include/uapi/linux/reboot.h
const MAGIC1 = 0xfee1dead;
const MAGIC2 = 672274793;
const CMD_RESTART = 0x01234567;
const CMD_RESTART2 = 0xa1b2c3d4;
/** __NR_reboot: arch/arm64 uses the generic table (142), x86_64 its own (169). */
const NR_REBOOT: Record<string, number> = { arm64: 142, x64: 169 };

/**
 * Reboot now. Under systemd it returns once the reboot job is queued (the
 * caller exits and systemd stops everything); otherwise it does not return.
 * @param root prefix for /run (the `--root` option); systemd is detected by
 *   `<root>/run/systemd/system`, as sd_booted() does
 * @throws {ZbError} IO when the reboot could not be started;
 *   USAGE when ZB_NO_REBOOT=1 is set (test runs set it so no test can reboot the host)
 */
export function rebootNow(arg: string | null, root = "/", seams: RebootSeams = {}): void {
  if (existsSync(join(root, "run/systemd/system"))) return viaSystemd(arg);
  if (jitOff()) viaChild(arg, root, seams.spawn);
  (seams.syscall ?? viaSyscall)(arg);
}

/**
 * Tests replace the two ways out of the process; ZB_NO_REBOOT=1 guards each
 * real one (not rebootNow itself), so tests keep it set while they run the
 * logic above with stand-ins.
 */
export interface RebootSeams {
  spawn?: JitSpawner;
  syscall?: (arg: string | null) => never;
}

/** @throws {ZbError} USAGE when ZB_NO_REBOOT=1 is set */
function guard(arg: string | null): void {
  if (process.env.ZB_NO_REBOOT === "1") {
    throw new ZbError("USAGE", `cannot reboot${arg ? ` with "${arg}"` : ""}: ZB_NO_REBOOT=1 is set`);
  }
}

/** Without the JIT: the same binary with the JIT on makes the syscall; it returns only on failure. */
function viaChild(arg: string | null, root: string, spawn?: JitSpawner): never {
  if (!spawn) guard(arg); // the real child: it would reboot
  const args = ["reboot", "--raw", ...(arg ? ["--param", arg] : []), ...(root === "/" ? [] : ["--root", root])];
  let code: number;
  try {
    code = runWithJit({ argv0: "zb", args }, spawn);
  } catch (e) {
    throw new ZbError("IO", `cannot reboot: cannot start \`zb ${args.join(" ")}\`: ${(e as Error).message}`, { cause: e });
  }
  throw new ZbError("IO", `cannot reboot: \`zb ${args.join(" ")}\` returned (exit ${code})`);
}

/** `systemctl reboot ARG` stores ARG in /run/systemd/reboot-param for the final reboot(2). */
function viaSystemd(arg: string | null): void {
  guard(arg);
  const p = Bun.spawnSync(["systemctl", "reboot", ...(arg ? [arg] : [])], { stderr: "pipe" });
  if (p.exitCode !== 0) throw new ZbError("IO", `cannot reboot through systemd: ${p.stderr.toString().trim() || `exit ${p.exitCode}`}`);
}

function viaSyscall(arg: string | null): never {
  guard(arg);
  const nr = NR_REBOOT[process.arch];
  if (nr === undefined) throw new ZbError("IO", `cannot reboot: no reboot syscall number for ${process.arch}`);
  // Imported lazily: bun:ffi is only needed on this path.
  const { ptr } = require("bun:ffi") as typeof import("bun:ffi");
  const c = libc();
  c.sync();
  const buf = Buffer.from(`${arg ?? ""}\0`, "latin1");
  const rc = c.syscall(nr, MAGIC1, MAGIC2, arg ? CMD_RESTART2 : CMD_RESTART, ptr(buf));
  throw new ZbError("IO", `cannot reboot: reboot(2) returned ${rc} (needs CAP_SYS_BOOT)`);
}

/**
 * Where zbunlock leaves the argument of a reboot it could not start (exit
 * 12, REBOOT_PENDING), relative to the root: initramfs-tools'
 * scripts/local-top/zb reads it and reboots with it (`zb reboot --raw
 * --param ARG`), so a re-arm ("0 tryboot", row N1) is not spent on a plain
 * reboot. One line: the argument, empty for a plain reboot. /run is a fresh
 * tmpfs at every boot, so no earlier boot's line is found there.
 */
export const PENDING_REBOOT_FILE = "run/zb/reboot-param";

/**
 * Record the reboot a caller needs and could not make ({@link PENDING_REBOOT_FILE}).
 * @throws {ZbError} IO
 */
export function recordPendingReboot(sys: Sys, root: string, arg: string | null): void {
  const path = join(root, PENDING_REBOOT_FILE);
  sys.mkdirp(dirname(path));
  writeFileAtomic(sys, path, `${arg ?? ""}\n`);
}
