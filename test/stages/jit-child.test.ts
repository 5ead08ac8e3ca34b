/**
 * zbunlock's JIT child (stages/zbunlock/main.ts rerunWithJit, lib/sys/jit.ts
 * tieToParent) through dist/zb-x64: started without the JIT, with
 * credentials that name a C-library backend (zymkey), zbunlock runs again as
 * its own child. The initramfs script watches only the parent; once the
 * parent is gone, the child must be gone too, before it takes another step.
 *
 * The credentials are never unsealed: the rows stop the child while it
 * waits for the go (--go-file), or after it took it, while it waits for the
 * boot device (zb.boot= names a path that never appears). Every step the
 * test takes follows an event it saw in /proc or the temp root; the only
 * bounds are deadlines on those waits.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { CRED_FORMAT, encodeMeta } from "../../lib/luks/credmeta.ts";
import { tempDirs } from "../tempdirs.ts";

const BIN = resolve(import.meta.dir, "../../dist/zb-x64");
const tempDir = tempDirs("zb-jitchild-");
/** The deadline of each awaited event (the child seen, the go taken, the child gone): a bound, not a synchronisation. */
const WAIT_MS = 30_000;

let dir = "";
let boot = "";
let root = "";
let creds = "";

function zb(argv: string[]) {
  const p = Bun.spawnSync([BIN, ...argv], { env: { ...process.env, ZB_NO_REBOOT: "1" } });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}
const env = () => zb(["env", "print", "--boot", boot]).out;

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  dir = tempDir();
  boot = join(dir, "boot");
  root = join(dir, "root");
  creds = join(dir, "creds");
  for (const d of [boot, join(root, "proc"), join(creds, "zb/credentials")]) mkdirSync(d, { recursive: true });
  writeFileSync(join(boot, "config.txt"), "kernel=vmlinuz\n");
  writeFileSync(join(boot, "cmdline.txt"), "console=ttyAMA0\n");
  expect(zb(["init", "--boot", boot, "--slot", "a", "--valid", "a,b"]).code).toBe(0);
  // The boot device never appears: a child that took the go waits for it (up to 600 s) before touching the env.
  const cmdline = readFileSync(join(boot, "slot-a/cmdline.txt"), "utf8").trim();
  writeFileSync(join(root, "proc/cmdline"), `${cmdline} zb.boot=${join(dir, "no-boot-device")} zb.boot_wait=600 zb.prestart_wait=600\n`);
  // Credentials that name zymkey (a C library: the JIT child); never unsealed here.
  const meta = encodeMeta({ format: CRED_FORMAT, slot: "a", backend: "zymkey", created: "2025-01-01T00:00:00Z", root: { uuid: "0f0e0d0c-0b0a-4908-8706-050403020100", name: "zb-root" } });
  writeFileSync(join(creds, "zb/credentials/meta.json"), meta);
  writeFileSync(join(creds, "zb/credentials/root.sealed"), `{"backend":"zymkey","data":{"locked":"${Buffer.alloc(64, 7).toString("base64")}","version":1},"format":"zb-sealed/1"}\n`);
});

/** A process by PID and start time (field 22 of /proc/PID/stat): a PID alone may be reused. */
interface Proc {
  pid: number;
  start: string;
}

/** State and start time of a PID, null when it is gone. */
function stat(pid: number): { state: string; start: string } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return null;
  }
  const f = text.slice(text.lastIndexOf(")") + 2).split(" "); // comm may hold spaces and parentheses
  return { state: f[0]!, start: f[19]! };
}

/** Alive: exists, is the same process, and is not a zombie (a zombie takes no more steps). */
function alive(p: Proc): boolean {
  const s = stat(p.pid);
  return s !== null && s.start === p.start && s.state !== "Z";
}

/** Poll for `cond` every few milliseconds until it holds or `ms` pass; whether it held. */
async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const deadline = performance.now() + ms;
  while (!cond()) {
    if (performance.now() >= deadline) return false;
    await Bun.sleep(2);
  }
  return true;
}

/** The children of `pid`, with the thread (TID) that started each one (/proc/PID/task/TID/children). */
function children(pid: number): { tid: number; child: number }[] {
  const out: { tid: number; child: number }[] = [];
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tasks) {
    let text = "";
    try {
      text = readFileSync(`/proc/${pid}/task/${tid}/children`, "utf8");
    } catch {
      continue; // a thread that ended meanwhile
    }
    for (const c of text.trim().split(/\s+/).filter(Boolean)) out.push({ tid: Number(tid), child: Number(c) });
  }
  return out;
}

