/**
 * The step before a panic shell (lib/unlock/leftover.ts): the /proc scan on a
 * fake /proc in a temp dir, the kill-and-wait and the close decisions with
 * fake kill/close functions and a fake clock, and a real `cryptsetup open`
 * (blocked waiting for its key on a pipe the test holds) that the step must
 * stop. This host has no device-mapper, so the rows with a mapping that
 * exists use a fake /dev/mapper under a temp root; real mappings are left to
 * the QEMU guest (qemu/unlock.sh).
 */
import { describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ZbError } from "../../../lib/errors.ts";
import { CryptsetupCli } from "../../../lib/luks/cryptsetup.ts";
import { dmsetupRemover } from "../../../lib/luks/dmsetup.ts";
import { closeLeftovers, findStrays, leftoverLines, mappingOpen, nothingLeft, TEMP_MAPPING_PREFIX, ZB_MAPPINGS, type LeftoverEnv } from "../../../lib/unlock/leftover.ts";
import { HostSys, type Sys } from "../../../lib/sys/sys.ts";
import { tempDirs } from "../../tempdirs.ts";

const tempDir = tempDirs("zb-leftover-");
const SELF = 4000;

/** A fake /proc/PID with its cmdline (NUL-ended arguments) and stat (state R unless given). */
function proc(root: string, pid: number, argv: string[], state = "R"): void {
  mkdirSync(join(root, String(pid)), { recursive: true });
  writeFileSync(join(root, String(pid), "cmdline"), argv.map((a) => `${a}\0`).join(""));
  writeFileSync(join(root, String(pid), "stat"), `${pid} (cryptsetup) ${state} 1 ${pid} ${pid} 0 -1\n`);
}

/** HostSys whose listing of `procRoot` removes `vanishing` right after it was listed (a process ending meanwhile). */
function vanishingSys(procRoot: string, vanishing: number): Sys {
  const host = new HostSys();
  return Object.assign(Object.create(host) as HostSys, {
    listDir(path: string): string[] {
      const names = host.listDir(path);
      if (path === procRoot) rmSync(join(procRoot, String(vanishing)), { recursive: true, force: true });
      return names;
    },
  });
}

describe("findStrays: the /proc scan", () => {
  const rows: { name: string; pid: number; argv: string[]; after: string | null }[] = [
    { name: "cryptsetup open … zb-root", pid: 100, argv: ["/usr/sbin/cryptsetup", "open", "--type", "luks", "--key-file=-", "/dev/mmcblk0p2", "zb-root"], after: "zb-root" },
    { name: "cryptsetup open … zb-data (as a bare name)", pid: 101, argv: ["cryptsetup", "open", "--type", "luks", "--key-file=-", "/dev/sda1", "zb-data"], after: "zb-data" },
    { name: "cryptsetup close /dev/mapper/zb-root", pid: 102, argv: ["cryptsetup", "close", "/dev/mapper/zb-root"], after: "zb-root" },
    { name: "a long argv (past the first 4 KiB read) naming zb-root last", pid: 109, argv: ["cryptsetup", "open", ...Array.from({ length: 600 }, (_, i) => `--opt${i}`), "/dev/sdb1", "zb-root"], after: "zb-root" },
    { name: "cryptsetup open … other-name", pid: 103, argv: ["cryptsetup", "open", "--type", "luks", "--key-file=-", "/dev/sdb1", "other-name"], after: null },
    { name: "a name that only starts like zb-root", pid: 104, argv: ["cryptsetup", "open", "/dev/sdb1", "zb-root2"], after: null },
    { name: "another program naming zb-root", pid: 105, argv: ["mount", "/dev/mapper/zb-root", "/root"], after: null },
    { name: "a shell running a script called cryptsetup", pid: 106, argv: ["/bin/sh", "/tmp/bin/cryptsetup", "open", "/dev/sdb1", "zb-root"], after: null },
    { name: "a kernel thread (empty cmdline)", pid: 107, argv: [], after: null },
    { name: "zbunlock's own pid", pid: SELF, argv: ["cryptsetup", "open", "/dev/sdb1", "zb-root"], after: null },
    { name: "gone between readdir and read", pid: 108, argv: ["cryptsetup", "open", "/dev/sdb1", "zb-root"], after: null },
  ];
  test.each(rows)("$name", ({ pid, argv, after }) => {
    const root = tempDir();
    proc(root, pid, argv);
    // Entries that are not processes are skipped.
    writeFileSync(join(root, "cmdline"), "console=ttyAMA0\n");
    mkdirSync(join(root, "self"));
    const found = findStrays(vanishingSys(root, 108), root, ZB_MAPPINGS, SELF);
    expect(found.map((s) => [s.pid, s.mapping])).toEqual(after === null ? [] : [[pid, after]]);
  });

  test("all rows at once: each found once, by pid", () => {
    const root = tempDir();
    for (const r of rows) proc(root, r.pid, r.argv);
    const found = findStrays(vanishingSys(root, 108), root, ZB_MAPPINGS, SELF);
    expect(found.map((s) => `${s.pid} ${s.mapping}`)).toEqual(["100 zb-root", "101 zb-data", "102 zb-root", "109 zb-root"]);
  });

  test("no /proc at all: nothing found", () => {
    expect(findStrays(new HostSys(), join(tempDir(), "missing"), ZB_MAPPINGS, SELF)).toEqual([]);
  });
});

