/**
 * Raspberry Pi firmware emulator for the QEMU aarch64 guest. Boots a raw disk
 * image the way the Pi firmware would, over and over until the guest powers
 * off:
 *
 *   1. find the first FAT partition in the MBR (or take the whole image when
 *      it is a bare FAT file system);
 *   2. read tryboot.txt if the tryboot flag is set and the file exists,
 *      config.txt otherwise, and clear the flag (it is one-shot);
 *   3. pick kernel, initramfs and cmdline file under os_prefix
 *      (firmware-config.ts); a file that is missing is an error, where the
 *      real firmware would silently drop the prefix;
 *   4. copy them off the FAT with mtools (no loop mounts) and boot QEMU with
 *      `-append` = the cmdline file's first line and `-no-reboot`, so every
 *      guest reset or panic ends the QEMU process;
 *   5. read how the boot ended from the console: "reboot: Restarting system
 *      with command '0 tryboot'" sets the flag for the next boot, any other
 *      restart or a kernel panic does not, "reboot: Power down" stops.
 *
 * Each boot is one JSON line in the report (--report) and a few lines of
 * transcript on stdout. After each boot the emulator also records the U-Boot
 * env pair zb/zb.env(.redund), read with the real fw_printenv, and whether
 * tryboot.txt exists, so a harness can follow the state boot by boot.
 *
 * Usage: bun qemu/firmware.ts --disk IMG --work DIR [--report FILE]
 *          [--max-boots N] [--timeout SECONDS]
 * Exit: 0 powered off (or halted), 1 usage or setup error, 2 firmware error
 * (bad config, missing boot file), 3 max boots reached, 4 a boot timed out or
 * ended in a way the emulator does not model.
 */
import { appendFileSync, existsSync, mkdirSync, openSync, readFileSync, readSync, closeSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { bootFiles, cmdlineOf, ConfigError, endingOf, initramfsFailure, markersOf, parseConfig, type BootFiles, type Ending } from "./firmware-config.ts";

interface Options { disk: string; work: string; report: string; maxBoots: number; timeout: number }

function usage(why: string): never {
  process.stderr.write(`firmware: ${why}\nusage: bun qemu/firmware.ts --disk IMG --work DIR [--report FILE] [--max-boots N] [--timeout SECONDS]\n`);
  process.exit(1);
}

function options(argv: string[]): Options {
  const o: Partial<Options> = { maxBoots: 10, timeout: Number(process.env.ZB_QEMU_TIMEOUT ?? 120) };
  for (let i = 0; i < argv.length; i += 2) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (v === undefined) usage(`${k} needs a value`);
    if (k === "--disk") o.disk = resolve(v);
    else if (k === "--work") o.work = resolve(v);
    else if (k === "--report") o.report = resolve(v);
    else if (k === "--max-boots" || k === "--timeout") {
      const n = Number(v);
      if (!Number.isInteger(n) || n <= 0) usage(`${k} must be a positive integer, not '${v}'`);
      if (k === "--max-boots") o.maxBoots = n;
      else o.timeout = n;
    } else usage(`unknown option '${k}'`);
  }
  if (!o.disk || !o.work) usage("--disk and --work are required");
  return { report: join(o.work, "report.jsonl"), ...o } as Options;
}

/** FAT types in an MBR partition entry: FAT12, FAT16 (<32M, ≥32M, LBA), FAT32 (CHS, LBA). */
const FAT_TYPES = new Set([0x01, 0x04, 0x06, 0x0e, 0x0b, 0x0c]);

/** Byte offset of the FAT file system the firmware would boot from. */
function fatOffset(disk: string): number {
  const s = Buffer.alloc(512);
  const fd = openSync(disk, "r");
  try { readSync(fd, s, 0, 512, 0); } finally { closeSync(fd); }
  if (s[510] !== 0x55 || s[511] !== 0xaa) throw new ConfigError(`${disk}: sector 0 has no 55 AA signature (neither an MBR nor a FAT boot sector)`);
  // A FAT boot sector starts with a jump and names its type at 0x36 (FAT12/16)
  // or 0x52 (FAT32); an MBR written by sfdisk has no boot code there.
  const jump = s[0] === 0xeb || s[0] === 0xe9;
  if (jump && [0x36, 0x52].some((at) => s.toString("latin1", at, at + 3) === "FAT")) return 0;
  for (let i = 0; i < 4; i++) {
    const e = 446 + 16 * i;
    if (FAT_TYPES.has(s[e + 4] ?? 0)) return s.readUInt32LE(e + 8) * 512;
  }
  throw new ConfigError(`${disk}: the MBR has no FAT partition (types ${[...FAT_TYPES].map((t) => t.toString(16)).join(",")})`);
}

