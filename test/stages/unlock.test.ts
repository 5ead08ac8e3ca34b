/**
 * zbunlock's unlock end to end on the host, through dist/zb-x64: enrolment
 * with `zb cred create` (real cryptsetup luksFormat on a file), credentials
 * unpacked into a temp root as the kernel would, the soft backend as the HSM
 * (the real backends are tested against their peers in test/lib/hsm, the
 * TPM path under QEMU in test/qemu/unlock.test.ts).
 *
 * This host has no device-mapper, so zbunlock's `cryptsetup open` goes to a
 * wrapper that pauses (while the key is in flight the test scans every
 * process's cmdline and environ for it), then checks the key with the real
 * `cryptsetup open --test-passphrase`.
 *
 * zb runs with a temp folder on /var/lock (fakes/envlock.ts), in a mount
 * namespace of its own: the env lock it takes is not the host's, and the
 * boot partition it mounts is seen in there.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { withTempVarLock } from "../fakes/envlock.ts";
import { untilPolling } from "../fakes/procwait.ts";
import { buildZymkeyStub } from "../peers/zymkey-stub.ts";

const BIN = resolve(import.meta.dir, "../../dist/zb-x64");
const REAL_CRYPTSETUP = Bun.which("cryptsetup", { PATH: "/usr/sbin:/sbin:/usr/bin:/bin" });
let dir = "";
let boot = "";
let root = "";
let fakeBin = "";
let key = new Uint8Array();

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

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  if (!REAL_CRYPTSETUP) throw new Error("cryptsetup is missing: run .ci/setup");
  dir = mkdtempSync(join(tmpdir(), "zb-unlockcli-"));
  boot = join(dir, "boot");
  root = join(dir, "root");
  fakeBin = join(dir, "bin");
  for (const d of [boot, join(root, "proc"), join(root, "etc/zb"), join(root, "sys/class/block/vdb"), join(root, "sys/class/block/vda1"), join(root, "dev"), fakeBin]) mkdirSync(d, { recursive: true });
  writeFileSync(join(boot, "config.txt"), "kernel=vmlinuz\n");
  writeFileSync(join(boot, "cmdline.txt"), "console=ttyAMA0\n");
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
  // The key itself, for the scans below (unsealed once, by the test).
  const u = run(["hsm", "unseal", join(root, "zb/credentials/root.sealed"), "-o", "-", ...softFlags(soft).slice(2)]);
  expect(u.code).toBe(0);
  key = u.raw;
  expect(key.length).toBe(32);
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

/** Every form of the key a leak could take. */
function forms(k: Uint8Array): Buffer[] {
  const b = Buffer.from(k);
  return [b, Buffer.from(b.toString("hex")), Buffer.from(b.toString("hex").toUpperCase()), Buffer.from(b.toString("base64")), Buffer.from(b.toString("base64url"))];
}

