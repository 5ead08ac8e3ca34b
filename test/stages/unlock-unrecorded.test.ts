/**
 * zbunlock through dist/zb-x64 when the boot state cannot be recorded: a boot
 * partition that will not mount (given or by zb.boot=, mounted by zbunlock
 * itself), an env zb cannot read or use, a config.txt that cannot be
 * replaced. The slot the firmware chose boots unrecorded, or a reboot is
 * asked for; never a panic.
 *
 * The setup is unlock-fixture.ts (see unlock.test.ts).
 */
import { describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { withTempVarLock } from "../fakes/envlock.ts";
import { BIN, unlockFixture } from "./unlock-fixture.ts";

const { dir, boot, root, fakeBin, run, softFlags, hsmConf, env, withCmdline, zbunlock } = unlockFixture();

describe("zbunlock unlocks the slot's root", () => {
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
});

describe("the boot partition zbunlock mounts itself (zb.boot=; a bind mount stands in for vfat, which this kernel lacks)", () => {
  /**
   * A PATH of only what the run needs, with `mount` (failing from call `failFrom` on) and, if
   * `withUmount`, `umount`; with `badKey`, a cryptsetup whose open takes the key and fails as
   * for a key that opens no keyslot.
   */
  function tools(name: string, o: { failFrom?: number; withUmount: boolean; badKey?: boolean }): string {
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
    if (o.badKey) {
      writeFileSync(join(t, "cryptsetup"), `#!/bin/sh\n[ "$1" = open ] || exit 1\ncat >/dev/null\necho "No key available with this passphrase." >&2\nexit 2\n`);
      chmodSync(join(t, "cryptsetup"), 0o755);
    } else symlinkSync(join(fakeBin, "cryptsetup"), join(t, "cryptsetup"));
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

  test("the key fails in cryptsetup and the partition (unmounted while cryptsetup worked) will not mount again to record it: said, and a reboot asked for (exit 12), not a stop at IO", async () => {
    const t = tools("no-remount", { failFrom: 2, withUmount: true, badKey: true });
    const r = await withBootDevice(t, join(dir, "soft.key"));
    expect(r.err).toContain("zbunlock: cannot record the failed unlock: cannot mount the boot partition");
    expect(r.code).toBe(12);
    expect(readFileSync(join(t, "mount.calls"), "utf8").trim()).toBe("2");
    const e = env();
    expect(e).toContain("zb_boot_count_a=1"); // counted before the unlock: the boot counter takes it from here
    expect(e).not.toContain("cannot unlock slot a");
  });

  test("the unseal fails at once (another HSM: no-match): the partition is still mounted, and the failure is recorded without a second mount", async () => {
    const other = join(dir, "other-at-once.key");
    expect(run(["hsm", "seal", ...softFlags(other), "-o", join(dir, "other-at-once.sealed")], { stdin: new Uint8Array(32).fill(1) }).code).toBe(0);
    const t = tools("unseal-fails", { failFrom: 2, withUmount: true });
    const r = await withBootDevice(t, other);
    expect(r.err).not.toContain("cannot record the failed unlock");
    expect(r.code).toBe(12); // U2: rolled back to b
    expect(readFileSync(join(t, "mount.calls"), "utf8").trim()).toBe("1");
    expect(env()).toMatch(/cannot unlock slot a: no-match, next boot: b/);
    expect(mounted()).toBe(false); // unmounted before the exit all the same
  });

  test("the HSM is absent until the deadline: the partition is unmounted while zbunlock waits, and mounted again to record the failure", async () => {
    const t = tools("hsm-absent", { withUmount: true });
    const r = await withBootDevice(t, join(dir, "missing.key"));
    expect(r.err).toContain("zbunlock: waiting for the soft HSM");
    expect(r.err).not.toContain("cannot record the failed unlock");
    expect(r.code).toBe(12); // U3: a reboot to retry
    expect(readFileSync(join(t, "mount.calls"), "utf8").trim()).toBe("2");
    expect(env()).toMatch(/cannot unlock slot a: absent/);
    expect(mounted()).toBe(false);
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
