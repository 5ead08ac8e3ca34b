/**
 * A what-if for P2 (image-install.ts), not used by zb: could two threads
 * share the install's serial work without handing raw chunks across cores?
 *
 *   node_modules/.bin/bun bench/sha-chain.ts [--size-mib N] [--zb PATH] [--no-sync] [--no-stored]
 *
 * zb's pipeline decompresses on the main thread and hashes (and writes) on a
 * worker, so every 4 MiB raw chunk moves from one core's caches to the
 * other's; decode-contention.ts shows what that costs the decoder here. In
 * this prototype each of two Workers decompresses every other frame and then
 * feeds it, while it is still in its own caches, into ONE SHA-256 whose state
 * lives in shared memory and passes from thread to thread in frame order
 * (Atomics). Bun.CryptoHasher cannot do that: its state stays inside the
 * thread that made it. So this uses OpenSSL's SHA256_Init/Update/Final on a
 * SHA256_CTX in a SharedArrayBuffer, through bun:ffi (native SHA-NI code like
 * BoringSSL's). DEVELOPERS.md routes bulk SHA-256 through Bun.CryptoHasher,
 * which is why zb does not do this; the figures are for that decision.
 *
 * Rows: one thread decoding and hashing every frame (Bun.CryptoHasher); the
 * two-thread chain (decompression and raw hash only); the chain with the rest
 * of an install's loop (each stored frame's SHA-256 checked first, the raw
 * chunk written in order to a preallocated target file, an fdatasync every
 * 32 MiB and one at the end); and, timed in the same run, `zb image install`
 * of the same image into the same target and `zstd -dc > target` of the same
 * frames. The chain rows check the digest against the rootfs's sha256sum.
 * --no-sync leaves the third row's syncing to one fdatasync at the end,
 * --no-stored skips its stored checks (to see what each costs).
 */
import * as fs from "node:fs";
import { join } from "node:path";
import { frameDecoder } from "../lib/image/zstd.ts";
import { systemLibrary } from "../lib/sys/dlopen.ts";
import { buildRootfs, createZbi, die, GiB, machine, makeKeys, MiB, mustRun, setBenchName, sha256File, stats, workDir, zbPath, zstdFrames } from "./image-fixture.ts";

setBenchName("sha-chain");
const args = process.argv.slice(2);
const opt = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const SIZE = Number(opt("--size-mib") ?? 1024) * MiB;
const ZB = zbPath(opt("--zb"));
const LIBZSTD = systemLibrary("libzstd.so.1") ?? die("libzstd.so.1 not found");
const LIBCRYPTO = systemLibrary("libcrypto.so.3") ?? die("libcrypto.so.3 not found: apt-get install -y libssl3");
const SLOT = 4 * MiB;
const NO_SYNC = args.includes("--no-sync");
const NO_STORED = args.includes("--no-stored");

const work = workDir("zb-bench-sha-chain-", 2 * SIZE + GiB);
try {
  console.log(`machine: ${machine()}`);
  const rootfs = buildRootfs(work.dir, "rootfs", SIZE);
  const want = sha256File(rootfs.path);
  const keys = makeKeys(ZB, work.dir);
  const img = createZbi(ZB, rootfs.path, keys, join(work.dir, "rootfs.zbi"), "zstd");
  const info = JSON.parse(mustRun([ZB, "image", "info", img.path, "--json"], "zb image info").out) as { manifest: { payloads: { name: string; chunks: { sha256: string }[] }[] } };
  const storedShas = info.manifest.payloads.find((p) => p.name === "rootfs")!.chunks.map((c) => c.sha256);
  const input = new SharedArrayBuffer(img.storedSize);
  const fd = fs.openSync(img.path, "r");
  fs.readSync(fd, new Uint8Array(input), 0, img.storedSize, img.dataOffset);
  fs.closeSync(fd);
  const frames = frameTable(new Uint8Array(input));
  const target = join(work.dir, "target.img");
  fs.writeFileSync(target, "");
  fs.truncateSync(target, rootfs.size);
  const frameFile = join(work.dir, "frames.zst");
  fs.writeFileSync(frameFile, new Uint8Array(input));
  const trust = keys.trust;
  const rows: [string, number[]][] = [
    ["one thread: decode + Bun.CryptoHasher", []],
    ["two threads: decode, shared SHA256_CTX in order", []],
    [`  + ${NO_STORED ? "" : "stored checks, "}writes, fdatasync ${NO_SYNC ? "at the end" : "every 32 MiB"}`, []],
    ["zb image install (the product, same target)", []],
    ["zstd -dc > target", []],
  ];
  for (let r = 0; r < 3; r++) {
    rows[0]![1].push(oneThread(new Uint8Array(input), frames, want));
    rows[1]![1].push(await chain(input, frames, want, null));
    Bun.spawnSync(["sync"]);
    rows[2]![1].push(await chain(input, frames, want, { target, stored: NO_STORED ? null : storedShas, periodicSync: !NO_SYNC }));
    Bun.spawnSync(["sync"]);
    rows[3]![1].push(timed([ZB, "image", "install", img.path, "--payload", "rootfs", "--to", target, "--journal", join(work.dir, "j"), "--trust", trust, "--progress=none"]));
    fs.rmSync(join(work.dir, "j"), { force: true });
    Bun.spawnSync(["sync"]);
    rows[4]![1].push(timed(["bash", "-c", `zstd -qdc ${frameFile} 1<> ${target}`]));
    Bun.spawnSync(["sync"]);
  }
  console.log(`\n${frames.length / 2} frames, ${(rootfs.size / MiB).toFixed(0)} MiB raw; ms per pass (decompression + raw SHA-256 only):`);
  for (const [label, t] of rows) console.log(`  ${label.padEnd(50)} ${t.map((x) => x.toFixed(0).padStart(6)).join("")}   median ${stats(t).median.toFixed(0)}`);
} finally {
  work.cleanup();
}

