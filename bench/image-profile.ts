/**
 * Where `zb image install` and `zb image verify` spend their time: the
 * engine's loop re-run in this process with a timer around every stage, and
 * what-if variants that show what a change would buy. Used by
 * image-install.ts and image-verify.ts when they miss, or on its own:
 *
 *   node_modules/.bin/bun bench/image-profile.ts [--size-mib N] [--zb PATH] [--runs N] [--no-verify] [--no-install]
 *
 * The instrumented loop is lib/image/install.ts writeChunks on one thread
 * (as with `threads: false`; same library calls: openVerified, exactChunks,
 * sha256hex, frameDecoder, openTarget, writeJournal; same 32 MiB background
 * fdatasync + journal): it measures what each stage costs, which is what
 * lib/image/pipeline.ts balances over two threads. If the stages in
 * install.ts change, this copy must follow. It runs from source under `bun`, not the
 * compiled binary, so its totals are ~0.05 s below the binary's wall time
 * (process start-up).
 *
 * What-ifs (prototypes living only in bench/, nothing in lib/ uses them):
 *   no raw SHA      the loop without the whole-payload raw SHA-256
 *   2 threads       a Worker checks the stored SHA-256 and decompresses chunk
 *                   i+1 while the main thread hashes and writes chunk i
 *   verify, readSync  verify reading chunk-aligned with fs.readSync into a
 *                   reused buffer instead of createReadStream → tar-stream →
 *                   exactChunks
 *   verify, 2 threads main thread and a Worker hash alternate chunks
 */
import * as fs from "node:fs";
import { join } from "node:path";
import { exactChunks } from "../lib/image/chunks.ts";
import { sha256hex } from "../lib/image/install.ts";
import { writeJournal, type Journal } from "../lib/image/journal.ts";
import { openImage, openVerified, type Policy } from "../lib/image/reader.ts";
import { loadTrustDir } from "../lib/image/sign.ts";
import { fileSource } from "../lib/image/source.ts";
import { frameDecoder } from "../lib/image/zstd.ts";
import { HostSys } from "../lib/sys/sys.ts";
import { openTarget } from "../lib/sys/target.ts";
import { buildRootfs, createZbi, die, GiB, machine, makeKeys, MiB, scribble, setBenchName, settleDisk, warm, workDir, zbPath, countOption } from "./image-fixture.ts";

const JOURNAL_BYTES = 32 << 20; // lib/image/install.ts JOURNAL_BYTES

export interface Profile {
  label: string;
  totalMs: number;
  /** [stage, ms] in pipeline order; "other" is the rest of the wall time. */
  stages: [string, number][];
}

function policyFor(trust: string): Policy {
  return { trust: loadTrustDir(new HostSys(), trust) };
}

class Clock {
  readonly t: Map<string, number> = new Map();
  /** Time spent in callbacks that ran inside another stage's await. */
  stolen = 0;
  add(name: string, ms: number): void {
    this.t.set(name, (this.t.get(name) ?? 0) + ms);
  }
  sync<T>(name: string, f: () => T): T {
    const s0 = this.stolen;
    const t0 = performance.now();
    const r = f();
    this.add(name, performance.now() - t0 - (this.stolen - s0));
    return r;
  }
  async async<T>(name: string, f: () => Promise<T>): Promise<T> {
    const s0 = this.stolen;
    const t0 = performance.now();
    const r = await f();
    this.add(name, performance.now() - t0 - (this.stolen - s0));
    return r;
  }
  /** A callback that runs on its own (journal after a background sync). */
  callback(name: string, f: () => void): void {
    const t0 = performance.now();
    f();
    const d = performance.now() - t0;
    this.add(name, d);
    this.stolen += d;
  }
  profile(label: string, totalMs: number, order: string[]): Profile {
    const stages: [string, number][] = order.filter((k) => this.t.has(k)).map((k) => [k, this.t.get(k)!]);
    const sum = stages.reduce((a, [, v]) => a + v, 0);
    stages.push(["other (event loop, GC, untracked)", Math.max(0, totalMs - sum)]);
    return { label, totalMs, stages };
  }
}

