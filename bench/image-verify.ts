/**
 * Benchmark P1: `zb image verify` of a ~1 GiB image against
 * `openssl dgst -sha256` of the same file, page cache warm.
 *
 *   node_modules/.bin/bun bench/image-verify.ts [--runs N] [--zb PATH] [--size-mib N] [--encoding none|zstd] [--no-profile]
 *
 * The image: a realistic ext4 rootfs (system files hard-linked into a
 * staging folder, `mke2fs -d`, see image-fixture.ts) made into a `.zbi` with
 * `--encoding none`, so the image file itself is the rootfs size (1 GiB).
 * `zb image verify` checks the signature and then every chunk's SHA-256:
 * one SHA-256 pass over the image, the same work `openssl dgst -sha256`
 * does, which makes openssl the floor. Both read the file from the page
 * cache (it is read once before timing); commands alternate; medians count.
 *
 * Target: zb's speed ≥ 0.95 × openssl's (zb's median time ≤ openssl's / 0.95).
 * coreutils `sha256sum` is shown for reference (Debian 12's has no SHA-NI path).
 * On a miss, verify's loop is profiled per stage (image-profile.ts), with
 * what-ifs: fs.readSync chunk-aligned reads, and hashing on two threads.
 * Exit status 0 unless the benchmark could not run.
 */
import { join } from "node:path";
import { shaRate, verifyWhatIfs } from "./image-profile.ts";
import {
  buildRootfs, createZbi, die, GiB, machine, makeKeys, mbps, MiB, mustRun, peakRss, setBenchName, settleDisk, sha256File, table,
  timeAlternating, tool, warm, workDir, zbPath, countOption
} from "./image-fixture.ts";

setBenchName("image-verify bench");
const TARGET = 0.95;
const args = process.argv.slice(2);
const opt = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const RUNS = countOption(args, "--runs", 7, 3);
const SIZE = Number(opt("--size-mib") ?? 1024) * MiB;
const ENCODING = (opt("--encoding") ?? "none") as "none" | "zstd";
if (ENCODING !== "none" && ENCODING !== "zstd") die("--encoding must be none or zstd");
const ZB = zbPath(opt("--zb"));
const openssl = tool("openssl", "openssl");
const sha256sum = tool("sha256sum", "coreutils");

// rootfs (sparse, ~0.8 × SIZE on disk) + image (SIZE)
const work = workDir("zb-bench-verify-", 2.2 * SIZE + GiB);
try {
  console.log(`machine: ${machine()}`);
  console.log(`building a ${SIZE / MiB} MiB ext4 rootfs from system files …`);
  const rootfs = buildRootfs(work.dir, "rootfs", SIZE);
  console.log(`  ${rootfs.path}: ${(rootfs.filled / MiB).toFixed(0)} MiB of files from ${rootfs.sources.join(" ")} (${rootfs.seconds.toFixed(1)} s)`);
  const keys = makeKeys(ZB, work.dir);
  const img = createZbi(ZB, rootfs.path, keys, join(work.dir, "rootfs.zbi"), ENCODING);
  console.log(`  zb image create --encoding ${ENCODING}: ${img.path}: ${img.size} bytes (payload ${img.storedSize} stored, ${img.rawSize} raw) in ${img.seconds.toFixed(1)} s`);

  const commands = [
    { label: `openssl dgst -sha256 IMG`, cmd: [openssl, "dgst", "-sha256", img.path] },
    { label: `zb image verify IMG --trust DIR`, cmd: [ZB, "image", "verify", img.path, "--trust", keys.trust, "--progress=none"] },
    { label: `sha256sum IMG (coreutils, reference)`, cmd: [sha256sum, img.path] },
  ];
  for (const c of commands) console.log(`  $ ${c.cmd.join(" ")}`);

  // ---- check that the tools do the work (and warm the page cache)
  warm(img.path);
  const want = sha256File(img.path);
  const o = mustRun(commands[0]!.cmd, "openssl dgst");
  if (!o.out.includes(want)) die(`openssl printed ${o.out.trim()}, expected ${want}`);
  const { bytes: zbRss, result: z } = peakRss(commands[1]!.cmd);
  if (z.status !== 0 || !/OK/.test(z.out)) die(`zb image verify failed (exit ${z.status}): ${z.out.trim()} ${z.err.trim()}`);
  settleDisk();

  // ---- timing: page cache warm, no writes, so no settling between runs
  const [ossl, zb, coreutils] = timeAlternating(commands, RUNS, { settle: false });
  const speedRatio = ossl!.median / zb!.median; // zb speed / openssl speed
  const pass = speedRatio >= TARGET;

  console.log(`\nverify, page cache warm: ${img.size} bytes (${(img.size / MiB).toFixed(0)} MiB) image, ${RUNS} alternating runs each`);
  console.log(table([
    { label: commands[0]!.label, s: ossl!, bytes: img.size },
    { label: commands[1]!.label, s: zb!, bytes: img.size },
    { label: commands[2]!.label, s: coreutils!, bytes: img.size },
  ]));
  console.log(`zb image verify peak RSS (/usr/bin/time -v, untimed check run): ${(zbRss / MiB).toFixed(1)} MiB`);
  console.log(`speed zb/openssl (medians): ${speedRatio.toFixed(3)}x   target >= ${TARGET}x: ${pass ? "PASS" : "MISS"}`);
  let profile: Record<string, number> | null = null;
  if (!pass && !args.includes("--no-profile")) {
    console.log(`\nMISS: zb needs <= ${(ossl!.median / TARGET).toFixed(3)} s, it took ${zb!.median.toFixed(3)} s. Where the time goes (verify's loop re-run from source with a timer per stage, median of 3; image-profile.ts):`);
    console.log(`runtime SHA-256 rate (Bun.CryptoHasher, 4 MiB updates): ${shaRate().toFixed(0)} MB/s`);
    profile = await verifyWhatIfs(img.path, keys.trust, img.size, 3);
  }
  console.log(JSON.stringify({
    bench: "image-verify", date: new Date().toISOString(), machine: machine(), imageBytes: img.size, encoding: ENCODING, runs: RUNS,
    rootfsFilledBytes: rootfs.filled,
    opensslMedianS: +ossl!.median.toFixed(4), zbMedianS: +zb!.median.toFixed(4), sha256sumMedianS: +coreutils!.median.toFixed(4),
    opensslMBps: +mbps(img.size, ossl!.median).toFixed(1), zbMBps: +mbps(img.size, zb!.median).toFixed(1), sha256sumMBps: +mbps(img.size, coreutils!.median).toFixed(1),
    zbPeakRssMiB: +(zbRss / MiB).toFixed(1),
    ratio: +speedRatio.toFixed(3), target: TARGET, result: pass ? "PASS" : "MISS",
    ...(profile ? { profileMs: profile } : {}),
  }));
} finally {
  work.cleanup();
}