/** Processes whose cmdline or environ holds a form of the key. */
function scanProcesses(k: Uint8Array): string[] {
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

describe("zbunlock unlocks the slot's root", () => {
  test("the scanner finds a key that is in a process's argv (it can fail)", async () => {
    const hex = Buffer.from(key).toString("hex");
    const p = Bun.spawn(["sh", "-c", "sleep 5", "leak", hex]);
    await Bun.sleep(50);
    try {
      expect(scanProcesses(key)).toContain(`${p.pid}/cmdline`);
    } finally {
      p.kill();
    }
  });

  test("unseals with the configured HSM, opens the device found by its LUKS UUID; the key is in no argv, environ or log", async () => {
    hsmConf(join(dir, "soft.key"));
    let hits: string[] = ["not scanned"];
    const r = await zbunlock([], () => {
      expect(existsSync(join(dir, "ready"))).toBe(true);
      hits = scanProcesses(key);
    });
    expect(hits).toEqual([]);
    expect(r.err).toContain("zbunlock: unlocked zb-root");
    expect(r.code).toBe(0);
    expect(readFileSync(join(dir, "open.log"), "utf8")).toBe(`open --type luks --key-file=- ${join(root, "dev/vdb")} zb-root\n`);
    for (const f of forms(key)) expect(Buffer.from(r.out + r.err, "latin1").includes(f)).toBe(false);
    expect(env()).toContain("zb_boot_count_a=1");
    // The key comes only once the boot is counted (the transition is durable).
    expect(readFileSync(join(dir, "env-at-key"), "utf8")).toContain("zb_boot_count_a=1");
  });

  test("without the JIT (BUN_JSC_useJIT=0, as initramfs-hooks/scripts/local-top/zb starts it): same unlock, the key only on cryptsetup's stdin", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    hsmConf(join(dir, "soft.key"));
    let hits: string[] = ["not scanned"];
    const r = await zbunlock([], () => {
      expect(existsSync(join(dir, "ready"))).toBe(true); // the key is in flight while the scan runs
      hits = scanProcesses(key);
    }, { BUN_JSC_useJIT: "0" });
    expect(hits).toEqual([]);
    expect(r.err).not.toContain("requires the JIT");
    expect(r.err).toContain("zbunlock: unlocked zb-root");
    expect(r.code).toBe(0);
    for (const f of forms(key)) expect(Buffer.from(r.out + r.err, "latin1").includes(f)).toBe(false);
    expect(env()).toContain("zb_boot_count_a=1");
  });

  test("without the JIT, keys sealed by a C-library backend (zymkey): zbunlock runs again with the JIT, once", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    // The zymkey stub library of test/lib/hsm (same C signatures as libzk_app_utils.so).
    const stub = join(dir, "libzk_stub.so");
    buildZymkeyStub(stub);
    // Credentials that name zymkey, with well-formed locked data that the stub cannot unlock.
    const creds = join(dir, "zk-creds");
    mkdirSync(join(creds, "zb/credentials"), { recursive: true });
    const meta = readFileSync(join(root, "zb/credentials/meta.json"), "utf8").replace(/"backend": *"soft"/, '"backend":"zymkey"');
    writeFileSync(join(creds, "zb/credentials/meta.json"), meta);
    writeFileSync(join(creds, "zb/credentials/root.sealed"), `{"backend":"zymkey","data":{"locked":"${Buffer.alloc(64, 7).toString("base64")}","version":1},"format":"zb-sealed/1"}\n`);
    writeFileSync(join(root, "etc/zb/hsm.conf"), `backend = zymkey\nzymkey.library = ${stub}\nwait = 1\n`);
    const r = await zbunlock(["--credentials", creds], undefined, { BUN_JSC_useJIT: "0" });
    // Without the JIT bun:ffi refuses to bind the library's functions; with it
    // the stub's zkOpen runs (and fails: no stub state, so "absent" until the deadline).
    expect(r.err).not.toContain("requires the JIT");
    expect(r.err).toContain("zkOpen failed");
    expect(r.code).toBe(12);
    // One run of the boot transition: the parent touched no state before handing over.
    expect(r.out.match(/N9/g)?.length ?? 0).toBe(1);
    expect(env()).toContain("zb_boot_count_a=1");
  });

  test("another HSM (other soft key) → no-match: slot a invalid, rolled back to b, reboot requested", async () => {
    const other = join(dir, "other.key");
    expect(run(["hsm", "seal", ...softFlags(other), "-o", join(dir, "x.sealed")], { stdin: new Uint8Array(32).fill(1) }).code).toBe(0);
    hsmConf(other);
    const r = await zbunlock();
    expect(r.err).toMatch(/zbunlock: cannot unseal with soft: .*key/);
    expect(r.code).toBe(12);
    expect(r.out).toContain("reboot (normal) needed");
    const e = env();
    expect(e).toContain("zb_slot=b");
    expect(e).toContain("zb_valid_a=0");
    expect(e).toMatch(/cannot unlock slot a: no-match, next boot: b/);
  });

  // A boot that ends without the unlock locks the keys that name a lock PCR
  // (the real extend is checked in the QEMU guest, qemu/unlock.sh fresh-tpm):
  // here the sealed data names only the lock PCR, so lock() refuses it and
  // the attempt shows as a warning.
  test.each([
    { name: "tpm2 keys with a lock PCR: zbunlock tries to lock them after the failure", lockPcr: true, tried: true },
    { name: "tpm2 keys without one: no lock attempt, no HSM opened for it", lockPcr: false, tried: false },
  ])("$name", async ({ lockPcr, tried }) => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    const creds = join(dir, "tpm-creds");
    mkdirSync(join(creds, "zb/credentials"), { recursive: true });
    const meta = readFileSync(join(root, "zb/credentials/meta.json"), "utf8").replace(/"backend": *"soft"/, '"backend":"tpm2"');
    writeFileSync(join(creds, "zb/credentials/meta.json"), meta);
    writeFileSync(join(creds, "zb/credentials/root.sealed"), JSON.stringify({ backend: "tpm2", data: lockPcr ? { lockPcr: 15 } : {}, format: "zb-sealed/1" }) + "\n");
    writeFileSync(join(root, "etc/zb/hsm.conf"), `backend = tpm2\ntpm2.device = ${join(dir, "no-tpmrm0")}\nwait = 1\n`);
    const r = await zbunlock(["--credentials", creds]);
    expect(r.code).toBe(12);
    expect(r.err).not.toContain("unlocked zb-root");
    expect(r.err.includes("zbunlock: WARNING: cannot lock the sealed keys")).toBe(tried);
  });

  test("--lock-only (local-top's step before a panic): tries the lock of tpm2 keys with a lock PCR, touches no boot state, exit 0", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    const creds = join(dir, "tpm-creds-lock");
    mkdirSync(join(creds, "zb/credentials"), { recursive: true });
    const meta = readFileSync(join(root, "zb/credentials/meta.json"), "utf8").replace(/"backend": *"soft"/, '"backend":"tpm2"');
    writeFileSync(join(creds, "zb/credentials/meta.json"), meta);
    writeFileSync(join(creds, "zb/credentials/root.sealed"), JSON.stringify({ backend: "tpm2", data: { lockPcr: 15 }, format: "zb-sealed/1" }) + "\n");
    writeFileSync(join(root, "etc/zb/hsm.conf"), `backend = tpm2\ntpm2.device = ${join(dir, "no-tpmrm0")}\nwait = 1\n`);
    const before = env();
    const r = await zbunlock(["--lock-only", "--credentials", creds]);
    expect(r.code).toBe(0);
    expect(r.err).toContain("zbunlock: WARNING: cannot lock the sealed keys");
    expect(r.out).toBe("");
    expect(env()).toBe(before); // no boot counted, nothing recorded
    // Keys without a lock PCR (the soft backend here): nothing to do, nothing said.
    hsmConf(join(dir, "soft.key"));
    const plain = await zbunlock(["--lock-only"]);
    expect([plain.code, plain.out, plain.err]).toEqual([0, "", ""]);
    expect(env()).toBe(before);
  });

  // The close of zb's volumes in the step before a panic shell: test/stages/unlock-lock.test.ts.

  test("HSM absent until the deadline → reboot to retry, the slot stays", async () => {
    // back to a committed, valid a
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    hsmConf(join(dir, "missing.key"));
    const r = await zbunlock();
    expect(r.err).toContain("waiting for the soft HSM"); // it waited (zb.hsm_wait=1) before giving up
    expect(r.code).toBe(12);
    const e = env();
    expect(e).toContain("zb_slot=a");
    expect(e).not.toContain("zb_valid_a=0");
    expect(e).toMatch(/cannot unlock slot a: absent, retrying \(boot 1 of 3\)/);
  });

  test("--go-file (started early, without the JIT): nothing happens until the file exists, then the same unlock", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    hsmConf(join(dir, "soft.key"));
    const go = join(dir, "prestart-go");
    rmSync(go, { force: true });
    rmSync(join(dir, "go"), { force: true }); // the fake cryptsetup's own go, given below
    rmSync(join(dir, "ready"), { force: true });
    const p = Bun.spawn(withTempVarLock([BIN, "unlock", "--boot", boot, "--root", root, "--no-reboot", "--go-file", go]), {
      env: { ...process.env, ZB_NO_REBOOT: "1", BUN_JSC_useJIT: "0", PATH: `${fakeBin}:${process.env.PATH}` }, stdout: "pipe", stderr: "pipe",
    });
    try {
      await untilPolling(p.pid, basename(BIN)); // polling for the go file
      // Waiting: the env is untouched and cryptsetup was not started.
      expect(p.exitCode).toBeNull();
      expect(env()).not.toContain("zb_boot_count_a=1");
      expect(existsSync(join(dir, "ready"))).toBe(false);
      writeFileSync(go, "");
      writeFileSync(join(dir, "go"), "");
      const [out, err, code] = [await new Response(p.stdout).text(), await new Response(p.stderr).text(), await p.exited];
      expect(out).toMatch(/^zbunlock: started early, going on after \d+\.\d\d s\n/);
      expect(err).toContain("zbunlock: unlocked zb-root");
      expect(code).toBe(0);
      expect(env()).toContain("zb_boot_count_a=1");
      // Taken: renamed, so the boot script knows this run may have changed state.
      expect([existsSync(go), existsSync(`${go}.taken`)]).toEqual([false, true]);
    } finally {
      p.kill(); // a failed assertion above must not leave it waiting 180 s
    }
  });

  test("--go-file that never appears: exit 24 (NOT_STARTED) after zb.prestart_wait=, nothing done", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    const before = env();
    await withCmdline((c) => `${c} zb.prestart_wait=0.3`, async () => {
      const r = await zbunlock(["--go-file", join(dir, "never")], undefined, { BUN_JSC_useJIT: "0" });
      expect(r.err).toContain(`zb: cannot go on: ${join(dir, "never")} did not appear within 0.3 s; zbunlock did nothing`);
      expect(r.code).toBe(24);
      expect(r.out).toBe("");
      expect(env()).toBe(before);
    });
  });

  test("--status-fd: the exit status is written to that descriptor as zbunlock exits (success and NOT_STARTED)", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    hsmConf(join(dir, "soft.key"));
    await withCmdline((c) => `${c} zb.prestart_wait=0.3`, async () => {
      const rows = [
        { name: "success", before: [] as string[], after: { code: 0, line: "exited 0\n" } },
        { name: "no go", before: ["--go-file", join(dir, "never")], after: { code: 24, line: "exited 24\n" } },
      ];
      for (const row of rows) {
        const file = join(dir, `status-${row.name.replace(/ /g, "-")}`);
        const fd = openSync(file, "w");
        try {
          rmSync(join(dir, "go"), { force: true });
          writeFileSync(join(dir, "go"), ""); // the fake cryptsetup's go
          const p = Bun.spawn(withTempVarLock([BIN, "unlock", "--boot", boot, "--root", root, "--no-reboot", "--status-fd", "3", ...row.before]), {
            env: { ...process.env, ZB_NO_REBOOT: "1", BUN_JSC_useJIT: "0", PATH: `${fakeBin}:${process.env.PATH}` }, stdio: ["ignore", "pipe", "pipe", fd],
          });
          const [err, code] = [await new Response(p.stderr).text(), await p.exited];
          expect([row.name, code, readFileSync(file, "utf8")]).toEqual([row.name, row.after.code, row.after.line] as never);
          if (row.after.code === 0) expect(err).toContain("zbunlock: unlocked zb-root");
        } finally {
          closeSync(fd);
        }
      }
    });
  });

  test("a transition that reboots (slot a at its boot limit → roll back to b): nothing is unsealed or opened", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    expect(run(["env", "set", "--boot", boot, "zb_boot_count_a", "3"]).code).toBe(0);
    hsmConf(join(dir, "soft.key"));
    rmSync(join(dir, "open.log"), { force: true });
    const r = await zbunlock([], undefined, { BUN_JSC_useJIT: "0" });
    expect(r.out).toContain("N7");
    expect(r.code).toBe(12);
    expect(r.err).not.toContain("unlocked");
    expect(existsSync(join(dir, "open.log"))).toBe(false);
    expect(env()).toContain("zb_slot=b");
  });

  test("--dry-run and --no-unlock start no cryptsetup", async () => {
    for (const flag of ["--dry-run", "--no-unlock"]) {
      expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
      rmSync(join(dir, "open.log"), { force: true });
      const r = await zbunlock([flag], undefined, { BUN_JSC_useJIT: "0" });
      expect([flag, r.code, existsSync(join(dir, "open.log"))]).toEqual([flag, 0, false] as never);
    }
  });

  test("a malformed hsm.conf is this slot's defect: U2 rolls back to b (the other slot is valid), the reboot is pending", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    writeFileSync(join(root, "etc/zb/hsm.conf"), "backend = nonsense\n");
    const r = await zbunlock();
    expect(r.out).toContain("N9");
    expect(r.err).toMatch(/cannot unlock: the HSM configuration .*hsm\.conf: .*nonsense/);
    expect(r.code).toBe(12);
    const e = env();
    expect(e).toContain("zb_valid_a=0");
    expect(e).toContain("zb_slot=b");
  });

  test("a malformed hsm.conf with no other slot to boot: U4 stops the boot with CONFIG (exit 8), the slot stays valid", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a", "--force"]).code).toBe(0);
    writeFileSync(join(root, "etc/zb/hsm.conf"), "backend = nonsense\n");
    const r = await zbunlock();
    expect(r.err).toMatch(/cannot unlock: the HSM configuration .*hsm\.conf/);
    expect(r.code).toBe(8);
    expect(env()).not.toContain("zb_valid_a=0");
  });

  test("the boot partition cannot be mounted: the boot goes on unrecorded, the root unlocked (exit 0)", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    hsmConf(join(dir, "soft.key"));
    const before = env();
    await withCmdline((c) => `${c} zb.boot=${join(dir, "no-such-disk")} zb.boot_wait=0.2`, async () => {
      const p = Bun.spawn(withTempVarLock([BIN, "unlock", "--root", root, "--no-reboot"]), { env: { ...process.env, ZB_NO_REBOOT: "1", PATH: `${fakeBin}:${process.env.PATH}` }, stdout: "pipe", stderr: "pipe" });
      writeFileSync(join(dir, "go"), ""); // the cryptsetup wrapper need not wait for a scan
      const [err, code] = [await new Response(p.stderr).text(), await p.exited];
      expect(err).toMatch(/zbunlock: cannot record this boot: cannot mount the boot partition: .*no-such-disk did not appear within 0.2 s/);
      expect(err).toContain("zbunlock: booting slot a unrecorded");
      expect(err).toContain("zbunlock: unlocked zb-root");
      expect(code).toBe(0);
    });
    expect(env()).toBe(before); // nothing recorded
  }, 30_000);

  test("--no-unlock only runs the boot state", async () => {
    const r = await zbunlock(["--no-unlock"]);
    expect(r.code).toBe(0);
    expect(r.err).not.toContain("unlocked");
  });
});