const INSTALL_STAGES = [
  "start-up: open image, header, signature",
  "read + chunk assembly",
  "stored SHA-256 (per chunk)",
  "decompress (libzstd via bun:ffi)",
  "raw SHA-256 (whole payload)",
  "write(2) into the page cache",
  "wait for background fdatasync",
  "journal writes (write+fsync+rename+fsync dir)",
  "final digest + fdatasync",
];

/**
 * The install engine's loop with a timer per stage. `rawSha: false` is the
 * what-if without the whole-payload raw SHA-256.
 */
export async function profileInstall(image: string, trust: string, target: string, opts: { rawSha?: boolean } = {}): Promise<Profile> {
  const rawSha = opts.rawSha !== false;
  const c = new Clock();
  const sys = new HostSys();
  const journalPath = `${target}.zb-journal`;
  fs.rmSync(journalPath, { force: true });
  const t0 = performance.now();
  const img = await c.async(INSTALL_STAGES[0]!, async () => openVerified(fileSource(image), policyFor(trust)));
  const p = img.header.manifest.payloads[0]!;
  const chunkSize = img.header.manifest.chunkSize;
  const journal: Journal = { version: 1, image: sha256hex(img.header.manifestBytes), payload: p.name, target, state: "writing", chunksDone: 0, dataOffset: null };
  const tgt = openTarget(target, { create: true });
  c.sync(INSTALL_STAGES[7]!, () => writeJournal(sys, journalPath, journal));
  const entry = await c.async(INSTALL_STAGES[1]!, async () => (await img.nextPayload())!);
  journal.dataOffset = entry.dataOffset;
  c.sync(INSTALL_STAGES[7]!, () => writeJournal(sys, journalPath, journal));
  const raw = new Bun.CryptoHasher("sha256");
  const decoder = frameDecoder();
  const rawBuf = new Uint8Array(Math.min(chunkSize, p.raw.size));
  const it = exactChunks(entry.data, p.chunks.map((x) => x.size), { payload: p.name, firstChunk: 0, imageOffset: entry.dataOffset })[Symbol.asyncIterator]();
  let pending: Promise<void> | null = null;
  let sinceSync = 0;
  for (let i = 0; ; i++) {
    const r = await c.async(INSTALL_STAGES[1]!, () => it.next());
    if (r.done) break;
    const stored = r.value;
    c.sync(INSTALL_STAGES[2]!, () => {
      if (sha256hex(stored) !== p.chunks[i]!.sha256) die(`chunk ${i} does not match its SHA-256`);
    });
    const rawLen = Math.min(chunkSize, p.raw.size - i * chunkSize);
    const out = p.encoding === "none" ? stored : rawBuf.subarray(0, rawLen);
    if (p.encoding === "zstd") {
      c.sync(INSTALL_STAGES[3]!, () => {
        if (!decoder.decode(stored, out)) die(`chunk ${i} is not a zstd frame of ${rawLen} bytes`);
      });
    }
    if (rawSha) c.sync(INSTALL_STAGES[4]!, () => raw.update(out));
    c.sync(INSTALL_STAGES[5]!, () => tgt.write(i * chunkSize, out));
    sinceSync += rawLen;
    if (sinceSync >= JOURNAL_BYTES) {
      await c.async(INSTALL_STAGES[6]!, async () => {
        if (pending) await pending;
      });
      const covered = i + 1;
      pending = tgt.syncInBackground().then(() =>
        c.callback(INSTALL_STAGES[7]!, () => {
          journal.chunksDone = covered;
          writeJournal(sys, journalPath, journal);
        }));
      sinceSync = 0;
    }
  }
  decoder.close();
  await c.async(INSTALL_STAGES[6]!, async () => {
    if (pending) await pending;
  });
  c.sync(INSTALL_STAGES[8]!, () => {
    if (rawSha && raw.digest("hex") !== p.raw.sha256) die("the raw SHA-256 differs");
    tgt.sync();
  });
  journal.state = "complete";
  journal.chunksDone = p.chunks.length;
  c.sync(INSTALL_STAGES[7]!, () => writeJournal(sys, journalPath, journal));
  tgt.close();
  img.close();
  fs.rmSync(journalPath, { force: true });
  return c.profile(rawSha ? "install loop on one thread (lib/image/install.ts stages)" : "what-if: without the raw whole-payload SHA-256", performance.now() - t0, INSTALL_STAGES);
}

