/**
 * The boot-state commands end to end through dist/zb-x64, on a temporary
 * boot folder and a temporary root (--boot, --root) as a user's own checks
 * would run them. ZB_NO_REBOOT=1 guards the host; --no-reboot reports.
 * Every run has a temp folder on /var/lock (fakes/envlock.ts): the env
 * lock it takes is not the host's.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { appendFileSync, chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { withTempVarLock } from "../fakes/envlock.ts";
import { BIN, bootFolder, freshDevice, type FreshDevice } from "./boot-device.ts";
import { untilPolling } from "../fakes/procwait.ts";

let dir = "";
let boot = "";
let root = "";

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  dir = mkdtempSync(join(tmpdir(), "zb-bootcli-"));
  boot = join(dir, "boot");
  root = join(dir, "root");
  for (const d of ["slot-a", "slot-b", "root/proc"]) mkdirSync(join(dir, d === "root/proc" ? d : `boot/${d}`), { recursive: true });
  writeFileSync(join(boot, "config.txt"), "kernel=vmlinuz\ninitramfs initrd.img followkernel\n");
  writeFileSync(join(boot, "cmdline.txt"), "console=ttyAMA0 rootwait\n");
  for (const s of ["slot-a", "slot-b"]) {
    writeFileSync(join(boot, s, "vmlinuz"), "a kernel\n");
    writeFileSync(join(boot, s, "bcm2711-rpi-4-b.dtb"), "a device tree\n");
  }
  symlinkSync(BIN, join(dir, "zbunlock"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function zb(args: string[], name = BIN) {
  const where = args[0] === "env" ? ["--boot", boot] : ["--boot", boot, "--root", root];
  const p = Bun.spawnSync(withTempVarLock([name, ...args, ...where]), { env: { ...process.env, ZB_NO_REBOOT: "1" } });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}
const unlock = (...args: string[]) => zb(args, join(dir, "zbunlock"));
const cmdline = (file: string) => writeFileSync(join(root, "proc/cmdline"), readFileSync(join(boot, file)));
/** Both env copies of a boot folder, as bytes (default: this file's device). */
const envBytes = (b = boot) => Buffer.concat([readFileSync(join(b, "zb/zb.env")), readFileSync(join(b, "zb/zb.env.redund"))]);
const status = () => JSON.parse(zb(["status", "--json"]).out);
function writeCheck(d: string, name: string, text: string): void {
  writeFileSync(join(d, name), text);
  chmodSync(join(d, name), 0o755);
}

