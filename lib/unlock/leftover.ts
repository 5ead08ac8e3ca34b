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
 *   3. closes the mappings the kernel has: `cryptsetup close`, and when that
 *      fails (a cryptsetup killed between creating the device and loading its
 *      crypt table leaves a device cryptsetup does not see as its own)
 *      `dmsetup remove`, when dmsetup exists. Besides zb's names, leftover
 *      `temporary-cryptsetup-*` mappings are closed too: without the kernel's
 *      AF_ALG skcipher interface cryptsetup decrypts a keyslot through such a
 *      dm-crypt mapping, and one killed meanwhile leaves it, readable by a
 *      shell. A close or remove that does not end after its kill leaves its
 *      volume counted as open (it may still be changing the device) unless
 *      sysfs shows it gone. A /dev/mapper node sysfs does not show is given
 *      one `dmsetup remove` (a device killed before its first table has no
 *      sysfs entry since Linux 5.15), whose failure does not count.
 * What is left open (or running) is returned for the caller to say loudly and
 * to keep the shell away (docs/boot-flow.md, "Failed boots and the shell").
 *
 * Host access goes through the injected Sys (the /proc scan, existence
 * checks) and the functions of {@link LeftoverEnv} (kill, close), so tests use
 * a fake /proc in a temp dir and fake openers.
 */
import { basename, join } from "node:path";
import { DATA_MAPPING, ROOT_MAPPING } from "../luks/credmeta.ts";
import { stillRunning } from "../luks/tool.ts";
import type { Sys } from "../sys/sys.ts";

/** The mappings zbunlock creates (lib/luks/credmeta.ts). */
export const ZB_MAPPINGS: readonly string[] = [ROOT_MAPPING, DATA_MAPPING];

/**
 * The names cryptsetup 2.x gives the dm-crypt mapping through which it reads
 * a keyslot when the kernel has no AF_ALG skcipher (af_alg, algif_skcipher).
 */
export const TEMP_MAPPING_PREFIX = "temporary-cryptsetup-";

/** How long killed processes get to end before they count as survivors. */
const STOP_WAIT_MS = 5000;
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
}

export interface LeftoverEnv {
  sys: Sys;
  /** The /proc to scan ("/proc", or a fake one in tests). */
  procRoot: string;
  /** The prefix of /dev and /sys ("/" in the initramfs). */
  root: string;
  /** Mapping names to look for; {@link ZB_MAPPINGS} in zbunlock, unique names in tests. */
  names: readonly string[];
  /**
   * Also close every mapping whose name starts with this ({@link TEMP_MAPPING_PREFIX}
   * in zbunlock: cryptsetup's keyslot mappings), or null for none.
   */
  tempPrefix: string | null;
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
  /**
   * A /dev/mapper node while sysfs shows no device-mapper device of that name:
   * a stale node, or (since Linux 5.15, which adds the disk only with the
   * first table) a device killed before its table was loaded. Neither can be
   * read through, so neither keeps the shell away; `dmsetup remove` is tried
   * once (removed: it went), so that the shell's `cryptsetup open` does not
   * find the name taken.
   */
  stale: { name: string; removed: boolean; why?: string }[];
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
  const report: LeftoverReport = { stopped: [], survivors: [], closed: [], stale: [], stillOpen: [] };
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
    const ended = left.filter((s) => !running(env.sys, env.procRoot, s.pid));
    report.stopped.push(...ended);
    left = left.filter((s) => !ended.includes(s));
    if (left.length === 0) break;
    if (env.now() >= deadline) {
      for (const s of left) report.survivors.push({ stray: s, why: `it did not end within ${(env.waitMs ?? STOP_WAIT_MS) / 1000} s of SIGKILL` });
      break;
    }
    await env.sleep(POLL_MS);
  }
  // Only after the strays ended: one killed inside its ioctl may have created a mapping meanwhile.
  const temps = env.tempPrefix === null ? [] : tempMappings(env.sys, env.root, env.tempPrefix);
  for (const name of [...env.names, ...temps]) {
    const state = mappingState(env.sys, env.root, name);
    if (state === "stale") report.stale.push(await removeStale(env, name));
    if (state !== "open") continue;
    const why = await closeOne(env, name);
    if (why === null) report.closed.push(name);
    else report.stillOpen.push({ name, why });
  }
  return report;
}

/**
 * The names starting with `prefix` among the kernel's mappings, or, when
 * sysfs cannot be read, among the /dev/mapper nodes (then a node is all there
 * is to go by, as in {@link mappingState}).
 */
function tempMappings(sys: Sys, root: string, prefix: string): string[] {
  let names = kernelMappings(sys, root);
  if (names === null) {
    try {
      names = sys.listDir(join(root, "dev/mapper"));
    } catch {
      names = [];
    }
  }
  return names.filter((n) => n.startsWith(prefix)).sort();
}

