/**
 * zbunlock's step before a panic shell through dist/zb-x64 (--lock-only,
 * and a failed unlock): the lock of tpm2 keys with a lock PCR, then the
 * close of zb's volumes and of cryptsetup's leftover keyslot mappings
 * (lib/unlock/leftover.ts), and the exit status local-top decides by.
 *
 * This host has no device-mapper: a mapping is a sys/block/dm-N/dm/name
 * entry (the kernel's view) and a dev/mapper node under the temp root;
 * cryptsetup and dmsetup are fakes that record their argv and remove both
 * (or refuse), so nothing touches the host's mappings. /proc under --root
 * is the temp root's: no host process is scanned. The credentials name
 * tpm2 with a well-formed sealed blob whose lock PCR is 15; the TPM is a
 * missing device (absent) or a loopback server that answers every command
 * with TPM_RC_FAILURE (there, but the lock fails).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { b64 } from "../../lib/hsm/blob.ts";
import { sealedTemplate } from "../../lib/hsm/tpm2/objects.ts";
import { policyPcrDigest } from "../../lib/hsm/tpm2/policy.ts";
import { hex, marshal, sized } from "../../lib/hsm/tpm2/wire.ts";
import { CRED_FORMAT, encodeMeta } from "../../lib/luks/credmeta.ts";
import { withTempVarLock } from "../fakes/envlock.ts";
import { startSwtpmDevice } from "../peers/swtpm.ts";
import { tempDirs } from "../tempdirs.ts";

const BIN = resolve(import.meta.dir, "../../dist/zb-x64");
const tempDir = tempDirs("zb-unlocklock-");
let dir = "";
let boot = "";
let root = "";
let lockBin = "";
let log = "";

function zb(argv: string[]) {
  const p = Bun.spawnSync(withTempVarLock([BIN, ...argv]), { env: { ...process.env, ZB_NO_REBOOT: "1" } });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}
const env = () => zb(["env", "print", "--boot", boot]).out;
const tpmAt = (device: string) => writeFileSync(join(root, "etc/zb/hsm.conf"), `backend = tpm2\ntpm2.device = ${device}\nwait = 1\n`);

/** Sealed data tpm2's lock() accepts: PCR policy on PCR 15, lock PCR 15 (the values are never unsealed). */
function sealedWithLock(): Record<string, unknown> {
  const policy = policyPcrDigest([15], [new Uint8Array(32)]);
  const pub = sized((w) => {
    const t = sealedTemplate(policy);
    w.bytes(t.subarray(0, t.length - 2)).tpm2b(new Uint8Array(32).fill(5));
  });
  return {
    srkHandle: 0x81000001, srkName: "000b" + "ab".repeat(32), policy: "pcr", pcrBank: "sha256", pcrs: [15], lockPcr: 15,
    policyDigest: hex(policy), public: b64(pub), private: b64(marshal((w) => w.tpm2b(new Uint8Array(158).fill(9)))),
  };
}

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  dir = tempDir();
  boot = join(dir, "boot");
  root = join(dir, "root");
  lockBin = join(dir, "bin");
  log = join(dir, "calls");
  for (const d of [boot, join(root, "proc"), join(root, "etc/zb"), join(root, "zb/credentials"), lockBin]) mkdirSync(d, { recursive: true });
  writeFileSync(join(boot, "config.txt"), "kernel=vmlinuz\n");
  writeFileSync(join(boot, "cmdline.txt"), "console=ttyAMA0\n");
  expect(zb(["init", "--boot", boot, "--slot", "a", "--valid", "a,b"]).code).toBe(0);
  writeFileSync(join(root, "proc/cmdline"), `${readFileSync(join(boot, "slot-a/cmdline.txt"), "utf8").trim()} zb.hsm_wait=1\n`);
  const meta = encodeMeta({ format: CRED_FORMAT, slot: "a", backend: "tpm2", created: "2025-01-01T00:00:00Z", root: { uuid: "0f0e0d0c-0b0a-4908-8706-050403020100", name: "zb-root" } });
  writeFileSync(join(root, "zb/credentials/meta.json"), meta);
  writeFileSync(join(root, "zb/credentials/root.sealed"), JSON.stringify({ backend: "tpm2", data: sealedWithLock(), format: "zb-sealed/1" }) + "\n");
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A device-mapper device NAME as dm-N in sysfs, with its /dev/mapper node unless `node` is false. */
function mapping(name: string, n: number, node = true): void {
  mkdirSync(join(root, `sys/block/dm-${n}/dm`), { recursive: true });
  writeFileSync(join(root, `sys/block/dm-${n}/dm/name`), `${name}\n`);
  mkdirSync(join(root, "dev/mapper"), { recursive: true });
  if (node) writeFileSync(join(root, "dev/mapper", name), "");
}

