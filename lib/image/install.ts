/**
 * The install engine: one payload of a verified image into a file or block
 * device, verify-before-write, resumable, in constant memory.
 *
 *   1. open the image and check marker, manifest, signatures, compatible and
 *      serial floor (reader.ts) — nothing is written before that passes
 *   2. write the journal: state "writing" (the target is not installed)
 *   3. for each chunk: SHA-256 of the stored bytes must equal the manifest's
 *      *before* the chunk is decompressed or written; decompress into a
 *      buffer of exactly the chunk's raw size; feed the whole-payload hash;
 *      write it next on the target (pipeline.ts spreads this over two
 *      threads); every JOURNAL_BYTES of written chunks start an fdatasync
 *      of the target in the background and, once it has finished, record
 *      the chunks it covered in the journal (never more than is durable)
 *   4. the whole payload's raw SHA-256 must equal the manifest's; fdatasync;
 *      journal state "complete" — only now is the payload installed
 *
 * A failure anywhere stops the install and records it in the journal
 * ("failed", with the chunk and offset); the target stays not-installed.
 * `resume` continues from the journal's last durable chunk: the image is
 * verified again, the bytes already on the target are read back into the
 * whole-payload hash (so the final check covers them too), and a file or URL
 * source seeks straight to the first missing chunk — at its offset in the
 * image just verified, which a re-signed copy of the same image moves.
 */
import { ZbError } from "../errors.ts";
import type { Sys } from "../sys/sys.ts";
import { holdForCheck, openTarget, type Target } from "../sys/target.ts";
import { checkSeparateFiles, checkTargetSize, findPayload, resumePoint } from "./installchecks.ts";
import { exactChunks } from "./chunks.ts";
import { BLOCK, checkUstarHeader, entrySpan } from "./format.ts";
import { checkReplaceable, readJournal, writeJournal, type Journal } from "./journal.ts";
import type { Payload } from "./manifest.ts";
import { eventLoopTurn, openVerified, type OpenImage, type PayloadEntry, type Policy, type VerifiedImage } from "./reader.ts";
import type { ImageSource } from "./source.ts";
import { chunkPipeline, type ChunkPipeline } from "./pipeline.ts";
import { checkOnMedium, targetHolds } from "./readback.ts";
import type { UncachedMode } from "../sys/uncached.ts";
import { frameDecoder } from "./zstd.ts";
import { payloadAndTail, type PayloadAndTail } from "./tail.ts";

/** Fsync and journal at most this far apart: the work a power cut can cost. */
export const JOURNAL_BYTES = 32 << 20;

export interface InstallOptions {
  payload: string;
  target: string;
  journal: string;
  resume?: boolean;
  /** After the install, read the payload back from the medium past the page cache (readback.ts). */
  readBack?: boolean;
  progress?: (e: ProgressEvent) => void;
  /**
   * Stops the install (the stages abort it on SIGINT and SIGTERM): the next
   * chunk, the next 32 MiB of a resume's re-read or the next 4 MiB of the
   * read-back fails with `signal.reason`, like any failure: the journal says
   * "failed" and keeps the chunks made durable, so `resume` continues there.
   * Checked as a flag, per chunk.
   */
  signal?: AbortSignal;
  /**
   * Told once this run has written the journal (its first write): from then
   * on `resume` continues this run. Until then a journal at that path is
   * another run's, perhaps of another image (the stages' --resume hint).
   */
  onJournal?: () => void;
  /**
   * Told when `resume` was asked for but the install starts from chunk 0
   * because the journal is an older run's of another image (the update
   * before this one, at the same target): why, for the console.
   */
  onFreshStart?: (why: string) => void;
  /** Tests: force the fallback zstd decoder. */
  preferNativeZstd?: boolean;
  /** Tests: hash on the main thread instead of a worker. */
  hashThreads?: boolean;
  /** Tests: how the target is opened (lib/sys/target.ts), e.g. to make its syncs fail. */
  openTarget?: typeof openTarget;
}

