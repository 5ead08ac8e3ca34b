/**
 * After a boot that did not unlock, before initramfs-tools' panic may leave
 * a shell on the console: nothing may still be opening or holding open
 * zb's LUKS volumes (zb-root, zb-data).
 *
 * Why a zbunlock that cleans up after itself is not enough: when zbunlock is
 * killed (the OOM killer, a watchdog), or when its JIT child (lib/sys/jit.ts)
 * dies with it, a `cryptsetup open` it had started and given the key to is a
 * grandchild that lives on. It can finish after the boot script moved on and
 * create /dev/mapper/zb-root under the shell. So this step
 *   1. finds such processes by their argv in /proc (cryptsetup gets its key on
 *      stdin, never in argv, so argv holds no secret),
 *   2. kills them (SIGKILL) and waits, bounded, until each has ended: a
 *      process killed inside device-mapper's ioctl ends only when it returns,
 *      having perhaps created the mapping, so the close must come after,
 *   3. closes the mappings that exist: `cryptsetup close`, and when that fails
 *      (a cryptsetup killed between creating the device and loading its crypt
 *      table leaves a device cryptsetup does not see as its own)
 *      `dmsetup remove`, when dmsetup exists.
 * What is left open (or running) is returned for the caller to say loudly and
 * to keep the shell away (docs/boot-flow.md, "Failed boots and the shell").
 *
 * Host access goes through the injected Sys (the /proc scan, existence
 * checks) and the functions of {@link LeftoverEnv} (kill, close), so tests use
 * a fake /proc in a temp dir and fake openers.
 */
import { basename, join } from "node:path";
import { DATA_MAPPING, ROOT_MAPPING } from "../luks/credentials.ts";
import type { Sys } from "../sys/sys.ts";

/** The mappings zbunlock creates (lib/luks/credentials.ts). */
export const ZB_MAPPINGS: readonly string[] = [ROOT_MAPPING, DATA_MAPPING];

/** How long killed processes get to end before they count as survivors. */
export const STOP_WAIT_MS = 5000;
const POLL_MS = 10;
/**
 * cmdline is read in a small first piece (cryptsetup's argv is ~100 bytes,
 * and this may run after the OOM killer struck: no large buffer per
 * process), and again up to the larger bound only when that piece filled.
 */
const CMDLINE_FIRST = 4096;
const CMDLINE_MAX = 256 * 1024;

/** A cryptsetup process working on one of the names. */
export interface Stray {
  pid: number;
  /** The mapping name its argv carries. */
  mapping: string;
  /** Its argv, for the console (never secret: keys travel on stdin or descriptors). */
  argv: string[];
}

export interface LeftoverEnv {
  sys: Sys;
  /** The /proc to scan ("/proc", or a fake one in tests). */
  procRoot: string;
  /** The prefix of /dev and /sys ("/" in the initramfs). */
  root: string;
  /** Mapping names to look for; {@link ZB_MAPPINGS} in zbunlock, unique names in tests. */
  names: readonly string[];
  /** This process: never a stray. */
  selfPid: number;
  /** Send SIGKILL. @throws an errno error (ESRCH: it is gone already, EPERM) */
  kill(pid: number): void;
  /** Remove a mapping with cryptsetup. @throws {ZbError} LUKS_FAILED */
  close(name: string): Promise<void>;
  /** Remove a mapping with dmsetup, or null when there is no dmsetup. @throws {ZbError} LUKS_FAILED */
  dmRemove: ((name: string) => Promise<void>) | null;
  now(): number;
  sleep(ms: number): Promise<void>;
  /** How long killed processes get to end; default {@link STOP_WAIT_MS}. */
  waitMs?: number;
}

export interface LeftoverReport {
  /** Killed and ended. */
  stopped: Stray[];
  /** Still running after the wait (or not killable): one may still open a volume. */
  survivors: { stray: Stray; why: string }[];
  /** Closed here: they were open. */
  closed: string[];
  /** Still open: the shell must not come. */
  stillOpen: { name: string; why: string }[];
}

/** Nothing running on the names and nothing left open. */
export function nothingLeft(r: LeftoverReport): boolean {
  return r.survivors.length === 0 && r.stillOpen.length === 0;
}

/**
 * Stop every stray cryptsetup on the names, then close the mappings that
 * exist. Never throws for host failures: they end up in the report.
 */
export async function closeLeftovers(env: LeftoverEnv): Promise<LeftoverReport> {
  const report: LeftoverReport = { stopped: [], survivors: [], closed: [], stillOpen: [] };
  const killed: Stray[] = [];
  for (const s of findStrays(env.sys, env.procRoot, env.names, env.selfPid)) {
    try {
      env.kill(s.pid);
      killed.push(s);
    } catch (e) {
      // ESRCH: it ended by itself between the scan and the kill (what it opened is closed below).
      if ((e as { code?: string }).code !== "ESRCH") report.survivors.push({ stray: s, why: `cannot kill it: ${(e as Error).message}` });
    }
  }
  const deadline = env.now() + (env.waitMs ?? STOP_WAIT_MS);
  for (let left = killed; ; ) {
    left = left.filter((s) => {
      if (!running(env.sys, env.procRoot, s.pid)) report.stopped.push(s);
      else return true;
      return false;
    });
    if (left.length === 0) break;
    if (env.now() >= deadline) {
      for (const s of left) report.survivors.push({ stray: s, why: `it did not end within ${(env.waitMs ?? STOP_WAIT_MS) / 1000} s of SIGKILL` });
      break;
    }
    await env.sleep(POLL_MS);
  }
  for (const name of env.names) {
    if (!mappingExists(env.sys, env.root, name)) continue;
    const why = await closeOne(env, name);
    if (why === null) report.closed.push(name);
    else report.stillOpen.push({ name, why });
  }
  return report;
}

