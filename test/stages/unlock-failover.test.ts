/**
 * zbunlock through dist/zb-x64 when the unlock cannot happen: another HSM
 * (no-match, U2 rollback), an HSM absent until the deadline (retry), the lock
 * of tpm2 keys with a lock PCR after the failure and with --lock-only, a
 * transition that reboots before any unseal, a malformed hsm.conf (U2 or U4),
 * and credentials that cannot work (U2 like a refusing HSM).
 *
 * The setup is unlock-fixture.ts (see unlock.test.ts).
 */
import { describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { unlockFixture } from "./unlock-fixture.ts";

const { dir, boot, root, run, softFlags, hsmConf, env, withCmdline, zbunlock } = unlockFixture();

describe("zbunlock unlocks the slot's root", () => {
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
