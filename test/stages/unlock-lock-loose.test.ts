/**
 * Credentials that cannot be read as a whole, with a root.sealed that still
 * unseals: a meta.json this zb refuses (a field a newer zb might add), or a
 * damaged data.sealed beside a good root key. Before, zbunlock skipped its
 * lock after a failed boot and `--lock-only` (local-top's step before
 * initramfs-tools' panic) exited 0 without extending the lock PCR, so the
 * panic shell could unseal the root key. Now each blob is read on its own
 * and the ones naming a lock PCR are locked. Real swtpm on 127.0.0.1, keys
 * sealed by `zb hsm seal --lock-pcr 15` through dist/zb-x64.
 */
import { afterEach, beforeEach, expect, test } from "bun:test";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { withTempVarLock } from "../fakes/envlock.ts";
import { startSwtpm, type Swtpm } from "../peers/swtpm.ts";
import { tempDirs } from "../tempdirs.ts";

const BIN = resolve(import.meta.dir, "../../dist/zb-x64");
const tempDir = tempDirs("zb-lockloose-");
const SECRET = new Uint8Array(32).fill(0x5a);
let tpm: Swtpm;

function zb(argv: string[], stdin?: Uint8Array) {
  const p = Bun.spawnSync(withTempVarLock([BIN, ...argv]), { env: { ...process.env, ZB_NO_REBOOT: "1" }, stdin: stdin ?? "ignore" });
  return { code: p.exitCode, out: new Uint8Array(p.stdout), err: p.stderr.toString() };
}

// A TPM of its own per test: a lock extends PCR 15 until the TPM restarts.
beforeEach(async () => {
  tpm = await startSwtpm();
});
afterEach(async () => {
  await tpm.stop();
});

/** A temp root whose credentials hold a good tpm2 root key (lock PCR 15) and the given meta.json extras / data.sealed. */
function rootWith(metaExtra: Record<string, unknown>, dataSealed?: string): string {
  const root = tempDir();
  for (const d of ["proc", "etc/zb", "zb/credentials", "sys/block"]) mkdirSync(join(root, d), { recursive: true });
  writeFileSync(join(root, "proc/cmdline"), "zb.slot=a\n");
  writeFileSync(join(root, "etc/zb/hsm.conf"), `backend = tpm2\ntpm2.device = ${tpm.address}\nwait = 1\n`);
  const seal = zb(["hsm", "seal", "--backend", "tpm2", "--tpm", tpm.address, "--lock-pcr", "15", "-o", join(root, "zb/credentials/root.sealed")], SECRET);
  expect(seal.err).toBe("");
  expect(seal.code).toBe(0);
  const meta = { format: "zb-credentials/1", slot: "a", backend: "tpm2", created: "2025-01-01T00:00:00Z", root: { uuid: "0f0e0d0c-0b0a-4908-8706-050403020100", name: "zb-root" }, ...metaExtra };
  writeFileSync(join(root, "zb/credentials/meta.json"), JSON.stringify(meta) + "\n");
  if (dataSealed !== undefined) writeFileSync(join(root, "zb/credentials/data.sealed"), dataSealed);
  return root;
}

/** What the panic shell would get: `zb hsm unseal` of the root key. */
const shellUnseal = (root: string) => zb(["hsm", "unseal", join(root, "zb/credentials/root.sealed"), "--tpm", tpm.address, "-o", "-"]);

test.each([
  { name: "meta.json with a field this zb does not know", meta: { comment: "written by a newer zb" }, data: undefined },
  { name: "a damaged data.sealed beside the good root key", meta: { data: { uuid: "1f0e0d0c-0b0a-4908-8706-050403020100", name: "zb-data" } }, data: "{garbage" },
])("--lock-only, $name: the readable root key is locked (PCR 15 extended), exit 0, and the shell cannot unseal it", async ({ meta, data }) => {
  const root = rootWith(meta, data);
  const before = shellUnseal(root);
  expect(before.code).toBe(0); // the key does unseal until locked: the row tests something
  const lock = zb(["unlock", "--lock-only", "--root", root]);
  expect(lock.err).toMatch(/^zbunlock: cannot read [^\n]+; locking each sealed key that can be read on its own\n/m);
  expect(lock.err).toContain("zbunlock: locked: PCR 15 extended");
  expect(lock.code).toBe(0);
  const after = shellUnseal(root);
  expect(after.out.length).toBe(0);
  expect(after.code).toBe(20); // HSM_DENIED: the policy no longer matches
});

test("the whole boot (U4 stop, damaged data.sealed): zbunlock locks the root key itself before it exits 23", async () => {
  const root = rootWith({ data: { uuid: "1f0e0d0c-0b0a-4908-8706-050403020100", name: "zb-data" } }, "{garbage");
  const boot = tempDir();
  writeFileSync(join(boot, "config.txt"), "kernel=vmlinuz\n");
  writeFileSync(join(boot, "cmdline.txt"), "console=ttyAMA0 root=/dev/mapper/zb-root\n");
  expect(zb(["init", "--boot", boot, "--slot", "a", "--valid", "a"]).code).toBe(0);
  writeFileSync(join(root, "proc/cmdline"), readFileSync(join(boot, "slot-a/cmdline.txt"), "utf8"));
  const run = zb(["unlock", "--boot", boot, "--root", root, "--no-reboot"]);
  expect(run.code).toBe(23); // U4: nothing else can boot; local-top goes to zb_panic
  expect(run.err).toContain("zbunlock: locked: PCR 15 extended");
  const after = shellUnseal(root);
  expect(after.out.length).toBe(0);
  expect(after.code).toBe(20);
});

test("--lock-only, credentials unreadable and no blob in them readable: nothing can unseal, said plainly, exit 0", async () => {
  const root = rootWith({ comment: "newer" });
  writeFileSync(join(root, "zb/credentials/root.sealed"), "{not a blob");
  const lock = zb(["unlock", "--lock-only", "--root", root]);
  expect(lock.err).toContain("; no sealed key in them names a lock, nothing to lock\n");
  expect(lock.err).not.toContain("stay unsealable");
  expect(lock.code).toBe(0);
});
