/**
 * Benchmark: `zb env print` against libubootenv's `fw_printenv` on the same
 * env, cold (a new process per run; the page cache is not dropped).
 *
 *   node_modules/.bin/bun bench/env-print.ts [--runs N] [--zb PATH] [--no-hyperfine]
 *
 * The env is a realistic 16 KiB redundant pair (CONFIG_ENV_SIZE 0x4000, the
 * RPi default, envspec.md §1.1) with 40 variables, made by mkenvimage -r and
 * then written once by the real fw_setenv, so the copies differ in flag and
 * content as on a device. Both commands must print the same text first, or the
 * timing would compare different work.
 *
 * Timing uses hyperfine with --shell=none (no shell start-up in either
 * figure) when it is installed, else Bun.spawnSync wall time, alternating the
 * two commands so drift hits both alike. Target: median zb ≤ 4 × median
 * fw_printenv. A benchmark never fails a test run; the exit status is 0 unless
 * the benchmark could not be run (missing tool, outputs differ).
 *
 * A third row times the floor of any Bun program: a compiled hello-world
 * built with the same options as dist/zb-x64 (bytecode, no config autoload).
 * zb minus that floor is what zb's own code costs; the floor over fw_printenv
 * is what the runtime costs, and no code of ours can go below it.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, copyFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { countOption, setBenchName, die } from "./image-fixture.ts";

setBenchName("env-print bench");

const TARGET = 4;
const SIZE = 0x4000;
const args = process.argv.slice(2);
const opt = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const RUNS = countOption(args, "--runs", 30, 20);
const ZB = opt("--zb") ?? join(import.meta.dir, "../dist/zb-x64");

function tool(name: string, pkg: string): string {
  return Bun.which(name) ?? die(`${name} not found: run .ci/setup (installs ${pkg})`);
}

/** hyperfine -N still splits its command with shell-word rules: quote each argument. */
function shellQuote(s: string): string {
  return `'${s.replace(/'/g, "'\\''")}'`;
}

function run(cmd: string[]): { status: number; out: string; err: string } {
  const p = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  return { status: p.exitCode ?? -1, out: p.stdout.toString("latin1"), err: p.stderr.toString("latin1") };
}

const fwPrintenv = tool("fw_printenv", "libubootenv-tool");
const fwSetenv = tool("fw_setenv", "libubootenv-tool");
const mkenvimage = tool("mkenvimage", "u-boot-tools");
if (!(await Bun.file(ZB).exists())) die(`${ZB} not found: run node_modules/.bin/bun build.ts --target x64`);

// ---- the env: the variables a Pi running zb/snapd-style A/B boot carries.
const vars: [string, string][] = [
  ["arch", "arm"], ["baudrate", "115200"], ["board", "rpi"], ["board_name", "4 Model B"],
  ["board_rev", "0x11"], ["board_revision", "0xC03111"], ["bootcmd", "run distro_bootcmd"],
  ["bootcount", "0"], ["bootdelay", "2"], ["bootlimit", "3"],
  ["bootargs", "coherent_pool=1M 8250.nr_uarts=1 console=ttyS0,115200 console=tty1 root=/dev/mmcblk0p2 rootfstype=ext4 rootwait quiet"],
  ["cpu", "armv8"], ["dhcpuboot", "usb start; dhcp u-boot.uimg; bootm"], ["ethaddr", "dc:a6:32:01:02:03"],
  ["fdt_addr", "2eff8e00"], ["fdt_addr_r", "0x02600000"], ["fdt_high", "ffffffffffffffff"],
  ["fdtcontroladdr", "3af3b8b0"], ["fdtfile", "broadcom/bcm2711-rpi-4-b.dtb"], ["initrd_high", "ffffffffffffffff"],
  ["kernel_addr_r", "0x00080000"], ["kernel_status", ""], ["loadaddr", "0x1000000"],
  ["pxefile_addr_r", "0x02500000"], ["ramdisk_addr_r", "0x02700000"], ["scriptaddr", "0x02400000"],
  ["serial#", "10000000a1b2c3d4"], ["snap_kernel", "pi-kernel_806.snap"], ["snap_try_kernel", ""],
  ["snapd_recovery_mode", "run"], ["snapd_recovery_system", "20240315"], ["soc", "bcm283x"],
  ["stderr", "serial,vidconsole"], ["stdin", "serial,usbkbd"], ["stdout", "serial,vidconsole"],
  ["upgrade_available", "0"], ["vendor", "raspberrypi"], ["zb_rootfs_a", "PARTLABEL=rootfs-a"],
  ["zb_rootfs_b", "PARTLABEL=rootfs-b"], ["zb_slot", "a"],
];