/** Fake cryptsetup and dmsetup: record the call, then remove the mapping ("ok") or refuse. */
function fakes(close: "ok" | "fail", dm: "ok" | "fail"): void {
  rmSync(log, { force: true });
  const remove = (arg: string) => `for d in ${root}/sys/block/dm-*; do [ "$(cat "$d/dm/name")" = "${arg}" ] && rm -r "$d"; done; rm -f ${root}/dev/mapper/${arg}`;
  writeFileSync(join(lockBin, "cryptsetup"), `#!/bin/sh
[ "$1" = close ] || exit 99
echo "cryptsetup $*" >>${log}
${close === "ok" ? remove("$2") : 'echo "Device $2 is still in use." >&2; exit 5'}
`, { mode: 0o755 });
  writeFileSync(join(lockBin, "dmsetup"), `#!/bin/sh
echo "dmsetup $*" >>${log}
${dm === "ok" ? remove("$3") : "echo busy >&2; exit 1"}
`, { mode: 0o755 });
}

async function zbunlock(extra: string[]) {
  const p = Bun.spawn(withTempVarLock([BIN, "unlock", "--boot", boot, "--root", root, "--no-reboot", ...extra]), {
    env: { ...process.env, ZB_NO_REBOOT: "1", PATH: `${lockBin}:${process.env.PATH}` }, stdout: "pipe", stderr: "pipe",
  });
  const [out, err, code] = [await new Response(p.stdout).text(), await new Response(p.stderr).text(), await p.exited];
  return { code, out, err };
}

const calls = () => (existsSync(log) ? readFileSync(log, "utf8").trim().split("\n") : []);
const reset = () => {
  rmSync(join(root, "dev"), { recursive: true, force: true });
  rmSync(join(root, "sys"), { recursive: true, force: true });
  mkdirSync(join(root, "sys/block"), { recursive: true });
};

