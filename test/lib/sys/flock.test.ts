/**
 * The env lock against util-linux flock(1), which takes the same flock(2)
 * lock U-Boot's fw_setenv and libubootenv take: zb waits for a holder, holds
 * it across a boot transition, and is re-entrant within one process.
 */
import { expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { lockFile } from "../../../lib/sys/flock.ts";
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