/** [offset, length, …] of each zstd frame, as doubles in shared memory (the Workers read the table). */
function frameTable(bytes: Uint8Array): Float64Array {
  const flat = zstdFrames(bytes).flat();
  const table = new Float64Array(new SharedArrayBuffer(flat.length * 8));
  table.set(flat);
  return table;
}

function oneThread(input: Uint8Array, f: Float64Array, want: string): number {
  const d = frameDecoder();
  const out = new Uint8Array(SLOT);
  const h = new Bun.CryptoHasher("sha256");
  const t = performance.now();
  for (let k = 0; k < f.length / 2; k++) {
    const raw = Math.min(SLOT, SIZE - k * SLOT);
    if (!d.decode(input.subarray(f[2 * k]!, f[2 * k]! + f[2 * k + 1]!), out.subarray(0, raw))) die(`frame ${k} did not decode`);
    h.update(out.subarray(0, raw));
  }
  if (h.digest("hex") !== want) die("one thread: wrong digest");
  return performance.now() - t;
}

function timed(cmd: string[]): number {
  const t = performance.now();
  const p = Bun.spawnSync(cmd, { stdout: "ignore", stderr: "pipe" });
  if (p.exitCode !== 0) die(`${cmd.join(" ")}: ${p.stderr.toString()}`);
  return performance.now() - t;
}

async function chain(input: SharedArrayBuffer, f: Float64Array, want: string, full: { target: string; stored: string[] | null; periodicSync: boolean } | null): Promise<number> {
  const { dlopen, FFIType, ptr } = require("bun:ffi") as typeof import("bun:ffi");
  const c = dlopen(LIBCRYPTO, { SHA256_Init: { args: [FFIType.ptr], returns: FFIType.i32 }, SHA256_Final: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 } }).symbols;
  const ctx = new Uint8Array(new SharedArrayBuffer(256)); // sizeof(SHA256_CTX) is 112
  c.SHA256_Init(ptr(ctx));
  const turn = new Int32Array(new SharedArrayBuffer(4));
  const fd = full ? fs.openSync(full.target, "r+") : -1;
  const src = `
    const { ptr, dlopen } = require("bun:ffi");
    const z = dlopen("${LIBZSTD}", { ZSTD_createDCtx: { args: [], returns: "ptr" }, ZSTD_decompressDCtx: { args: ["ptr", "ptr", "u64", "ptr", "u64"], returns: "u64" } }).symbols;
    const s = dlopen("${LIBCRYPTO}", { SHA256_Update: { args: ["ptr", "ptr", "u64"], returns: "i32" } }).symbols;
    const fs = require("node:fs");
    self.onmessage = (e) => {
      const { id, input, f, ctx, turn, fd, stored, periodicSync } = e.data, inp = new Uint8Array(input), out = new Uint8Array(${SLOT}), d = z.ZSTD_createDCtx();
      let syncing = null;
      for (let k = id; k < f.length / 2; k += 2) {
        const raw = Math.min(${SLOT}, ${SIZE} - k * ${SLOT});
        const frame = inp.subarray(f[2 * k], f[2 * k] + f[2 * k + 1]);
        if (stored && new Bun.CryptoHasher("sha256").update(frame).digest("hex") !== stored[k]) throw new Error("stored chunk " + k);
        z.ZSTD_decompressDCtx(d, ptr(out), raw, ptr(frame), f[2 * k + 1]);
        for (let t = Atomics.load(turn, 0); t !== k; t = Atomics.load(turn, 0)) Atomics.wait(turn, 0, t);
        s.SHA256_Update(ptr(ctx), ptr(out), raw);
        // In order under the turn, so plain write(2) on the shared descriptor lands sequentially.
        if (fd >= 0) for (let done = 0; done < raw; ) done += fs.writeSync(fd, out, done, raw - done);
        if (fd >= 0 && periodicSync && k % 8 === 7 && !syncing) syncing = new Promise((r) => fs.fdatasync(fd, () => { syncing = null; r(); }));
        Atomics.store(turn, 0, k + 1);
        Atomics.notify(turn, 0);
      }
      Promise.resolve(syncing).then(() => postMessage(id));
    };`;
  const url = URL.createObjectURL(new Blob([src]));
  const t = performance.now();
  await Promise.all([0, 1].map((id) => new Promise<void>((resolve) => {
    const w = new Worker(url);
    w.onmessage = () => (w.terminate(), resolve());
    w.postMessage({ id, input, f, ctx, turn, fd, stored: full?.stored ?? null, periodicSync: full?.periodicSync ?? false });
  })));
  if (fd >= 0) {
    fs.fdatasyncSync(fd);
    fs.closeSync(fd);
  }
  const ms = performance.now() - t;
  const md = new Uint8Array(32);
  c.SHA256_Final(ptr(md), ptr(ctx));
  if (Buffer.from(md).toString("hex") !== want) die("chain: wrong digest");
  return ms;
}