/** zbunlock started as the initramfs script starts it: without the JIT, early (--go-file), with zymkey credentials. */
function startZbunlock(go: string) {
  const e: Record<string, string | undefined> = { ...process.env, ZB_NO_REBOOT: "1", BUN_JSC_useJIT: "0" };
  delete e.ZB_JIT_PARENT;
  return Bun.spawn([BIN, "unlock", "--root", root, "--no-reboot", "--credentials", creds, "--go-file", go], { env: e, stdout: "pipe", stderr: "pipe" });
}

describe("the JIT child goes when its parent goes", () => {
  const rows = [
    // Killed at the first sight of the child: whether it has tied itself yet or not, it goes (by the
    // death signal, or by finding itself reparented). The go comes once the parent is gone and reaped:
    // a child left running takes it at its next poll.
    { name: "SIGKILL while the child waits for the go; the go comes after the parent is gone: never taken", before: { signal: "SIGKILL", go: "after the parent is gone" }, after: { taken: false } },
    { name: "SIGKILL after the child took the go (the OOM killer): it goes while it waits for the boot device", before: { signal: "SIGKILL", go: "before the start" }, after: { taken: true } },
    { name: "SIGTERM after the child took the go: the child goes too", before: { signal: "SIGTERM", go: "before the start" }, after: { taken: true } },
    { name: "SIGHUP after the child took the go: the child goes too", before: { signal: "SIGHUP", go: "before the start" }, after: { taken: true } },
    { name: "SIGINT after the child took the go: the child goes too", before: { signal: "SIGINT", go: "before the start" }, after: { taken: true } },
  ] as const;
  test.each(rows)("$name", async ({ before, after }) => {
    const go = join(dir, `go-${before.signal}-${before.go.split(" ")[0]}`);
    if (before.go === "before the start") writeFileSync(go, "");
    const envBefore = env();
    const parent = startZbunlock(go);
    let child: Proc | null = null;
    try {
      // The child, as soon as it exists.
      expect(await waitFor(() => children(parent.pid).length > 0, WAIT_MS)).toBe(true);
      const [c] = children(parent.pid);
      // The death signal follows the thread that forked: Bun.spawnSync forks from the main thread,
      // which lives as long as the process (lib/sys/jit.ts tieToParent).
      expect(c!.tid).toBe(parent.pid);
      const s = stat(c!.child);
      expect(s).not.toBeNull();
      child = { pid: c!.child, start: s!.start };
      if (before.go === "before the start") expect(await waitFor(() => existsSync(`${go}.taken`), WAIT_MS)).toBe(true);
      parent.kill(before.signal);
      await parent.exited;
      expect(parent.signalCode).toBe(before.signal);
      if (before.go === "after the parent is gone") writeFileSync(go, "");
      const gone = await waitFor(() => !alive(child!), WAIT_MS);
      expect({ gone, taken: existsSync(`${go}.taken`) }).toEqual({ gone: true, taken: after.taken });
      expect(existsSync(go)).toBe(!after.taken);
      expect(env()).toBe(envBefore);
    } finally {
      // A child that outlived its parent (the old behaviour) must not outlive the test.
      if (child !== null && alive(child)) process.kill(child.pid, "SIGKILL");
      parent.kill("SIGKILL");
    }
  });
});

describe("a tied child checks its parent: ZB_JIT_PARENT against getppid()", () => {
  // The binary started directly with the JIT, as the parent starts its child. A dead parent: the PID of
  // a process that has exited (the child was reparented before it could tie itself to it).
  const rows: { name: string; before: { parent: "dead" | "this test" }; after: { exit: number | "still running"; taken: boolean; err: RegExp } }[] = [
    {
      name: "ZB_JIT_PARENT names a parent that is gone: exit 24, the go left untaken",
      before: { parent: "dead" },
      after: { exit: 24, taken: false, err: /^zb: cannot go on: the process that started this one \(PID \d+\) is gone \(the parent is now PID \d+\); did nothing\n$/ },
    },
    { name: "ZB_JIT_PARENT names the real parent (this test): tied, takes the go", before: { parent: "this test" }, after: { exit: "still running", taken: true, err: /^$/ } },
  ];
  test.each(rows)("$name", async ({ before, after }) => {
    const go = join(dir, `go-direct-${before.parent.replace(/ /g, "-")}`);
    writeFileSync(go, "");
    let parentPid = process.pid;
    if (before.parent === "dead") {
      const gone = Bun.spawn(["true"]);
      await gone.exited;
      parentPid = gone.pid;
    }
    const e: Record<string, string | undefined> = { ...process.env, ZB_NO_REBOOT: "1", ZB_JIT_PARENT: String(parentPid) };
    delete e.BUN_JSC_useJIT;
    const p = Bun.spawn([BIN, "unlock", "--root", root, "--no-reboot", "--credentials", creds, "--go-file", go], { env: e, stdout: "pipe", stderr: "pipe" });
    try {
      // Either it exits, or it takes the go and then waits for the boot device (it is stopped then).
      await waitFor(() => p.exitCode !== null || existsSync(`${go}.taken`), WAIT_MS);
      expect({ exit: p.exitCode ?? "still running", taken: existsSync(`${go}.taken`) }).toEqual({ exit: after.exit, taken: after.taken });
      p.kill("SIGKILL"); // one that went on waits for the boot device
      expect(await new Response(p.stderr).text()).toMatch(after.err);
    } finally {
      p.kill("SIGKILL");
    }
  });
});

