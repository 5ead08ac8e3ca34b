/**
 * Benchmark P3: peak RSS of `zb image install` for a 1 GiB and a 4 GiB
 * rootfs image (zstd, 4 MiB chunks), from the file and through a pipe. The engine streams in constant memory,
 * so both must stay under the budget and close to each other.
 *
 *   node_modules/.bin/bun bench/image-rss.ts [--runs N] [--zb PATH] [--sizes-mib 1024,4096] [--fill F]
 *
 * Each rootfs is a realistic ext4 image (system files, `mke2fs -d`, `--fill`
 * of it used, default 0.75; image-fixture.ts). Peak RSS is the kernel's
 * ru_maxrss reported by GNU time (`/usr/bin/time -v`, "Maximum resident
 * set size"); while it runs, /proc/PID/status of zb is sampled every 10 ms
 * for VmHWM and the split of the peak into RssAnon (heap, buffers) and
 * RssFile (the mapped zb binary). Several runs per size, since the peak
 * depends on when the garbage collector runs; the worst run counts.
 *
 * Each size is installed from the file and streamed through a pipe
 * (`cat IMG | zb image install - …`, the same engine reading stdin): GNU
 * time then runs the shell, whose ru_maxrss is its largest descendant's
 * (zb), and the sampler follows the shell's children to zb.
 *
 * Targets: peak RSS ≤ 96 MiB for both sizes and both ways in, and the 4 GiB
 * peak at most 8 MiB above the 1 GiB one (worst runs, from the file). For reference the table also has
 * `zb --version` (the runtime's floor) and `zb image verify` of each image.
 * The sizes are done one after another and each one's files are removed
 * before the next (peak disk use ~2.3 × the largest size).
 * Exit status 0 unless the benchmark could not run.
 */
import * as fs from "node:fs";
import { basename, join } from "node:path";
import { buildRootfs, createZbi, die, GiB, machine, makeKeys, MiB, scribble, setBenchName, settleDisk, sha256File, tool, warm, workDir, zbPath, type Keys, countOption, median } from "./image-fixture.ts";

setBenchName("image-rss bench");
const LIMIT = 96 * MiB;
const SPREAD = 8 * MiB;
const args = process.argv.slice(2);
const opt = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const RUNS = countOption(args, "--runs", 3, 1);
const SIZES = (opt("--sizes-mib") ?? "1024,4096").split(",").map((s) => Number(s) * MiB);
const FILL = Number(opt("--fill") ?? 0.75);
const ZB = zbPath(opt("--zb"));
const gnuTime = tool("time", "time");

interface Sample {
  /** ru_maxrss from GNU time, bytes. */
  maxRss: number;
  /** Highest VmHWM seen while sampling, and RssAnon/RssFile at the highest VmRSS sample. */
  hwm: number;
  anonAtPeak: number;
  fileAtPeak: number;
  samples: number;
  seconds: number;
  /** Highest RssAnon in each quarter of the run: growth or a saw-tooth. */
  anonByQuarter: number[];
}

function statusKb(text: string, key: string): number {
  const m = text.match(new RegExp(`^${key}:\\s+(\\d+) kB`, "m"));
  return m ? Number(m[1]) * 1024 : 0;
}

/** The pids of `pid`'s children. */
function children(pid: number): number[] {
  const kids = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, "latin1").trim();
  return kids ? kids.split(/\s+/).map(Number) : [];
}

/** The first descendant of `pid` (breadth first) whose command name is `comm`. */
function descendant(pid: number, comm: string): number {
  for (let queue = children(pid); queue.length > 0; ) {
    const p = queue.shift()!;
    try {
      if (fs.readFileSync(`/proc/${p}/comm`, "latin1").trim() === comm) return p;
      queue.push(...children(p));
    } catch {
      /* gone */
    }
  }
  return 0;
}

/**
 * Run `cmd` under GNU time, sampling the command's /proc/PID/status (with
 * `comm`: that of its descendant of that name, the zb of a shell pipeline).
 */
