/**
 * zbunlock's unlock end to end on the host, through dist/zb-x64, and how it
 * is started: the unlock with the configured HSM (the key in no argv, environ
 * or log), without the JIT as the initramfs starts it, --go-file,
 * --status-fd, --dry-run/--no-unlock, and the zb.* kernel parameters.
 *
 * The setup (enrolment, the soft HSM, the pausing cryptsetup wrapper, the
 * temp /var/lock) is unlock-fixture.ts. What a failed unlock does:
 * unlock-failover.test.ts; a boot state zbunlock cannot record:
 * unlock-unrecorded.test.ts; the step before a panic shell: unlock-lock.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { withTempVarLock } from "../fakes/envlock.ts";
import { untilPolling } from "../fakes/procwait.ts";
import { buildZymkeyStub } from "../peers/zymkey-stub.ts";
import { BIN, forms, scanProcesses, unlockFixture } from "./unlock-fixture.ts";

const { dir, boot, root, fakeBin, key, run, hsmConf, env, withCmdline, zbunlock } = unlockFixture();

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

  test("--dry-run and --no-unlock start no cryptsetup", async () => {
    for (const flag of ["--dry-run", "--no-unlock"]) {
      expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
      rmSync(join(dir, "open.log"), { force: true });
      const r = await zbunlock([flag], undefined, { BUN_JSC_useJIT: "0" });
      expect([flag, r.code, existsSync(join(dir, "open.log"))]).toEqual([flag, 0, false] as never);
    }
  });

  test("--no-unlock only runs the boot state", async () => {
    const r = await zbunlock(["--no-unlock"]);
    expect(r.code).toBe(0);
    expect(r.err).not.toContain("unlocked");
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