/** A worker from image-profile-worker.ts with a promise per request. */
function startWorker(slots: { in: SharedArrayBuffer; out: SharedArrayBuffer }[]) {
  const w = new Worker(new URL("./image-profile-worker.ts", import.meta.url).href);
  const waiting = new Map<number, (ok: boolean) => void>();
  w.onmessage = (e: MessageEvent<{ id: number; ok: boolean }>) => {
    const f = waiting.get(e.data.id);
    waiting.delete(e.data.id);
    f?.(e.data.ok);
  };
  const request = (m: object & { id: number }) =>
    new Promise<boolean>((resolve) => {
      waiting.set(m.id, resolve);
      w.postMessage(m);
    });
  return {
    ready: request({ op: "init", id: -1, slots } as { id: number }),
    request,
    stop: () => w.terminate(),
  };
}

/**
 * What-if: two threads. A Worker checks the stored SHA-256 and decompresses
 * chunk i+1 (libzstd through its own bun:ffi handle) while the main thread
 * hashes (raw SHA-256) and writes chunk i; same syncs and journal as the engine.
 */
export async function pipelineInstall(image: string, trust: string, target: string, opts: { rawSha?: boolean } = {}): Promise<Profile> {
  const rawSha = opts.rawSha !== false;
  const sys = new HostSys();
  const journalPath = `${target}.zb-journal`;
  fs.rmSync(journalPath, { force: true });
  const t0 = performance.now();
  const img = await openVerified(fileSource(image), policyFor(trust));
  const p = img.header.manifest.payloads[0]!;
  if (p.encoding !== "zstd") die("the 2-thread what-if needs a zstd image");
  const chunkSize = img.header.manifest.chunkSize;
  const maxStored = Math.max(...p.chunks.map((x) => x.size));
  const slots = [0, 1].map(() => ({ in: new SharedArrayBuffer(maxStored), out: new SharedArrayBuffer(chunkSize) }));
  const views = slots.map((s) => ({ in: new Uint8Array(s.in), out: new Uint8Array(s.out) }));
  const worker = startWorker(slots);
  await worker.ready;
  const journal: Journal = { version: 1, image: sha256hex(img.header.manifestBytes), payload: p.name, target, state: "writing", chunksDone: 0, dataOffset: null };
  const tgt = openTarget(target, { create: true });
  writeJournal(sys, journalPath, journal);
  const entry = (await img.nextPayload())!;
  journal.dataOffset = entry.dataOffset;
  writeJournal(sys, journalPath, journal);
  const raw = new Bun.CryptoHasher("sha256");
  const it = exactChunks(entry.data, p.chunks.map((x) => x.size), { payload: p.name, firstChunk: 0, imageOffset: entry.dataOffset })[Symbol.asyncIterator]();
  const rawLen = (i: number) => Math.min(chunkSize, p.raw.size - i * chunkSize);
  // (wrapped: an async function returning a promise would wait for it)
  const submit = async (i: number): Promise<{ done: Promise<boolean> } | null> => {
    const r = await it.next();
    if (r.done) return null;
    const v = views[i % 2]!;
    v.in.set(r.value);
    return { done: worker.request({ op: "decode", id: i, slot: i % 2, len: r.value.length, rawLen: rawLen(i), sha: p.chunks[i]!.sha256 } as { id: number }) };
  };
  let pending: Promise<void> | null = null;
  let sinceSync = 0;
  let next = await submit(0);
  for (let i = 0; next; i++) {
    const current = next;
    next = await submit(i + 1); // the worker decodes i+1 while this thread finishes i
    if (!(await current.done)) die(`chunk ${i} failed its SHA-256 or zstd check`);
    const out = views[i % 2]!.out.subarray(0, rawLen(i));
    if (rawSha) raw.update(out);
    tgt.write(i * chunkSize, out);
    sinceSync += out.length;
    if (sinceSync >= JOURNAL_BYTES) {
      if (pending) await pending;
      const covered = i + 1;
      pending = tgt.syncInBackground().then(() => {
        journal.chunksDone = covered;
        writeJournal(sys, journalPath, journal);
      });
      sinceSync = 0;
    }
  }
  if (pending) await pending;
  if (rawSha && raw.digest("hex") !== p.raw.sha256) die("the raw SHA-256 differs");
  tgt.sync();
  journal.state = "complete";
  writeJournal(sys, journalPath, journal);
  worker.stop();
  tgt.close();
  img.close();
  fs.rmSync(journalPath, { force: true });
  const totalMs = performance.now() - t0;
  return { label: `what-if: 2 threads (worker: stored SHA + decompress)${rawSha ? "" : ", no raw SHA"}`, totalMs, stages: [] };
}

