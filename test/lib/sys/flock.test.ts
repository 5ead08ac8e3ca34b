/**
 * The env lock against util-linux flock(1), which takes the same flock(2)
 * lock U-Boot's fw_setenv and libubootenv take: zb waits for a holder, holds
 * it across a boot transition, and is re-entrant within one process.
 * tryLockFd takes the same lock on a descriptor without waiting: refused
 * while another process or another open of the file in this one holds it,
 * released by close. Every lock file is in a temp folder: the binary's
 * default /var/lock is a temp folder mounted there for that process only.
 */
import { expect, test } from "bun:test";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { lockFile, tryLockFd } from "../../../lib/sys/flock.ts";
import { tempDirs } from "../../tempdirs.ts";

const tempDir = tempDirs("zb-flock-");
const BIN = resolve(import.meta.dir, "../../../dist/zb-x64");

/** flock(1) holding `lock` for `seconds`, writing `marker` just before it lets go. */
function holder(lock: string, seconds: number, marker: string) {
  const p = Bun.spawn(["flock", lock, "sh", "-c", `echo held > ${marker}.held; sleep ${seconds}; echo done > ${marker}`]);
  return p;
}

async function untilExists(path: string): Promise<void> {
  for (let i = 0; i < 200 && !existsSync(path); i++) await Bun.sleep(10);
  expect(existsSync(path)).toBe(true);
}

test("lockFile waits for another holder of the same lock file, then holds it (flock(1) cannot take it meanwhile)", async () => {
  const d = tempDir();
  const lock = join(d, "fw_printenv.lock");
  const marker = join(d, "released");
  const h = holder(lock, 0.5, marker);
  await untilExists(`${marker}.held`);
  const release = lockFile(lock);
  // It returned only after the holder wrote its marker and let go.
  expect(existsSync(marker)).toBe(true);
  await h.exited;
  const busy = Bun.spawnSync(["flock", "-n", lock, "true"]);
  expect(busy.exitCode).toBe(1); // ours now
  release();
  expect(Bun.spawnSync(["flock", "-n", lock, "true"]).exitCode).toBe(0);
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

/**
 * Run the zb binary with a temp folder bind-mounted over /var/lock in a
 * private mount namespace (root only, like the PID namespace in
 * test/stages/boot.test.ts): zb takes its default lock path, and the host's
 * /var/lock/fw_printenv.lock is never touched.
 */
function zbWithLockDir(lockDir: string, argv: string[]) {
  const inNamespace = 'mount --bind "$1" /var/lock && shift && exec "$@"';
  return Bun.spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", inNamespace, "sh", lockDir, BIN, ...argv], {
    stdout: "pipe",
    stderr: "pipe",
  });
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

test("zb env set waits while fw_printenv.lock (its default path, a temp folder mounted on /var/lock) is held by another tool", async () => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  const d = tempDir();
  const boot = join(d, "boot");
  const lockDir = join(d, "lock");
  mkdirSync(lockDir);
  expect(await zbWithLockDir(lockDir, ["env", "init", "--boot", boot]).exited).toBe(0);
  const lock = join(lockDir, "fw_printenv.lock");
  const marker = join(d, "held");
  // flock(1) holds the lock until its stdin closes: the test, not a timer, decides when it lets go.
  const h = Bun.spawn(["flock", lock, "sh", "-c", `echo held > ${marker}; exec cat > /dev/null`], { stdin: "pipe" });
  try {
    await untilExists(marker);
    const set = zbWithLockDir(lockDir, ["env", "set", "--boot", boot, "x", "1"]);
    // zb opens the lock file just before it waits for the lock: from here it can only wait.
    await untilOpenedBy(set.pid, lock);
    const print = () => {
      const r = Bun.spawnSync([BIN, "env", "print", "--boot", boot, "x"]); // a read takes no lock
      return r.exitCode === 0 ? r.stdout.toString() : `exit ${r.exitCode}`;
    };
    const whileHeld = { exited: set.exitCode, x: print() };
    h.stdin.end();
    expect(await h.exited).toBe(0);
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
  const marker = join(d, "released");
  const h = holder(file, 0.3, marker);
  await untilExists(`${marker}.held`);
  const a = openSync(file, "r+");
  const got = [["while flock(1) holds it", tryLockFd(a)]];
  await h.exited;
  got.push(["after flock(1) let go", tryLockFd(a)]);
  const b = openSync(file, "r+");
  got.push(["a second open in this process", tryLockFd(b)], ["the first open again (its own lock)", tryLockFd(a)]);
  got.push(["flock(1) meanwhile", Bun.spawnSync(["flock", "-n", file, "true"]).exitCode === 0 ? "free" : "busy"]);
  closeSync(a);
  got.push(["the second open, the first closed", tryLockFd(b)]);
  closeSync(b);
  got.push(["flock(1), both closed", Bun.spawnSync(["flock", "-n", file, "true"]).exitCode === 0 ? "free" : "busy"]);
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