interface World {
  /** Processes: how each reacts to SIGKILL. "ends": the dir goes; "zombie": state Z; "stuck": stays R; "eperm": kill fails. */
  procs?: { pid: number; mapping: string; onKill: "ends" | "zombie" | "stuck" | "eperm" | "esrch" }[];
  /**
   * Mappings, and how close/dmsetup treat them. node: "both" (default) a kernel device
   * (sys/block/dm-N/dm/name) and its /dev/mapper node; "sysfs" the device without its node
   * yet; "stale" only a node, its device gone.
   */
  maps?: { name: string; close: "ok" | "fails" | "lies"; dm: "ok" | "fails" | "none"; node?: "both" | "sysfs" | "stale" }[];
  /** sysfs: "mounted" (default), "absent" (no sys/block), or "unreadable" (a dm-N whose name cannot be read). */
  sysfs?: "mounted" | "absent" | "unreadable";
}

function world(w: World) {
  const root = tempDir();
  const procRoot = join(root, "proc");
  mkdirSync(procRoot);
  mkdirSync(join(root, "dev/mapper"), { recursive: true });
  if (w.sysfs !== "absent") mkdirSync(join(root, "sys/block"), { recursive: true });
  // A dm-N whose dm/name is a directory: there, but its name cannot be read.
  if (w.sysfs === "unreadable") mkdirSync(join(root, "sys/block/dm-99/dm/name"), { recursive: true });
  const calls: string[] = [];
  let clock = 0;
  for (const p of w.procs ?? []) proc(procRoot, p.pid, ["cryptsetup", "open", "--key-file=-", "/dev/vdb", p.mapping]);
  const sysPath = (name: string) => join(root, "sys/block", `dm-${w.maps!.findIndex((x) => x.name === name)}`);
  for (const m of w.maps ?? []) {
    if (m.node !== "stale" && w.sysfs !== "absent") {
      mkdirSync(join(sysPath(m.name), "dm"), { recursive: true });
      writeFileSync(join(sysPath(m.name), "dm/name"), `${m.name}\n`);
    }
    if (m.node !== "sysfs") writeFileSync(join(root, "dev/mapper", m.name), "");
  }
  const remove = (name: string) => {
    rmSync(sysPath(name), { recursive: true, force: true });
    rmSync(join(root, "dev/mapper", name), { force: true });
  };
  const env: LeftoverEnv = {
    sys: new HostSys(),
    procRoot,
    root,
    names: ZB_MAPPINGS,
    tempPrefix: TEMP_MAPPING_PREFIX,
    selfPid: SELF,
    kill(pid) {
      calls.push(`kill ${pid}`);
      const p = w.procs!.find((x) => x.pid === pid)!;
      if (p.onKill === "eperm" || p.onKill === "esrch") throw Object.assign(new Error(`kill ${p.onKill.toUpperCase()}`), { code: p.onKill.toUpperCase() });
      if (p.onKill === "ends") rmSync(join(procRoot, String(pid)), { recursive: true });
      if (p.onKill === "zombie") proc(procRoot, pid, [], "Z");
    },
    async close(name) {
      calls.push(`close ${name}`);
      const m = w.maps!.find((x) => x.name === name)!;
      if (m.close === "fails") throw new ZbError("LUKS_FAILED", `cannot close ${name}: cryptsetup refused`);
      if (m.close === "ok") remove(name);
    },
    dmRemove: w.maps?.some((m) => m.dm === "none")
      ? null
      : async (name) => {
          calls.push(`dmsetup remove ${name}`);
          if (w.maps!.find((x) => x.name === name)!.dm === "fails") throw new ZbError("LUKS_FAILED", `cannot remove the device-mapper device ${name}: dmsetup exit 1`);
          remove(name);
        },
    now: () => clock,
    sleep: async (ms) => void (clock += ms),
  };
  return { env, calls, root, elapsed: () => clock };
}

