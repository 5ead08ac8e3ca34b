/**
 * The env lock of a test process, away from the host's. zb takes
 * /var/lock/fw_printenv.lock (lib/sys/flock.ts), the file a real fw_setenv on
 * this machine and every other test file running meanwhile take too: a test
 * holding it would make them wait, and they it. So each test process has its
 * own lock folder, made on first use and removed when the process exits:
 *
 * - in-process, {@link TempLockSys} is a HostSys whose env lock is the same
 *   flock(2) on `fw_printenv.lock` in that folder;
 * - the zb binary keeps its default path: {@link withTempVarLock} runs it in a
 *   private mount namespace with that folder bind-mounted on /var/lock (root
 *   only, as the tests that run zb are). lib has no seam for the path, and
 *   needs none.
 *
 * Both see the same file, so a binary and an in-process store of one test
 * process still exclude each other, as on a device.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { lockFile } from "../../lib/sys/flock.ts";
import { HostSys } from "../../lib/sys/sys.ts";

let folder: string | undefined;

/** This process's lock folder (made on first use, removed at exit): the /var/lock of the binaries it runs. */
export function testLockDir(): string {
  if (folder === undefined) {
    const made = mkdtempSync(join(tmpdir(), "zb-varlock-"));
    process.once("exit", () => rmSync(made, { recursive: true, force: true }));
    folder = made;
  }
  return folder;
}

/** The env lock file of this process: fw_printenv.lock in {@link testLockDir}. */
export function testEnvLock(): string {
  return join(testLockDir(), "fw_printenv.lock");
}

/** HostSys with the env lock in this process's lock folder instead of /var/lock. */
export class TempLockSys extends HostSys {
  override lockEnv(): () => void {
    return lockFile(testEnvLock());
  }
}

/**
 * The argv that runs `argv` with `lockDir` (default: {@link testLockDir})
 * bind-mounted on /var/lock in a private mount namespace. The shell execs
 * the command: it keeps the pid, the descriptors and the environment it is
 * spawned with, and mounts it makes are its own (gone with it).
 * @example Bun.spawnSync(withTempVarLock([BIN, "env", "set", "--boot", boot, "x", "1"]))
 */
export function withTempVarLock(argv: readonly string[], lockDir: string = testLockDir()): string[] {
  const inNamespace = 'mount --bind "$1" /var/lock && shift && exec "$@"';
  return ["unshare", "--mount", "--propagation", "private", "sh", "-c", inNamespace, "sh", lockDir, ...argv];
}