async function measure(cmd: string[], comm?: string): Promise<Sample> {
  const t0 = performance.now();
  const p = Bun.spawn([gnuTime, "-v", ...cmd], { stdout: "pipe", stderr: "pipe" });
  const errText = new Response(p.stderr).text();
  const outText = new Response(p.stdout).text();
  let child = 0;
  let hwm = 0;
  let peakRss = 0;
  let anonAtPeak = 0;
  let fileAtPeak = 0;
  let samples = 0;
  const timeline: [number, number][] = [];
  let exited = false;
  void p.exited.then(() => (exited = true));
  while (!exited) {
    try {
      if (!child) child = comm === undefined ? (children(p.pid)[0] ?? 0) : descendant(p.pid, comm);
      if (child) {
        const st = fs.readFileSync(`/proc/${child}/status`, "latin1");
        samples++;
        hwm = Math.max(hwm, statusKb(st, "VmHWM"));
        const rss = statusKb(st, "VmRSS");
        timeline.push([performance.now(), statusKb(st, "RssAnon")]);
        if (rss > peakRss) {
          peakRss = rss;
          anonAtPeak = statusKb(st, "RssAnon");
          fileAtPeak = statusKb(st, "RssFile");
        }
      }
    } catch {
      /* not started yet, or gone */
    }
    await Bun.sleep(10);
  }
  const code = await p.exited;
  const err = await errText;
  await outText;
  if (code !== 0) die(`${cmd.join(" ")} exited ${code}: ${err.trim()}`);
  const m = err.match(/Maximum resident set size \(kbytes\): (\d+)/) ?? die(`GNU time printed no maximum RSS: ${err.trim()}`);
  const q0 = timeline[0]?.[0] ?? 0;
  const span = Math.max(1, (timeline[timeline.length - 1]?.[0] ?? 0) - q0);
  const anonByQuarter = [0, 0, 0, 0];
  for (const [t, a] of timeline) {
    const k = Math.min(3, Math.floor(((t - q0) / span) * 4));
    anonByQuarter[k] = Math.max(anonByQuarter[k]!, a);
  }
  return { maxRss: Number(m[1]) * 1024, hwm, anonAtPeak, fileAtPeak, samples, seconds: (performance.now() - t0) / 1000, anonByQuarter };
}

