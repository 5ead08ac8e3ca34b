/**
 * The host setup the zbunlock stage tests share (unlock.test.ts,
 * unlock-failover.test.ts, unlock-unrecorded.test.ts): one per test file,
 * made in its beforeAll and removed in its afterAll.
 *
 * Enrolment with `zb cred create` (real cryptsetup luksFormat on a file),
 * credentials unpacked into a temp root as the kernel would, the soft
 * backend as the HSM (the real backends are tested against their peers in
 * test/lib/hsm, the TPM path under QEMU in test/qemu/unlock.test.ts).
 *
 * This host has no device-mapper, so zbunlock's `cryptsetup open` goes to a
 * wrapper that pauses (while the key is in flight a test can scan every
 * process's cmdline and environ for it), then checks the key with the real
 * `cryptsetup open --test-passphrase`.
 *
 * zb runs with a temp folder on /var/lock (fakes/envlock.ts), in a mount
 * namespace of its own: the env lock it takes is not the host's, and the
 * boot partition it mounts is seen in there.
 */
import { afterAll, beforeAll, expect } from "bun:test";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { withTempVarLock } from "../fakes/envlock.ts";

export const BIN = resolve(import.meta.dir, "../../dist/zb-x64");
const REAL_CRYPTSETUP = Bun.which("cryptsetup", { PATH: "/usr/sbin:/sbin:/usr/bin:/bin" });

/** Every form of the key a leak could take. */
export function forms(k: Uint8Array): Buffer[] {
  const b = Buffer.from(k);
  return [b, Buffer.from(b.toString("hex")), Buffer.from(b.toString("hex").toUpperCase()), Buffer.from(b.toString("base64")), Buffer.from(b.toString("base64url"))];
}

/** Processes whose cmdline or environ holds a form of the key. */
export function scanProcesses(k: Uint8Array): string[] {
  const hits: string[] = [];
  for (const pid of readdirSync("/proc").filter((n) => /^\d+$/.test(n))) {
    for (const f of ["cmdline", "environ"]) {
      let bytes: Buffer;
      try {
        bytes = readFileSync(`/proc/${pid}/${f}`);
      } catch {
        continue; // gone, or not ours to read
      }
      if (forms(k).some((x) => bytes.includes(x))) hits.push(`${pid}/${f}`);
    }
  }
  return hits;
}

/**
 * Registers the calling test file's beforeAll (enrolment, the fake
 * cryptsetup) and afterAll (removal); call it once at the file's top level.
 * The paths are fixed from the call on; `key` is filled in beforeAll.
 */