describe("a try, committed, through the CLI", () => {
  test("init takes over the partition", () => {
    const r = zb(["init", "--slot", "a", "--valid", "a,b"]);
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    expect(readFileSync(join(boot, "zb/config.txt"), "utf8")).toBe("kernel=vmlinuz\ninitramfs initrd.img followkernel\n");
    expect(readFileSync(join(boot, "config.txt"), "utf8")).toContain("os_prefix=slot-a/\ncmdline=cmdline.txt\nkernel=vmlinuz\n");
    expect(readFileSync(join(boot, "slot-b/cmdline-try.txt"), "utf8")).toBe("console=ttyAMA0 rootwait zb.slot=b kernel_status=trying panic=10\n");
    expect(zb(["init", "--slot", "a"]).code).toBe(2); // refuses to replace the env
  });

  test("zbunlock --dry-run prints the transition and writes nothing", () => {
    cmdline("slot-a/cmdline.txt");
    const before = envBytes();
    const r = unlock("--dry-run");
    expect(r.out).toBe("zbunlock: would apply N9: count the boot, boot on\n");
    expect(r.code).toBe(0);
    expect(envBytes().equals(before)).toBe(true);
  });

  test("zbunlock on a normal boot: exit 0, counted", () => {
    const r = unlock();
    expect(r.out).toContain("zbunlock: booting slot a\n");
    expect(r.code).toBe(0);
    expect(status().slots.a.bootCount).toBe(1);
  });

  test("a failing health check vetoes mark-good (exit 11), state unchanged", () => {
    const checks = join(dir, "health.d");
    mkdirSync(checks);
    writeFileSync(join(checks, "10-ok"), "#!/bin/sh\nexit 0\n");
    writeFileSync(join(checks, "20-fail"), "#!/bin/sh\necho disk full >&2\nexit 3\n");
    writeFileSync(join(checks, "README"), "not executable, skipped\n");
    chmodSync(join(checks, "10-ok"), 0o755);
    chmodSync(join(checks, "20-fail"), 0o755);
    const r = zb(["mark-good", "--health-dir", checks]);
    expect(r.code).toBe(11);
    expect(r.err).toMatch(/health check .*20-fail failed \(exit 3\)/);
    expect(status().slots.a.bootCount).toBe(1);
    rmSync(join(checks, "20-fail"));
    expect(zb(["mark-good", "--health-dir", checks]).code).toBe(0);
    expect(status().slots.a.bootCount).toBe(0);
  });

  test("--json: a health check's own output goes to stderr, stdout is zb's JSON alone", () => {
    const checks = join(dir, "health-json.d");
    mkdirSync(checks);
    writeCheck(checks, "10-talks", "#!/bin/sh\necho check-out\nexit 0\n");
    const r = zb(["mark-good", "--health-dir", checks, "--json"]);
    expect(r.code).toBe(0);
    expect(r.err).toContain("check-out");
    expect(() => JSON.parse(r.out)).not.toThrow();
  });

  test.each([
    { name: "a link to nothing", make: (d: string) => symlinkSync(join(d, "gone"), join(d, "10-check")), code: 11, why: /health check .*10-check cannot run: it is a link to nothing/ },
    { name: "an executable without a #! line", make: (d: string) => writeCheck(d, "10-check", "echo hi\n"), code: 11, why: /health check .*10-check cannot run: it is not a program the kernel can start/ },
    { name: "a check killed by a signal", make: (d: string) => writeCheck(d, "10-check", "#!/bin/sh\nkill -KILL $$\n"), code: 11, why: /health check .*10-check failed \(killed by SIGKILL\)/ },
    { name: "a --health-dir that is a file", make: (d: string) => (rmSync(d, { recursive: true }), writeFileSync(d, "")), code: 2, why: /cannot run health checks in .*: it is not a directory/ },
  ])("$name: mark-good refused (exit $code) with the reason, state unchanged", ({ make, code, why }) => {
    const checks = join(dir, `health-${Math.random().toString(36).slice(2)}`);
    mkdirSync(checks);
    make(checks);
    const before = envBytes();
    const r = zb(["mark-good", "--health-dir", checks]);
    expect({ code: r.code, internal: r.err.includes("internal error") }).toEqual({ code, internal: false });
    expect(r.err).toMatch(why);
    expect(envBytes().equals(before)).toBe(true);
  });

  test("reboot --try b: state armed before the reboot, which ZB_NO_REBOOT refuses", () => {
    const r = zb(["reboot", "--try", "b"]);
    expect(r.out).toContain('A1: kernel_status=try');
    expect(r.err).toContain('cannot reboot with "0 tryboot": ZB_NO_REBOOT=1 is set');
    expect(r.code).toBe(2);
    expect(status()).toMatchObject({ status: "try", try: { slot: "b", left: 2 }, firmware: { tryboot: { target: "b", cmdline: "cmdline-try.txt" } } });
  });

  test("the try boot: zbunlock turns try into trying", () => {
    cmdline("slot-b/cmdline-try.txt");
    const r = unlock("--json");
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ trace: [{ id: "T1", actor: "zbunlock" }], proceed: true, reboot: null, state: { status: "trying" } });
  });

  test("mark-good commits the try", () => {
    const r = zb(["mark-good"]);
    expect(r.out).toMatch(/G1: commit/);
    expect(status()).toMatchObject({ committed: "b", status: "", try: null, booted: { slot: "b", tryboot: true }, firmware: { config: { target: "b" }, tryboot: null } });
    expect(existsSync(join(boot, "tryboot.txt"))).toBe(false);
  });
});

