/**
 * The install's chunk pipeline, split over two threads so that both cores
 * work: the main thread reads and decompresses; a Worker checks each stored
 * chunk's SHA-256 one chunk ahead, and feeds every decompressed chunk into
 * the whole-payload SHA-256 and writes it to the target.
 *
 * Why this split: per GiB of a typical rootfs, decompression costs ~0.8 s of
 * CPU, the raw SHA-256 ~0.65 s, writes ~0.2 s, stored SHA-256 ~0.17 s and
 * reading ~0.14 s (bench/image-profile.ts). The raw hash must run in order
 * on one thread; with the stored hashes and the writes beside it, the two
 * threads carry about the same load. The balance shifts with the compression
 * ratio, so while the worker is behind on raw chunks (BACKLOG) the main
 * thread checks the next stored chunk itself.
 *
 * The rule "a chunk is checked before it is decompressed" still holds: chunk
 * i's stored bytes sit in a shared slot (read there, or copied), one thread
 * hashes that slot, the main thread compares the digest with the manifest
 * and only then decompresses *the same slot* (nothing writes a slot between
 * its hash and its decompression). Memory stays constant: 2 stored slots and
 * 3 raw slots, reused under Atomics counters.
 *
 * Without workers (or `threads: false`) everything runs on the main thread
 * through the same interface.
 */
import { ioError, ZbError } from "../errors.ts";
import type { Target } from "../sys/target.ts";

export interface ChunkPipeline {
  readonly threaded: boolean;
  /** Chunks queued by `check` and not yet taken. */
  readonly queued: number;
  /** How many chunks may wait checked before the caller must `take` one. */
  readonly ahead: number;
  /**
   * Where the next stored chunk should be read to spare `check` a copy
   * (null: anywhere). Valid while at most `ahead` chunks are queued.
   */
  storedSlot(n: number): Uint8Array | null;
  /**
   * Queue a stored chunk for its SHA-256 check. The threaded pipeline keeps
   * a copy (unless `stored` is its slot); the one-thread pipeline keeps the
   * view, so its bytes must stay until the chunk is taken (`ahead` is 0).
   */
  check(stored: Uint8Array, sha256: string): void;
  /** The oldest queued chunk once hashed: its stored bytes (valid until the next `take`) and whether they match. */
  take(): { stored: Uint8Array; ok: boolean };
  /** A buffer of `n` bytes for the next raw chunk. */
  rawSlot(n: number): Uint8Array;
  /**
   * Hash the raw chunk just decoded into `rawSlot`'s buffer and write it at
   * the target's current offset. `chunk` is its index in the payload: a
   * failed write names it and its byte offset on the target ("cannot write
   * PATH at chunk N (byte OFFSET): …"), from this call or, threaded, a later one.
   */
  commit(view: Uint8Array, chunk: number): void;
  /** Raw chunks hashed and written so far (their write(2) has returned). */
  written(): number;
  /** Hash bytes already on the target (a resume's re-read) without writing them. */
  rehash(bytes: Uint8Array): void;
  /** Wait for every queued write; the whole payload's SHA-256. @throws {ZbError} IO, INTERNAL */
  finish(): Promise<string>;
  close(): void;
}

export interface PipelineSizes {
  /** The largest raw chunk. */
  raw: number;
  /** The largest stored chunk. */
  stored: number;
}

const STORED_SLOTS = 2;
const RAW_SLOTS = 3;
/**
 * Raw chunks the worker may have queued before the main thread checks the
 * next stored chunk itself: the threads' loads differ with the image's
 * compression ratio, so the split adapts (measured: the worker carried
 * ~0.95 s per GiB against the main thread's ~0.75 s when it took every check).
 */
const BACKLOG = 2;
/** A worker whose counters stand still this long fails the install as IO: a write(2) can block for seconds on a slow card, not minutes. */
const STALL_MS = 120_000;
/** How long a worker may take to start before everything stays on this thread. */
const READY_MS = 2000;