const mib = (b: number) => (b / MiB).toFixed(1);
const largest = Math.max(...SIZES);
const work = workDir("zb-bench-rss-", 2.4 * largest + GiB);
interface Row {
  label: string;
  size: number;
  runs: Sample[];
}
try {
  console.log(`machine: ${machine()}`);
  const keys: Keys = makeKeys(ZB, work.dir);
  const rows: Row[] = [];
  const floor = [] as Sample[];
  for (let i = 0; i < RUNS; i++) floor.push(await measure([ZB, "--version"]));
  rows.push({ label: "zb --version (runtime floor)", size: 0, runs: floor });
  const installs: { size: number; worst: number; median: number; pipedWorst: number }[] = [];
  for (const size of SIZES) {
    const name = `rootfs-${size / MiB}M`;
    console.log(`building a ${size / MiB} MiB ext4 rootfs (${Math.round(FILL * 100)} % full) …`);
    const rootfs = buildRootfs(work.dir, name, size, FILL);
    const img = createZbi(ZB, rootfs.path, keys, join(work.dir, `${name}.zbi`), "zstd");
    const rawSha = sha256File(rootfs.path);
    fs.rmSync(rootfs.path);
    console.log(`  ${(rootfs.filled / MiB).toFixed(0)} MiB of files (${rootfs.seconds.toFixed(0)} s); image ${img.size} bytes (${mib(img.storedSize)} MiB stored, ${(size / img.storedSize).toFixed(2)}:1), made in ${img.seconds.toFixed(0)} s`);
    const target = join(work.dir, `${name}.target`);
    scribble(target, size);
    warm(img.path);
    const cmd = [ZB, "image", "install", img.path, "--payload", "rootfs", "--to", target, "--trust", keys.trust, "--progress=none"];
    console.log(`  $ /usr/bin/time -v ${cmd.join(" ")}`);
    const runs: Sample[] = [];
    for (let i = 0; i < RUNS; i++) {
      fs.rmSync(`${target}.zb-journal`, { force: true });
      settleDisk();
      runs.push(await measure(cmd));
    }
    if (sha256File(target) !== rawSha) die(`zb image install did not write the ${size / MiB} MiB rootfs`);
    rows.push({ label: `zb image install, ${size / MiB} MiB`, size, runs });
    // The same install streamed: stdin a pipe (payloads read with read(2) into the engine's buffers).
    const piped = ["sh", "-c", 'cat "$0" | "$@"', img.path, ...cmd.map((a) => (a === img.path ? "-" : a))];
    console.log(`  $ /usr/bin/time -v sh -c 'cat ${img.path} | ${cmd.map((a) => (a === img.path ? "-" : a)).join(" ")}'`);
    const pruns: Sample[] = [];
    scribble(target, size); // the check after the runs must see this way's bytes, not the file runs'
    for (let i = 0; i < RUNS; i++) {
      fs.rmSync(`${target}.zb-journal`, { force: true });
      settleDisk();
      pruns.push(await measure(piped, basename(ZB).slice(0, 15)));
    }
    if (sha256File(target) !== rawSha) die(`cat | zb image install - did not write the ${size / MiB} MiB rootfs`);
    rows.push({ label: `cat | zb image install -, ${size / MiB} MiB`, size, runs: pruns });
    const vruns: Sample[] = [];
    for (let i = 0; i < RUNS; i++) vruns.push(await measure([ZB, "image", "verify", img.path, "--trust", keys.trust, "--progress=none"]));
    rows.push({ label: `zb image verify, ${size / MiB} MiB`, size, runs: vruns });
    const sorted = runs.map((r) => r.maxRss).sort((a, b) => a - b);
    const psorted = pruns.map((r) => r.maxRss).sort((a, b) => a - b);
    installs.push({ size, worst: sorted[sorted.length - 1]!, median: median(sorted), pipedWorst: psorted[psorted.length - 1]! });
    fs.rmSync(img.path);
    fs.rmSync(target);
    fs.rmSync(`${target}.zb-journal`, { force: true });
  }

  console.log(`\npeak RSS, ${RUNS} runs each (GNU time ru_maxrss; RssAnon/RssFile: /proc/PID/status at the highest sampled VmRSS)`);
  console.log(`${"command".padEnd(36)} ${"runs (MiB)".padEnd(22)} ${"worst".padStart(7)} ${"median".padStart(7)} ${"anon".padStart(6)} ${"file".padStart(6)} ${"time s".padStart(7)}  anon max by quarter of the worst run`);
  for (const r of rows) {
    const by = [...r.runs].sort((a, b) => a.maxRss - b.maxRss);
    const worst = by[by.length - 1]!;
    console.log(`${r.label.padEnd(36)} ${r.runs.map((s) => mib(s.maxRss)).join(" ").padEnd(22)} ${mib(worst.maxRss).padStart(7)} ${mib(median(by.map((x) => x.maxRss))).padStart(7)} ${mib(worst.anonAtPeak).padStart(6)} ${mib(worst.fileAtPeak).padStart(6)} ${worst.seconds.toFixed(2).padStart(7)}  ${worst.anonByQuarter.map(mib).join(" ")}`);
  }
  const worstAll = Math.max(...installs.map((x) => Math.max(x.worst, x.pipedWorst)));
  const spread = installs.length > 1 ? installs[installs.length - 1]!.worst - installs[0]!.worst : 0;
  const passLimit = worstAll <= LIMIT;
  const passSpread = Math.abs(spread) <= SPREAD;
  for (const x of installs) {
    console.log(`install ${x.size / MiB} MiB: worst ${mib(x.worst)} MiB   target <= ${LIMIT / MiB} MiB: ${x.worst <= LIMIT ? "PASS" : "MISS"}`);
    console.log(`install ${x.size / MiB} MiB piped: worst ${mib(x.pipedWorst)} MiB   target <= ${LIMIT / MiB} MiB: ${x.pipedWorst <= LIMIT ? "PASS" : "MISS"}`);
  }
  if (installs.length > 1) console.log(`difference ${installs[installs.length - 1]!.size / MiB} MiB − ${installs[0]!.size / MiB} MiB (worst runs): ${spread >= 0 ? "+" : ""}${mib(spread)} MiB   target <= ${SPREAD / MiB} MiB: ${passSpread ? "PASS" : "MISS"}`);
  // One size alone measures no difference: the difference target is then not met, not passed.
  if (installs.length < 2) console.log("difference: not measured (one size given): the 8 MiB target needs two sizes");
  const pass = passLimit && passSpread && installs.length > 1;
  const verdict = pass ? "PASS" : !passLimit || !passSpread ? "MISS" : "INCOMPLETE";
  console.log(`overall: ${verdict}`);
  console.log(JSON.stringify({
    bench: "image-rss", date: new Date().toISOString(), machine: machine(), runs: RUNS, fill: FILL,
    floorMiB: +(Math.max(...floor.map((s) => s.maxRss)) / MiB).toFixed(1),
    installs: installs.map((x) => ({ rawBytes: x.size, worstMiB: +(x.worst / MiB).toFixed(1), medianMiB: +(x.median / MiB).toFixed(1), pipedWorstMiB: +(x.pipedWorst / MiB).toFixed(1) })),
    rows: rows.map((r) => ({ label: r.label, maxRssMiB: r.runs.map((s) => +(s.maxRss / MiB).toFixed(1)), anonByQuarterMiB: r.runs.map((s) => s.anonByQuarter.map((a) => +(a / MiB).toFixed(1))) })),
    limitMiB: LIMIT / MiB, spreadMiB: +(spread / MiB).toFixed(1), spreadLimitMiB: SPREAD / MiB,
    result: verdict,
  }));
} finally {
  work.cleanup();
}