/** One `dmsetup remove` for a name sysfs does not show ({@link LeftoverReport.stale}); its failure is said, not counted. */
async function removeStale(env: LeftoverEnv, name: string): Promise<LeftoverReport["stale"][number]> {
  if (env.dmRemove === null) return { name, removed: false };
  try {
    await env.dmRemove(name);
    return { name, removed: true };
  } catch (e) {
    return { name, removed: false, why: (e as Error).message };
  }
}

/** Close one mapping; null when it is gone afterwards, else why not. */
async function closeOne(env: LeftoverEnv, name: string): Promise<string | null> {
  const whys: string[] = [];
  try {
    await env.close(name);
  } catch (e) {
    // Still at work on the device after its kill: unless the kernel shows the mapping gone
    // already (a close or remove does not bring it back), it counts as open, and no second
    // program is set on a device the first may still be changing.
    if (stillRunning(e)) return mappingOpen(env.sys, env.root, name) ? (e as Error).message : null;
    whys.push((e as Error).message);
  }
  if (!mappingOpen(env.sys, env.root, name)) return null;
  if (env.dmRemove === null) {
    whys.push("no dmsetup to remove it otherwise");
    return whys.join("; ");
  }
  try {
    await env.dmRemove(name);
  } catch (e) {
    whys.push((e as Error).message);
  }
  if (!mappingOpen(env.sys, env.root, name)) return null;
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
    if (mapping !== undefined) strays.push({ pid: Number(entry), mapping });
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
 * Is the mapping open? The kernel decides, not /dev/mapper: "open" when a
 * device-mapper device of that name exists ({@link kernelMappings}), also one
 * without its node yet (udev not having run for it); "stale" when only a
 * /dev/mapper node is left (its device is gone; nothing can be read through
 * it, so it does not keep the shell away and is left alone); else "closed".
 * When sysfs cannot be read, the node is all there is to go by: a node (or
 * one that cannot be looked at) counts as open, never as stale.
 */
function mappingState(sys: Sys, root: string, name: string): "open" | "stale" | "closed" {
  const kernel = kernelMappings(sys, root);
  if (kernel?.includes(name)) return "open";
  let node: boolean;
  try {
    node = sys.stat(join(root, "dev/mapper", name)) !== null;
  } catch {
    node = true; // cannot tell
  }
  if (!node) return "closed";
  return kernel === null ? "open" : "stale";
}

/** {@link mappingState} is "open". */
export function mappingOpen(sys: Sys, root: string, name: string): boolean {
  return mappingState(sys, root, name) === "open";
}

/**
 * The names of the kernel's device-mapper devices (/sys/block/dm-N/dm/name),
 * or null when they cannot all be read: no /sys/block (sysfs not mounted),
 * an unreadable listing, or a dm-N whose name cannot be read although it is
 * still there. A dm-N removed while it is looked at is skipped.
 */
function kernelMappings(sys: Sys, root: string): string[] | null {
  const block = join(root, "sys/block");
  const names: string[] = [];
  try {
    if (sys.stat(block) === null) return null;
    for (const d of sys.listDir(block)) {
      if (!d.startsWith("dm-")) continue;
      try {
        names.push(sys.readText(join(block, d, "dm/name")).trim());
      } catch {
        if (sys.stat(join(block, d)) !== null) return null; // there, but unreadable
      }
    }
  } catch {
    return null;
  }
  return names;
}

/** The console word for a mapping: "the root volume" for zb-root, "the data volume" for zb-data. */
function volumeWord(name: string): string {
  if (name.startsWith(TEMP_MAPPING_PREFIX)) return `cryptsetup's keyslot mapping ${name} (it may expose a decrypted keyslot)`;
  return name === ROOT_MAPPING ? "the root volume" : name === DATA_MAPPING ? "the data volume" : `the volume ${name}`;
}

/** Console lines for a report (no secrets: names, PIDs and errors only). */
export function leftoverLines(r: LeftoverReport): string[] {
  const lines: string[] = [];
  for (const s of r.stopped) lines.push(`stopped a leftover cryptsetup (pid ${s.pid}) working on ${s.mapping}`);
  for (const { stray, why } of r.survivors) lines.push(`ERROR: a cryptsetup (pid ${stray.pid}) working on ${stray.mapping} is still running: ${why}; it may still open ${volumeWord(stray.mapping)}`);
  for (const name of r.closed) lines.push(`closed ${name}, left open after the failed boot`);
  for (const { name, removed, why } of r.stale) {
    const what = `sysfs shows no device-mapper device named ${name}`;
    if (removed) lines.push(`removed ${name} with dmsetup: ${what} (a device killed before its table was loaded, or a stale node)`);
    else lines.push(`ignored /dev/mapper/${name}: ${what} (a stale node, or a device without a table: nothing can be read through it)${why ? `; ${why}` : ""}`);
  }
  for (const { name, why } of r.stillOpen) lines.push(`ERROR: ${volumeWord(name)} is still open: cannot close ${name}: ${why}`);
  return lines;
}