describe("closeLeftovers: stop, wait, close", () => {
  const rows: { name: string; before: World; calls: string[]; lines: string[]; clean: boolean }[] = [
    { name: "nothing running, nothing open: nothing done", before: {}, calls: [], lines: [], clean: true },
    {
      name: "a cryptsetup opening zb-root ends on SIGKILL; then its mapping is closed",
      before: { procs: [{ pid: 100, mapping: "zb-root", onKill: "ends" }], maps: [{ name: "zb-root", close: "ok", dm: "ok" }] },
      calls: ["kill 100", "close zb-root"],
      lines: ["stopped a leftover cryptsetup (pid 100) working on zb-root", "closed zb-root, left open after the failed boot"],
      clean: true,
    },
    {
      name: "a killed cryptsetup whose parent is gone stays a zombie: it counts as ended",
      before: { procs: [{ pid: 100, mapping: "zb-data", onKill: "zombie" }] },
      calls: ["kill 100"],
      lines: ["stopped a leftover cryptsetup (pid 100) working on zb-data"],
      clean: true,
    },
    {
      name: "one that does not end within the bound: a survivor, and the step is not clean",
      before: { procs: [{ pid: 100, mapping: "zb-root", onKill: "stuck" }] },
      calls: ["kill 100"],
      lines: ["ERROR: a cryptsetup (pid 100) working on zb-root is still running: it did not end within 5 s of SIGKILL; it may still open the root volume"],
      clean: false,
    },
    {
      name: "one that cannot be killed (EPERM): a survivor",
      before: { procs: [{ pid: 100, mapping: "zb-root", onKill: "eperm" }] },
      calls: ["kill 100"],
      lines: ["ERROR: a cryptsetup (pid 100) working on zb-root is still running: cannot kill it: kill EPERM; it may still open the root volume"],
      clean: false,
    },
    { name: "one that ended by itself before the kill (ESRCH): nothing to say", before: { procs: [{ pid: 100, mapping: "zb-root", onKill: "esrch" }] }, calls: ["kill 100"], lines: [], clean: true },
    {
      name: "cryptsetup close fails (no crypt table): dmsetup remove takes it",
      before: { maps: [{ name: "zb-root", close: "fails", dm: "ok" }] },
      calls: ["close zb-root", "dmsetup remove zb-root"],
      lines: ["closed zb-root, left open after the failed boot"],
      clean: true,
    },
    {
      name: "a device only sysfs knows (no /dev/mapper node yet) is closed too",
      before: { maps: [{ name: "zb-data", close: "ok", dm: "ok", node: "sysfs" }] },
      calls: ["close zb-data"],
      lines: ["closed zb-data, left open after the failed boot"],
      clean: true,
    },
    {
      name: "both fail: the root volume is still open, loudly",
      before: { maps: [{ name: "zb-root", close: "fails", dm: "fails" }] },
      calls: ["close zb-root", "dmsetup remove zb-root"],
      lines: ["ERROR: the root volume is still open: cannot close zb-root: cannot close zb-root: cryptsetup refused; cannot remove the device-mapper device zb-root: dmsetup exit 1"],
      clean: false,
    },
    {
      name: "close fails and there is no dmsetup: the data volume is still open",
      before: { maps: [{ name: "zb-data", close: "fails", dm: "none" }] },
      calls: ["close zb-data"],
      lines: ["ERROR: the data volume is still open: cannot close zb-data: cannot close zb-data: cryptsetup refused; no dmsetup to remove it otherwise"],
      clean: false,
    },
    {
      name: "close says yes but the mapping is still there: checked, dmsetup tried",
      before: { maps: [{ name: "zb-root", close: "lies", dm: "fails" }] },
      calls: ["close zb-root", "dmsetup remove zb-root"],
      lines: ["ERROR: the root volume is still open: cannot close zb-root: cannot remove the device-mapper device zb-root: dmsetup exit 1"],
      clean: false,
    },
    {
      name: "a /dev/mapper node sysfs does not show: no close; dmsetup remove fails, which is said but keeps no shell away",
      before: { maps: [{ name: "zb-root", close: "fails", dm: "fails", node: "stale" }] },
      calls: ["dmsetup remove zb-root"],
      lines: ["ignored /dev/mapper/zb-root: sysfs shows no device-mapper device named zb-root (a stale node, or a device without a table: nothing can be read through it); cannot remove the device-mapper device zb-root: dmsetup exit 1"],
      clean: true,
    },
    {
      name: "a /dev/mapper node sysfs does not show (a device killed before its table, Linux ≥ 5.15): dmsetup removes it",
      before: { maps: [{ name: "zb-root", close: "fails", dm: "ok", node: "stale" }] },
      calls: ["dmsetup remove zb-root"],
      lines: ["removed zb-root with dmsetup: sysfs shows no device-mapper device named zb-root (a device killed before its table was loaded, or a stale node)"],
      clean: true,
    },
    {
      name: "a /dev/mapper node sysfs does not show, no dmsetup: left as it is",
      before: { maps: [{ name: "zb-data", close: "fails", dm: "none", node: "stale" }] },
      calls: [],
      lines: ["ignored /dev/mapper/zb-data: sysfs shows no device-mapper device named zb-data (a stale node, or a device without a table: nothing can be read through it)"],
      clean: true,
    },
    {
      name: "no sysfs to ask: a keyslot mapping's /dev/mapper node counts as open and is closed",
      before: { sysfs: "absent", maps: [{ name: "temporary-cryptsetup-9", close: "ok", dm: "ok" }] },
      calls: ["close temporary-cryptsetup-9"],
      lines: ["closed temporary-cryptsetup-9, left open after the failed boot"],
      clean: true,
    },
    {
      name: "no sysfs to ask: the /dev/mapper node counts as open and is closed",
      before: { sysfs: "absent", maps: [{ name: "zb-root", close: "ok", dm: "ok" }] },
      calls: ["close zb-root"],
      lines: ["closed zb-root, left open after the failed boot"],
      clean: true,
    },
    {
      name: "a dm device whose name cannot be read: the node counts as open, and stays so when the close fails",
      before: { sysfs: "unreadable", maps: [{ name: "zb-data", close: "fails", dm: "fails", node: "stale" }] },
      calls: ["close zb-data", "dmsetup remove zb-data"],
      lines: ["ERROR: the data volume is still open: cannot close zb-data: cannot close zb-data: cryptsetup refused; cannot remove the device-mapper device zb-data: dmsetup exit 1"],
      clean: false,
    },
    {
      name: "a cryptsetup keyslot mapping left by a killed open is closed too (after the strays ended)",
      before: { procs: [{ pid: 100, mapping: "zb-root", onKill: "ends" }], maps: [{ name: "temporary-cryptsetup-100", close: "fails", dm: "ok", node: "sysfs" }] },
      calls: ["kill 100", "close temporary-cryptsetup-100", "dmsetup remove temporary-cryptsetup-100"],
      lines: ["stopped a leftover cryptsetup (pid 100) working on zb-root", "closed temporary-cryptsetup-100, left open after the failed boot"],
      clean: true,
    },
    {
      name: "a keyslot mapping that will not close keeps the shell away",
      before: { maps: [{ name: "temporary-cryptsetup-7", close: "fails", dm: "fails" }] },
      calls: ["close temporary-cryptsetup-7", "dmsetup remove temporary-cryptsetup-7"],
      lines: ["ERROR: cryptsetup's keyslot mapping temporary-cryptsetup-7 (it may expose a decrypted keyslot) is still open: cannot close temporary-cryptsetup-7: cannot close temporary-cryptsetup-7: cryptsetup refused; cannot remove the device-mapper device temporary-cryptsetup-7: dmsetup exit 1"],
      clean: false,
    },
    {
      name: "other mappings are left alone",
      before: { maps: [{ name: "cryptroot", close: "fails", dm: "fails", node: "sysfs" }, { name: "temporary-cryptsetup", close: "fails", dm: "fails", node: "sysfs" }] },
      calls: [],
      lines: [],
      clean: true,
    },
  ];
  test.each(rows)("$name", async ({ before, calls, lines, clean }) => {
    const w = world(before);
    const r = await closeLeftovers(w.env);
    expect(w.calls).toEqual(calls);
    expect(leftoverLines(r)).toEqual(lines);
    expect(nothingLeft(r)).toBe(clean);
    for (const name of ZB_MAPPINGS) expect(mappingOpen(w.env.sys, w.root, name)).toBe(r.stillOpen.some((s) => s.name === name));
  });

  // A close that hangs in the kernel (a device-mapper ioctl that does not return) cannot be made
  // here; fake programs whose kill does nothing stand in ("stuck": they sleep on). "gone-stuck"
  // removes the mapping first, then hangs: the kernel shows it closed. "held" ends (0 after
  // removing the mapping) while a child it forked holds its output. The limits are short.
  const stuckRows = [
    { name: "cryptsetup close does not end after its kill: still open, dmsetup not tried", crypt: "stuck", dm: "ok", calls: ["cryptsetup close zb-root"], why: "cannot close zb-root: cryptsetup did not end within 0.2 s of SIGKILL (timeout 0.2 s); it may still be changing the device" },
    {
      name: "cryptsetup close fails, dmsetup remove does not end after its kill: still open",
      crypt: "fails",
      dm: "stuck",
      calls: ["cryptsetup close zb-root", "dmsetup remove --retry zb-root"],
      why: "cannot close zb-root: the device already exists or is busy (cryptsetup exit 5: busy); cannot remove the device-mapper device zb-root: dmsetup did not end within 0.2 s of SIGKILL (timeout 0.2 s); it may still be changing the device",
    },
    { name: "cryptsetup close does not end after its kill, but the kernel shows the mapping gone: closed", crypt: "gone-stuck", dm: "fails", calls: ["cryptsetup close zb-root"], why: null },
    { name: "cryptsetup close ended, a child it forked holds its output: its status counts, closed", crypt: "held", dm: "fails", calls: ["cryptsetup close zb-root"], why: null },
  ];
  test.each(stuckRows)("$name", async ({ crypt, dm, calls, why }) => {
    const w = world({ maps: [{ name: "zb-root", close: "fails", dm: "fails" }] });
    const log = join(w.root, "calls");
    const pids = join(w.root, "pids");
    const removeIt = `rm -rf ${join(w.root, "sys/block/dm-0")} ${join(w.root, "dev/mapper/zb-root")}`;
    const bodies: Record<string, string> = {
      stuck: `echo $$ >>${pids}\nexec sleep 30`,
      "gone-stuck": `${removeIt}\necho $$ >>${pids}\nexec sleep 30`,
      held: `${removeIt}\nsleep 30 &\necho $! >>${pids}\nexit 0`,
      fails: "echo busy >&2\nexit 5",
      ok: "exit 0",
    };
    const script = (prog: string, how: string) => {
      const path = join(w.root, prog);
      writeFileSync(path, `#!/bin/sh\necho "${prog} $*" >>${log}\n${bodies[how]}\n`, { mode: 0o755 });
      return path;
    };
    // The kill does nothing: a "stuck" program really goes on (the test ends it below).
    const limits = { timeoutMs: 200, killWaitMs: 200, killer: () => undefined };
    const cs = new CryptsetupCli({ binary: script("cryptsetup", crypt), ...limits });
    try {
      const r = await closeLeftovers({ ...w.env, close: (n) => cs.close(n), dmRemove: dmsetupRemover(script("dmsetup", dm), limits) });
      expect(r.stillOpen).toEqual(why === null ? [] : [{ name: "zb-root", why }]);
      expect(r.closed).toEqual(why === null ? ["zb-root"] : []);
      expect(nothingLeft(r)).toBe(why === null);
      expect(readFileSync(log, "utf8").trim().split("\n")).toEqual(calls);
    } finally {
      for (const pid of existsSync(pids) ? readFileSync(pids, "utf8").trim().split("\n") : []) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {
          // ended already
        }
      }
    }
  }, 15_000);

  test("the wait is bounded by the fake clock, not by wall time", async () => {
    const w = world({ procs: [{ pid: 100, mapping: "zb-root", onKill: "stuck" }] });
    await closeLeftovers({ ...w.env, waitMs: 200 });
    expect(w.elapsed()).toBeGreaterThanOrEqual(200);
    expect(w.elapsed()).toBeLessThan(300);
  });
});

