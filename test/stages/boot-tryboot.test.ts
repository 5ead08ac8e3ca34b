/**
 * The boot-state commands where tryboot is concerned, end to end through
 * dist/zb-x64: a Pi 4 bootloader too old for it, and a "0 tryboot" reboot
 * zbunlock cannot start. ZB_NO_REBOOT=1 guards the host (boot-device.ts).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { withTempVarLock } from "../fakes/envlock.ts";
import { BIN, bootloaderFacts, freshDevice as device } from "./boot-device.ts";

let dir = "";
beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  dir = mkdtempSync(join(tmpdir(), "zb-boottry-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const freshDevice = (name: string) => device(dir, name);

describe("a Pi 4 bootloader older than tryboot (EEPROM before 2021-03-18)", () => {
  const OLD_EEPROM = 1599135103; // pieeprom-2020-09-03
  test.each([
    { name: "reboot --try b (A1)", argv: ["reboot", "--try", "b"], what: "arm a try" },
    { name: "reboot --recover (I1)", argv: ["reboot", "--recover"], what: "enter the recovery enclave" },
  ] as { name: string; argv: string[]; what: string }[])("$name is refused (exit 10) with the EEPROM hint; nothing written", ({ argv, what }) => {
    const d = freshDevice(`eeprom-${what}`);
    // A recovery enclave to enter: without it I2 would refuse anyway.
    mkdirSync(join(d.boot, "zboot"));
    writeFileSync(join(d.boot, "zboot/vmlinuz"), "the enclave's kernel\n");
    writeFileSync(join(d.boot, "zboot/bcm2711-rpi-4-b.dtb"), "a device tree\n");
    bootloaderFacts(d.root, "Raspberry Pi 4 Model B Rev 1.4", OLD_EEPROM);
    const env = () => Buffer.concat([readFileSync(join(d.boot, "zb/zb.env")), readFileSync(join(d.boot, "zb/zb.env.redund"))]);
    const before = env();
    const r = d.run(argv);
    expect(r.err).toContain(`zb: cannot ${what}: the bootloader in the EEPROM of this Raspberry Pi 4 Model B Rev 1.4 was built 2020-09-03, before tryboot (2021-03-18): "0 tryboot" would boot config.txt`);
    expect(r.err).toContain("rpi-eeprom-update");
    expect(r.code).toBe(10);
    expect(env().equals(before)).toBe(true);
    expect(existsSync(join(d.boot, "tryboot.txt"))).toBe(false);
    // The same device with its EEPROM updated goes ahead (the reboot itself is ZB_NO_REBOOT's refusal, exit 2).
    bootloaderFacts(d.root, "Raspberry Pi 4 Model B Rev 1.4", 1733580000);
    const after = d.run(argv);
    expect([after.code, existsSync(join(d.boot, "tryboot.txt"))]).toEqual([2, true]);
  });

  test("a Pi 4 with the 2021-03-18 build, and a Pi 5 with any build, arm the try", () => {
    for (const [model, build] of [["Raspberry Pi 4 Model B Rev 1.4", 1616057651], ["Raspberry Pi 5 Model B Rev 1.0", OLD_EEPROM]] as const) {
      const d = freshDevice(`eeprom-ok-${build}-${model.length}`);
      bootloaderFacts(d.root, model, build);
      const r = d.run(["reboot", "--try", "b", "--no-reboot"]);
      expect(r.out).toContain("A1: kernel_status=try");
      expect(r.code).toBe(0);
      expect(existsSync(join(d.boot, "tryboot.txt"))).toBe(true);
    }
  });

  test("zbunlock re-arming a lost try (N1) on such a bootloader says the bootloader is at fault", () => {
    const d = freshDevice("eeprom-n1");
    expect(d.run(["reboot", "--try", "b", "--no-reboot"]).code).toBe(0); // armed before the EEPROM was rolled back
    bootloaderFacts(d.root, "Raspberry Pi 4 Model B Rev 1.4", OLD_EEPROM);
    const r = d.run(["unlock", "--no-reboot"]);
    expect(r.out).toContain("zbunlock: N1: ");
    expect(r.err).toContain('zbunlock: warning: the try never reached its initramfs, and the bootloader in the EEPROM of this Raspberry Pi 4 Model B Rev 1.4 was built 2020-09-03, before tryboot (2021-03-18): "0 tryboot" would boot config.txt\n');
    expect(r.err).toContain("zbunlock: hint: update the bootloader EEPROM");
    expect(r.code).toBe(12);
  });
});

describe("a reboot zbunlock cannot start", () => {
  test('N1 whose "0 tryboot" fails: exit 12, and the argument left in <root>/run/zb/reboot-param for local-top/zb (in a PID namespace: a bug cannot reboot the host)', () => {
    const d = freshDevice("pending");
    expect(d.run(["reboot", "--try", "b", "--no-reboot"]).code).toBe(0);
    // Under "systemd" whose systemctl fails: the reboot cannot be started (IO), as when zb reboot --raw returns.
    const fake = join(dir, "fakebin-failing");
    mkdirSync(fake, { recursive: true });
    writeFileSync(join(fake, "systemctl"), "#!/bin/sh\necho 'Failed to reboot: stand-in' >&2\nexit 1\n");
    chmodSync(join(fake, "systemctl"), 0o755);
    mkdirSync(join(d.root, "run/systemd/system"), { recursive: true });
    const env: Record<string, string | undefined> = { ...process.env, PATH: `${fake}:${process.env.PATH}` };
    delete env.ZB_NO_REBOOT;
    const p = Bun.spawnSync(["unshare", "--fork", "--pid", ...withTempVarLock([BIN, "unlock", "--boot", d.boot, "--root", d.root])], { env });
    expect(p.stdout.toString()).toContain("zbunlock: N1: ");
    expect(p.stderr.toString()).toContain('exit 12, a reboot ("0 tryboot") is needed');
    expect(p.exitCode).toBe(12);
    expect(readFileSync(join(d.root, "run/zb/reboot-param"), "utf8")).toBe("0 tryboot\n");
  });
});