export type ProgressEvent =
  | { type: "start"; payload: string; chunks: number; rawTotal: number; storedTotal: number; resumeFrom: number }
  | { type: "progress"; payload: string; chunk: number; chunks: number; rawBytes: number; rawTotal: number; storedBytes: number; storedTotal: number; elapsedMs: number }
  | { type: "read-back"; payload: string; rawBytes: number; rawTotal: number; elapsedMs: number }
  | { type: "done"; payload: string; rawBytes: number; rawSha256: string; elapsedMs: number };

export interface InstallResult {
  payload: string;
  target: string;
  rawSize: number;
  rawSha256: string;
  chunks: number;
  resumedFrom: number;
  alreadyInstalled: boolean;
  /** How the payload was read back (--read-back, or the check of a "complete" journal), else null. */
  readBack: UncachedMode | null;
  seconds: number;
}

/**
 * @throws {ZbError} USAGE when the target, the journal and the image are not three separate files, or (without
 *   `resume`) the journal path holds a file that is neither empty nor shaped like a journal; IO for a `resume` whose
 *   journal is not one (journal.ts readJournal), before the image is opened;
 *   TARGET_BUSY for a block device in use or a file another install is writing; IMG_FORMAT, SIG_INVALID, IMG_INCOMPATIBLE, ROLLBACK_REFUSED before anything is written;
 *   PAYLOAD_CORRUPT, IO, TARGET_MISMATCH (the read-back) after (the journal then says "failed"); USAGE for a bad payload name or resume;
 *   `opts.signal.reason` once the signal aborts (before the journal is "complete")
 */
export async function install(sys: Sys, source: ImageSource, policy: Policy, opts: InstallOptions): Promise<InstallResult> {
  const started = performance.now();
  checkSeparateFiles(sys, source, opts);
  // A journal that cannot be used is found before the image is read (perhaps downloaded). Only a
  // resume reads the old journal; a fresh install starts from chunk 0 and needs nothing of it.
  let previous: Journal | null = null;
  if (opts.resume) previous = readJournal(sys, opts.journal);
  else checkReplaceable(sys, opts.journal);
  const img = await openVerified(source, policy);
  try {
    const payload = findPayload(img.header, opts.payload);
    const imageId = sha256hex(img.header.manifestBytes);
    if (previous && previous.image !== imageId && previous.payload === opts.payload && previous.target === opts.target) {
      // The run before installed (or tried) another image into this target: nothing of it applies here, and the
      // install starts from chunk 0 as it does without a journal, so a script may always pass --resume.
      opts.onFreshStart?.(`the journal ${opts.journal} is of another image`);
      previous = null;
    }
    let from = resumePoint(previous, opts, imageId, payload);
    const claimsComplete = previous?.state === "complete" && opts.resume === true;
    // A read-back asked for once is asked for until the install is complete: a resume without
    // --read-back after a TARGET_MISMATCH would otherwise call the lying medium's payload complete.
    const readBack = opts.readBack === true || (opts.resume === true && previous?.readBack === true);
    if (claimsComplete) {
      // "complete" is a claim about the target: it only counts while the target still holds the payload.
      // Checked read-only (holdForCheck): a mounted slot or a read-only target that holds it is installed.
      const hold = holdForCheck(opts.target);
      let held: UncachedMode | null = null;
      try {
        if (hold !== null) held = await targetHolds(opts.target, payload, opts.signal);
      } finally {
        hold?.close();
      }
      if (held !== null) return result(opts, payload, from, true, started, held);
      from = 0; // removed, cut short or changed since: install it again
    }
    const existed = sys.stat(opts.target) !== null;
    // A file target is locked (a device claimed) from here to close — TARGET_BUSY for a second
    // install — before the journal is written.
    const target = (opts.openTarget ?? openTarget)(opts.target, { create: from === 0 });
    try {
      checkTargetSize(target, payload);
      const journal: Journal = {
        version: 1, image: imageId, payload: payload.name, target: opts.target, state: "writing",
        chunksDone: from, dataOffset: null, ...(readBack ? { readBack: true } : {}),
      };
      try {
        writeJournal(sys, opts.journal, journal);
        opts.onJournal?.();
      } catch (e) {
        // Created just now and still empty: leave nothing behind (best effort; the journal's error is the one to report).
        if (!existed) {
          try {
            sys.unlink(opts.target);
          } catch {
            // an empty file stays
          }
        }
        throw e;
      }
      let data: PayloadBytes | null = null;
      try {
        data = await payloadData(img, source, payload, from, journal, sys, opts.journal);
        const rawSha = await writeChunks(sys, img.header.manifest.chunkSize, payload, from, data, target, journal, opts);
        const last = img.header.manifest.payloads.at(-1) === payload;
        // The archive must end with the last payload: read sequentially to its end, or, after a
        // seek, read on past it in the same stream.
        if (last && !data.seeked) await img.nextPayload();
        await data.tail?.check();
        // Everything checked: a file target that was longer keeps no stale tail (a device keeps its size).
        target.truncate(payload.raw.size);
        target.sync();
        const readBackMode = readBack
          ? await checkOnMedium(opts.target, payload, (n) => {
              if (opts.signal?.aborted) throw opts.signal.reason;
              opts.progress?.({ type: "read-back", payload: payload.name, rawBytes: n, rawTotal: payload.raw.size, elapsedMs: performance.now() - started });
            })
          : null;
        journal.state = "complete";
        journal.chunksDone = payload.chunks.length;
        writeJournal(sys, opts.journal, journal);
        opts.progress?.({ type: "done", payload: payload.name, rawBytes: payload.raw.size, rawSha256: rawSha, elapsedMs: performance.now() - started });
        return result(opts, payload, from, false, started, readBackMode);
      } catch (e) {
        await data?.tail?.close().catch(() => undefined);
        journal.state = "failed";
        journal.error = e instanceof Error ? e.message : String(e);
        try {
          writeJournal(sys, opts.journal, journal);
        } catch {
          // The journal's disk failed too (often the same full disk): the original error is the one to report,
          // and the journal still says "writing", which also means not installed.
        }
        throw e;
      }
    } finally {
      target.close();
    }
  } finally {
    img.close();
  }
}