describe("the rest of the try boot that committed (the command line still says kernel_status=trying)", () => {
  /** Arm a try of b, boot it (T1) and commit it (G1): the state right after the update is confirmed, still on the try boot. */
  function committedOnTryBoot(name: string): FreshDevice {
    const d = freshDevice(dir, name);
    expect(d.run(["reboot", "--try", "b", "--no-reboot"]).code).toBe(0);
    writeFileSync(join(d.root, "proc/cmdline"), readFileSync(join(d.boot, "slot-b/cmdline-try.txt")));
    expect(d.run(["unlock", "--no-unlock"]).code).toBe(0);
    expect(d.run(["mark-good"]).out).toMatch(/G1: commit/);
    return d;
  }
  test("zb mark-good again: G2, exit 0, the env not written (mark-good is idempotent)", () => {
    const d = committedOnTryBoot("commit-twice");
    const before = envBytes(d.boot);
    const r = d.run(["mark-good"]);
    expect([r.code, r.err]).toEqual([0, ""]);
    expect(r.out).toMatch(/G2: counter of the slot := 0/);
    expect(envBytes(d.boot).equals(before)).toBe(true);
  });

  test("zb mark-bad: B2, exit 0: b invalid, a committed again, config.txt back to slot-a/", () => {
    const d = committedOnTryBoot("commit-bad");
    const r = d.run(["mark-bad"]);
    expect([r.code, r.err]).toEqual([0, ""]);
    expect(r.out).toMatch(/B2: slot invalid/);
    const j = JSON.parse(d.run(["status", "--json"]).out);
    expect(j).toMatchObject({ committed: "a", status: "", try: null, slots: { b: { valid: false } }, firmware: { config: { target: "a" }, tryboot: null } });
  });
});

describe("reboots zbunlock asks for", () => {
  test("--no-reboot: exit 12 and the reboot argument", () => {
    cmdline("slot-a/cmdline.txt"); // config.txt says b now: the firmware booted a stale config
    const r = unlock("--no-reboot");
    expect(r.out).toContain("zbunlock: reboot (normal) needed, not performed: --no-reboot\n");
    expect(r.out).toMatch(/N5: rewrite config.txt/);
    expect(r.code).toBe(12);
  });
});