describe("the parent cleans up after a child that was killed", () => {
  // The child (the unlock, with a C-library backend) killed by the OOM killer cannot close what its
  // cryptsetup may open after it is gone: the parent does, as zbunlock's own failure path
  // (lib/unlock/leftover.ts). The mapping is a node under the temp root (this host has no
  // device-mapper) and cryptsetup a fake that records the close and removes the node.
  test("SIGKILL to the child after it took the go: the parent closes zb-root; the status stays the kill's (137)", async () => {
    const bin = join(dir, "close-bin");
    mkdirSync(bin, { recursive: true });
    mkdirSync(join(root, "dev/mapper"), { recursive: true });
    const node = join(root, "dev/mapper/zb-root");
    writeFileSync(node, "");
    const log = join(dir, "close-calls");
    writeFileSync(join(bin, "cryptsetup"), `#!/bin/sh\necho "cryptsetup $*" >>${log}\n[ "$1" = close ] && rm ${root}/dev/mapper/$2\n`, { mode: 0o755 });
    const go = join(dir, "go-child-killed");
    writeFileSync(go, "");
    const e: Record<string, string | undefined> = { ...process.env, ZB_NO_REBOOT: "1", BUN_JSC_useJIT: "0", PATH: `${bin}:${process.env.PATH}` };
    delete e.ZB_JIT_PARENT;
    const parent = Bun.spawn([BIN, "unlock", "--root", root, "--no-reboot", "--credentials", creds, "--go-file", go], { env: e, stdout: "pipe", stderr: "pipe" });
    try {
      expect(await waitFor(() => children(parent.pid).length > 0 && existsSync(`${go}.taken`), WAIT_MS)).toBe(true);
      process.kill(children(parent.pid)[0]!.child, "SIGKILL");
      const [err, code] = [await new Response(parent.stderr).text(), await parent.exited];
      expect(err).toContain("zbunlock: closed zb-root, left open after the failed boot");
      expect(readFileSync(log, "utf8")).toBe("cryptsetup close zb-root\n");
      expect(existsSync(node)).toBe(false);
      expect(code).toBe(137);
    } finally {
      parent.kill("SIGKILL");
    }
  });

  test("a child that gave up waiting for the go (24, NOT_STARTED) did nothing: the parent closes nothing", async () => {
    // Its own root: zb.prestart_wait=0.2, so the child gives up at once; a zb-root that exists would
    // be closed by the step, and the fake cryptsetup records it.
    const r2 = join(dir, "root-not-started");
    const bin = join(dir, "bin-not-started");
    for (const d of [join(r2, "proc"), join(r2, "sys/block/dm-0/dm"), join(r2, "dev/mapper"), bin]) mkdirSync(d, { recursive: true });
    const cmdline = readFileSync(join(boot, "slot-a/cmdline.txt"), "utf8").trim();
    writeFileSync(join(r2, "proc/cmdline"), `${cmdline} zb.boot=${join(dir, "no-boot-device")} zb.prestart_wait=0.2\n`);
    writeFileSync(join(r2, "sys/block/dm-0/dm/name"), "zb-root\n");
    writeFileSync(join(r2, "dev/mapper/zb-root"), "");
    const log = join(dir, "not-started-calls");
    writeFileSync(join(bin, "cryptsetup"), `#!/bin/sh\necho "cryptsetup $*" >>${log}\n`, { mode: 0o755 });
    const e: Record<string, string | undefined> = { ...process.env, ZB_NO_REBOOT: "1", BUN_JSC_useJIT: "0", PATH: `${bin}:${process.env.PATH}` };
    delete e.ZB_JIT_PARENT;
    const parent = Bun.spawn([BIN, "unlock", "--root", r2, "--no-reboot", "--credentials", creds, "--go-file", join(dir, "go-never")], { env: e, stdout: "pipe", stderr: "pipe" });
    const [err, code] = [await new Response(parent.stderr).text(), await parent.exited];
    expect(err).toContain("did not appear within 0.2 s; zbunlock did nothing");
    expect(code).toBe(24);
    expect(existsSync(log)).toBe(false);
    expect(err).not.toContain("closed zb-root");
  });
});