export function unlockFixture() {
  const dir = mkdtempSync(join(tmpdir(), "zb-unlockcli-"));
  const boot = join(dir, "boot");
  const root = join(dir, "root");
  const fakeBin = join(dir, "bin");
  /** The root volume's key, unsealed once by the test, for the scans. */
  const key = new Uint8Array(32);

  function run(argv: string[], opts: { env?: Record<string, string>; stdin?: Uint8Array } = {}) {
    const p = Bun.spawnSync(withTempVarLock([BIN, ...argv]), { env: { ...process.env, ZB_NO_REBOOT: "1", ...opts.env }, ...(opts.stdin ? { stdin: opts.stdin } : {}) });
    return { code: p.exitCode, out: p.stdout.toString(), raw: new Uint8Array(p.stdout), err: p.stderr.toString() };
  }

  const softFlags = (keyFile: string) => ["--backend", "soft", "--soft-enable", "--soft-key-file", keyFile];
  const hsmConf = (keyFile: string) => writeFileSync(join(root, "etc/zb/hsm.conf"), `backend = soft\nsoft.enable = yes\nsoft.key-file = ${keyFile}\nwait = 1\n`);
  const env = () => run(["env", "print", "--boot", boot]).out;

  /** Run `fn` with the initramfs's /proc/cmdline rewritten by `edit` (its words in, the new words out); put back after. */
  async function withCmdline<T>(edit: (words: string) => string, fn: () => Promise<T>): Promise<T> {
    const path = join(root, "proc/cmdline");
    const before = readFileSync(path, "utf8");
    writeFileSync(path, `${edit(before.trim())}\n`);
    try {
      return await fn();
    } finally {
      writeFileSync(path, before);
    }
  }

  /** Run zbunlock; `env` adds variables (BUN_JSC_useJIT=0: as the initramfs script starts it). */
  async function zbunlock(extra: string[] = [], during?: () => void, env: Record<string, string> = {}) {
    rmSync(join(dir, "ready"), { force: true });
    rmSync(join(dir, "go"), { force: true });
    const p = Bun.spawn(withTempVarLock([BIN, "unlock", "--boot", boot, "--root", root, "--no-reboot", ...extra]), {
      env: { ...process.env, ZB_NO_REBOOT: "1", PATH: `${fakeBin}:${process.env.PATH}`, ...env }, stdout: "pipe", stderr: "pipe",
    });
    if (during) {
      for (let i = 0; i < 400 && !existsSync(join(dir, "ready")); i++) await Bun.sleep(25);
      during();
    }
    writeFileSync(join(dir, "go"), "");
    const [out, err, code] = [await new Response(p.stdout).text(), await new Response(p.stderr).text(), await p.exited];
    return { code, out, err };
  }

  beforeAll(() => {
    if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
    if (!REAL_CRYPTSETUP) throw new Error("cryptsetup is missing: run .ci/setup");
    for (const d of [boot, join(root, "proc"), join(root, "etc/zb"), join(root, "sys/class/block/vdb"), join(root, "sys/class/block/vda1"), join(root, "dev"), fakeBin]) mkdirSync(d, { recursive: true });
    writeFileSync(join(boot, "config.txt"), "kernel=vmlinuz\n");
    writeFileSync(join(boot, "cmdline.txt"), "console=ttyAMA0\n");
    // Both slots bootable: a rollback (N7, U2) goes only to a slot whose folder the firmware can boot.
    for (const s of ["slot-a", "slot-b"]) {
      mkdirSync(join(boot, s), { recursive: true });
      writeFileSync(join(boot, s, "vmlinuz"), "a kernel\n");
      writeFileSync(join(boot, s, "bcm2711-rpi-4-b.dtb"), "a device tree\n");
    }
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b"]).code).toBe(0);
    writeFileSync(join(root, "proc/cmdline"), `${readFileSync(join(boot, "slot-a/cmdline.txt"), "utf8").trim()} zb.hsm_wait=1\n`);
    // The slot's root volume: a 16 MiB file, seen by zbunlock as /dev/vdb.
    const img = join(dir, "root.img");
    writeFileSync(img, new Uint8Array(16 << 20));
    symlinkSync(img, join(root, "dev/vdb"));
    writeFileSync(join(root, "dev/vda1"), new Uint8Array(4096));
    const soft = join(dir, "soft.key");
    const c = run(["cred", "create", "--slot", "a", "--root", img, "--format", ...softFlags(soft), "-o", join(dir, "cred.cpio"), "--json"]);
    expect(c.err).toContain("WARNING: the soft HSM backend is for development only");
    expect(c.code).toBe(0);
    const meta = JSON.parse(c.out);
    expect(meta.root.uuid).toMatch(/^[0-9a-f-]{36}$/);
    // Unpack the archive the way the kernel does, into the initramfs root.
    const x = Bun.spawnSync(["cpio", "-idm", "--quiet"], { cwd: root, stdin: readFileSync(join(dir, "cred.cpio")) });
    expect(x.exitCode).toBe(0);
    // The key itself, for the scans (unsealed once, by the test).
    const u = run(["hsm", "unseal", join(root, "zb/credentials/root.sealed"), "-o", "-", ...softFlags(soft).slice(2)]);
    expect(u.code).toBe(0);
    expect(u.raw.length).toBe(32);
    key.set(u.raw);
    // cryptsetup for zbunlock: once the key's first byte has arrived (zbunlock
    // started it before the unseal; the key is live in zbunlock now), notes
    // the env as it is then, says ready and pauses until the test says go,
    // then checks the key for real.
    // (A fake killed before its key came leaves the group below behind: it
    // reads EOF and must not say ready during a later test.)
    writeFileSync(join(fakeBin, "cryptsetup"), `#!/bin/sh
if [ "$1" = open ]; then
  for last; do :; done
  dev=$(eval echo "\\\${$(($# - 1))}")
  echo "$*" >> ${dir}/open.log
  { dd bs=1 count=1 2>${dir}/dd.$$; grep -q '^1+0 records in' ${dir}/dd.$$ || exit 1
    ${BIN} env print --boot ${boot} >${dir}/env-at-key; touch ${dir}/ready
    i=0; while [ ! -e ${dir}/go ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
    cat; } | ${REAL_CRYPTSETUP} open --type luks --test-passphrase --key-file=- "$dev"
  exit
fi
exec ${REAL_CRYPTSETUP} "$@"
`);
    chmodSync(join(fakeBin, "cryptsetup"), 0o755);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  return { dir, boot, root, fakeBin, key, run, softFlags, hsmConf, env, withCmdline, zbunlock };
}