// ctrl (Int32Array) cells: counters the worker bumps, the two queues' heads
// and a wake-up counter bumped on every post.
const READY = 0;
const STORED_DONE = 1;
const RAW_DONE = 2;
const FAILED = 3;
const ERR_LEN = 4;
const DIGESTED = 5;
const POSTED_STORED = 6;
const POSTED_RAW = 7;
const WAKE = 8;
const CTRL_CELLS = 9;
const ERR_BYTES = 2048;
/** The worker's error message is cut to this many characters, so its JSON fits ERR_BYTES whatever it holds. */
const ERR_CHARS = 200;
// Jobs: [kind, offset, length, extra, chunk] in two rings of JOBS each (stored
// checks, then raw chunks); never more than STORED_SLOTS resp. RAW_SLOTS + 1
// outstanding, so a ring cannot overrun. `chunk` is a raw chunk's index in
// the payload, for the message when its write fails.
const JOBS = 16;
const JOB_INTS = 5;
const JOB_STORED = 1;
const JOB_RAW = 2;
const JOB_HASH = 3;
const JOB_DIGEST = 4;

// The worker takes jobs from shared rings, not from postMessage: a message
// wakes the worker's event loop (tens of µs, twice per chunk); a futex wait
// does not. Stored checks go first: the main thread waits for them before it
// can decompress, while raw chunks have slots to spare. JOB_STORED hashes a
// stored slot into dig[slot]; JOB_RAW adds a raw slot to the whole-payload
// hash and writes it to the fd; JOB_HASH only hashes (a resume's re-read);
// JOB_DIGEST publishes the final digest and ends the loop. Errors: text in
// err, FAILED set, every cell woken; a write's error names its chunk and
// where that chunk starts among the bytes this worker wrote (at).
const WORKER = `import { writeSync } from "node:fs";
self.onmessage = (e) => {
  const { ring, stored } = e.data, dig = new Uint8Array(e.data.dig), err = new Uint8Array(e.data.err);
  const ctrl = new Int32Array(e.data.ctrl), jobs = new Int32Array(e.data.jobs);
  const raw = new Bun.CryptoHasher("sha256");
  const bump = (i) => { Atomics.add(ctrl, i, 1); Atomics.notify(ctrl, i); };
  bump(${READY});
  let chunk = -1, at = 0; // the raw chunk being written, and the bytes written before it
  try {
    for (let ns = 0, nr = 0; ; ) {
      const wake = Atomics.load(ctrl, ${WAKE});
      if (Atomics.load(ctrl, ${POSTED_STORED}) > ns) {
        const j = (ns++ % ${JOBS}) * ${JOB_INTS};
        dig.set(new Bun.CryptoHasher("sha256").update(new Uint8Array(stored, jobs[j + 1], jobs[j + 2])).digest(), jobs[j + 3] * 32);
        bump(${STORED_DONE});
      } else if (Atomics.load(ctrl, ${POSTED_RAW}) > nr) {
        const j = (${JOBS} + (nr++ % ${JOBS})) * ${JOB_INTS}, kind = jobs[j], len = jobs[j + 2];
        if (kind === ${JOB_DIGEST}) {
          dig.set(raw.digest(), ${STORED_SLOTS} * 32);
          bump(${DIGESTED});
          return;
        }
        const v = new Uint8Array(ring, jobs[j + 1], len);
        raw.update(v);
        if (kind === ${JOB_RAW}) {
          chunk = jobs[j + 4];
          for (let done = 0; done < len; ) done += writeSync(jobs[j + 3], v, done, len - done);
          chunk = -1;
          at += len;
        }
        bump(${RAW_DONE});
      } else Atomics.wait(ctrl, ${WAKE}, wake);
    }
  } catch (x) {
    const failed = { code: x && x.code, message: String((x && x.message) || x).slice(0, ${ERR_CHARS}), ...(chunk >= 0 ? { chunk, at } : {}) };
    const text = new TextEncoder().encode(JSON.stringify(failed));
    err.set(text);
    Atomics.store(ctrl, ${ERR_LEN}, text.length);
    Atomics.store(ctrl, ${FAILED}, 1);
    for (let i = 0; i < ${CTRL_CELLS}; i++) Atomics.notify(ctrl, i);
  }
};`;

