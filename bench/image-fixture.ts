/**
 * Shared set-up for the image benchmarks (image-verify, image-install,
 * image-rss, image-rauc, image-profile): a realistic ext4 rootfs, a key and
 * trust folder, `.zbi` images made by the real binary, and the timing
 * discipline every script uses.
 *
 * Not a benchmark itself; nothing here runs in the test suite.
 *
 * Timing discipline, and why (measured on the Firecracker/Docker VM these
 * figures come from):
 *  - Inputs are read once before timing (page cache warm for every tool).
 *  - The install target is one preallocated file, overwritten in place by
 *    every tool (zb opens it without O_TRUNC; the shell rows use `1<>FILE`,
 *    not `>FILE`). That is what a block-device slot is, and it avoids the
 *    two big noise sources of a fresh file here: truncating/unlinking 1 GiB
 *    frees its page cache, and the next writer then page-faults fresh guest
 *    memory from the host (4 MiB write() calls measured 0.7 ms or 11 ms
 *    depending on that alone), and the root file system is mounted with
 *    `discard`, so the freed blocks are trimmed behind the next run's back.
 *  - Before every timed run: `sync`, then wait until no block device has
 *    done any I/O for 1 s (dirty data of the previous run, discards).
 *  - Commands alternate (A B C A B C …) so drift hits all alike; the median
 *    is the figure.
 */
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { systemLibrary } from "../lib/sys/dlopen.ts";

export const MiB = 1 << 20;
export const GiB = 1 << 30;

let benchName = "image bench";
export function setBenchName(name: string): void {
  benchName = name;
}

export function die(msg: string): never {
  console.error(`${benchName}: ${msg}`);
  process.exit(1);
}

export function tool(name: string, pkg: string): string {
  return Bun.which(name) ?? Bun.which(name, { PATH: "/usr/sbin:/sbin:/usr/bin:/bin" }) ?? die(`${name} not found: apt-get install -y ${pkg}`);
}

export interface RunResult {
  status: number;
  out: string;
  err: string;
  seconds: number;
}

export function run(cmd: string[], opts: { env?: Record<string, string | undefined>; stdin?: "ignore" | "inherit" } = {}): RunResult {
  const t0 = performance.now();
  const p = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe", stdin: opts.stdin ?? "ignore", ...(opts.env ? { env: opts.env } : {}) });
  return {
    status: p.exitCode ?? -1,
    out: p.stdout.toString("latin1"),
    err: p.stderr.toString("latin1"),
    seconds: (performance.now() - t0) / 1000,
  };
}

export function mustRun(cmd: string[], what: string, opts: Parameters<typeof run>[1] = {}): RunResult {
  const r = run(cmd, opts);
  if (r.status !== 0) die(`${what} failed (exit ${r.status}): ${cmd.join(" ")}\n${r.err.trim()}${r.out.trim() ? "\n" + r.out.trim() : ""}`);
  return r;
}

