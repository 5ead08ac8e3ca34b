/**
 * The env lock against util-linux flock(1), which takes the same flock(2)
 * lock U-Boot's fw_setenv and libubootenv take: zb waits for a holder, holds
 * it across a boot transition, and is re-entrant within one process.
 * tryLockFd takes the same lock on a descriptor without waiting: refused
 * while another process or another open of the file in this one holds it,
 * released by close.
 */
import { expect, test } from "bun:test";
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from "node:fs";
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

test("zb env set waits while fw_printenv.lock is held by another tool (the real /var/lock file)", async () => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  const d = tempDir();
  const boot = join(d, "boot");
  expect(Bun.spawnSync([BIN, "env", "init", "--boot", boot]).exitCode).toBe(0);
  const marker = join(d, "released");
  const h = holder("/var/lock/fw_printenv.lock", 0.5, marker);
  await untilExists(`${marker}.held`);
  const set = Bun.spawn([BIN, "env", "set", "--boot", boot, "x", "1"], { stdout: "pipe", stderr: "pipe" });
  expect(await set.exited).toBe(0);
  // The set ended only after the holder's last step before releasing.
  expect(readFileSync(marker, "utf8")).toBe("done\n");
  await h.exited;
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