/** Two threads when a worker starts (within READY_MS), else one. */
export function chunkPipeline(target: Target, sizes: PipelineSizes, opts: { threads?: boolean; stallMs?: number } = {}): ChunkPipeline {
  if (opts.threads !== false && sizes.raw > 0) {
    const t = threaded(target, sizes, opts.stallMs ?? STALL_MS);
    if (t) return t;
  }
  return local(target, sizes);
}

function local(target: Target, sizes: PipelineSizes): ChunkPipeline {
  const h = new Bun.CryptoHasher("sha256");
  const buf = new Uint8Array(sizes.raw);
  let pending: { stored: Uint8Array; ok: boolean } | null = null;
  let count = 0;
  return {
    threaded: false,
    ahead: 0,
    get queued() {
      return pending ? 1 : 0;
    },
    storedSlot: () => null,
    check(stored, sha256) {
      if (pending) throw new ZbError("INTERNAL", "internal error: a checked chunk was not taken");
      // Checked now: the view stays valid until the caller pulls the next chunk, which is after `take`.
      const ok = new Bun.CryptoHasher("sha256").update(stored).digest("hex") === sha256;
      pending = { stored, ok };
    },
    take() {
      if (!pending) throw new ZbError("INTERNAL", "internal error: no chunk to take");
      const p = pending;
      pending = null;
      return p;
    },
    rawSlot: (n) => buf.subarray(0, n),
    commit(view, chunk) {
      h.update(view);
      const at = target.offset;
      try {
        target.write(at, view);
      } catch (e) {
        // The target's own error says the byte; the chunk comes from here, in the threaded pipeline's words.
        throw writeError(target.path, chunk, at, e instanceof ZbError && e.cause !== undefined ? e.cause : e);
      }
      count++;
    },
    written: () => count,
    rehash: (bytes) => void h.update(bytes),
    finish: async () => h.digest("hex"),
    close() {},
  };
}

