/**
 * The env lock against util-linux flock(1), which takes the same flock(2)
 * lock U-Boot's fw_setenv and libubootenv take: zb waits for a holder, holds
 * it across a boot transition, and is re-entrant within one process.
 * tryLockFd takes the same lock on a descriptor without waiting: refused
 * while another process or another open of the file in this one holds it,
 * released by close. Every lock file is in a temp folder: the binary's
 * default /var/lock is a temp folder mounted there for that process only.
 * No timer decides anything: a holder lets go when the test closes its
 * stdin, once the waiter is seen waiting (the lock file open in
 * /proc/PID/fd, the lock not taken).
 */
import { expect, test } from "bun:test";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { lockFile, tryLockFd } from "../../../lib/sys/flock.ts";
import { withTempVarLock } from "../../fakes/envlock.ts";
import { tempDirs } from "../../tempdirs.ts";

const tempDir = tempDirs("zb-flock-");
const BIN = resolve(import.meta.dir, "../../../dist/zb-x64");
const FLOCK_TS = resolve(import.meta.dir, "../../../lib/sys/flock.ts");

/** The first chunk a process writes to stdout (its whole first line here). */
async function firstOutput(p: { stdout: ReadableStream<Uint8Array> }): Promise<string> {
  const reader = p.stdout.getReader();
  const { value } = await reader.read();
  reader.releaseLock();
  return new TextDecoder().decode(value);
}

/**
 * flock(1) holding `lock` until `letGo` closes its stdin: the test, not a
 * timer, decides when it lets go. Resolves once it holds the lock.
 */
async function holder(lock: string): Promise<{ letGo: () => Promise<void>; kill: () => void }> {
  const p = Bun.spawn(["flock", lock, "sh", "-c", "echo held; exec cat > /dev/null"], { stdin: "pipe", stdout: "pipe" });
  expect(await firstOutput(p)).toBe("held\n");
  return {
    letGo: async () => {
      p.stdin.end();
      expect(await p.exited).toBe(0);
    },
    kill: () => p.kill(),
  };
}

/** Until process `pid` has `file` open (same inode, through /proc/PID/fd). @throws once the process has gone */
async function untilOpenedBy(pid: number, file: string): Promise<void> {
  const want = statSync(file);
  const opened = () => {
    if (!existsSync(`/proc/${pid}/fd`)) throw new Error(`process ${pid} ended before it was seen with ${file} open`);
    return readdirSync(`/proc/${pid}/fd`).some((fd) => {
      try {
        const s = statSync(`/proc/${pid}/fd/${fd}`);
        return s.ino === want.ino && s.dev === want.dev;
      } catch {
        return false; // closed meanwhile
      }
    });
  };
  for (let i = 0; i < 1000 && !opened(); i++) await Bun.sleep(10);
  expect(opened()).toBe(true);
}

/** Whether flock(1) could take `file` right now, without waiting. */
const flockNow = (file: string) => (Bun.spawnSync(["flock", "-n", file, "true"]).exitCode === 0 ? "free" : "busy");

test("lockFile waits for another holder of the same lock file (seen waiting, not returned), takes it once that one lets go, then holds it (flock(1) cannot take it meanwhile)", async () => {
  const d = tempDir();
  const lock = join(d, "fw_printenv.lock");
  const taken = join(d, "taken");
  const h = await holder(lock);
  // lockFile blocks the thread that calls it: a child bun waits in it, so the
  // test stays free to watch it and to let the holder go. It keeps the lock
  // until the test closes its stdin.
  const waiter = Bun.spawn(
    [process.execPath, "-e", `import { writeFileSync } from "node:fs";
import { lockFile } from ${JSON.stringify(FLOCK_TS)};
const release = lockFile(${JSON.stringify(lock)});
writeFileSync(${JSON.stringify(taken)}, "");
console.log("taken");
await Bun.stdin.text();
release();`],
    { stdin: "pipe", stdout: "pipe", stderr: "pipe" },
  );
  try {
    // lockFile opens the file just before it waits for the lock: from here it can only wait.
    await untilOpenedBy(waiter.pid, lock);
    const whileHeld = { returned: existsSync(taken), exited: waiter.exitCode };
    await h.letGo();
    const afterLetGo = await firstOutput(waiter);
    const flockWhileTaken = flockNow(lock);
    waiter.stdin.end();
    expect({ whileHeld, afterLetGo, flockWhileTaken, code: await waiter.exited, stderr: await new Response(waiter.stderr).text(), flockAfter: flockNow(lock) }).toEqual({
      whileHeld: { returned: false, exited: null }, // still waiting while flock(1) held it
      afterLetGo: "taken\n",
      flockWhileTaken: "busy", // the waiter's now
      code: 0,
      stderr: "",
      flockAfter: "free", // gone with its release
    });
  } finally {
    h.kill();
    waiter.kill();
  }
});

