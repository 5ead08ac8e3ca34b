/**
 * How much zstd decompression on one core slows down while the other core
 * streams memory: the question behind P2 (image-install.ts), where the main
 * thread decompresses into a 3-slot ring of 4 MiB chunks and a worker hashes
 * (and writes) each slot on the other core.
 *
 *   node_modules/.bin/bun bench/decode-contention.ts [--size-mib N] [--zb PATH]
 *
 * Builds the realistic rootfs and `.zbi` of the image benchmarks, cuts out the
 * rootfs payload's zstd frames and decompresses all of them with zb's decoder
 * (lib/image/zstd.ts) into the ring, three times per row:
 *   alone                     nothing else runs
 *   worker hashes the ring    a Worker runs Bun.CryptoHasher over the slot the
 *                             decoder filled last, again and again (what zb's
 *                             worker does, minus the write)
 *   worker hashes its own     the same Worker work on three 4 MiB buffers of
 *                             its own (no data shared with the decoder)
 *   buffered writes           `dd if=/dev/zero bs=4M` into a file, no sync:
 *                             the other core copying into the page cache
 * Nothing is asserted; the figures go to bench/README.md.
 */
import * as fs from "node:fs";
import { join } from "node:path";
import { frameDecoder } from "../lib/image/zstd.ts";
import { buildRootfs, createZbi, GiB, machine, makeKeys, MiB, setBenchName, stats, workDir, zbPath, zstdFrames } from "./image-fixture.ts";

setBenchName("decode-contention");
const args = process.argv.slice(2);
const opt = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const SIZE = Number(opt("--size-mib") ?? 1024) * MiB;
const ZB = zbPath(opt("--zb"));
const SLOT = 4 * MiB;

const work = workDir("zb-bench-contention-", 2 * SIZE + GiB);
try {
  console.log(`machine: ${machine()}`);
  const rootfs = buildRootfs(work.dir, "rootfs", SIZE);
  const img = createZbi(ZB, rootfs.path, makeKeys(ZB, work.dir), join(work.dir, "rootfs.zbi"), "zstd");
  const fd = fs.openSync(img.path, "r");
  const stored = new Uint8Array(img.storedSize);
  fs.readSync(fd, stored, 0, stored.length, img.dataOffset);
  fs.closeSync(fd);
  const frames = zstdFrames(stored);
  const ring = new SharedArrayBuffer(3 * SLOT);
  const outs = [0, 1, 2].map((i) => new Uint8Array(ring, i * SLOT, SLOT));
  const last = new Int32Array(new SharedArrayBuffer(4));
  const decoder = frameDecoder();
  const pass = () => {
    const t = performance.now();
    frames.forEach(([o, n], k) => {
      const raw = Math.min(SLOT, rootfs.size - k * SLOT);
      if (!decoder.decode(stored.subarray(o, o + n), outs[k % 3]!.subarray(0, raw))) throw new Error(`frame ${k} did not decode`);
      Atomics.store(last, 0, k);
    });
    return performance.now() - t;
  };
  pass(); // warm
  const rows: [string, number[]][] = [["alone", [pass(), pass(), pass()]]];
  for (const [label, shared] of [["worker hashes the ring", true], ["worker hashes its own", false]] as const) {
    const w = hashingWorker(shared ? ring : new SharedArrayBuffer(3 * SLOT), last.buffer as SharedArrayBuffer);
    await Bun.sleep(100);
    rows.push([label, [pass(), pass(), pass()]]);
    w.terminate();
  }
  const sink = join(work.dir, "sink.img");
  const dd = Bun.spawn(["bash", "-c", `while :; do dd if=/dev/zero of=${sink} bs=4M count=256 conv=notrunc status=none; done`]);
  await Bun.sleep(300);
  rows.push(["buffered writes (dd, no sync)", [pass(), pass(), pass()]]);
  dd.kill();
  await dd.exited;

  console.log(`\ndecompressing ${frames.length} frames (${(rootfs.size / MiB).toFixed(0)} MiB raw) into a 3 × 4 MiB ring, ms per pass:`);
  const base = stats(rows[0]![1]).median;
  for (const [label, t] of rows) {
    const m = stats(t).median;
    console.log(`  ${label.padEnd(32)} ${t.map((x) => x.toFixed(0).padStart(6)).join("")}   median ${m.toFixed(0)} (${((m / base - 1) * 100).toFixed(0).padStart(3)} %)`);
  }
} finally {
  work.cleanup();
}

/** A Worker hashing, over and over, the slot after the one the decoder filled last. */
function hashingWorker(ring: SharedArrayBuffer, last: SharedArrayBuffer): Worker {
  const src = `self.onmessage = (e) => {
    const { ring, last } = e.data, k = new Int32Array(last), h = new Bun.CryptoHasher("sha256");
    for (;;) h.update(new Uint8Array(ring, ((Atomics.load(k, 0) + 2) % 3) * ${SLOT}, ${SLOT}));
  };`;
  const w = new Worker(URL.createObjectURL(new Blob([src])));
  w.postMessage({ ring, last });
  return w;
}