describe("credentials that cannot work fail over like a refusing HSM (U2: slot invalid, boot the other)", () => {
  /** Credentials in a folder of their own: the good ones copied, then `change` applied. */
  function credentials(change: (credDir: string) => void): string {
    const creds = join(dir, `creds-${Math.random().toString(36).slice(2)}`);
    mkdirSync(join(creds, "zb/credentials"), { recursive: true });
    for (const f of readdirSync(join(root, "zb/credentials"))) writeFileSync(join(creds, "zb/credentials", f), readFileSync(join(root, "zb/credentials", f)));
    change(join(creds, "zb/credentials"));
    return creds;
  }
  const rows: { name: string; args: () => string[]; cmdline?: string; says: RegExp }[] = [
    {
      name: "a sealed key that is not a zb blob",
      args: () => ["--credentials", credentials((d) => writeFileSync(join(d, "root.sealed"), '{"garbage":1}\n'))],
      says: /zbunlock: cannot unlock: the credentials in .*zb\/credentials: cannot read root\.sealed: /,
    },
    {
      name: "another slot's credentials (meta.json says b, slot a booted)",
      args: () => ["--credentials", credentials((d) => writeFileSync(join(d, "meta.json"), readFileSync(join(d, "meta.json"), "utf8").replace(/"slot": *"a"/, '"slot":"b"')))],
      says: /zbunlock: cannot unlock: the credentials in .*zb\/credentials are for slot b, this is slot a\n/,
    },
    {
      name: "no credentials while the command line mounts root=/dev/mapper/zb-root",
      args: () => ["--credentials", join(dir, "no-credentials-here")],
      cmdline: "root=/dev/mapper/zb-root",
      says: /zbunlock: cannot unlock: the command line mounts root=\/dev\/mapper\/zb-root, but there are no credentials in .*no-credentials-here\/zb\/credentials/,
    },
  ];
  test.each(rows)("$name → U2, exit 12 (reboot pending), nothing opened", async ({ args, cmdline, says }) => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    hsmConf(join(dir, "soft.key"));
    rmSync(join(dir, "open.log"), { force: true });
    await withCmdline((c) => (cmdline ? `${c} ${cmdline}` : c), async () => {
      const r = await zbunlock(args(), undefined, { BUN_JSC_useJIT: "0" });
      expect(r.err).toMatch(says);
      expect(r.code).toBe(12);
      const e = env();
      expect(e).toContain("zb_valid_a=0");
      expect(e).toContain("zb_slot=b");
      expect(existsSync(join(dir, "open.log"))).toBe(false);
    });
  });

  test("no credentials and no zb root on the command line: nothing to unlock, exit 0 (an unencrypted root)", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    const r = await zbunlock(["--credentials", join(dir, "no-credentials-here")], undefined, { BUN_JSC_useJIT: "0" });
    expect(r.out).toContain("no credentials in");
    expect(r.code).toBe(0);
    expect(env()).toContain("zb_valid_a=1");
  });
});