describe("the step before a shell closes what is open", () => {
  test.each([
    { name: "--lock-only: zb-root is open, cryptsetup closes it → exit 0", args: ["--lock-only"], maps: [["zb-root", 0]], close: "ok", dm: "ok", code: 0, calls: ["cryptsetup close zb-root"], says: "zbunlock: closed zb-root, left open after the failed boot", open: [] },
    { name: "--lock-only: cryptsetup cannot, dmsetup removes it → exit 0", args: ["--lock-only"], maps: [["zb-root", 0]], close: "fail", dm: "ok", code: 0, calls: ["cryptsetup close zb-root", "dmsetup remove --retry zb-root"], says: "zbunlock: closed zb-root, left open after the failed boot", open: [] },
    {
      name: "--lock-only: neither can → exit 22, loudly",
      args: ["--lock-only"],
      maps: [["zb-root", 0]],
      close: "fail",
      dm: "fail",
      code: 22,
      calls: ["cryptsetup close zb-root", "dmsetup remove --retry zb-root"],
      says: "zbunlock: ERROR: the root volume is still open: cannot close zb-root: cannot close zb-root: the device already exists or is busy (cryptsetup exit 5: Device zb-root is still in use.); cannot remove the device-mapper device zb-root: dmsetup exit 1: busy",
      open: ["zb-root"],
    },
    { name: "a failed unlock (TPM absent) closes it too; the status stays the failure's (12)", args: [], maps: [["zb-root", 0]], close: "ok", dm: "ok", code: 12, calls: ["cryptsetup close zb-root"], says: "zbunlock: closed zb-root, left open after the failed boot", open: [] },
    { name: "--lock-only: a /dev/mapper/zb-root sysfs does not show, dmsetup cannot remove it: said, exit 0", args: ["--lock-only"], maps: [["stale:zb-root", 0]], close: "fail", dm: "fail", code: 0, calls: ["dmsetup remove --retry zb-root"], says: "zbunlock: ignored /dev/mapper/zb-root: sysfs shows no device-mapper device named zb-root (a stale node, or a device without a table: nothing can be read through it); cannot remove the device-mapper device zb-root: dmsetup exit 1: busy", open: [] },
    { name: "--lock-only: a /dev/mapper/zb-root sysfs does not show (no table yet): dmsetup removes it, exit 0", args: ["--lock-only"], maps: [["stale:zb-root", 0]], close: "fail", dm: "ok", code: 0, calls: ["dmsetup remove --retry zb-root"], says: "zbunlock: removed zb-root with dmsetup: sysfs shows no device-mapper device named zb-root", open: [] },
    { name: "--lock-only: a keyslot mapping a killed cryptsetup left is closed → exit 0", args: ["--lock-only"], maps: [["temporary-cryptsetup-42", 3]], close: "ok", dm: "ok", code: 0, calls: ["cryptsetup close temporary-cryptsetup-42"], says: "zbunlock: closed temporary-cryptsetup-42, left open after the failed boot", open: [] },
  ] as const)("$name", async ({ args, maps, close, dm, code, calls: want, says, open }) => {
    expect(zb(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    tpmAt(join(dir, "no-tpmrm0"));
    reset();
    for (const [name, n] of maps) {
      if (name.startsWith("stale:")) {
        mkdirSync(join(root, "dev/mapper"), { recursive: true });
        writeFileSync(join(root, "dev/mapper", name.slice(6)), "");
      } else mapping(name, n);
    }
    fakes(close, dm);
    const r = await zbunlock([...args]);
    expect(r.err).toContain(says);
    expect(calls()).toEqual([...want]);
    for (const [name, n] of maps) if (!name.startsWith("stale:")) expect(existsSync(join(root, `sys/block/dm-${n}`))).toBe((open as readonly string[]).includes(name));
    expect(r.code).toBe(code);
  });
});

describe("--lock-only: keys that stay unsealable keep the shell away", () => {
  test("the TPM answers but the lock PCR cannot be extended → exit 21 (HSM_FAILED), boot state untouched", async () => {
    reset();
    fakes("fail", "fail");
    // A TPM that answers every command with TPM_RC_FAILURE (0x101): there, but the extend fails.
    const server = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      socket: { data: (s) => void s.write(new Uint8Array([0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x01])) },
    });
    try {
      tpmAt(`swtpm:host=127.0.0.1,port=${server.port}`);
      const before = env();
      const r = await zbunlock(["--lock-only"]);
      expect(r.err).toContain("zbunlock: WARNING: cannot lock the sealed keys (cannot extend PCR 15 after the unlock:");
      expect(r.code).toBe(21);
      expect(calls()).toEqual([]);
      expect(env()).toBe(before);
    } finally {
      server.stop(true);
    }
  });

  test("no TPM at all (nothing can unseal): a warning, exit 0", async () => {
    reset();
    fakes("fail", "fail");
    tpmAt(join(dir, "no-tpmrm0"));
    const r = await zbunlock(["--lock-only"]);
    expect(r.err).toContain("zbunlock: WARNING: cannot lock the sealed keys");
    expect(r.code).toBe(0);
  });
});

