/**
 * Benchmark: the start-up of the zb binary with and without JavaScriptCore's
 * JIT (BUN_JSC_useJIT=0, how initramfs-hooks/scripts/local-top/zb starts
 * zbunlock; lib/sys/jit.ts), against `cryptsetup --version`, the C program
 * the initramfs runs next.
 *
 *   node_modules/.bin/bun bench/zbunlock-start.ts [--runs N] [--zb PATH]
 *
 * hyperfine with --shell=none; every row goes through `env` (with a dummy
 * variable for the JIT row) so the exec of env is in all three alike. No
 * target of its own: the target is the QEMU figure of
 * `qemu/unlock.sh bench`, where a first start under TCG also pays for
 * translating every instruction it runs once (JIT-less start: fewer).
 * Exit status 0 unless the benchmark could not run.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const args = process.argv.slice(2);
const opt = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const runsArg = Number(opt("--runs") ?? 60);
const RUNS = Number.isInteger(runsArg) ? Math.max(20, runsArg) : die(`--runs must be a whole number, not ${opt("--runs")}`);
const ZB = opt("--zb") ?? join(import.meta.dir, "../dist/zb-x64");

function die(msg: string): never {
  console.error(`zbunlock-start bench: ${msg}`);
  process.exit(1);
}

const hyperfine = Bun.which("hyperfine") ?? die("hyperfine not found: run .ci/setup");
const cryptsetup = Bun.which("cryptsetup", { PATH: `${process.env.PATH}:/usr/sbin:/sbin` }) ?? die("cryptsetup not found: run .ci/setup");
if (!(await Bun.file(ZB).exists())) die(`${ZB} not found: run node_modules/.bin/bun build.ts --target x64`);

/** hyperfine -N still splits its command with shell-word rules: quote each argument. */
const shellQuote = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;
const rows = [
  { name: "zb version, JIT on", argv: ["env", "ZB_BENCH=1", ZB, "version"] },
  { name: "zb version, BUN_JSC_useJIT=0", argv: ["env", "BUN_JSC_useJIT=0", ZB, "version"] },
  { name: "cryptsetup --version", argv: ["env", "ZB_BENCH=1", cryptsetup, "--version"] },
].map((r) => ({ ...r, cmd: r.argv.map(shellQuote).join(" ") }));
// Both zb rows must print the same thing: the JIT-less binary is the same program.
for (const r of rows.slice(0, 2)) {
  const p = Bun.spawnSync(r.argv, { stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0 || !/^zb \d/.test(p.stdout.toString())) die(`${r.cmd} failed: ${p.stderr.toString().trim()}`);
}

const dir = mkdtempSync(join(tmpdir(), "zb-bench-start-"));
try {
  const json = join(dir, "hyperfine.json");
  console.log(`$ hyperfine -N -w 5 -r ${RUNS} ${rows.map((r) => shellQuote(r.cmd)).join(" ")}`); // as a shell would take it
  const h = Bun.spawnSync([hyperfine, "-N", "-w", "5", "-r", String(RUNS), "--export-json", json, ...rows.map((r) => r.cmd)], { stdout: "inherit", stderr: "inherit" });
  if (h.exitCode !== 0) die(`hyperfine exited ${h.exitCode}`);
  const results = (JSON.parse(readFileSync(json, "utf8")) as { results: { median: number; user: number; system: number }[] }).results;
  const ms = (s: number) => (s * 1000).toFixed(1);
  console.log("\n| command | median ms | user ms | system ms |\n|---|---:|---:|---:|");
  results.forEach((r, i) => console.log(`| ${rows[i]!.name} | ${ms(r.median)} | ${ms(r.user)} | ${ms(r.system)} |`));
  const [on, off, c] = results.map((r) => r.median) as [number, number, number];
  console.log(`\nJIT off / JIT on: ${(off / on).toFixed(2)} (start-up ${((1 - off / on) * 100).toFixed(0)} % shorter)`);
  console.log(`zb / cryptsetup: JIT on ${(on / c).toFixed(2)}×, JIT off ${(off / c).toFixed(2)}×`);
  console.log(JSON.stringify({ bench: "zbunlock-start", medianMs: { jitOn: +ms(on), jitOff: +ms(off), cryptsetup: +ms(c) }, jitOffOverOn: +(off / on).toFixed(3) }));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