test("a misspelt or unusable zb.* kernel parameter is said on the console, and the unlock goes on with the default", async () => {
  expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
  hsmConf(join(dir, "soft.key"));
  await withCmdline((c) => `${c.replace(/ zb\.hsm_wait=\S+/, "")} zb.hsm_wiat=5 zb.hsm_wait=abc`, async () => {
    const r = await zbunlock([], undefined, { BUN_JSC_useJIT: "0" });
    expect(r.err).toContain("zbunlock: warning: ignoring the unknown kernel parameter zb.hsm_wiat= (docs/boot-flow.md lists those zb reads)\n");
    expect(r.err).toContain("zbunlock: warning: ignoring zb.hsm_wait=abc: expected seconds, at most 600; the default applies\n");
    expect(r.err).toContain("zbunlock: unlocked zb-root");
    expect(r.code).toBe(0);
  });
});

describe("the boot partition zbunlock mounts itself (zb.boot=; a bind mount stands in for vfat, which this kernel lacks)", () => {
  /** A PATH of only what the run needs, with `mount` (failing from call `failFrom` on) and, if `withUmount`, `umount`. */
  function tools(name: string, o: { failFrom?: number; withUmount: boolean }): string {
    const t = join(dir, `tools-${name}`);
    mkdirSync(t, { recursive: true });
    for (const tool of ["sh", "dd", "grep", "cat", "sleep", "touch"]) symlinkSync(Bun.which(tool)!, join(t, tool));
    writeFileSync(join(t, "mount"), `#!/bin/sh
n=$(cat ${t}/mount.calls 2>/dev/null || echo 0); n=$((n+1)); echo $n > ${t}/mount.calls
[ $n -ge ${o.failFrom ?? 1000} ] && { echo "mount: no such device" >&2; exit 32; }
for last; do :; done
exec ${Bun.which("mount")} --bind ${boot} "$last"
`);
    chmodSync(join(t, "mount"), 0o755);
    if (o.withUmount) {
      writeFileSync(join(t, "umount"), `#!/bin/sh\nexec ${Bun.which("umount")} "$@"\n`);
      chmodSync(join(t, "umount"), 0o755);
    }
    symlinkSync(join(fakeBin, "cryptsetup"), join(t, "cryptsetup"));
    return t;
  }
  const mountPoint = () => join(root, "run/zb/boot");
  /** The mount table zbunlock left in its namespace (the one of its /var/lock), read there as it exited. */
  const mountsAfter = () => join(dir, "mounts-after");
  const mounted = () => readFileSync(mountsAfter(), "utf8").split("\n").some((l) => l.split(" ")[1] === mountPoint());
  async function withBootDevice(pathDir: string, keyFile: string) {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    hsmConf(keyFile);
    const dev = join(dir, "fake-bootdev");
    writeFileSync(dev, "");
    rmSync(join(dir, "go"), { force: true });
    writeFileSync(join(dir, "go"), "");
    rmSync(mountsAfter(), { force: true });
    return withCmdline((c) => `${c} zb.boot=${dev}`, async () => {
      // A mount zbunlock leaves behind goes with its namespace; the table is read in there first.
      const after = `"$@"; rc=$?; ${Bun.which("cat")} /proc/self/mounts > "${mountsAfter()}"; exit $rc`;
      const p = Bun.spawn(withTempVarLock([Bun.which("sh")!, "-c", after, "sh", BIN, "unlock", "--root", root, "--no-reboot"]), { env: { ZB_NO_REBOOT: "1", BUN_JSC_useJIT: "0", PATH: pathDir }, stdout: "pipe", stderr: "pipe" });
      const [out, err, code] = [await new Response(p.stdout).text(), await new Response(p.stderr).text(), await p.exited];
      return { out, err, code };
    });
  }

  test("mounted, the boot counted, unmounted again before the exit", async () => {
    const r = await withBootDevice(tools("ok", { withUmount: true }), join(dir, "soft.key"));
    expect(r.err).toContain("zbunlock: unlocked zb-root");
    expect(r.err).not.toContain("cannot unmount");
    expect(r.code).toBe(0);
    expect(env()).toContain("zb_boot_count_a=1");
    expect(mounted()).toBe(false);
  });

  test("no umount to run: a warning, and the unlock goes on (exit 0), no crash", async () => {
    const r = await withBootDevice(tools("no-umount", { withUmount: false }), join(dir, "soft.key"));
    expect(r.err).toContain(`zbunlock: warning: cannot unmount the boot partition ${mountPoint()}: `);
    expect(r.err).toContain("zbunlock: unlocked zb-root");
    expect(r.code).toBe(0);
  });

  test("the unlock fails and the partition will not mount again to record it: said, and a reboot asked for (exit 12), not a stop at IO", async () => {
    const r = await withBootDevice(tools("no-remount", { failFrom: 2, withUmount: true }), join(dir, "missing.key"));
    expect(r.err).toContain("zbunlock: cannot record the failed unlock: cannot mount the boot partition");
    expect(r.code).toBe(12);
    const e = env();
    expect(e).toContain("zb_boot_count_a=1"); // counted before the unlock: the boot counter takes it from here
    expect(e).not.toContain("cannot unlock slot a");
  });
});