/** The stored bytes of the payload from chunk `from` on (and, reading directly, where to read them to). */
interface PayloadBytes {
  data: AsyncIterable<Uint8Array>;
  readInto?: PayloadEntry["readInto"];
  /** Read from the payload's offset (a resume), not through the archive from byte 0. */
  seeked: boolean;
  /** Where the first of these bytes lies in the image. */
  imageOffset: number;
  /** A seeking resume of the last payload: what follows it, to check once it is written. */
  tail?: PayloadAndTail;
}

/**
 * The stored bytes of the payload from chunk `from` on. A resume from a
 * seekable source starts at the payload's offset in *this* image, the one
 * whose header was just verified (ImageHeader.dataOffsets), never at the
 * offset an earlier run recorded: the same manifest re-signed since has its
 * payloads elsewhere (over HTTP, the later requests carry If-Range, so they
 * read the image that header came from).
 */
async function payloadData(img: OpenImage<VerifiedImage>, source: ImageSource, payload: Payload, from: number, journal: Journal, sys: Sys, journalPath: string): Promise<PayloadBytes> {
  const skipBytes = payload.chunks.slice(0, from).reduce((a, c) => a + c.size, 0);
  if (from > 0 && source.seekable) {
    const dataOffset = img.header.dataOffsets[img.header.manifest.payloads.indexOf(payload)]!;
    img.close();
    journal.dataOffset = dataOffset;
    writeJournal(sys, journalPath, journal);
    await checkEntryHeaderAt(source, dataOffset - BLOCK, payload);
    // Every chunk done (a run stopped in its read-back): nothing to read, so nothing opened (over HTTP, a request).
    const left = payload.stored.size - skipBytes;
    const imageOffset = dataOffset + skipBytes;
    if (left === 0) return { data: nothing(), seeked: true, imageOffset };
    const stream = await source.open(imageOffset);
    if (img.header.manifest.payloads.at(-1) !== payload) return { data: take(stream, left), seeked: true, imageOffset };
    // The last payload: what follows it is read from the same stream, as a fresh install reads it.
    const tail = payloadAndTail(stream, left, entrySpan(payload.stored.size) - BLOCK - payload.stored.size, isDevice(sys, source));
    return { data: tail.payload, seeked: true, imageOffset, tail };
  }
  for (;;) {
    const entry = await img.nextPayload();
    if (!entry) throw new ZbError("INTERNAL", `internal error: payload ${payload.name} not found in the archive`);
    if (entry.payload.name !== payload.name) {
      for await (const _ of entry.data) void _; // an earlier payload: read past it
      continue;
    }
    journal.dataOffset = entry.dataOffset;
    writeJournal(sys, journalPath, journal);
    return { data: skip(entry.data, skipBytes), readInto: skipBytes === 0 ? entry.readInto : undefined, seeked: false, imageOffset: entry.dataOffset + skipBytes };
  }
}

