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
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ZbError } from "../../../lib/errors.ts";
import { CryptsetupCli, dmsetupRemover } from "../../../lib/luks/cryptsetup.ts";
import { closeLeftovers, findStrays, leftoverLines, mappingExists, nothingLeft, ZB_MAPPINGS, type LeftoverEnv } from "../../../lib/unlock/leftover.ts";
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
  /** Mappings that exist, and how close/dmsetup treat them. */
  maps?: { name: string; close: "ok" | "fails" | "lies"; dm: "ok" | "fails" | "none"; node?: "dev" | "sysfs" }[];
}

function world(w: World) {
  const root = tempDir();
  const procRoot = join(root, "proc");
  mkdirSync(procRoot);
  mkdirSync(join(root, "dev/mapper"), { recursive: true });
  mkdirSync(join(root, "sys/block"), { recursive: true });
  const calls: string[] = [];
  let clock = 0;
  for (const p of w.procs ?? []) proc(procRoot, p.pid, ["cryptsetup", "open", "--key-file=-", "/dev/vdb", p.mapping]);
  const mapPath = (name: string) => {
    const m = w.maps!.find((x) => x.name === name)!;
    return m.node === "sysfs" ? join(root, "sys/block", `dm-${w.maps!.indexOf(m)}`) : join(root, "dev/mapper", name);
  };
  for (const m of w.maps ?? []) {
    if (m.node === "sysfs") {
      mkdirSync(join(mapPath(m.name), "dm"), { recursive: true });
      writeFileSync(join(mapPath(m.name), "dm/name"), `${m.name}\n`);
    } else writeFileSync(mapPath(m.name), "");
  }
  const remove = (name: string) => rmSync(mapPath(name), { recursive: true, force: true });
  const env: LeftoverEnv = {
    sys: new HostSys(),
    procRoot,
    root,
    names: ZB_MAPPINGS,
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
  ];
  test.each(rows)("$name", async ({ before, calls, lines, clean }) => {
    const w = world(before);
    const r = await closeLeftovers(w.env);
    expect(w.calls).toEqual(calls);
    expect(leftoverLines(r)).toEqual(lines);
    expect(nothingLeft(r)).toBe(clean);
    for (const name of ZB_MAPPINGS) expect(mappingExists(w.env.sys, w.root, name)).toBe(r.stillOpen.some((s) => s.name === name));
  });

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
      expect(mappingExists(sys, "/", name)).toBe(false);
    } finally {
      p.kill("SIGKILL");
    }
  });

  test("dmsetupRemover: argv `remove --retry NAME`, a failure is LUKS_FAILED with its stderr; null without the program", async () => {
    const dir = tempDir();
    const fake = join(dir, "dmsetup");
    writeFileSync(fake, `#!/bin/sh\necho "$@" >>"${dir}/argv"\n[ "$3" = ok ] && exit 0\necho "device-mapper: remove ioctl on $3 failed: Device or resource busy" >&2\nexit 1\n`, { mode: 0o755 });
    const rm = dmsetupRemover(fake)!;
    await rm("ok");
    const e = await rm("zb-root").then(() => null, (x: unknown) => x);
    expect(e).toBeInstanceOf(ZbError);
    expect((e as ZbError).code).toBe("LUKS_FAILED");
    expect((e as ZbError).message).toBe("cannot remove the device-mapper device zb-root: dmsetup exit 1: device-mapper: remove ioctl on zb-root failed: Device or resource busy");
    expect(await Bun.file(join(dir, "argv")).text()).toBe("remove --retry ok\nremove --retry zb-root\n");
    expect(dmsetupRemover(join(dir, "missing"))).toBeNull();
  });
});