describe("a boot state zbunlock cannot use: the slot the firmware chose boots unrecorded (no panic)", () => {
  const rows = [
    {
      name: "both env copies corrupt (ENV_CRC)",
      spoil: () => {
        for (const f of ["zb.env", "zb.env.redund"]) writeFileSync(join(boot, "zb", f), new Uint8Array(0x4000).fill(7));
      },
      says: /cannot record this boot: cannot read env: both copies are invalid/,
    },
    { name: "a boot variable zb does not understand (zb_slot=c, STATE_INVALID)", spoil: () => void run(["env", "set", "--boot", boot, "zb_slot", "c"]), says: /cannot record this boot: .*zb_slot is "c"/ },
    { name: "no env at all where the boot partition should be (IO)", spoil: () => rmSync(join(boot, "zb"), { recursive: true }), says: /cannot record this boot: cannot read env: there is none/ },
  ];
  test.each(rows)("$name: exit 0, the root unlocked, the console says it is unrecorded", async ({ spoil, says }) => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    hsmConf(join(dir, "soft.key"));
    const config = readFileSync(join(boot, "config.txt"), "utf8");
    try {
      spoil();
      const r = await zbunlock();
      expect(r.err).toMatch(says);
      expect(r.err).toContain("zbunlock: booting slot a unrecorded: no boot counting or rollback until the boot state is repaired");
      expect(r.err).toContain("zbunlock: unlocked zb-root");
      expect(r.code).toBe(0);
      expect(readFileSync(join(boot, "config.txt"), "utf8")).toBe(config);
    } finally {
      if (!existsSync(join(boot, "zb"))) {
        mkdirSync(join(boot, "zb"));
        writeFileSync(join(boot, "zb/config.txt"), "kernel=vmlinuz\n");
        writeFileSync(join(boot, "zb/cmdline.txt"), "console=ttyAMA0\n");
      }
      expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    }
  });

  test("config.txt cannot be replaced after the env recorded a rollback (N7): the rollback stands, the reboot is pending (12), the warning says so; no unrecorded boot of the rejected slot", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    hsmConf(join(dir, "soft.key"));
    expect(run(["env", "set", "--boot", boot, "zb_boot_count_a", "3"]).code).toBe(0);
    const config = readFileSync(join(boot, "config.txt"), "utf8");
    mkdirSync(join(boot, ".config.txt.zb-new")); // the temp name is taken: the rename cannot happen
    try {
      const r = await zbunlock();
      expect(r.out).toContain("N7");
      expect(r.err).toMatch(/zbunlock: warning: cannot .*config\.txt.*; the env has the new state, and the next boot rewrites the file \(row N5\)/);
      expect(r.err).not.toContain("unrecorded");
      expect(r.err).not.toContain("unlocked zb-root");
      expect(r.code).toBe(12);
      expect(env()).toContain("zb_slot=b");
      expect(readFileSync(join(boot, "config.txt"), "utf8")).toBe(config);
    } finally {
      rmSync(join(boot, ".config.txt.zb-new"), { recursive: true, force: true });
      expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    }
  });

  test("the unlock fails and the env cannot take the failure any more: a plain reboot (exit 12 under --no-reboot), not a shell; the boot was counted", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    hsmConf(join(dir, "soft.key"));
    const img = join(dir, "root.img");
    const saved = readFileSync(img);
    const envFiles = ["zb.env", "zb.env.redund"].map((f) => join(boot, "zb", f));
    try {
      const r = await zbunlock([], () => {
        // While cryptsetup waits for the go: the volume turns into something else (the open fails),
        // and both env copies become unreadable (a failing card).
        writeFileSync(img, new Uint8Array(1 << 20));
        for (const f of envFiles) {
          rmSync(f);
          mkdirSync(f);
        }
      });
      expect(r.out).toContain("N9");
      expect(r.err).toMatch(/zbunlock: cannot record the failed unlock: /);
      expect(r.err).not.toContain("unlocked zb-root");
      expect(r.code).toBe(12);
    } finally {
      writeFileSync(img, saved);
      for (const f of envFiles) rmSync(f, { recursive: true, force: true });
      expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    }
  });

  test("a try boot is not run unrecorded: a plain reboot back to the committed slot (exit 12 under --no-reboot), nothing unlocked", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    hsmConf(join(dir, "soft.key"));
    for (const f of ["zb.env", "zb.env.redund"]) writeFileSync(join(boot, "zb", f), new Uint8Array(0x4000).fill(7));
    try {
      const r = await withCmdline((c) => `${c} kernel_status=trying`, () => zbunlock());
      expect(r.err).toContain("zbunlock: cannot record this boot: cannot read env: both copies are invalid");
      expect(r.err).toContain("zbunlock: a try boot does not run unrecorded: rebooting into the committed slot");
      expect(r.out).toContain("zbunlock: reboot (normal) needed, not performed: --no-reboot");
      expect(r.err).not.toContain("unlocked zb-root");
      expect(r.code).toBe(12);
    } finally {
      expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    }
  });

  test("--dry-run still reports the failure (exit 3) instead of booting on", async () => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    for (const f of ["zb.env", "zb.env.redund"]) writeFileSync(join(boot, "zb", f), new Uint8Array(0x4000).fill(7));
    try {
      const r = await zbunlock(["--dry-run"]);
      expect(r.code).toBe(3);
      expect(r.err).not.toContain("unrecorded");
    } finally {
      expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    }
  });
});
