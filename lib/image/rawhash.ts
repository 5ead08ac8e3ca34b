/**
 * The whole-payload SHA-256 of an install, computed on the second core.
 *
 * Chunks are decompressed straight into slots of a SharedArrayBuffer ring;
 * a Worker hashes each slot in order (Bun.CryptoHasher, native) while the
 * main thread verifies, decompresses and writes the next chunks. A slot is
 * reused only after the worker has counted it hashed (Atomics), so memory
 * stays at RING × chunk size. Measured: hashing is ~40% of an install's
 * CPU time, and this moves it off the critical path (bench/image-profile.ts).
 * Without workers (or with `threads: false`) it hashes on the main thread.
 */
import { ZbError } from "../errors.ts";

export interface RawHasher {
  readonly threaded: boolean;
  /** A buffer of `n` bytes to fill with the next chunk. */
  slot(n: number): Uint8Array;
  /** Hash the slot just filled (the view `slot` returned). */
  commit(view: Uint8Array): void;
  /** Hash bytes that are not in a slot (a resume's re-read): copied into one. */
  update(bytes: Uint8Array): void;
  digest(): Promise<string>;
  close(): void;
}

const RING = 3;

/** How long a worker may take to start before hashing stays on this thread. */
const READY_MS = 2000;

// The worker: one message per slot to hash, in order; counts each in ctrl[0];
// ctrl[1] = 1 once it runs (the start-up handshake).
const WORKER = `let hasher = new Bun.CryptoHasher("sha256"), ring, ctrl;
self.onmessage = (e) => {
  const m = e.data;
  if (m.init) { ring = m.ring; ctrl = new Int32Array(m.ctrl); Atomics.store(ctrl, 1, 1); Atomics.notify(ctrl, 1); return; }
  if (m.digest) { postMessage({ digest: hasher.digest("hex") }); return; }
  hasher.update(new Uint8Array(ring, m.off, m.len));
  Atomics.add(ctrl, 0, 1);
  Atomics.notify(ctrl, 0);
};`;

export function rawHasher(maxChunk: number, opts: { threads?: boolean } = {}): RawHasher {
  if (opts.threads !== false && maxChunk > 0) {
    try {
      return threaded(maxChunk);
    } catch {
      /* no workers here: hash on this thread */
    }
  }
  return local(maxChunk);
}

function local(maxChunk: number): RawHasher {
  const h = new Bun.CryptoHasher("sha256");
  const buf = new Uint8Array(maxChunk);
  return {
    threaded: false,
    slot: (n) => buf.subarray(0, n),
    commit: (view) => void h.update(view),
    update: (bytes) => void h.update(bytes),
    digest: async () => h.digest("hex"),
    close() {},
  };
}

function threaded(maxChunk: number): RawHasher {
  const ring = new SharedArrayBuffer(RING * maxChunk);
  const ctrl = new Int32Array(new SharedArrayBuffer(8));
  const url = URL.createObjectURL(new Blob([WORKER], { type: "application/javascript" }));
  // The URL stays valid for the process: the worker loads it asynchronously.
  const worker = new Worker(url);
  let failed: string | null = null;
  worker.onerror = (e) => {
    failed = (e as ErrorEvent).message ?? "the hashing worker failed";
  };
  worker.postMessage({ init: true, ring, ctrl: ctrl.buffer });
  // A worker that cannot start fails asynchronously; find out now, not mid-install.
  const deadline = performance.now() + READY_MS;
  while (Atomics.load(ctrl, 1) === 0 && !failed && performance.now() < deadline) Atomics.wait(ctrl, 1, 0, 50);
  if (Atomics.load(ctrl, 1) === 0) {
    worker.terminate();
    throw new Error(failed ?? "the hashing worker did not start");
  }
  let issued = 0;
  /** Block until the worker has hashed at least `n` slots. */
  const waitHashed = (n: number) => {
    while (Atomics.load(ctrl, 0) < n) {
      if (failed) throw new ZbError("INTERNAL", `internal error: ${failed}`);
      Atomics.wait(ctrl, 0, Atomics.load(ctrl, 0), 1000);
    }
  };
  const self: RawHasher = {
    threaded: true,
    slot(n) {
      waitHashed(issued - RING + 1); // the slot's previous chunk is hashed
      const at = (issued % RING) * maxChunk;
      return new Uint8Array(ring, at, n);
    },
    commit(view) {
      worker.postMessage({ off: view.byteOffset, len: view.length });
      issued++;
    },
    update(bytes) {
      for (let at = 0; at < bytes.length; at += maxChunk) {
        const part = bytes.subarray(at, at + maxChunk);
        const s = self.slot(part.length);
        s.set(part);
        self.commit(s);
      }
    },
    digest() {
      if (failed) return Promise.reject(new ZbError("INTERNAL", `internal error: ${failed}`));
      return new Promise((resolve, reject) => {
        worker.onmessage = (e) => resolve((e.data as { digest: string }).digest);
        worker.onerror = (e) => reject(new ZbError("INTERNAL", `internal error: ${(e as ErrorEvent).message}`));
        worker.postMessage({ digest: true });
      });
    },
    close() {
      worker.terminate();
    },
  };
  return self;
}
