/**
 * The Pi-firmware emulator's rules (qemu/firmware-config.ts), table by table,
 * and its refusal to guess (qemu/firmware.ts on real disk images, no QEMU:
 * each case stops before a kernel would start).
 */
import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { bootFiles, cmdlineOf, ConfigError, endingOf, initramfsFailure, markersOf, parseConfig } from "../../qemu/firmware-config.ts";

const ROOT = resolve(import.meta.dir, "../..");

describe("config.txt: which files the firmware picks", () => {
  const rows: [string, string, boolean, { osPrefix: string; kernel: string; initramfs: string | null; cmdline: string }][] = [
    ["defaults", "arm_64bit=1\n", false, { osPrefix: "", kernel: "kernel8.img", initramfs: null, cmdline: "cmdline.txt" }],
    ["os_prefix on every name", "os_prefix=slot-a/\nkernel=vmlinuz\ninitramfs initrd.img followkernel\ncmdline=c.txt\n", false,
      { osPrefix: "slot-a/", kernel: "slot-a/vmlinuz", initramfs: "slot-a/initrd.img", cmdline: "slot-a/c.txt" }],
    ["a leading / bypasses the prefix", "os_prefix=slot-b/\nkernel=/k.img\ninitramfs /i.img 0x1000000\n", false,
      { osPrefix: "slot-b/", kernel: "k.img", initramfs: "i.img", cmdline: "slot-b/cmdline.txt" }],
    ["a prefix without / is a file-name prefix", "os_prefix=b-\nkernel=k\n", false, { osPrefix: "b-", kernel: "b-k", initramfs: null, cmdline: "b-cmdline.txt" }],
    ["the later value wins", "kernel=one\nkernel=two\nos_prefix=x/\nos_prefix=y/\n", false, { osPrefix: "y/", kernel: "y/two", initramfs: null, cmdline: "y/cmdline.txt" }],
    ["comments, CRLF and blank lines", "# kernel=no\r\n\r\n  kernel=k\r\n", false, { osPrefix: "", kernel: "k", initramfs: null, cmdline: "cmdline.txt" }],
    ["[none] never applies, [all] ends it", "kernel=k\n[none]\nkernel=trap\ncmdline=trap\n[all]\ncmdline=c\n", false,
      { osPrefix: "", kernel: "k", initramfs: null, cmdline: "c" }],
    ["model filters apply", "[pi4]\nkernel=k4\n[cm5]\nos_prefix=p/\n[all]\n", false, { osPrefix: "p/", kernel: "p/k4", initramfs: null, cmdline: "p/cmdline.txt" }],
    ["[tryboot] without the flag", "kernel=k\n[tryboot]\nkernel=t\n", false, { osPrefix: "", kernel: "k", initramfs: null, cmdline: "cmdline.txt" }],
    ["[tryboot] with the flag", "kernel=k\n[tryboot]\nkernel=t\n", true, { osPrefix: "", kernel: "t", initramfs: null, cmdline: "cmdline.txt" }],
    ["filters of different kinds must all hold", "kernel=k\n[pi4]\n[tryboot]\nkernel=t\n", false, { osPrefix: "", kernel: "k", initramfs: null, cmdline: "cmdline.txt" }],
    ["a model filter does not end [none]", "kernel=k\n[none]\n[pi4]\nkernel=t\n", false, { osPrefix: "", kernel: "k", initramfs: null, cmdline: "cmdline.txt" }],
  ];
  for (const [what, text, flag, want] of rows) {
    test(what, () => {
      const f = bootFiles(parseConfig(text, "config.txt", flag));
      expect({ osPrefix: f.osPrefix, kernel: f.kernel, initramfs: f.initramfs, cmdline: f.cmdline }).toEqual(want);
    });
  }

  const bad: [string, string, RegExp][] = [
    ["initramfs with =", "initramfs=initrd.img\n", /config.txt:1: 'initramfs=' is not a firmware setting/],
    ["spaces around =", "kernel = k\n", /config.txt:1: spaces around '='/],
    ["include", "include extra.txt\n", /config.txt:1: the emulator does not support include/],
    ["an unsupported filter", "kernel=k\n[gpio4=1]\n", /config.txt:2: .*filter \[gpio4=1\]/],
    ["a serial-number filter", "[0x12345678]\n", /filter \[0x12345678\]/],
    ["a bare word", "kernel=k\nfoo\n", /config.txt:2: cannot parse 'foo'/],
    ["an absolute os_prefix", "os_prefix=/slot-a/\n", /os_prefix '\/slot-a\/' starts with '\/'/],
  ];
  for (const [what, text, why] of bad) {
    test(`rejects ${what}`, () => {
      expect(() => bootFiles(parseConfig(text, "config.txt", false))).toThrow(ConfigError);
      expect(() => bootFiles(parseConfig(text, "config.txt", false))).toThrow(why);
    });
  }

  test("the cmdline is the file's first line, trimmed", () => {
    expect(cmdlineOf("console=ttyAMA0 zb.slot=a \nsecond line\n")).toBe("console=ttyAMA0 zb.slot=a");
    expect(cmdlineOf("")).toBe("");
  });
});