function threaded(target: Target, sizes: PipelineSizes, stallMs: number): ChunkPipeline | null {
  const ring = new SharedArrayBuffer(RAW_SLOTS * sizes.raw);
  const stored = new SharedArrayBuffer(STORED_SLOTS * Math.max(1, sizes.stored));
  const dig = new Uint8Array(new SharedArrayBuffer((STORED_SLOTS + 1) * 32)); // + the final digest
  const errBytes = new Uint8Array(new SharedArrayBuffer(ERR_BYTES));
  const ctrl = new Int32Array(new SharedArrayBuffer(CTRL_CELLS * 4));
  const jobs = new Int32Array(new SharedArrayBuffer(2 * JOBS * JOB_INTS * 4));
  let worker: Worker;
  let startError: string | null = null;
  try {
    const url = URL.createObjectURL(new Blob([WORKER], { type: "application/javascript" }));
    worker = new Worker(url);
  } catch {
    return null;
  }
  // This thread waits for the worker through Atomics, never through the event loop: the worker must
  // not keep the process alive (a command stopped by a signal ends without waiting for it; close() ends it).
  worker.unref();
  worker.onerror = (e) => {
    startError = (e as ErrorEvent).message ?? "the install worker failed";
  };
  worker.postMessage({ ring, stored, dig: dig.buffer, err: errBytes.buffer, ctrl: ctrl.buffer, jobs: jobs.buffer });
  // A worker that cannot start fails asynchronously; find out now, not mid-install.
  const deadline = performance.now() + READY_MS;
  while (Atomics.load(ctrl, READY) === 0 && !startError && performance.now() < deadline) Atomics.wait(ctrl, READY, 0, 50);
  if (Atomics.load(ctrl, READY) === 0) {
    worker.terminate();
    return null;
  }

  const failure = (): ZbError | null => {
    if (Atomics.load(ctrl, FAILED) === 0) return startError ? new ZbError("INTERNAL", `internal error: ${startError}`) : null;
    // The worker's error as {code, message}, so ENOSPC or EIO read as they do on this thread, and the chunk it was writing.
    let cause: { code?: string; message?: string; chunk?: number; at?: number } = {};
    try {
      cause = JSON.parse(new TextDecoder().decode(errBytes.slice(0, Atomics.load(ctrl, ERR_LEN)))) as typeof cause;
    } catch {
      cause = { message: "the install worker failed" };
    }
    const errno = Object.assign(new Error(cause.message), { code: cause.code });
    if (cause.chunk === undefined || cause.at === undefined) return ioError(`write ${target.path}`, errno);
    return writeError(target.path, cause.chunk, startAt + cause.at, errno);
  };
  /** Block until counter `cell` reaches `n`. @throws {ZbError} once the worker has failed */
  const waitFor = (cell: number, n: number) => {
    // The worker's error events cannot reach this thread while it blocks
    // here, so a worker that died without reporting must not hang the
    // install: give up when its counters stop moving for STALL_MS.
    let seen = Atomics.load(ctrl, STORED_DONE) + Atomics.load(ctrl, RAW_DONE);
    let since = performance.now();
    for (;;) {
      const now = Atomics.load(ctrl, cell);
      if (now >= n) return;
      const f = failure();
      if (f) throw f;
      Atomics.wait(ctrl, cell, now, Math.min(1000, stallMs));
      const moved = Atomics.load(ctrl, STORED_DONE) + Atomics.load(ctrl, RAW_DONE);
      if (moved !== seen) [seen, since] = [moved, performance.now()];
      else if (performance.now() - since > stallMs) {
        // A write(2) or read(2) that does not return is the medium (failing, or throttled far beyond normal), not a bug in zb.
        throw new ZbError("IO", `cannot write ${target.path}${stuckAt()}: the install worker made no progress for ${stallMs / 1000} s (a write to the device did not return; it may be failing or extremely slow)`);
      }
    }
  };
  /** " at chunk N" while the worker has a raw chunk's write outstanding (the oldest one not done), else "". */
  const stuckAt = () => {
    const j = (JOBS + (Atomics.load(ctrl, RAW_DONE) % JOBS)) * JOB_INTS;
    return Atomics.load(ctrl, RAW_DONE) < issued && jobs[j] === JOB_RAW ? ` at chunk ${jobs[j + 4]}` : "";
  };
  const posted = [0, 0];
  /** Queue a job on ring 0 (stored checks) or 1 (raw chunks, digest). */
  const post = (queue: 0 | 1, kind: number, off: number, len: number, extra: number, chunk = 0) => {
    const j = (queue * JOBS + (posted[queue]! % JOBS)) * JOB_INTS;
    jobs[j] = kind;
    jobs[j + 1] = off;
    jobs[j + 2] = len;
    jobs[j + 3] = extra;
    jobs[j + 4] = chunk;
    posted[queue]!++;
    Atomics.store(ctrl, queue === 0 ? POSTED_STORED : POSTED_RAW, posted[queue]!); // publishes the job: Atomics order the plain stores before it
    Atomics.add(ctrl, WAKE, 1);
    Atomics.notify(ctrl, WAKE);
  };

  const expected: string[] = [];
  const lengths: number[] = [];
  /** Per stored slot: which of the worker's checks it is (1-based), or 0 when checked on this thread. */
  const ordinal: number[] = [];
  let workerChecks = 0;
  let checked = 0; // chunks queued by check()
  let taken = 0;
  let issued = 0; // raw chunks handed to the worker
  let rehashed = 0; // of which a resume's re-read, hashed only
  let bytesOut = 0; // raw bytes handed to the worker for writing
  let startAt = 0; // the target's offset when the worker got the descriptor: where its first write lands
  let fd: number | null = null;
  let closed = false;
  const self: ChunkPipeline = {
    threaded: true,
    ahead: 1,
    get queued() {
      return checked - taken;
    },
    storedSlot(n) {
      if (checked - taken > self.ahead || n > sizes.stored) return null;
      return new Uint8Array(stored, (checked % STORED_SLOTS) * sizes.stored, n);
    },
    check(bytes, sha256) {
      if (checked - taken >= STORED_SLOTS) throw new ZbError("INTERNAL", "internal error: too many chunks queued");
      if (bytes.length > sizes.stored) throw new ZbError("INTERNAL", "internal error: a stored chunk is larger than its slot");
      const slot = checked % STORED_SLOTS;
      const off = slot * sizes.stored;
      // Read straight into the slot (storedSlot), or copied here: either way
      // the worker hashes, and the decoder later reads, these very bytes.
      const view = new Uint8Array(stored, off, bytes.length);
      if (bytes.buffer !== stored || bytes.byteOffset !== off) view.set(bytes);
      expected[slot] = sha256;
      lengths[slot] = bytes.length;
      if (issued - Atomics.load(ctrl, RAW_DONE) >= BACKLOG) {
        // The worker is behind on raw chunks: check this one here instead.
        dig.set(new Bun.CryptoHasher("sha256").update(view).digest() as Uint8Array, slot * 32);
        ordinal[slot] = 0;
      } else {
        ordinal[slot] = ++workerChecks;
        post(0, JOB_STORED, off, bytes.length, slot);
      }
      checked++;
    },
    take() {
      if (taken === checked) throw new ZbError("INTERNAL", "internal error: no chunk to take");
      const slot = taken % STORED_SLOTS;
      if (ordinal[slot]! > 0) waitFor(STORED_DONE, ordinal[slot]!);
      const ok = Buffer.from(dig.subarray(slot * 32, slot * 32 + 32)).toString("hex") === expected[slot];
      taken++;
      return { stored: new Uint8Array(stored, slot * sizes.stored, lengths[slot]), ok };
    },
    rawSlot(n) {
      waitFor(RAW_DONE, issued - RAW_SLOTS + 1); // the slot's previous chunk is hashed and written
      return new Uint8Array(ring, (issued % RAW_SLOTS) * sizes.raw, n);
    },
    commit(view, chunk) {
      // The descriptor is lent on the first write: a resume reads the target before.
      if (fd === null) {
        startAt = target.offset;
        fd = target.handOff();
      }
      post(1, JOB_RAW, view.byteOffset, view.length, fd, chunk);
      issued++;
      bytesOut += view.length;
    },
    // RAW_DONE also counts a resume's re-hashed chunks, which were not written now.
    written: () => Math.min(Atomics.load(ctrl, RAW_DONE), issued) - rehashed,
    rehash(bytes) {
      for (let at = 0; at < bytes.length; at += sizes.raw) {
        const part = bytes.subarray(at, at + sizes.raw);
        const s = self.rawSlot(part.length);
        s.set(part);
        post(1, JOB_HASH, s.byteOffset, s.length, 0);
        issued++;
        rehashed++;
      }
    },
    async finish() {
      waitFor(RAW_DONE, issued);
      post(1, JOB_DIGEST, 0, 0, 0);
      waitFor(DIGESTED, 1);
      return Buffer.from(dig.subarray(STORED_SLOTS * 32, STORED_SLOTS * 32 + 32)).toString("hex");
    },
    close() {
      if (closed) return;
      closed = true;
      // The worker may still be writing: the descriptor must not be closed
      // (and its number reused by another file) under it. Writes end in a
      // bounded time, or the worker has failed and stopped writing.
      const until = performance.now() + 30_000;
      while (Atomics.load(ctrl, RAW_DONE) < issued && Atomics.load(ctrl, FAILED) === 0 && !startError && performance.now() < until) {
        Atomics.wait(ctrl, RAW_DONE, Atomics.load(ctrl, RAW_DONE), 100);
      }
      worker.terminate();
      if (fd !== null) target.handBack(bytesOut);
    },
  };
  return self;
}

/**
 * A chunk's failed write, the same words from either pipeline.
 * @example writeError("/dev/mmcblk0p3", 12, 50331648, enospc).message // "cannot write /dev/mmcblk0p3 at chunk 12 (byte 50331648): no space left on device"
 */
function writeError(path: string, chunk: number, at: number, cause: unknown): ZbError {
  return ioError(`write ${path} at chunk ${chunk} (byte ${at})`, cause);
}