async function writeChunks(sys: Sys, chunkSize: number, p: Payload, from: number, input: PayloadBytes, target: Target, journal: Journal, opts: InstallOptions): Promise<string> {
  const started = performance.now();
  const sizes = { raw: Math.min(chunkSize, p.raw.size), stored: p.chunks.reduce((m, c) => Math.max(m, c.size), 0) };
  const pipe = chunkPipeline(target, sizes, opts.hashThreads === false ? { threads: false } : {});
  const decoder = frameDecoder(opts.preferNativeZstd === false ? { preferNative: false } : {});
  const storedTotal = p.stored.size;
  let storedBytes = p.chunks.slice(0, from).reduce((a, c) => a + c.size, 0);
  // The journal advances in steps of whole chunks, once they are written
  // (the worker writes a chunk or two behind the decoder).
  const perSync = Math.max(1, Math.floor(JOURNAL_BYTES / chunkSize));
  let mark = from + perSync;
  /** The background sync in flight, and the chunk count it will make durable. */
  let pending: Promise<void> | null = null;
  const settle = async () => {
    if (pending) await pending;
    pending = null;
  };
  let next = from; // the next chunk to decompress and write
  /** Decompress and write the oldest checked chunk (its SHA-256 is compared first). */
  const writeNext = async () => {
    const i = next;
    const { stored, ok } = pipe.take();
    const where = `chunk ${i} of ${p.name} (stored bytes ${storedBytes}–${storedBytes + stored.length - 1})`;
    if (!ok) throw new ZbError("PAYLOAD_CORRUPT", `cannot install ${p.name}: ${where} does not match its signed SHA-256; nothing of it was written`);
    const rawLen = Math.min(chunkSize, p.raw.size - i * chunkSize);
    const out = pipe.rawSlot(rawLen);
    if (p.encoding === "none") out.set(stored);
    else if (!decoder.decode(stored, out)) {
      throw new ZbError("IMG_FORMAT", `cannot install ${p.name}: ${where} is not a zstd frame of ${rawLen} bytes`);
    }
    pipe.commit(out, i);
    storedBytes += stored.length;
    next++;
    // Only chunks whose write(2) has returned before the sync starts: it covers them.
    if (from + pipe.written() >= mark) {
      await settle(); // at most one sync in flight: the journal advances in order
      const covered = mark;
      const sync = target.syncInBackground().then(() => {
        journal.chunksDone = covered;
        writeJournal(sys, opts.journal, journal);
      });
      // Its failure (EIO from a dying card) is thrown by the next settle(); until then it must not
      // count as an unhandled rejection, which the runtime would report with a stack trace.
      sync.catch(() => undefined);
      pending = sync;
      mark += perSync;
    }
    opts.progress?.({ type: "progress", payload: p.name, chunk: next, chunks: p.chunks.length, rawBytes: Math.min(next * chunkSize, p.raw.size), rawTotal: p.raw.size, storedBytes, storedTotal, elapsedMs: performance.now() - started });
  };
  opts.progress?.({ type: "start", payload: p.name, chunks: p.chunks.length, rawTotal: p.raw.size, storedTotal, resumeFrom: from });
  let digest: string;
  try {
    await rehashWritten(target, Math.min(from * chunkSize, p.raw.size), pipe, opts.signal);
    input.readInto?.((n) => pipe.storedSlot(n));
    let i = from;
    for await (const stored of exactChunks(input.data, p.chunks.slice(from).map((c) => c.size), { payload: p.name, firstChunk: from, imageOffset: input.imageOffset })) {
      if (opts.signal?.aborted) throw opts.signal.reason;
      pipe.check(stored, p.chunks[i]!.sha256);
      i++;
      while (pipe.queued > pipe.ahead) await writeNext();
    }
    while (pipe.queued > 0) await writeNext();
    digest = await pipe.finish();
  } finally {
    pipe.close();
    decoder.close();
    await settle();
  }
  if (digest !== p.raw.sha256) {
    // Every chunk matched the manifest on its way in: after a resume the bytes read back from before it are the suspects.
    const hint = from > 0 ? { hint: `the ${from} chunks already on the target before the resume do not hold what was written: install again without --resume` } : {};
    throw new ZbError("PAYLOAD_CORRUPT", `cannot install ${p.name}: the written payload's SHA-256 ${digest} differs from the signed ${p.raw.sha256}`, hint);
  }
  target.sync();
  return digest;
}