const VERIFY_STAGES = ["start-up: open image, header, signature", "read + chunk assembly", "SHA-256 per chunk"];

/** `zb image verify`'s loop (lib/image/verify.ts, not --deep) with a timer per stage. */
export async function profileVerify(image: string, trust: string): Promise<Profile> {
  const c = new Clock();
  const t0 = performance.now();
  const img = await c.async(VERIFY_STAGES[0]!, async () => openVerified(fileSource(image), policyFor(trust)));
  for (let e = await c.async(VERIFY_STAGES[1]!, () => img.nextPayload()); e; e = await c.async(VERIFY_STAGES[1]!, () => img.nextPayload())) {
    const p = e.payload;
    const it = exactChunks(e.data, p.chunks.map((x) => x.size), { payload: p.name, firstChunk: 0, imageOffset: e.dataOffset })[Symbol.asyncIterator]();
    for (let i = 0; ; i++) {
      const r = await c.async(VERIFY_STAGES[1]!, () => it.next());
      if (r.done) break;
      c.sync(VERIFY_STAGES[2]!, () => {
        if (sha256hex(r.value) !== p.chunks[i]!.sha256) die(`chunk ${i} does not match`);
      });
    }
  }
  img.close();
  return c.profile("verify loop as in lib/image/verify.ts", performance.now() - t0, VERIFY_STAGES);
}

/**
 * What-if: verify reading the payload chunk by chunk with fs.readSync into
 * reused buffers (the header still through openImage), hashing on
 * `threads` threads (1: main only; 2: main + a Worker, alternate chunks).
 */