/** One mtools command (mcopy, mdir …) on the boot FAT; returns its exit status. */
function mtools(tool: string, fat: string, args: string[]): number {
  return Bun.spawnSync([tool, "-i", fat, ...args], { stdout: "ignore", stderr: "ignore" }).exitCode ?? 1;
}

/** Copy FAT path `from` to host file `to`; false when it does not exist. */
function fetchFile(fat: string, from: string, to: string): boolean {
  rmSync(to, { force: true });
  return mtools("mcopy", fat, ["-n", `::/${from}`, to]) === 0 && existsSync(to);
}

function need(fat: string, what: string, from: string, to: string, config: string): void {
  if (!fetchFile(fat, from, to)) {
    throw new ConfigError(`${config} selects ${what} '${from}', which is not on the boot partition (the real firmware would ignore os_prefix; the emulator refuses to guess)`);
  }
}

/** The env pair as name → value, read with the real fw_printenv; null when absent. */
function envAfter(fat: string, dir: string): Record<string, string> | null {
  const a = join(dir, "zb.env"), b = join(dir, "zb.env.redund");
  if (!fetchFile(fat, "zb/zb.env", a) || !fetchFile(fat, "zb/zb.env.redund", b)) return null;
  writeFileSync(join(dir, "fw_env.config"), `${a} 0x0 0x4000\n${b} 0x0 0x4000\n`);
  const p = Bun.spawnSync(["fw_printenv", "-c", join(dir, "fw_env.config")], { stderr: "pipe" });
  if (p.exitCode !== 0) return { "(fw_printenv)": `exit ${p.exitCode}: ${p.stderr.toString().trim()}` };
  const env: Record<string, string> = {};
  for (const line of p.stdout.toString().split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return env;
}

const QEMU_BASE = ["qemu-system-aarch64", "-M", "virt", "-cpu", "max,pauth-impdef=on", "-smp", "2", "-m", "1024",
  "-nodefaults", "-nic", "none", "-display", "none", "-monitor", "none", "-no-reboot"];

/** Boot QEMU once; resolves with the seconds it ran, or null on timeout. */
async function runQemu(disk: string, dir: string, files: BootFiles, cmdline: string, timeout: number): Promise<number | null> {
  const args = [...QEMU_BASE, "-serial", `file:${join(dir, "console.log")}`, "-kernel", join(dir, "kernel"),
    ...(files.initramfs ? ["-initrd", join(dir, "initrd")] : []), "-append", cmdline,
    "-drive", `file=${disk},format=raw,if=none,id=d0`, "-device", "virtio-blk-device,drive=d0"];
  const t0 = performance.now();
  const q = Bun.spawn(args, { stdin: "ignore", stdout: "inherit", stderr: "inherit" });
  let timedOut = false;
  const timer = setTimeout(() => { timedOut = true; q.kill("SIGKILL"); }, timeout * 1000);
  const code = await q.exited;
  clearTimeout(timer);
  if (timedOut) return null;
  if (code !== 0) throw new Error(`qemu-system-aarch64 exited ${code} (see ${dir}/console.log)`);
  return (performance.now() - t0) / 1000;
}

const SHOWN = ["kernel_status", "zb_slot", "zb_try_slot", "zb_try_left", "zb_boot_count_a", "zb_boot_count_b", "zb_valid_a", "zb_valid_b", "zb_mode"];

/** Markers for the transcript: long command outputs (`ZB|` runs) cut to their start. */
function condensed(markers: string[], keep = 12): string[] {
  const shown: string[] = [];
  let run = 0;
  markers.forEach((m, i) => {
    run = m.startsWith("ZB|") ? run + 1 : 0;
    if (run <= keep) shown.push(m);
    const next = markers[i + 1];
    if (run > keep && !next?.startsWith("ZB|")) shown.push(`ZB| … ${run - keep} more lines (in the report and the console log)`);
  });
  return shown;
}

function describe(e: Ending | { how: "timeout" }): string {
  if (e.how === "reboot") return e.command === null ? "reboot" : `reboot '${e.command}'`;
  if (e.how === "panic") return `kernel panic (${e.reason})`;
  return e.how;
}

async function main(): Promise<number> {
  const o = options(process.argv.slice(2));
  const fat = `${o.disk}@@${fatOffset(o.disk)}`;
  mkdirSync(o.work, { recursive: true });
  writeFileSync(o.report, "");
  const all = join(o.work, "console.log");
  writeFileSync(all, "");
  const say = (s: string) => process.stdout.write(`${s}\n`);
  let tryboot = false; // the firmware starts cold: no flag
  for (let n = 1; n <= o.maxBoots; n++) {
    const dir = join(o.work, `boot-${n}`);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    const flag = tryboot;
    tryboot = false; // one-shot: cleared before the firmware goes on
    const record: Record<string, unknown> = { boot: n, tryboot: flag };
    const line = () => appendFileSync(o.report, JSON.stringify(record) + "\n");
    let files: BootFiles, cmdline: string;
    try {
      const config = flag && fetchFile(fat, "tryboot.txt", join(dir, "config")) ? "tryboot.txt" : "config.txt";
      record.config = config;
      if (config === "config.txt" && !fetchFile(fat, "config.txt", join(dir, "config"))) {
        throw new ConfigError("config.txt is not on the boot partition");
      }
      files = bootFiles(parseConfig(readFileSync(join(dir, "config"), "utf8"), config, flag));
      Object.assign(record, { osPrefix: files.osPrefix, kernel: files.kernel, initramfs: files.initramfs, cmdlineFile: files.cmdline });
      need(fat, "the kernel", files.kernel, join(dir, "kernel"), config);
      if (files.initramfs) need(fat, "the initramfs", files.initramfs, join(dir, "initrd"), config);
      need(fat, "the cmdline file", files.cmdline, join(dir, "cmdline"), config);
      cmdline = cmdlineOf(readFileSync(join(dir, "cmdline"), "utf8"));
      record.cmdline = cmdline;
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      Object.assign(record, { ended: "firmware-error", error: e.message });
      line();
      say(`firmware: boot ${n}: tryboot=${flag ? 1 : 0}: FIRMWARE ERROR: ${e.message}`);
      return 2;
    }
    say(`firmware: boot ${n}: tryboot=${flag ? 1 : 0} ${record.config} os_prefix=${files.osPrefix || "(none)"} kernel=${files.kernel} initramfs=${files.initramfs ?? "(none)"}`);
    say(`firmware:   cmdline: ${cmdline}`);
    const secs = await runQemu(o.disk, dir, files, cmdline, o.timeout);
    const text = existsSync(join(dir, "console.log")) ? readFileSync(join(dir, "console.log"), "utf8") : "";
    appendFileSync(all, `===== boot ${n}: tryboot=${flag ? 1 : 0} ${record.config} ${files.osPrefix} =====\n${text}`);
    const ending: Ending | { how: "timeout" } = secs === null ? { how: "timeout" } : endingOf(text);
    const markers = markersOf(text);
    const unpack = initramfsFailure(text);
    for (const m of condensed(markers)) say(`  | ${m}`);
    const env = envAfter(fat, dir);
    const trybootTxt = mtools("mdir", fat, ["-b", "::/tryboot.txt"]) === 0;
    Object.assign(record, {
      ended: ending.how, ...(ending.how === "reboot" ? { rebootCommand: ending.command } : {}),
      ...(ending.how === "panic" ? { panic: ending.reason } : {}), ...(unpack !== null ? { initramfsFailed: unpack } : {}),
      seconds: secs === null ? null : Math.round(secs * 10) / 10, markers, envAfter: env, trybootTxtAfter: trybootTxt,
    });
    line();
    say(`firmware:   -> ${describe(ending)}${secs === null ? ` after ${o.timeout} s: QEMU killed` : ` after ${secs.toFixed(1)} s`}` +
      (unpack !== null ? `; initramfs unpacking failed: ${unpack}` : ""));
    if (env) say(`firmware:   env after: ${SHOWN.map((k) => `${k}=${env[k] ?? ""}`).join(" ")}; tryboot.txt ${trybootTxt ? "present" : "absent"}`);
    if (ending.how === "poweroff" || ending.how === "halt") return 0;
    if (ending.how === "timeout" || ending.how === "unknown") {
      say(`firmware: stopping: boot ${n} ${ending.how === "timeout" ? "timed out" : "ended without a reboot, power-down or panic line"} (console: ${dir}/console.log)`);
      return 4;
    }
    if (ending.how === "reboot") {
      if (ending.partition > 1) {
        say(`firmware: stopping: reboot to partition ${ending.partition} is not emulated`);
        return 4;
      }
      tryboot = ending.tryboot;
    }
  }
  say(`firmware: stopping: ${o.maxBoots} boots without a power-down`);
  return 3;
}

main().then((code) => process.exit(code), (e: unknown) => {
  process.stderr.write(`firmware: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