describe("refusals and bad input", () => {
  test("mark-good without zb.slot on the cmdline: exit 10", () => {
    writeFileSync(join(root, "proc/cmdline"), "quiet\n");
    const r = zb(["mark-good"]);
    expect(r.code).toBe(10);
    expect(r.err).toMatch(/cannot tell the booted slot/);
  });

  test("a boot variable zb does not understand: exit 9 with a hint", () => {
    expect(zb(["env", "set", "zb_slot", "c"]).code).toBe(0);
    const r = zb(["status"]);
    expect(r.code).toBe(9);
    expect(r.err).toMatch(/zb_slot is "c", expected one of "a", "b"/);
  });

  test.each([
    { argv: ["reboot", "--rearms", "3"], why: "cannot reboot: --rearms needs --try SLOT" },
    { argv: ["reboot", "--try", "a", "--try", "b"], why: 'option --try is given twice ("a" and "b")' },
    { argv: ["init", "--slot", "a", "--slot", "b", "--force"], why: 'option --slot is given twice ("a" and "b")' },
    { argv: ["env", "set", "x", "1", "--boot", "/nowhere"], why: "option --boot is given twice" },
    { argv: ["unlock", "status", "--no-unlock"], why: 'cannot run zbunlock: unexpected argument "status"' },
    { argv: ["init", "--force"], why: "cannot init: --slot a|b is required" },
  ])("zb $argv: USAGE (exit 2), nothing changed", ({ argv, why }) => {
    const before = envBytes();
    const r = zb([...argv]);
    expect([r.code, r.err]).toEqual([2, expect.stringContaining(why)]);
    expect(envBytes().equals(before)).toBe(true);
  });

  test("zb env set with a value that is not UTF-8: USAGE, nothing stored; a name typed with accents shows as typed", () => {
    const before = envBytes();
    const p = Bun.spawnSync(withTempVarLock(["sh", "-c", `"$0" env set bin "$(printf 'a\\377b')" --boot "$1"`, BIN, boot]), { env: { ...process.env, ZB_NO_REBOOT: "1" }, stderr: "pipe" });
    expect(p.exitCode).toBe(2);
    expect(p.stderr.toString()).toContain("cannot run zb: argument 4 is not valid UTF-8");
    expect(p.stderr.toString()).toContain("zb env set --script FILE");
    expect(envBytes().equals(before)).toBe(true);
    expect(zb(["env", "print", "café"]).err).toContain('cannot print "café": not defined');
  });

  test("zb reboot --json: stdout holds JSON only (the 'rebooting' line goes to stderr)", () => {
    expect(zb(["env", "set", "zb_slot", "a"]).code).toBe(0); // the test before left zb_slot=c
    const r = zb(["reboot", "--json"]); // ZB_NO_REBOOT=1 then refuses the reboot itself
    expect(r.err).toContain("zb reboot: rebooting (normal)");
    expect(r.out).not.toContain("rebooting");
    const [doc, last] = [r.out.slice(0, r.out.lastIndexOf("}\n{") + 2), r.out.slice(r.out.lastIndexOf("}\n{") + 2)];
    expect(JSON.parse(doc).reboot).toEqual({ argument: null });
    expect(JSON.parse(last)).toMatchObject({ type: "result", ok: false });
  });

  test.each([
    { argv: ["rollback", "b"], extra: "b" },
    { argv: ["status", "extra"], extra: "extra" },
    { argv: ["mark-bad", "other", "extra"], extra: "extra" },
  ] as { argv: string[]; extra: string }[])("zb $argv: an argument the command does not read is USAGE, nothing changed", ({ argv, extra }) => {
    const before = envBytes();
    const r = zb(argv);
    expect(r.code).toBe(2);
    expect(r.err).toContain(`unexpected argument ${JSON.stringify(extra)}`);
    expect(envBytes().equals(before)).toBe(true);
  });

  test("init warns about a valid slot without a kernel and a root= both slots would share; reboot --try of an empty slot is refused", () => {
    const fresh = join(dir, "boot-warn");
    mkdirSync(join(fresh, "slot-a"), { recursive: true });
    writeFileSync(join(fresh, "config.txt"), "kernel=vmlinuz\n");
    writeFileSync(join(fresh, "cmdline.txt"), "console=ttyAMA0 root=/dev/mmcblk0p2 rootwait\n");
    writeFileSync(join(fresh, "slot-a/vmlinuz"), "a kernel\n");
    writeFileSync(join(fresh, "slot-a/bcm2712-rpi-5-b.dtb"), "a device tree\n");
    const at = ["--boot", fresh, "--root", root];
    const p = Bun.spawnSync(withTempVarLock([BIN, "init", "--slot", "a", "--valid", "a,b", ...at]), { env: { ...process.env, ZB_NO_REBOOT: "1" } });
    expect(p.exitCode).toBe(0);
    expect(p.stderr.toString().split("\n").filter(Boolean)).toEqual([
      "zb init: warning: slot-b/ holds no kernel (vmlinuz, kernel8.img, kernel_2712.img, kernel7l.img, kernel7.img, kernel.img): move slot b's kernel, initramfs, .dtb files and overlays/ there before the next reboot, or the firmware boots nothing",
      "zb init: warning: the command line says root=/dev/mmcblk0p2 for both slots: zbunlock opens each slot's own LUKS root as /dev/mapper/zb-root (root=/dev/mapper/zb-root), and with any other root= both slots mount the same file system",
    ]);
    const before = Buffer.concat([readFileSync(join(fresh, "zb/zb.env")), readFileSync(join(fresh, "zb/zb.env.redund"))]);
    const t = Bun.spawnSync(withTempVarLock([BIN, "reboot", "--try", "b", ...at]), { env: { ...process.env, ZB_NO_REBOOT: "1" } });
    expect(t.exitCode).toBe(10);
    expect(t.stderr.toString()).toContain("cannot arm a try: slot-b/ holds no kernel (vmlinuz, kernel8.img, kernel_2712.img, kernel7l.img, kernel7.img, kernel.img), so the firmware would boot nothing");
    // rollback too, though b is valid: the stage's backend looks into slot-b/ on the partition it was given (row R2)
    const r = Bun.spawnSync(withTempVarLock([BIN, "rollback", ...at]), { env: { ...process.env, ZB_NO_REBOOT: "1" } });
    expect(r.exitCode).toBe(10);
    expect(r.stderr.toString()).toContain("cannot roll back: slot-b/ holds no kernel or no .dtb file, so the firmware would boot nothing");
    expect(Buffer.concat([readFileSync(join(fresh, "zb/zb.env")), readFileSync(join(fresh, "zb/zb.env.redund"))]).equals(before)).toBe(true);
    expect(existsSync(join(fresh, "tryboot.txt"))).toBe(false);
    expect(readFileSync(join(fresh, "config.txt"), "utf8")).toContain("os_prefix=slot-a/");
  });

  test("a slot folder with a kernel but no .dtb file: init warns, reboot --try refuses (the firmware ignores such an os_prefix)", () => {
    const fresh = join(dir, "boot-nodtb");
    for (const s of ["slot-a", "slot-b"]) {
      mkdirSync(join(fresh, s), { recursive: true });
      writeFileSync(join(fresh, s, "vmlinuz"), "a kernel\n");
    }
    writeFileSync(join(fresh, "slot-a/bcm2711-rpi-4-b.dtb"), "a device tree\n");
    mkdirSync(join(fresh, "slot-b/bcm2711-rpi-4-b.dtb")); // a folder by that name is no device tree
    writeFileSync(join(fresh, "config.txt"), "kernel=vmlinuz\n");
    writeFileSync(join(fresh, "cmdline.txt"), "console=ttyAMA0 root=/dev/mapper/zb-root\n");
    const at = ["--boot", fresh, "--root", root];
    const p = Bun.spawnSync(withTempVarLock([BIN, "init", "--slot", "a", "--valid", "a,b", ...at]), { env: { ...process.env, ZB_NO_REBOOT: "1" } });
    expect([p.exitCode, p.stderr.toString()]).toEqual([0, "zb init: warning: slot-b/ holds no device tree (.dtb file): move slot b's kernel, initramfs, .dtb files and overlays/ there before the next reboot, or the firmware boots nothing\n"]);
    const t = Bun.spawnSync(withTempVarLock([BIN, "reboot", "--try", "b", ...at]), { env: { ...process.env, ZB_NO_REBOOT: "1" } });
    expect(t.exitCode).toBe(10);
    expect(t.stderr.toString()).toContain("cannot arm a try: slot-b/ holds no device tree (.dtb file), so the firmware would boot nothing");
    expect(existsSync(join(fresh, "tryboot.txt"))).toBe(false);
  });

  test("init --boot-limit 0 is USAGE (every boot would be counted out) and writes nothing", () => {
    const fresh = join(dir, "boot-limit0");
    mkdirSync(fresh);
    writeFileSync(join(fresh, "config.txt"), "kernel=vmlinuz\n");
    writeFileSync(join(fresh, "cmdline.txt"), "quiet\n");
    const p = Bun.spawnSync(withTempVarLock([BIN, "init", "--slot", "a", "--valid", "a,b", "--boot-limit", "0", "--boot", fresh, "--root", root]), { env: { ...process.env, ZB_NO_REBOOT: "1" } });
    expect(p.exitCode).toBe(2);
    expect(p.stderr.toString()).toContain("cannot use --boot-limit 0: a slot needs at least one boot to be confirmed");
    expect(existsSync(join(fresh, "zb"))).toBe(false);
  });

  test("status text names the slots", () => {
    zb(["env", "set", "zb_slot", "b"]);
    expect(zb(["status"]).out).toMatch(/committed slot: b\n.*\n.*\nnext boot: +b\nslot a: +valid, boots 0\/3\n/);
  });

  test("a zb_log entry set by hand without its number: status shows it whole, seq null, no NaN", () => {
    const before = zb(["env", "print", "zb_log"]).out.replace(/^zb_log=/, "").trimEnd();
    zb(["env", "set", "zb_log", `${before};garbage x y`]);
    const j = status();
    expect(j.events.at(-1)).toEqual({ seq: null, text: "garbage x y" });
    expect(j.events.slice(0, -1).every((e: { seq: unknown }) => typeof e.seq === "number")).toBe(true);
    const text = zb(["status"]).out;
    expect(text).toContain("  - garbage x y\n");
    expect(text).not.toContain("NaN");
  });
});