test("re-entrant: a second take in the same process does not wait for itself; the lock goes with the last release", () => {
  const lock = join(tempDir(), "fw_printenv.lock");
  const outer = lockFile(lock);
  const inner = lockFile(lock);
  inner();
  inner(); // twice is harmless
  expect(Bun.spawnSync(["flock", "-n", lock, "true"]).exitCode).toBe(1);
  outer();
  expect(Bun.spawnSync(["flock", "-n", lock, "true"]).exitCode).toBe(0);
});

test("no lock folder (an initramfs): nothing to take, nothing to wait for", () => {
  const dir = join(tempDir(), "no-such-dir");
  const release = lockFile(join(dir, "fw_printenv.lock"));
  release();
  expect(existsSync(dir)).toBe(false); // nothing made to hold a lock nobody else could take
});

/** The zb binary with `lockDir` on /var/lock (test/fakes/envlock.ts): zb takes its default lock path, the host's is never touched. */
const zbWithLockDir = (lockDir: string, argv: string[]) => Bun.spawn(withTempVarLock([BIN, ...argv], lockDir), { stdout: "pipe", stderr: "pipe" });

test("zb env set waits while fw_printenv.lock (its default path, a temp folder mounted on /var/lock) is held by another tool", async () => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  const d = tempDir();
  const boot = join(d, "boot");
  const lockDir = join(d, "lock");
  mkdirSync(lockDir);
  expect(await zbWithLockDir(lockDir, ["env", "init", "--boot", boot]).exited).toBe(0);
  const lock = join(lockDir, "fw_printenv.lock");
  const h = await holder(lock);
  try {
    const set = zbWithLockDir(lockDir, ["env", "set", "--boot", boot, "x", "1"]);
    // zb opens the lock file just before it waits for the lock: from here it can only wait.
    await untilOpenedBy(set.pid, lock);
    const print = () => {
      const r = Bun.spawnSync([BIN, "env", "print", "--boot", boot, "x"]); // a read takes no lock
      return r.exitCode === 0 ? r.stdout.toString() : `exit ${r.exitCode}`;
    };
    const whileHeld = { exited: set.exitCode, x: print() };
    await h.letGo();
    expect({ whileHeld, code: await set.exited, stderr: await new Response(set.stderr).text(), after: print() }).toEqual({
      whileHeld: { exited: null, x: "exit 1" }, // not defined yet
      code: 0,
      stderr: "",
      after: "x=1\n",
    });
  } finally {
    h.kill();
  }
});

test("tryLockFd: held, busy while flock(1) or a second open in this process holds it, free again once the holder's descriptor is closed", async () => {
  const d = tempDir();
  const file = join(d, "target.img");
  writeFileSync(file, "x");
  const h = await holder(file);
  const a = openSync(file, "r+");
  const got = [["while flock(1) holds it", tryLockFd(a)]];
  await h.letGo();
  got.push(["after flock(1) let go", tryLockFd(a)]);
  const b = openSync(file, "r+");
  got.push(["a second open in this process", tryLockFd(b)], ["the first open again (its own lock)", tryLockFd(a)]);
  got.push(["flock(1) meanwhile", flockNow(file)]);
  closeSync(a);
  got.push(["the second open, the first closed", tryLockFd(b)]);
  closeSync(b);
  got.push(["flock(1), both closed", flockNow(file)]);
  expect(got).toEqual([
    ["while flock(1) holds it", "busy"],
    ["after flock(1) let go", "held"],
    ["a second open in this process", "busy"],
    ["the first open again (its own lock)", "held"],
    ["flock(1) meanwhile", "busy"],
    ["the second open, the first closed", "held"],
    ["flock(1), both closed", "free"],
  ]);
});

test("tryLockFd without the JIT (no bun:ffi): skipped, as lockFile is", () => {
  const file = join(tempDir(), "f");
  writeFileSync(file, "x");
  const r = Bun.spawnSync([process.execPath, "-e", `import { openSync } from "node:fs"; import { tryLockFd } from ${JSON.stringify(resolve(import.meta.dir, "../../../lib/sys/flock.ts"))}; console.log(tryLockFd(openSync(${JSON.stringify(file)}, "r")));`], { env: { ...process.env, BUN_JSC_useJIT: "0" } });
  expect(r.stdout.toString().trim()).toBe("skipped");
});