const dir = mkdtempSync(join(tmpdir(), "zb-bench-env-"));
try {
  const input = join(dir, "vars.txt");
  writeFileSync(input, vars.map(([k, v]) => `${k}=${v}\n`).join(""));
  const a = join(dir, "uboot.env");
  const b = join(dir, "uboot-redund.env");
  if (run([mkenvimage, "-r", "-s", String(SIZE), "-o", a, input]).status !== 0) die("mkenvimage failed");
  copyFileSync(a, b);
  const cfg = join(dir, "fw_env.config");
  writeFileSync(cfg, `${a} 0x0 0x${SIZE.toString(16)}\n${b} 0x0 0x${SIZE.toString(16)}\n`);
  if (run([fwSetenv, "-c", cfg, "bootcount", "1"]).status !== 0) die("fw_setenv failed");
  const bytes = readFileSync(a).length + readFileSync(b).length;

  const floor = await buildFloor(dir);
  const commands = [
    { label: "fw_printenv -c CFG", cmd: [fwPrintenv, "-c", cfg] },
    { label: "zb env print -c CFG", cmd: [ZB, "env", "print", "-c", cfg] },
    { label: "bun floor (hello)", cmd: [floor] },
  ];
  const [fw, zb] = commands.map((c) => run(c.cmd));
  if (fw!.status !== 0) die(`fw_printenv exited ${fw!.status}: ${fw!.err.trim()}`);
  if (zb!.status !== 0) die(`zb env print exited ${zb!.status}: ${zb!.err.trim()}`);
  if (zb!.out !== fw!.out) die("zb env print and fw_printenv print different text; not timing different work");
  const lines = fw!.out.split("\n").filter(Boolean).length;

  // ---- timing
  let method: string;
  let times: number[][]; // seconds, per command
  const hyperfine = args.includes("--no-hyperfine") ? null : Bun.which("hyperfine");
  if (hyperfine) {
    method = `hyperfine -N --runs ${RUNS} --warmup 0`;
    const json = join(dir, "hyperfine.json");
    const h = run([hyperfine, "-N", "--runs", String(RUNS), "--warmup", "0", "--style", "none", "--export-json", json,
      ...commands.map((c) => c.cmd.map(shellQuote).join(" "))]);
    if (h.status !== 0) die(`hyperfine exited ${h.status}: ${h.err.trim()}`);
    const results = (JSON.parse(readFileSync(json, "utf8")) as { results: { times: number[] }[] }).results;
    times = results.map((r) => r.times);
  } else {
    method = `Bun.spawnSync wall time, ${RUNS} alternating runs`;
    times = commands.map(() => []);
    for (let i = 0; i < RUNS; i++) {
      commands.forEach((c, j) => {
        const t0 = performance.now();
        const p = Bun.spawnSync(c.cmd, { stdout: "ignore", stderr: "ignore" });
        times[j]!.push((performance.now() - t0) / 1000);
        if (p.exitCode !== 0) die(`${c.label} exited ${p.exitCode} during timing`);
      });
    }
  }

  const stats = times.map((t) => {
    const s = [...t].sort((x, y) => x - y);
    const mid = s.length >> 1;
    const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
    return { runs: s.length, median, mean: s.reduce((x, y) => x + y, 0) / s.length, min: s[0]!, max: s[s.length - 1]! };
  });
  const ratio = stats[1]!.median / stats[0]!.median;
  const pass = ratio <= TARGET;

  const ms = (s: number) => (s * 1000).toFixed(2).padStart(9);
  console.log(`env print, cold: ${bytes / 2 / 1024} KiB redundant pair, ${lines} variables; ${method}`);
  console.log(`${"command".padEnd(22)} ${"runs".padStart(5)} ${"median ms".padStart(9)} ${"mean ms".padStart(9)} ${"min ms".padStart(9)} ${"max ms".padStart(9)}`);
  commands.forEach((c, i) => {
    const s = stats[i]!;
    console.log(`${c.label.padEnd(22)} ${String(s.runs).padStart(5)} ${ms(s.median)} ${ms(s.mean)} ${ms(s.min)} ${ms(s.max)}`);
  });
  console.log(`ratio zb/fw_printenv (medians): ${ratio.toFixed(2)}x   target <= ${TARGET}x: ${pass ? "PASS" : "MISS"}`);
  const floorRatio = stats[2]!.median / stats[0]!.median;
  const own = (stats[1]!.median - stats[2]!.median) * 1000;
  console.log(`bun runtime floor/fw_printenv: ${floorRatio.toFixed(2)}x; zb's own work above the floor: ${own.toFixed(2)} ms`);
  console.log(JSON.stringify({
    bench: "env-print", method, envSize: SIZE, redundant: true, variables: lines, runs: RUNS,
    fwPrintenvMedianMs: +(stats[0]!.median * 1000).toFixed(3), zbMedianMs: +(stats[1]!.median * 1000).toFixed(3),
    ratio: +ratio.toFixed(3), target: TARGET, result: pass ? "PASS" : "MISS",
    bunFloorMedianMs: +(stats[2]!.median * 1000).toFixed(3), floorRatio: +floorRatio.toFixed(3),
  }));
} finally {
  rmSync(dir, { recursive: true, force: true });
}

/** Compile a hello-world with dist/zb-x64's options: the cost of starting any Bun binary. */
async function buildFloor(dir: string): Promise<string> {
  const src = join(dir, "hello.ts");
  const outfile = join(dir, "hello");
  writeFileSync(src, 'import { writeSync } from "node:fs";\nwriteSync(1, "hello\\n");\n');
  const r = await Bun.build({
    entrypoints: [src],
    minify: true,
    bytecode: true,
    compile: { target: "bun-linux-x64", outfile, autoloadBunfig: false, autoloadDotenv: false, autoloadTsconfig: false, autoloadPackageJson: false },
  });
  if (!r.success) die("cannot compile the hello-world floor");
  return outfile;
}