describe("reboot under systemd", () => {
  test("zb reboot --try hands \"0 tryboot\" to systemctl (in a PID namespace: a bug cannot reboot the host)", () => {
    const fake = join(dir, "fakebin");
    mkdirSync(fake, { recursive: true });
    mkdirSync(join(root, "run/systemd/system"), { recursive: true });
    writeFileSync(join(fake, "systemctl"), `#!/bin/sh\nprintf '%s\\n' "$@" > ${join(dir, "systemctl.args")}\n`);
    chmodSync(join(fake, "systemctl"), 0o755);
    zb(["env", "set", "zb_slot", "a"]);
    zb(["env", "set", "zb_valid_b", "1"]);
    const env: Record<string, string | undefined> = { ...process.env, PATH: `${fake}:${process.env.PATH}` };
    delete env.ZB_NO_REBOOT;
    const p = Bun.spawnSync(["unshare", "--fork", "--pid", ...withTempVarLock([BIN, "reboot", "--try", "b", "--boot", boot, "--root", root])], { env });
    expect(p.stdout.toString()).toContain('zb reboot: rebooting ("0 tryboot")');
    expect(p.exitCode).toBe(0);
    expect(readFileSync(join(dir, "systemctl.args"), "utf8")).toBe("reboot\n0 tryboot\n");
    rmSync(join(root, "run"), { recursive: true });
  });
});