/**
 * Resume: what is already on the target goes into the whole-payload hash
 * again. Gigabytes of synchronous reads: every 32 MiB the event loop runs
 * (a signal handler) and `signal` is checked.
 */
async function rehashWritten(target: Target, bytes: number, pipe: ChunkPipeline, signal: AbortSignal | undefined): Promise<void> {
  const step = 4 << 20;
  let held = bytes;
  for (let at = 0; at < bytes; at += step) {
    if (at % JOURNAL_BYTES === 0) {
      if (at > 0) await eventLoopTurn();
      if (signal?.aborted) throw signal.reason;
    }
    const want = Math.min(step, bytes - at);
    const part = target.read(at, want);
    if (part.length > 0) pipe.rehash(part);
    if (part.length < want) {
      held = at + part.length;
      break;
    }
  }
  if (held < bytes) throw new ZbError("IO", `cannot resume: ${target.path} holds ${held} bytes, fewer than the ${bytes} the journal says were written`);
}

/** A seeking resume checks that the ustar header before the data names this payload. */
async function checkEntryHeaderAt(source: ImageSource, offset: number, p: Payload): Promise<void> {
  const head = await readExactly(await source.open(offset), BLOCK);
  try {
    checkUstarHeader(head, p.name, p.stored.size);
  } catch (e) {
    throw new ZbError("IMG_FORMAT", `cannot resume: the image has no entry ${p.name} at byte ${offset} (${(e as Error).message})`, { hint: "install without --resume" });
  }
}

async function readExactly(data: AsyncIterable<Uint8Array>, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let fill = 0;
  for await (const part of data) {
    const take = Math.min(n - fill, part.length);
    out.set(part.subarray(0, take), fill);
    fill += take;
    if (fill === n) break;
  }
  if (fill < n) throw new ZbError("IMG_FORMAT", "cannot resume: the image ends early");
  return out;
}

/**
 * The first `n` bytes of a stream, ended as soon as they are there: asking
 * for one more part would wait for bytes nobody needs (a server that holds
 * the rest back, the idle timer).
 */
async function* take(data: AsyncIterable<Uint8Array>, n: number): AsyncGenerator<Uint8Array> {
  let left = n;
  for await (const part of data) {
    const piece = part.length <= left ? part : part.subarray(0, left);
    left -= piece.length;
    yield piece;
    if (left === 0) return;
  }
}

async function* nothing(): AsyncGenerator<Uint8Array> {}

/** A block device source: its end is not the image's (tail.ts). */
function isDevice(sys: Sys, source: ImageSource): boolean {
  return source.file !== undefined && sys.stat(source.file)?.kind === "block";
}

/** Everything after the first `n` bytes of a stream. */
async function* skip(data: AsyncIterable<Uint8Array>, n: number): AsyncGenerator<Uint8Array> {
  let left = n;
  for await (const part of data) {
    if (left >= part.length) {
      left -= part.length;
      continue;
    }
    yield left > 0 ? part.subarray(left) : part;
    left = 0;
  }
}

export function sha256hex(data: Uint8Array): string {
  return new Bun.CryptoHasher("sha256").update(data).digest("hex");
}

function result(opts: InstallOptions, p: Payload, from: number, already: boolean, started: number, readBack: UncachedMode | null = null): InstallResult {
  return {
    payload: p.name, target: opts.target, rawSize: p.raw.size, rawSha256: p.raw.sha256, chunks: p.chunks.length,
    resumedFrom: from, alreadyInstalled: already, readBack, seconds: (performance.now() - started) / 1000,
  };
}