describe("console: how a boot ended", () => {
  const rows: [string, string, ReturnType<typeof endingOf>][] = [
    ["tryboot restart", "[    5.641475] reboot: Restarting system with command '0 tryboot'\r\n", { how: "reboot", command: "0 tryboot", tryboot: true, partition: 0 }],
    ["plain restart", "x\r\n[    9.1] reboot: Restarting system\r\n", { how: "reboot", command: null, tryboot: false, partition: 0 }],
    ["restart to a partition", "reboot: Restarting system with command '2'\n", { how: "reboot", command: "2", tryboot: false, partition: 2 }],
    ["'tryboot' without the space is not the flag", "reboot: Restarting system with command 'tryboot'\n", { how: "reboot", command: "tryboot", tryboot: false, partition: 0 }],
    ["panic", "[    1.96] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\r\n",
      { how: "panic", reason: "VFS: Unable to mount root fs on unknown-block(0,0)" }],
    ["power down", "ZB-BOOTFLOW-DONE\r\n[    7.2] reboot: Power down\r\n", { how: "poweroff" }],
    ["the last line wins", "reboot: Restarting system with command '0 tryboot'\nreboot: Power down\n", { how: "poweroff" }],
    ["nothing", "[    0.0] Booting Linux\n", { how: "unknown" }],
  ];
  for (const [what, text, want] of rows) test(what, () => expect(endingOf(text)).toEqual(want));

  test("markers and the initramfs failure reason", () => {
    const text = "[ 0.8] Initramfs unpacking failed: invalid magic at start of compressed archive\r\n" +
      "ZB-BOOTFLOW: init\r\nZB$ zb status\r\nZB| committed slot: a\r\nzbunlock: N9: count the boot\r\n" +
      "zb reboot: rebooting (\"0 tryboot\")\r\n[ 5.6] reboot: Restarting system\r\nnot a ZB marker\r\n";
    expect(markersOf(text)).toEqual(["ZB-BOOTFLOW: init", "ZB$ zb status", "ZB| committed slot: a", "zbunlock: N9: count the boot", "zb reboot: rebooting (\"0 tryboot\")"]);
    expect(initramfsFailure(text)).toBe("invalid magic at start of compressed archive");
    expect(initramfsFailure("")).toBeNull();
  });
});

describe("firmware.ts refuses to guess (real disk images, no QEMU)", () => {
  function sh(cmd: string[], stdin?: string): void {
    const p = Bun.spawnSync(cmd, { stdin: stdin === undefined ? "ignore" : Buffer.from(stdin), stderr: "pipe" });
    if (p.exitCode !== 0) throw new Error(`${cmd.join(" ")} exited ${p.exitCode}: ${p.stderr.toString()} (run .ci/setup)`);
  }
  /** A disk whose FAT holds config.txt and slot-a/ without a kernel. */
  function disk(dir: string, partitioned: boolean): string {
    const img = join(dir, "disk.img");
    writeFileSync(join(dir, "config.txt"), "os_prefix=slot-a/\nkernel=vmlinuz\n");
    let fat = img;
    if (partitioned) {
      sh(["truncate", "-s", "40M", img]);
      sh(["sfdisk", "-q", img], "label: dos\nstart=2048, type=c\n");
      sh(["mkfs.vfat", "--offset", "2048", img, String(39 * 1024)]);
      fat = `${img}@@${2048 * 512}`;
    } else sh(["mkfs.vfat", "-C", img, "8192"]);
    sh(["mmd", "-i", fat, "::/slot-a"]);
    sh(["mcopy", "-i", fat, join(dir, "config.txt"), "::/config.txt"]);
    return img;
  }
  function firmware(img: string, dir: string) {
    const p = Bun.spawnSync([process.execPath, resolve(ROOT, "qemu/firmware.ts"), "--disk", img, "--work", join(dir, "fw")], { stderr: "pipe" });
    return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString(), report: () => readFileSync(join(dir, "fw/report.jsonl"), "utf8") };
  }
  for (const partitioned of [true, false]) {
    test(`a kernel missing under os_prefix stops the emulator (${partitioned ? "MBR + FAT32 partition" : "bare FAT image"})`, () => {
      const dir = mkdtempSync(join(tmpdir(), "zb-fw-"));
      try {
        const r = firmware(disk(dir, partitioned), dir);
        expect(r.code).toBe(2);
        expect(r.out).toContain("FIRMWARE ERROR: config.txt selects the kernel 'slot-a/vmlinuz', which is not on the boot partition");
        const line = JSON.parse(r.report().trim());
        expect(line).toMatchObject({ boot: 1, tryboot: false, config: "config.txt", osPrefix: "slot-a/", kernel: "slot-a/vmlinuz", ended: "firmware-error" });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
  test("a disk without a FAT partition is an error", () => {
    const dir = mkdtempSync(join(tmpdir(), "zb-fw-"));
    try {
      const img = join(dir, "disk.img");
      sh(["truncate", "-s", "8M", img]);
      sh(["sfdisk", "-q", img], "label: dos\nstart=2048, type=83\n");
      const r = firmware(img, dir);
      expect(r.code).toBe(1);
      expect(r.err).toContain("the MBR has no FAT partition");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