describe("zbunlock mounts the boot partition itself", () => {
  test("it waits zb.boot_wait for a device that never appears, then boots on unrecorded (no credentials here: exit 0)", () => {
    const before = readFileSync(join(root, "proc/cmdline"));
    writeFileSync(join(root, "proc/cmdline"), `console=ttyAMA0 zb.slot=a zb.boot=${join(dir, "no-such-device")} zb.boot_wait=0.3\n`);
    try {
      const p = Bun.spawnSync(withTempVarLock([BIN, "unlock", "--root", root, "--no-reboot"]), { env: { ...process.env, ZB_NO_REBOOT: "1" } });
      expect(p.stderr.toString()).toContain(`cannot record this boot: cannot mount the boot partition: ${join(dir, "no-such-device")} did not appear within 0.3 s`);
      expect(p.stderr.toString()).toContain("booting slot a unrecorded");
      expect(p.exitCode).toBe(0);
    } finally {
      writeFileSync(join(root, "proc/cmdline"), before);
    }
  });

  test("a device that appears during zb.boot_wait is the one it mounts (it waited for it)", async () => {
    const before = readFileSync(join(root, "proc/cmdline"));
    const dev = join(dir, "late-device");
    writeFileSync(join(root, "proc/cmdline"), `console=ttyAMA0 zb.slot=a zb.boot=${dev} zb.boot_wait=30\n`);
    const p = Bun.spawn(withTempVarLock([BIN, "unlock", "--root", root, "--no-reboot"]), { env: { ...process.env, ZB_NO_REBOOT: "1" }, stdout: "pipe", stderr: "pipe" });
    try {
      // In its wait (polling for the node): without the wait it would say "did not appear" at once,
      // which the assertions below catch.
      await untilPolling(p.pid, basename(BIN));
      expect(p.exitCode).toBeNull();
      writeFileSync(dev, new Uint8Array(4096)); // not a FAT file system: the mount itself fails, after the wait
      const [err, code] = [await new Response(p.stderr).text(), await p.exited];
      expect(err).toContain(`cannot record this boot: cannot mount the boot partition ${dev} on `);
      expect(err).not.toContain("did not appear");
      expect(code).toBe(0);
    } finally {
      p.kill(); // a failed assertion must not leave it waiting 30 s
      writeFileSync(join(root, "proc/cmdline"), before);
      rmSync(dev, { force: true });
    }
  });
});