/** Close one mapping; null when it is gone afterwards, else why not. */
async function closeOne(env: LeftoverEnv, name: string): Promise<string | null> {
  const whys: string[] = [];
  try {
    await env.close(name);
  } catch (e) {
    whys.push((e as Error).message);
  }
  if (!mappingExists(env.sys, env.root, name)) return null;
  if (env.dmRemove === null) {
    whys.push("no dmsetup to remove it otherwise");
    return whys.join("; ");
  }
  try {
    await env.dmRemove(name);
  } catch (e) {
    whys.push((e as Error).message);
  }
  if (!mappingExists(env.sys, env.root, name)) return null;
  if (whys.length === 0) whys.push("it still exists after cryptsetup close and dmsetup remove");
  return whys.join("; ");
}

/**
 * The cryptsetup processes in `procRoot` whose argv names one of `names`
 * (as the mapping NAME or /dev/mapper/NAME), except `selfPid`. A process
 * that ends while it is looked at, and a kernel thread (empty cmdline), are
 * skipped. Only argv[0] counts as the program: a script named cryptsetup
 * run by a shell is the shell's argv, not cryptsetup's.
 */
export function findStrays(sys: Sys, procRoot: string, names: readonly string[], selfPid: number): Stray[] {
  const strays: Stray[] = [];
  let entries: string[];
  try {
    entries = sys.listDir(procRoot);
  } catch {
    return strays;
  }
  for (const entry of entries) {
    if (!/^[1-9]\d*$/.test(entry) || Number(entry) === selfPid) continue;
    let argv: string[];
    try {
      const path = join(procRoot, entry, "cmdline");
      let bytes = sys.readAt(path, 0, CMDLINE_FIRST);
      if (bytes.length === CMDLINE_FIRST) bytes = sys.readAt(path, 0, CMDLINE_MAX);
      argv = splitCmdline(bytes);
    } catch {
      continue; // ended between the listing and the read
    }
    if (argv.length === 0 || basename(argv[0]!) !== "cryptsetup") continue;
    const mapping = names.find((n) => argv.slice(1).some((a) => a === n || a === `/dev/mapper/${n}`));
    if (mapping !== undefined) strays.push({ pid: Number(entry), mapping, argv });
  }
  return strays.sort((a, b) => a.pid - b.pid);
}

/** /proc/PID/cmdline: arguments each ended by NUL. */
function splitCmdline(bytes: Uint8Array): string[] {
  const text = new TextDecoder().decode(bytes);
  if (text.length === 0) return [];
  const parts = text.split("\0");
  if (parts[parts.length - 1] === "") parts.pop();
  return parts;
}

/**
 * Is the process still there and not a zombie? A killed process whose parent
 * is gone becomes a zombie of init until reaped; it holds no device then.
 */
function running(sys: Sys, procRoot: string, pid: number): boolean {
  try {
    const stat = sys.readText(join(procRoot, String(pid), "stat"));
    // "PID (comm) STATE …": comm may hold spaces and parentheses, the state follows the last ')'.
    const state = stat.slice(stat.lastIndexOf(")") + 1).trim()[0];
    return state !== undefined && state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

/**
 * Does the mapping exist: its /dev/mapper node, or the kernel's view in
 * /sys/block/dm-N/dm/name (a device created without its node, udev not
 * having run for it yet)?
 */
export function mappingExists(sys: Sys, root: string, name: string): boolean {
  try {
    if (sys.stat(join(root, "dev/mapper", name)) !== null) return true;
  } catch {
    return true; // cannot tell: assume the worst
  }
  const block = join(root, "sys/block");
  let devs: string[];
  try {
    devs = sys.stat(block) === null ? [] : sys.listDir(block);
  } catch {
    return false;
  }
  for (const d of devs) {
    if (!d.startsWith("dm-")) continue;
    try {
      if (sys.readText(join(block, d, "dm/name")).trim() === name) return true;
    } catch {
      // removed meanwhile
    }
  }
  return false;
}

/** The console word for a mapping: "the root volume" for zb-root, "the data volume" for zb-data. */
export function volumeWord(name: string): string {
  return name === ROOT_MAPPING ? "the root volume" : name === DATA_MAPPING ? "the data volume" : `the volume ${name}`;
}

/** Console lines for a report (no secrets: names, PIDs, argv and errors only). */
export function leftoverLines(r: LeftoverReport): string[] {
  const lines: string[] = [];
  for (const s of r.stopped) lines.push(`stopped a leftover cryptsetup (pid ${s.pid}) working on ${s.mapping}`);
  for (const { stray, why } of r.survivors) lines.push(`ERROR: a cryptsetup (pid ${stray.pid}) working on ${stray.mapping} is still running: ${why}; it may still open ${volumeWord(stray.mapping)}`);
  for (const name of r.closed) lines.push(`closed ${name}, left open after the failed boot`);
  for (const { name, why } of r.stillOpen) lines.push(`ERROR: ${volumeWord(name)} is still open: cannot close ${name}: ${why}`);
  return lines;
}
