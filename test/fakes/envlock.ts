/**
 * The env lock of the tests, away from the host's. zb takes
 * /var/lock/fw_printenv.lock (lib/sys/flock.ts), the file a real fw_setenv on
 * this machine and every other test file running meanwhile take too: a test
 * holding it would make them wait, and they it. So the tests have a lock
 * folder of their own, made on first use and removed after the test (or the
 * hook, or the file's top level) that made it — bun runs an afterAll
 * registered there at that scope's end — and made anew by the next user:
 *
 * - in-process, {@link TempLockSys} is a HostSys whose env lock is the same
 *   flock(2) on `fw_printenv.lock` in that folder;
 * - the zb binary keeps its default path: {@link withTempVarLock} runs it in a
 *   private mount namespace with that folder bind-mounted on /var/lock (root
 *   only, as the tests that run zb are). lib has no seam for the path, and
 *   needs none.
 *
 * Both see the same file, so a binary and an in-process store of one test
 * still exclude each other, as on a device.
 */
import { afterAll } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { lockFile } from "../../lib/sys/flock.ts";
import { HostSys } from "../../lib/sys/sys.ts";

let folder: string | undefined;

/** The current lock folder (made when missing, removed at the end of the scope that made it): the /var/lock of the binaries run. */
export function testLockDir(): string {
  if (folder === undefined || !existsSync(folder)) {
    const made = mkdtempSync(join(tmpdir(), "zb-varlock-"));
    afterAll(() => rmSync(made, { recursive: true, force: true }));
    folder = made;
  }
  return folder;
}

/** The env lock file of the tests: fw_printenv.lock in {@link testLockDir}. */
export function testEnvLock(): string {
  return join(testLockDir(), "fw_printenv.lock");
}

/** HostSys with the env lock in the tests' lock folder instead of /var/lock. */
export class TempLockSys extends HostSys {
  override lockEnv(): () => void {
    return lockFile(testEnvLock());
  }
}

/** A host tool by its absolute path: the namespace is set up the same whatever PATH the test gives the command. */
function tool(name: string): string {
  const path = Bun.which(name, { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" });
  if (path === null) throw new Error(`${name} is missing (util-linux, coreutils): it is needed to give zb a /var/lock of its own`);
  return path;
}

/**
 * The argv that runs `argv` with `lockDir` (default: {@link testLockDir})
 * bind-mounted on /var/lock in a private mount namespace. The shell execs
 * the command: it keeps the pid, the descriptors and the environment it is
 * spawned with (its PATH is not used to set this up), and mounts it makes
 * are its own (gone with it).
 * @example Bun.spawnSync(withTempVarLock([BIN, "env", "set", "--boot", boot, "x", "1"]))
 */
export function withTempVarLock(argv: readonly string[], lockDir: string = testLockDir()): string[] {
  const inNamespace = '"$1" --bind "$2" /var/lock && shift 2 && exec "$@"';
  return [tool("unshare"), "--mount", "--propagation", "private", tool("sh"), "-c", inNamespace, "sh", tool("mount"), lockDir, ...argv];
}