describe("an edit of zb/config.txt or zb/cmdline.txt (rendered only when zb next writes the files)", () => {
  test("config.txt's header says when it takes effect; zb status lists the files behind until then (normal boots do not write them; init --force does)", () => {
    const d = freshDevice(dir, "refedit");
    const behind = () => JSON.parse(d.run(["status", "--json"]).out).firmware.behind;
    expect(readFileSync(join(d.boot, "config.txt"), "utf8")).toContain("reaches this file when zb next writes it");
    expect(behind()).toEqual([]);
    expect(d.run(["status"]).out).not.toContain("behind:");
    appendFileSync(join(d.boot, "zb/config.txt"), "dtoverlay=uart5\n");
    writeFileSync(join(d.boot, "zb/cmdline.txt"), "console=ttyS0 quiet root=/dev/mapper/zb-root\n");
    expect(behind()).toEqual(["config.txt", "slot-a/cmdline.txt"]);
    expect(d.run(["unlock", "--no-unlock"]).code).toBe(0); // N9
    expect(d.run(["mark-good"]).code).toBe(0); // G2
    expect(behind()).toEqual(["config.txt", "slot-a/cmdline.txt"]);
    expect(d.run(["status"]).out).toContain("behind:         config.txt, slot-a/cmdline.txt lag behind zb/config.txt or zb/cmdline.txt: an edit there takes effect when zb next writes them");
    expect(d.run(["init", "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    expect(behind()).toEqual([]);
    expect(readFileSync(join(d.boot, "config.txt"), "utf8")).toContain("dtoverlay=uart5\n");
    expect(readFileSync(join(d.boot, "slot-a/cmdline.txt"), "utf8")).toBe("console=ttyS0 quiet root=/dev/mapper/zb-root zb.slot=a\n");
  });
});

describe("zb status decodes the env's values as UTF-8 (as zb env print --json does)", () => {
  test("a version and an event with non-ASCII text read back as typed, an invalid byte as U+FFFD, in --json and the text", () => {
    const d = freshDevice(dir, "utf8-status");
    const set = (...args: string[]) => Bun.spawnSync(withTempVarLock([BIN, "env", "set", ...args, "--boot", d.boot]), { stdin: "pipe" }).exitCode;
    expect(set("zb_version_a", "2.0-café")).toBe(0);
    expect(set("zb_log", "7 install into a finished: 2.0-café")).toBe(0);
    // A value that is not UTF-8 (a script file carries bytes as they are): \xff is no UTF-8 byte.
    const script = join(dir, "utf8-status.script");
    writeFileSync(script, Buffer.concat([Buffer.from("zb_version_b v"), Buffer.from([0xff]), Buffer.from("x\n")]));
    expect(set("--script", script)).toBe(0);
    const j = JSON.parse(d.run(["status", "--json"]).out);
    expect(j.slots.a.version).toBe("2.0-café");
    expect(j.slots.b.version).toBe("v\uFFFDx");
    expect(j.events).toEqual([{ seq: 7, text: "install into a finished: 2.0-café" }]);
    const t = d.run(["status"]).out;
    expect(t).toContain("version 2.0-café");
    expect(t).toContain("version v\uFFFDx");
    expect(t).toContain("  7 install into a finished: 2.0-café\n");
  });
});

describe("zb init and the env's other variables (docs/boot-flow.md: zb only touches its own names)", () => {
  /** A boot folder with both slots' files, its env made by `zb env init` and holding a variable of the user's. */
  function userEnv(name: string) {
    const b = join(dir, `boot-userenv-${name}`);
    bootFolder(b);
    const run = (...args: string[]) => {
      const p = Bun.spawnSync(withTempVarLock([BIN, ...args, "--boot", b, ...(args[0] === "env" ? [] : ["--root", root])]), { env: { ...process.env, ZB_NO_REBOOT: "1" } });
      return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
    };
    expect(run("env", "init").code).toBe(0);
    expect(run("env", "set", "my_fleet_id", "42").code).toBe(0);
    return { boot: b, run, print: () => run("env", "print").out };
  }

  test("an env without zb_slot (zb status: not set up) is set up by zb init without --force; the user's variable stays", () => {
    const d = userEnv("noforce");
    const r = d.run("init", "--slot", "a", "--valid", "a,b");
    expect([r.code, r.err]).toEqual([0, ""]);
    expect(d.print()).toContain("my_fleet_id=42\n");
    expect(d.print()).toContain("zb_slot=a\n");
    expect(JSON.parse(d.run("status", "--json").out).initialized).toBe(true);
  });

  test("zb init on a zb boot state still needs --force (exit 2, nothing written); --force resets zb's variables only", () => {
    const d = userEnv("force");
    expect(d.run("init", "--slot", "a", "--valid", "a,b", "--force").code).toBe(0);
    expect(d.run("env", "set", "my_note", "keep me").code).toBe(0);
    expect(d.run("env", "set", "zb_boot_count_a", "2").code).toBe(0);
    const before = envBytes(d.boot);
    const again = d.run("init", "--slot", "b", "--valid", "a,b");
    expect(again.code).toBe(2);
    expect(envBytes(d.boot).equals(before)).toBe(true);
    const forced = d.run("init", "--slot", "b", "--valid", "a,b", "--force");
    expect([forced.code, forced.err]).toEqual([0, ""]);
    const printed = d.print();
    expect(printed).toContain("my_note=keep me\n");
    expect(printed).toContain("zb_slot=b\n");
    expect(printed).toContain("zb_boot_count_a=0\n");
    expect(printed).toMatch(/^zb_log=1 zb init: slot b committed$/m);
    expect(again.err).toContain("holds a zb boot state already (zb_slot=a)");
  });
});

describe("zb status on an env without zb's boot state", () => {
  // Before: an env from `zb env init` (or made by hand) read as "committed a, both valid", like a real state.
  test.each([
    { name: "zb env init (no zb variables): not initialized, said first in the text", make: ["env", "init"], initialized: false },
    { name: "zb init: initialized", make: ["init", "--slot", "a", "--valid", "a,b"], initialized: true },
  ])("$name", ({ make, initialized }) => {
    const b = join(dir, `boot-status-${initialized}`);
    mkdirSync(b, { recursive: true });
    writeFileSync(join(b, "config.txt"), "kernel=vmlinuz\n");
    writeFileSync(join(b, "cmdline.txt"), "console=ttyAMA0\n");
    const env = { ...process.env, ZB_NO_REBOOT: "1" };
    const run = (args: string[]) => Bun.spawnSync(withTempVarLock([BIN, ...args, "--boot", b]), { env });
    expect(run([...make]).exitCode).toBe(0);
    const j = run(["status", "--json"]);
    expect(j.exitCode).toBe(0);
    expect(JSON.parse(j.stdout.toString()).initialized).toBe(initialized);
    const t = run(["status"]).stdout.toString();
    expect(t.startsWith("boot state:     not set up (the env has no zb_slot")).toBe(!initialized);
  });
});

describe("which slot folders count as bootable (lib/bootloader/pifolder.ts: lenient)", () => {
  test("reboot --try of a healthy Pi 4 slot under a [pi3]-only kernel=, its .DTB in upper case: armed, not refused", () => {
    const d = freshDevice(dir, "lenient");
    writeFileSync(join(d.boot, "zb/config.txt"), "[pi3]\nkernel=u-boot.bin\n[all]\narm_64bit=1\n");
    rmSync(join(d.boot, "slot-b"), { recursive: true });
    mkdirSync(join(d.boot, "slot-b"));
    writeFileSync(join(d.boot, "slot-b/kernel8.img"), "a kernel\n");
    writeFileSync(join(d.boot, "slot-b/BCM2711-RPI-4-B.DTB"), "a device tree\n");
    const r = d.run(["reboot", "--try", "b", "--no-reboot"]);
    expect(r.out).toContain("A1: kernel_status=try");
    expect(r.code).toBe(0);
    expect(readFileSync(join(d.boot, "tryboot.txt"), "utf8")).toContain("os_prefix=slot-b/");
  });

  test("a slot folder zbunlock cannot read (a link loop): a normal boot does not look, a rollback to it goes on with a warning", () => {
    const d = freshDevice(dir, "unreadable");
    rmSync(join(d.boot, "slot-b"), { recursive: true });
    symlinkSync("slot-b", join(d.boot, "slot-b")); // stat fails with ELOOP: an IO error, as on a corrupt FAT directory
    // N9 needs no fact about slot-b/ (lib/bootstate/state.ts withFacts): counted, no warning.
    const r = d.run(["unlock", "--no-unlock"]);
    expect(r.err).toBe("");
    expect(r.out).toContain("zbunlock: N9: ");
    expect(r.code).toBe(0);
    expect(JSON.parse(d.run(["status", "--json"]).out).slots.a.bootCount).toBe(1);
    // Two more boots reach the limit (3); at the next, N7 switches to b: slot-b/ is asked about,
    // cannot be read, and counts as bootable.
    for (let i = 0; i < 2; i++) expect(d.run(["unlock", "--no-unlock"]).err).toBe("");
    const j = d.run(["unlock", "--no-unlock", "--no-reboot", "--json"]);
    // (Writing slot-b/'s files fails too, as a stale-file warning: the link loop is not a folder.)
    expect(j.err).toMatch(/(^|\n)zbunlock: warning: cannot tell whether slot-b\/ holds a kernel and a \.dtb file \(cannot stat .*slot-b: .*\): taking slot b as bootable\n/);
    expect(j.code).toBe(12);
    const o = JSON.parse(j.out);
    expect(o.trace.map((t: { id: string }) => t.id)).toEqual(["N7"]);
    expect(o.warnings).toEqual([expect.stringContaining("taking slot b as bootable")]);
    expect(JSON.parse(d.run(["status", "--json"]).out).committed).toBe("b");
  });

  test("zb mark-bad --help says when booted goes to recovery and that an armed try is dropped", () => {
    const r = zb(["mark-bad", "--help"]);
    expect(r.code).toBe(0);
    expect(r.out.replace(/\s+/g, " ")).toContain("an armed try is dropped and the device hands over to the other slot, or to recovery when the other is not valid or its folder holds no kernel or no .dtb file");
  });
});