export async function readSyncVerify(image: string, trust: string, threads: 1 | 2): Promise<Profile> {
  const t0 = performance.now();
  const img = await openImage(await fileSource(image).open(0), { policy: policyFor(trust) });
  const m = img.header.manifest;
  img.close();
  const { tarEntries } = await import("./image-fixture.ts");
  const entries = tarEntries(image);
  const maxStored = Math.max(...m.payloads.flatMap((p) => p.chunks.map((x) => x.size)));
  const SLOTS = 4;
  const slots = Array.from({ length: SLOTS }, () => ({ in: new SharedArrayBuffer(maxStored), out: new SharedArrayBuffer(8) }));
  const views = slots.map((s) => new Uint8Array(s.in));
  const worker = threads === 2 ? startWorker(slots) : null;
  if (worker) await worker.ready;
  const fd = fs.openSync(image, "r");
  let pos = 0;
  const readFully = (buf: Uint8Array, n: number) => {
    let done = 0;
    while (done < n) {
      const k = fs.readSync(fd, buf, done, n - done, null); // sequential: the fast path (see lib/sys/target.ts)
      if (k <= 0) die("image ends early");
      done += k;
    }
    pos += n;
  };
  const skipBuf = new Uint8Array(64 << 10);
  let job = 0;
  const inFlight: (Promise<boolean> | null)[] = new Array(SLOTS).fill(null);
  for (const p of m.payloads) {
    const at = entries.find((e) => e.name === p.name)!.dataOffset;
    while (pos < at) readFully(skipBuf, Math.min(skipBuf.length, at - pos));
    for (let i = 0; i < p.chunks.length; i++, job++) {
      const s = job % SLOTS;
      if (inFlight[s] && !(await inFlight[s])) die("a chunk failed its SHA-256");
      inFlight[s] = null;
      readFully(views[s]!, p.chunks[i]!.size);
      const v = views[s]!.subarray(0, p.chunks[i]!.size);
      if (worker && job % 2 === 0) inFlight[s] = worker.request({ op: "hash", id: job, slot: s, len: v.length, sha: p.chunks[i]!.sha256 } as { id: number });
      else if (sha256hex(v) !== p.chunks[i]!.sha256) die(`chunk ${i} does not match`);
    }
    const padded = at + Math.ceil(p.stored.size / 512) * 512;
    while (pos < padded) readFully(skipBuf, Math.min(skipBuf.length, padded - pos));
  }
  for (const f of inFlight) if (f && !(await f)) die("a chunk failed its SHA-256");
  fs.closeSync(fd);
  worker?.stop();
  return { label: `what-if: verify with fs.readSync, chunk-aligned, ${threads === 1 ? "1 thread" : "2 threads (main + Worker hash alternate chunks)"}`, totalMs: performance.now() - t0, stages: [] };
}

/** Median run of `f` by total time. */
export async function medianOf(runs: number, f: () => Promise<Profile>, between?: () => void): Promise<Profile> {
  const all: Profile[] = [];
  for (let i = 0; i < runs; i++) {
    between?.();
    all.push(await f());
  }
  // The middle run as a whole (its stages add up), not a median per stage: the lower of the two
  // middle runs for an even count.
  all.sort((a, b) => a.totalMs - b.totalMs);
  return all[(all.length - 1) >> 1]!;
}

export function printProfile(p: Profile, bytes: number): void {
  console.log(`${p.label}: ${p.totalMs.toFixed(0)} ms (${(bytes / (p.totalMs / 1000) / 1e6).toFixed(0)} MB/s of raw payload)`);
  for (const [k, v] of p.stages) {
    console.log(`  ${k.padEnd(48)} ${v.toFixed(0).padStart(6)} ms ${((v / p.totalMs) * 100).toFixed(1).padStart(5)} %  ${(bytes / (v / 1000) / 1e6).toFixed(0).padStart(6)} MB/s`);
  }
}

/** SHA-256 rate of this runtime on 4 MiB buffers, MB/s. */
export function shaRate(): number {
  const buf = new Uint8Array(4 * MiB);
  for (let i = 0; i < buf.length; i++) buf[i] = (i * 2654435761) >>> 24;
  const t0 = performance.now();
  const h = new Bun.CryptoHasher("sha256");
  for (let i = 0; i < 128; i++) h.update(buf);
  h.digest();
  return (128 * buf.length) / ((performance.now() - t0) / 1000) / 1e6;
}