/** Quote for a `bash -c` command line. */
export function q(s: string): string {
  return /^[\w./@%+=:,-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

// ---------------------------------------------------------------- work dir

export interface WorkDir {
  dir: string;
  cleanup(): void;
}

/**
 * A temp folder on a real disk with at least `needBytes` free; removed on
 * exit, Ctrl-C or SIGTERM (cleanup() is idempotent). `cleanups` run first
 * (e.g. stopping a service the script started).
 */
export function workDir(prefix: string, needBytes: number, parent = process.env.ZB_BENCH_DIR ?? tmpdir(), cleanups: (() => void)[] = []): WorkDir {
  const st = fs.statfsSync(parent);
  const free = Number(st.bavail) * Number(st.bsize);
  if (free < needBytes) die(`${parent} has ${(free / GiB).toFixed(1)} GiB free, this benchmark needs ${(needBytes / GiB).toFixed(1)} GiB (set ZB_BENCH_DIR to another folder)`);
  const dir = fs.mkdtempSync(join(parent, prefix));
  let done = false;
  const cleanup = () => {
    if (done) return;
    done = true;
    for (const c of cleanups) {
      try {
        c();
      } catch {
        /* best effort */
      }
    }
    // A file vanishing under rmSync (a socket its daemon removes on exit)
    // can end Bun's recursive rm early without an error: retry, then check.
    for (let i = 0; i < 3 && fs.existsSync(dir); i++) fs.rmSync(dir, { recursive: true, force: true });
    if (fs.existsSync(dir)) console.error(`${benchName}: could not remove ${dir}; remove it by hand`);
  };
  process.on("exit", cleanup);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(sig, () => {
      cleanup();
      process.exit(130);
    });
  }
  return { dir, cleanup };
}

// ---------------------------------------------------------------- rootfs

/**
 * Folders a Debian-like rootfs is made of, in the order they are taken. Each
 * is hard-linked into a staging folder (cp -al: no data copied) while it
 * fits the budget; the staging folder becomes the ext4 image (mke2fs -d).
 */
const ROOTFS_SOURCES = [
  "/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/python3.11", "/usr/lib/python3",
  "/usr/lib/gcc", "/usr/lib/systemd", "/usr/lib/git-core", "/usr/lib/apt", "/usr/lib/locale", "/usr/share/doc", "/usr/share/man",
  "/usr/share/zoneinfo", "/usr/share/perl", "/usr/share/vim", "/usr/share/i18n", "/usr/share/locale", "/usr/share/icons",
  "/usr/share/misc", "/usr/share/mime", "/usr/share/common-licenses", "/usr/lib/llvm-14", "/usr/lib/jvm", "/usr/share/fonts",
  "/usr/share/cmake-3.25", "/usr/share/pocketsphinx", "/usr/share/package-lists", "/usr/include", "/usr/libexec", "/usr/local",
  "/usr/share/AAVMF", "/usr/share", "/usr/lib", "/etc", "/var/lib/dpkg",
];

export interface Rootfs {
  path: string;
  size: number;
  /** Bytes of file data put in. */
  filled: number;
  sources: string[];
  seconds: number;
}

function duBytes(path: string): number {
  const r = run(["du", "-sb", path]);
  const n = parseInt(r.out, 10);
  return Number.isFinite(n) ? n : 0;
}

/**
 * An ext4 image of `size` bytes whose files take about `fill` of it: real
 * binaries, libraries, documentation — chunks compress to varied sizes, as a
 * real rootfs does. Free blocks stay holes (the image file is sparse).
 */
export function buildRootfs(dir: string, name: string, size: number, fill = 0.75): Rootfs {
  const t0 = performance.now();
  const mke2fs = tool("mke2fs", "e2fsprogs");
  const stage = join(dir, `${name}.stage`);
  fs.mkdirSync(stage);
  const budget = size * fill;
  let filled = 0;
  const sources: string[] = [];
  const taken = new Set<string>();
  for (const src of ROOTFS_SOURCES) {
    if (!fs.existsSync(src) || [...taken].some((t) => src.startsWith(t + "/") || t.startsWith(src + "/"))) continue;
    const n = duBytes(src);
    if (n === 0 || filled + n > budget) continue;
    const dest = join(stage, src.replace(/^\//, "").replace(/\//g, "_"));
    if (run(["cp", "-al", src, dest]).status !== 0) {
      fs.rmSync(dest, { recursive: true, force: true });
      if (run(["cp", "-a", src, dest]).status !== 0) {
        fs.rmSync(dest, { recursive: true, force: true });
        continue;
      }
    }
    filled += n;
    sources.push(src);
    taken.add(src);
  }
  if (filled < size * 0.2) die(`could not find ${(size * 0.2 / MiB).toFixed(0)} MiB of system files to fill the rootfs (found ${(filled / MiB).toFixed(0)} MiB)`);
  const path = join(dir, `${name}.img`);
  const r = run([mke2fs, "-q", "-t", "ext4", "-F", "-E", "root_owner=0:0", "-L", "rootfs", "-d", stage, path, String(size / 1024) + "k"]);
  fs.rmSync(stage, { recursive: true, force: true });
  if (r.status !== 0) die(`mke2fs -d failed: ${r.err.trim()}`);
  return { path, size, filled, sources, seconds: (performance.now() - t0) / 1000 };
}

// ---------------------------------------------------------------- zb

export function zbPath(arg: string | undefined): string {
  const zb = arg ?? join(import.meta.dir, "../dist/zb-x64");
  if (!fs.existsSync(zb)) die(`${zb} not found: run node_modules/.bin/bun build.ts --target x64`);
  return zb;
}

export interface Keys {
  key: string;
  trust: string;
}

export function makeKeys(zb: string, dir: string): Keys {
  const key = join(dir, "bench.key");
  const trust = join(dir, "trust");
  mustRun([zb, "key", "gen", "--alg", "ed25519", "-o", key], "zb key gen");
  fs.mkdirSync(trust);
  fs.copyFileSync(`${key}.pub`, join(trust, "bench.pub"));
  return { key, trust };
}

export interface Zbi {
  path: string;
  size: number;
  storedSize: number;
  rawSize: number;
  /** Where the rootfs payload's bytes start in the file. */
  dataOffset: number;
  seconds: number;
}

export function createZbi(zb: string, rootfs: string, keys: Keys, out: string, encoding: "zstd" | "none", level?: number): Zbi {
  const cmd = [zb, "image", "create", "--compatible", "bench", "--version", "1", "--serial", "1", "--rootfs", rootfs, "--key", keys.key, "-o", out, "--encoding", encoding, "--progress=none"];
  if (level !== undefined) cmd.push("--level", String(level));
  const r = mustRun(cmd, "zb image create");
  const entries = tarEntries(out);
  const p = entries.find((e) => e.name === "rootfs") ?? die(`${out} has no rootfs entry`);
  return { path: out, size: fs.statSync(out).size, storedSize: p.size, rawSize: fs.statSync(rootfs).size, dataOffset: p.dataOffset, seconds: r.seconds };
}

/** The ustar entries of a .zbi (name, size, data offset): plain ustar, as zb writes it. */
export function tarEntries(path: string): { name: string; size: number; dataOffset: number }[] {
  const fd = fs.openSync(path, "r");
  try {
    const out: { name: string; size: number; dataOffset: number }[] = [];
    const total = fs.fstatSync(fd).size;
    const h = Buffer.alloc(512);
    for (let at = 0; at + 512 <= total; ) {
      fs.readSync(fd, h, 0, 512, at);
      if (h[0] === 0) break;
      const name = h.subarray(0, 100).toString("latin1").replace(/\0.*$/s, "");
      const size = parseInt(h.subarray(124, 136).toString("latin1").replace(/[\0 ]+$/, ""), 8);
      out.push({ name, size, dataOffset: at + 512 });
      at += 512 + Math.ceil(size / 512) * 512;
    }
    return out;
  } finally {
    fs.closeSync(fd);
  }
}

/** Copy `length` bytes of `src` from `offset` into a new file. */
export function extractRange(src: string, offset: number, length: number, dest: string): void {
  const i = fs.openSync(src, "r");
  const o = fs.openSync(dest, "w");
  try {
    const buf = new Uint8Array(4 * MiB);
    let done = 0;
    while (done < length) {
      const n = fs.readSync(i, buf, 0, Math.min(buf.length, length - done), offset + done);
      if (n <= 0) die(`${src} ends early`);
      let w = 0;
      while (w < n) w += fs.writeSync(o, buf, w, n - w);
      done += n;
    }
  } finally {
    fs.closeSync(i);
    fs.closeSync(o);
  }
}

// ---------------------------------------------------------------- files

/** Read files once, so every tool starts with them in the page cache. */
export function warm(...paths: string[]): void {
  const buf = new Uint8Array(4 * MiB);
  for (const p of paths) {
    const fd = fs.openSync(p, "r");
    try {
      while (fs.readSync(fd, buf, 0, buf.length, null) > 0);
    } finally {
      fs.closeSync(fd);
    }
  }
}

/** Write `size` bytes of a non-rootfs pattern over `path` in place (creating it if needed), then fsync. */
export function scribble(path: string, size: number, seed = 0x5a): void {
  const fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  try {
    const buf = new Uint8Array(4 * MiB);
    for (let i = 0; i < buf.length; i++) buf[i] = (i * 131 + seed) & 0xff;
    for (let at = 0; at < size; ) {
      const n = Math.min(buf.length, size - at);
      let w = 0;
      while (w < n) w += fs.writeSync(fd, buf, w, n - w, null);
      at += n;
    }
    fs.ftruncateSync(fd, size);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export function sha256File(path: string): string {
  const h = new Bun.CryptoHasher("sha256");
  const fd = fs.openSync(path, "r");
  try {
    const buf = new Uint8Array(4 * MiB);
    let n: number;
    while ((n = fs.readSync(fd, buf, 0, buf.length, null)) > 0) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest("hex");
}

// ---------------------------------------------------------------- disk quiet

function diskCounters(): string {
  // reads, writes, in flight, discards, flushes of every real block device
  return fs
    .readFileSync("/proc/diskstats", "latin1")
    .split("\n")
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 14 && !/^(loop|ram|zram)/.test(f[2]!))
    .map((f) => [f[3], f[7], f[11], f[14] ?? "", f[18] ?? ""].join(","))
    .join(";");
}

/** `sync`, then wait until no block device did I/O for `quietMs` (at most `maxMs`). */
export function settleDisk(quietMs = 1000, maxMs = 30000): number {
  const t0 = performance.now();
  run(["sync"]);
  let last = diskCounters();
  let quietSince = performance.now();
  while (performance.now() - quietSince < quietMs && performance.now() - t0 < maxMs) {
    Bun.sleepSync(100);
    const now = diskCounters();
    if (now !== last) {
      last = now;
      quietSince = performance.now();
    }
  }
  return performance.now() - t0;
}

// ---------------------------------------------------------------- timing

export interface Command {
  label: string;
  cmd: string[];
  /** Untimed, before every run (e.g. remove the journal). */
  prepare?: () => void;
}

export interface Stats {
  runs: number;
  median: number;
  mean: number;
  min: number;
  max: number;
}

/** [offset, length] of each zstd frame in `bytes` (ZSTD_findFrameCompressedSize of the system's libzstd). */
export function zstdFrames(bytes: Uint8Array): [number, number][] {
  const { dlopen, FFIType, ptr } = require("bun:ffi") as typeof import("bun:ffi");
  const lib = systemLibrary("libzstd.so.1") ?? die("libzstd.so.1 not found: apt-get install -y libzstd1");
  const { symbols } = dlopen(lib, { ZSTD_findFrameCompressedSize: { args: [FFIType.ptr, FFIType.u64], returns: FFIType.u64 } });
  const out: [number, number][] = [];
  for (let o = 0; o < bytes.length; ) {
    const n = Number(symbols.ZSTD_findFrameCompressedSize(ptr(bytes, o), bytes.length - o));
    out.push([o, n]);
    o += n;
  }
  return out;
}

export function stats(times: number[]): Stats {
  const s = [...times].sort((x, y) => x - y);
  return { runs: s.length, median: median(s), mean: s.reduce((x, y) => x + y, 0) / s.length, min: s[0]!, max: s[s.length - 1]! };
}

/** The median (the mean of the two middle values for an even count). */
export function median(values: readonly number[]): number {
  const s = [...values].sort((x, y) => x - y);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/**
 * A `--runs N`-style whole-number option: the default when absent, the
 * script stops (exit 2) when it is not a whole number of at least `min`
 * (a NaN would make every median NaN and the table meaningless).
 */
export function countOption(args: readonly string[], name: string, dflt: number, min: number): number {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const text = args[i + 1] ?? "";
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < min) die(`${name} ${JSON.stringify(text)}: give a whole number of at least ${min}`);
  return n;
}

/**
 * `runs` alternating rounds over `commands`; each run is preceded by its
 * prepare step and a settled disk; wall time of the process.
 */
export function timeAlternating(commands: Command[], runs: number, opts: { settle?: boolean; log?: boolean } = {}): Stats[] {
  const times: number[][] = commands.map(() => []);
  for (let r = 0; r < runs; r++) {
    commands.forEach((c, j) => {
      c.prepare?.();
      if (opts.settle !== false) settleDisk();
      const res = run(c.cmd);
      if (res.status !== 0) die(`${c.label} exited ${res.status} during timing: ${res.err.trim()}`);
      times[j]!.push(res.seconds);
      if (opts.log) process.stderr.write(`  run ${r + 1}/${runs} ${c.label}: ${res.seconds.toFixed(3)} s\n`);
    });
  }
  return times.map((t) => stats(t));
}

/**
 * Peak RSS of a command (GNU time's "Maximum resident set size", the
 * kernel's ru_maxrss of that process), in bytes.
 */
export function peakRss(cmd: string[]): { bytes: number; result: RunResult } {
  const gnuTime = tool("time", "time");
  const r = run([gnuTime, "-v", ...cmd]);
  const m = r.err.match(/Maximum resident set size \(kbytes\): (\d+)/);
  if (!m) die(`/usr/bin/time -v printed no maximum RSS for ${cmd.join(" ")}: ${r.err.trim()}`);
  return { bytes: Number(m[1]) * 1024, result: r };
}

// ---------------------------------------------------------------- output

export function machine(): string {
  const cpu = (fs.readFileSync("/proc/cpuinfo", "latin1").match(/model name\s*:\s*(.*)/) ?? [])[1] ?? "?";
  const cores = fs.readFileSync("/proc/cpuinfo", "latin1").split("\n").filter((l) => l.startsWith("processor")).length;
  const mem = Number((fs.readFileSync("/proc/meminfo", "latin1").match(/MemTotal:\s*(\d+)/) ?? [])[1] ?? 0) * 1024;
  const shaNi = /\bsha_ni\b/.test(fs.readFileSync("/proc/cpuinfo", "latin1"));
  return `${cpu}, ${cores} cores${shaNi ? " (SHA-NI)" : ""}, ${(mem / GiB).toFixed(0)} GiB RAM, kernel ${fs.readFileSync("/proc/sys/kernel/osrelease", "latin1").trim()}`;
}

export const mbps = (bytes: number, seconds: number) => bytes / seconds / 1e6;
export const fmtS = (s: number) => s.toFixed(3).padStart(8);
export const fmtMiB = (b: number) => `${(b / MiB).toFixed(1)} MiB`;

export function table(rows: { label: string; s: Stats; bytes: number; extra?: string }[], labelWidth = 44): string {
  const head = `${"command".padEnd(labelWidth)} ${"runs".padStart(4)} ${"median s".padStart(8)} ${"min s".padStart(8)} ${"max s".padStart(8)} ${"MB/s".padStart(7)}`;
  const lines = rows.map(({ label, s, bytes, extra }) =>
    `${label.padEnd(labelWidth)} ${String(s.runs).padStart(4)} ${fmtS(s.median)} ${fmtS(s.min)} ${fmtS(s.max)} ${mbps(bytes, s.median).toFixed(0).padStart(7)}${extra ? "  " + extra : ""}`);
  return [head, ...lines].join("\n");
}