describe("--lock-only: an HSM configuration that cannot be used → the lock goes to the kernel's TPM device", () => {
  // The unlock fails on such a configuration at every boot; failing here too would turn the shell
  // into a reboot loop. The device is <root>/dev/tpmrm0, else <root>/dev/tpm0: absent → exit 0.
  const typo = "backend = tpm2\ntpm2.devcie = /dev/tpmrm0\n";
  const notATpm = () => `backend = tpm2\ntpm2.device = ${join(root, "etc/hostname")}\n`;
  test.each([
    { name: "a typo in hsm.conf, no TPM device → exit 0", conf: () => typo, nodes: {}, code: 0, says: ["unknown key \"tpm2.devcie\"", "the HSM configuration cannot be used, and there is no"] },
    { name: "tpm2.device names a regular file, no TPM device → exit 0", conf: notATpm, nodes: {}, code: 0, says: ["it is not a character device (a regular file)", "no TPM to lock the keys with"] },
    { name: "a typo, a /dev/tpmrm0 that does not answer → exit 21", conf: () => typo, nodes: { "dev/tpmrm0": "/dev/null" }, code: 21, says: ["dev/tpmrm0 instead", "cannot extend PCR 15 after the unlock: cannot talk to TPM"] },
    { name: "a typo, only a /dev/tpm0 that does not answer → exit 21", conf: () => typo, nodes: { "dev/tpm0": "/dev/null" }, code: 21, says: ["dev/tpm0 instead", "cannot extend PCR 15 after the unlock: cannot talk to TPM"] },
  ])("$name", async ({ conf, nodes, code, says }) => {
    reset();
    fakes("fail", "fail");
    writeFileSync(join(root, "etc/hostname"), "zb-host\n");
    writeFileSync(join(root, "etc/zb/hsm.conf"), conf());
    for (const [node, target] of Object.entries(nodes)) {
      mkdirSync(join(root, "dev"), { recursive: true });
      symlinkSync(target, join(root, node));
    }
    const r = await zbunlock(["--lock-only"]);
    for (const s of says) expect(r.err).toContain(s);
    expect(r.code).toBe(code);
    expect(readFileSync(join(root, "etc/hostname"), "utf8")).toBe("zb-host\n");
  });

  test("a typo, a TPM at /dev/tpmrm0 that does not hold the keys' storage key → nothing extended there, exit 0", async () => {
    // The sealed data pins a storage key name no TPM has: this TPM cannot unseal it, and its PCR is not zb's to extend.
    reset();
    fakes("fail", "fail");
    writeFileSync(join(root, "etc/zb/hsm.conf"), typo);
    const dev = await startSwtpmDevice();
    try {
      mkdirSync(join(root, "dev"), { recursive: true });
      symlinkSync(dev.path, join(root, "dev/tpmrm0"));
      const r = await zbunlock(["--lock-only"]);
      expect(r.err).toContain(`locking the sealed keys through ${join(root, "dev/tpmrm0")} instead`);
      expect(r.err).toContain(`${join(root, "dev/tpmrm0")} is not the TPM the keys were sealed to`);
      expect(r.err).not.toContain("PCR 15 extended");
      expect(r.code).toBe(0);
    } finally {
      await dev.stop();
    }
  });

  // Keys sealed for real to a swtpm behind a pty (lock PCR 15), so the storage key's name matches.
  test.each([
    { name: "a typo, the keys' TPM at /dev/tpmrm0 → the lock PCR extended there, exit 0", conf: () => typo, link: true, via: () => join(root, "dev/tpmrm0") },
    { name: "a typo elsewhere in the file, the keys' TPM named by its tpm2.device line (no /dev/tpmrm0) → extended there, exit 0", conf: (pty: string) => `backend = tpm2\ntpm2.device = ${pty}\nwiat = 1\n`, link: false, via: (pty: string) => pty },
  ])("$name", async ({ conf, link, via }) => {
    reset();
    fakes("fail", "fail");
    const dev = await startSwtpmDevice();
    const sealedPath = join(root, "zb/credentials/root.sealed");
    const fake = readFileSync(sealedPath);
    try {
      const seal = Bun.spawnSync([BIN, "hsm", "seal", "--backend", "tpm2", "--tpm", dev.path, "--lock-pcr", "15", "-o", "-"], { stdin: new TextEncoder().encode("a secret of the test"), env: { ...process.env } });
      expect(seal.stderr.toString()).toBe("");
      expect(seal.exitCode).toBe(0);
      writeFileSync(sealedPath, seal.stdout);
      writeFileSync(join(root, "etc/zb/hsm.conf"), conf(dev.path));
      if (link) {
        mkdirSync(join(root, "dev"), { recursive: true });
        symlinkSync(dev.path, join(root, "dev/tpmrm0"));
      }
      const r = await zbunlock(["--lock-only"]);
      expect(r.err).toContain(`locking the sealed keys through ${via(dev.path)} instead`);
      expect(r.err).toContain(`zbunlock: locked: PCR 15 extended through ${via(dev.path)}`);
      expect(r.code).toBe(0);
      // Locked for real: the same keys no longer unseal on that TPM (PolicyPCR on PCR 15 fails).
      const after = Bun.spawnSync([BIN, "hsm", "unseal", "-", "--tpm", dev.path, "-o", "-"], { stdin: seal.stdout, env: { ...process.env } });
      expect(after.exitCode).toBe(20);
    } finally {
      writeFileSync(sealedPath, fake);
      await dev.stop();
    }
  });
});