export async function installWhatIfs(image: string, trust: string, target: string, rawBytes: number, runs: number): Promise<Record<string, number>> {
  const settle = () => {
    settleDisk();
  };
  const asIs = await medianOf(runs, () => profileInstall(image, trust, target), settle);
  printProfile(asIs, rawBytes);
  const noRaw = await medianOf(runs, () => profileInstall(image, trust, target, { rawSha: false }), settle);
  const two = await medianOf(runs, () => pipelineInstall(image, trust, target), settle);
  const twoNoRaw = await medianOf(runs, () => pipelineInstall(image, trust, target, { rawSha: false }), settle);
  console.log(`what-ifs (median of ${runs}, same image and target):`);
  for (const p of [asIs, noRaw, two, twoNoRaw]) console.log(`  ${p.label.padEnd(66)} ${p.totalMs.toFixed(0).padStart(6)} ms ${(rawBytes / (p.totalMs / 1000) / 1e6).toFixed(0).padStart(6)} MB/s`);
  return {
    asIsMs: +asIs.totalMs.toFixed(1), noRawShaMs: +noRaw.totalMs.toFixed(1), twoThreadsMs: +two.totalMs.toFixed(1), twoThreadsNoRawShaMs: +twoNoRaw.totalMs.toFixed(1),
    ...Object.fromEntries(asIs.stages.map(([k, v]) => [`stage:${k}`, +v.toFixed(1)])),
  };
}

export async function verifyWhatIfs(image: string, trust: string, bytes: number, runs: number): Promise<Record<string, number>> {
  const asIs = await medianOf(runs, () => profileVerify(image, trust));
  printProfile(asIs, bytes);
  const one = await medianOf(runs, () => readSyncVerify(image, trust, 1));
  const two = await medianOf(runs, () => readSyncVerify(image, trust, 2));
  console.log(`what-ifs (median of ${runs}):`);
  for (const p of [asIs, one, two]) console.log(`  ${p.label.padEnd(84)} ${p.totalMs.toFixed(0).padStart(6)} ms ${(bytes / (p.totalMs / 1000) / 1e6).toFixed(0).padStart(6)} MB/s`);
  return {
    asIsMs: +asIs.totalMs.toFixed(1), readSyncMs: +one.totalMs.toFixed(1), readSync2ThreadsMs: +two.totalMs.toFixed(1),
    ...Object.fromEntries(asIs.stages.map(([k, v]) => [`stage:${k}`, +v.toFixed(1)])),
  };
}

// ---------------------------------------------------------------- main

if (import.meta.main) {
  setBenchName("image-profile");
  const args = process.argv.slice(2);
  const opt = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
  const SIZE = Number(opt("--size-mib") ?? 1024) * MiB;
  const RUNS = countOption(args, "--runs", 3, 1);
  const doVerify = !args.includes("--no-verify");
  const doInstall = !args.includes("--no-install");
  const ZB = zbPath(opt("--zb"));
  const work = workDir("zb-bench-profile-", 3.5 * SIZE + GiB);
  try {
    console.log(`machine: ${machine()}`);
    console.log(`runtime SHA-256 (Bun.CryptoHasher, 4 MiB updates): ${shaRate().toFixed(0)} MB/s`);
    const rootfs = buildRootfs(work.dir, "rootfs", SIZE);
    console.log(`rootfs: ${(rootfs.size / MiB).toFixed(0)} MiB ext4, ${(rootfs.filled / MiB).toFixed(0)} MiB of files`);
    const keys = makeKeys(ZB, work.dir);
    const json: Record<string, unknown> = { bench: "image-profile", date: new Date().toISOString(), machine: machine(), rawBytes: rootfs.size };
    if (doInstall) {
      const img = createZbi(ZB, rootfs.path, keys, join(work.dir, "rootfs-zstd.zbi"), "zstd");
      const target = join(work.dir, "target.img");
      scribble(target, rootfs.size);
      warm(img.path);
      console.log(`\ninstall: ${img.path} (${img.storedSize} bytes stored, ${img.rawSize} raw) → ${target}, in place`);
      json.install = await installWhatIfs(img.path, keys.trust, target, img.rawSize, RUNS);
      fs.rmSync(img.path);
      fs.rmSync(target);
    }
    if (doVerify) {
      const img = createZbi(ZB, rootfs.path, keys, join(work.dir, "rootfs-none.zbi"), "none");
      warm(img.path);
      console.log(`\nverify: ${img.path} (${img.size} bytes, encoding none)`);
      json.verify = await verifyWhatIfs(img.path, keys.trust, img.size, RUNS);
    }
    console.log(JSON.stringify(json));
  } finally {
    work.cleanup();
  }
}