describe("real cryptsetup", () => {
  const REAL = Bun.which("cryptsetup", { PATH: `${process.env.PATH}:/usr/sbin:/sbin` });

  test("a cryptsetup open blocked waiting for its key is stopped; no mapping is left", async () => {
    if (!REAL) throw new Error("cryptsetup is missing: run .ci/setup");
    const dir = tempDir();
    const img = join(dir, "vol.img");
    writeFileSync(img, "");
    Bun.spawnSync(["truncate", "-s", "32M", img]);
    const key = Uint8Array.from({ length: 32 }, (_, i) => i + 1);
    await new CryptsetupCli().format(img, key);
    // A name unique to this run: the host's own zb-root (if any) is none of the test's business.
    const name = `zbt-leftover-${process.pid}-${Date.now() % 100000}`;
    // stdin is a pipe this test holds and never writes: cryptsetup blocks reading its key.
    const p = Bun.spawn([REAL, "open", "--type", "luks", "--key-file=-", img, name], { stdin: "pipe", stdout: "ignore", stderr: "ignore" });
    try {
      const sys = new HostSys();
      // Seen in /proc as soon as it exists (argv is set at exec: wait for it, bounded).
      for (let i = 0; i < 500 && findStrays(sys, "/proc", [name], process.pid).length === 0; i++) await Bun.sleep(10);
      const crypt = new CryptsetupCli();
      const r = await closeLeftovers({
        sys,
        procRoot: "/proc",
        root: "/",
        names: [name],
        tempPrefix: null, // the host's own cryptsetup runs are none of the test's business
        selfPid: process.pid,
        kill: (pid) => process.kill(pid, "SIGKILL"),
        close: (n) => crypt.close(n),
        dmRemove: dmsetupRemover(),
        now: () => performance.now(),
        sleep: (ms) => Bun.sleep(ms),
      });
      expect(r.stopped.map((s) => s.pid)).toEqual([p.pid]);
      expect(nothingLeft(r)).toBe(true);
      expect(await p.exited).not.toBe(0);
      expect(p.signalCode).toBe("SIGKILL");
      expect(findStrays(sys, "/proc", [name], process.pid)).toEqual([]);
      expect(mappingOpen(sys, "/", name)).toBe(false);
    } finally {
      p.kill("SIGKILL");
    }
  });
});
