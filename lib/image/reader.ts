/**
 * Read a `.zbi` from a byte stream (file, stdin, HTTP body) in one pass:
 * marker, manifest, signatures — all checked, with the trust policy,
 * `compatible` and the serial floor, before the first payload byte is read —
 * then the payloads as streams of verified chunks.
 *
 * `openImage` with a policy is the only producer of a `VerifiedImage`, and
 * the install engine accepts nothing else (style guide: verification is a
 * type). `{ unverified: true }` is the explicit escape hatch for `image info`
 * and `image sign --no-verify`, which never write a payload anywhere.
 */
import { extract, type Extract, type Header } from "tar-stream";
import { ioError, ZbError } from "../errors.ts";
import { BLOCK, checkEntry, checkUstarHeader, endsInChunk, entrySpan, LIMITS, MANIFEST_NAME, MARKER, MARKER_NAME, MAX_TAIL, payloadOffsets, readSmallEntry, SIGNATURES_NAME, bad, tooLongTail, ustarSize } from "./format.ts";
import { RawHeaders } from "./rawheaders.ts";
import { streamReader, type Cancelable, type DirectReader, type ImageSource, type StreamReader } from "./source.ts";
import { decodeManifest, LIMITS as MANIFEST_LIMITS, type Manifest, type Payload } from "./manifest.ts";
import { checkSignatures, decodeSignatures, type Signature, type TrustStore } from "./sign.ts";

/** An entry as tar-stream hands it out (its Source type is not exported). */
type Source = AsyncIterable<Uint8Array> & { header: Header; offset: number };

/** What a device accepts. */
export interface Policy {
  trust: TrustStore;
  /** Distinct trusted keys that must have signed (default 1). */
  required?: number;
  /** When set, the manifest's `compatible` must equal it. */
  compatible?: string;
  /** When set, the manifest's serial must be at least this. */
  serialFloor?: number;
}

export interface ImageHeader {
  manifest: Manifest;
  manifestBytes: Uint8Array;
  signatures: Signature[];
  /** Key ids of the trusted keys whose signatures verified (empty when unverified). */
  signedBy: string[];
  /**
   * Where each payload's data starts in this image, in manifest order
   * (format.ts payloadOffsets of this manifest's and signatures entry's
   * sizes; the reader refuses any other layout). A seeking resume reads
   * from here: adding a signature (`zb image sign`) keeps the manifest and
   * moves every payload, so an offset remembered from an earlier run of the
   * same manifest may be wrong.
   */
  dataOffsets: number[];
}

declare const verifiedBrand: unique symbol;
/** An image whose signatures, compatible and serial passed the policy. */
export type VerifiedImage = ImageHeader & { readonly [verifiedBrand]: true };

/** One payload entry being read. */
export interface PayloadEntry {
  payload: Payload;
  index: number;
  /** Byte offset of the entry's data in the archive. */
  dataOffset: number;
  data: AsyncIterable<Uint8Array>;
  /**
   * Direct reads only: read each following chunk into the buffer `next(size)`
   * returns instead of the reader's own (the install pipeline's shared slots,
   * which saves a copy per chunk); null there means the reader's own.
   */
  readInto?(next: (size: number) => Uint8Array | null): void;
}

export interface OpenImage<H extends ImageHeader> {
  header: H;
  /** The next payload entry in manifest order, or null after the last (then no entry may follow). */
  nextPayload(): Promise<PayloadEntry | null>;
  /** Stop reading (on error or when done early). */
  close(): void;
}

/** Reads payload bytes in sequence: a file's DirectReader (synchronous) or a stream's StreamReader. */
type PayloadReader = DirectReader | StreamReader;

/**
 * Open a source for install or verify with the policy: a file's payloads
 * are read with direct reads (source.direct), a stream's (stdin, a FIFO, a
 * URL) with a StreamReader — the header entries through the tar parser, the
 * payload bytes straight into the caller's buffers (readInto). Either way
 * no buffer is made per read beyond what the stream itself makes.
 * @throws {ZbError} IMG_FORMAT, SIG_INVALID, IMG_INCOMPATIBLE, ROLLBACK_REFUSED, IO
 */
export async function openVerified(source: ImageSource, policy: Policy): Promise<OpenImage<VerifiedImage>> {
  return (await openSource(source, { policy })) as OpenImage<VerifiedImage>;
}

/**
 * Open a source without checking trust (`image sign --no-verify`, which
 * copies the payloads), read as openVerified reads it: so an image on a block device
 * ends at its end-of-archive blocks for every command (directPayloads).
 * @throws {ZbError} IMG_FORMAT, IO
 */
export async function openUnverified(source: ImageSource): Promise<OpenImage<ImageHeader>> {
  return await openSource(source, { unverified: true });
}

async function openSource(source: ImageSource, check: { policy: Policy } | { unverified: true }): Promise<OpenImage<ImageHeader>> {
  const data = await source.open(0);
  if (source.direct) return openImage(data, check, source.direct());
  const r = streamReader(data);
  return openImage(headerEntries(r), check, r);
}

/**
 * Open an image stream and check everything that comes before the payloads.
 *
 * `direct`: after the header, payload bytes are read into one reused buffer
 * (or the caller's, readInto), not through the tar parser — each yielded
 * chunk is valid until the next is pulled, so the consumer must be done with
 * it by then (install and verify are). A DirectReader reads a file from its
 * start; a StreamReader goes on where `input` stopped (headerEntries).
 * Without it the image is read for its header only (`zb image info`):
 * `nextPayload` then fails with INTERNAL.
 * @throws {ZbError} IMG_FORMAT, SIG_INVALID, IMG_INCOMPATIBLE, ROLLBACK_REFUSED, IO
 */
export async function openImage(input: AsyncIterable<Uint8Array>, check: { policy: Policy }, direct?: PayloadReader): Promise<OpenImage<VerifiedImage>>;
export async function openImage(input: AsyncIterable<Uint8Array>, check: { unverified: true }, direct?: PayloadReader): Promise<OpenImage<ImageHeader>>;
export async function openImage(input: AsyncIterable<Uint8Array>, check: { policy: Policy } | { unverified: true }, direct?: PayloadReader): Promise<OpenImage<ImageHeader>>;
export async function openImage(input: AsyncIterable<Uint8Array>, check: { policy: Policy } | { unverified: true }, direct?: PayloadReader): Promise<OpenImage<ImageHeader>> {
  const tar = extract();
  const trail = new RawHeaders();
  void feed(input, tar, trail); // its failures reach the reader through the parser
  const entries = tar[Symbol.asyncIterator]() as AsyncIterator<Source>;
  let index = 0;
  /** Where the next header must start: zb's layout has nothing between entries. */
  let expectedOffset = 0;
  const next = async (expected: string): Promise<Source> => {
    const r = await entries.next().catch((e: unknown) => {
      throw tarError(e);
    });
    if (r.done) throw index > 0 ? bad(`the archive ends where ${JSON.stringify(expected)} should follow`) : noEntry(trail.bytes);
    checkEntry(r.value.header, expected, index);
    // tar-stream applies pax global and GNU long-name/link headers silently;
    // they show up only as a header that starts later than expected.
    if (r.value.offset !== expectedOffset) throw bad(`entry ${index + 1} (${JSON.stringify(r.value.header.name)}) is preceded by extension headers`);
    // The same rule as the file path's payloads (checkUstarHeader), on the raw block tar-stream parsed.
    const raw = trail.take(expectedOffset);
    if (!raw) throw bad(`entry ${index + 1} (${JSON.stringify(r.value.header.name)}) has no ustar header where one must start`);
    checkUstarHeader(raw, expected, r.value.header.size);
    expectedOffset += entrySpan(r.value.header.size);
    index++;
    return r.value;
  };
  const close = () => {
    tar.destroy();
    (input as Cancelable).cancel?.(); // an HTTP body not read to its end: its connection goes now
    direct?.close();
  };
  try {
    const marker = await readSmallEntry(guard(await next(MARKER_NAME)), MARKER_NAME, LIMITS.marker);
    if (Buffer.from(marker).toString("latin1") !== MARKER) throw bad(`${MARKER_NAME} says ${JSON.stringify(Buffer.from(marker).toString("latin1"))}, expected ${JSON.stringify(MARKER)}`);
    const manifestBytes = await readSmallEntry(guard(await next(MANIFEST_NAME)), MANIFEST_NAME, MANIFEST_LIMITS.manifestBytes);
    const manifest = decodeManifest(manifestBytes);
    const sigBytes = await readSmallEntry(guard(await next(SIGNATURES_NAME)), SIGNATURES_NAME, LIMITS.signatures);
    const signatures = decodeSignatures(sigBytes, { maxCount: LIMITS.signatureCount });
    const dataOffsets = payloadOffsets(manifestBytes.length, sigBytes.length, manifest.payloads.map((p) => p.stored.size));
    const header: ImageHeader = { manifest, manifestBytes, signatures, signedBy: [], dataOffsets };
    if ("policy" in check) applyPolicy(header, check.policy);
    if (!direct) {
      // Header only (`zb image info`): payloads are read with a direct reader (openSource gives one to
      // every source), never through the tar parser, so there is no second path to keep in step.
      return { header, close, nextPayload: () => Promise.reject(new ZbError("INTERNAL", "internal error: the payloads of an image opened without a payload reader were asked for")) };
    }
    tar.destroy();
    return { header, close, nextPayload: directPayloads(direct, manifest, dataOffsets) };
  } catch (e) {
    close();
    throw e;
  }
}

/**
 * Direct reads never wait on the event loop, so whatever it delivers — a
 * signal handler above all (Ctrl-C, which stops the command through an
 * AbortSignal, source.ts stoppable) — would wait for the whole payload: the
 * reader lets it run every TURN_BYTES (one setImmediate per 32 MiB, nothing
 * per chunk).
 */
const TURN_BYTES = 32 << 20;
/** Resolves after the event loop has run once (signal handlers, timers, I/O callbacks). */
export const eventLoopTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * The first three entries of a stream (marker, manifest, signatures: the
 * header) for the tar parser, each read whole by following its header's
 * size, and nothing after them: the payloads are read from `r` itself
 * (directPayloads). The parts are the parser's own (it keeps them), at most
 * HEADER_PART bytes each: an entry larger than its limit is refused by
 * readSmallEntry before much of it is read. A block that is not a header
 * (its size unreadable) ends the feed; the parser says what is wrong.
 */
async function* headerEntries(r: StreamReader): AsyncGenerator<Uint8Array> {
  for (let entry = 0; entry < 3; entry++) {
    const head = new Uint8Array(BLOCK);
    const n = await r.read(head);
    yield head.subarray(0, n);
    const size = n === BLOCK ? ustarSize(head) : null;
    if (size === null) return;
    for (let left = entrySpan(size) - BLOCK; left > 0; ) {
      const part = new Uint8Array(Math.min(left, HEADER_PART));
      const got = await r.read(part);
      if (got > 0) yield part.subarray(0, got);
      if (got < part.length) return;
      left -= got;
    }
  }
}

const HEADER_PART = 64 << 10;

/**
 * Payloads read with read(2) (or a stream's reads, into the same buffers):
 * each preceded by its checked ustar header; only zeros after the last.
 */
function directPayloads(r: PayloadReader, m: Manifest, offsets: readonly number[]): () => Promise<PayloadEntry | null> {
  const buf = new Uint8Array(Math.max(BLOCK, ...m.payloads.flatMap((p) => p.chunks.map((c) => c.size))));
  // A file's reads return a number; a stream's a promise (awaited only then: nothing added per chunk for a file).
  const read = async (view: Uint8Array): Promise<number> => {
    const n = r.read(view);
    return typeof n === "number" ? n : await n;
  };
  const skipTo = async (offset: number) => {
    while (r.position < offset) {
      const want = Math.min(buf.length, offset - r.position);
      if ((await read(buf.subarray(0, want))) < want) throw bad("the archive ends early");
    }
  };
  let index = 0;
  return async () => {
    if (index === m.payloads.length) {
      await skipTo(offsets.at(-1)! + entrySpan(m.payloads.at(-1)!.stored.size) - BLOCK);
      await checkArchiveEnd(read, r.device === true, buf);
      return null;
    }
    const payload = m.payloads[index]!;
    const dataOffset = offsets[index]!;
    await skipTo(dataOffset - BLOCK);
    const head = buf.subarray(0, BLOCK);
    if ((await read(head)) < BLOCK) throw bad(`the archive ends where ${JSON.stringify(payload.name)} should follow`);
    checkUstarHeader(head, payload.name, payload.stored.size);
    let into: ((size: number) => Uint8Array | null) | null = null;
    async function* data(): AsyncGenerator<Uint8Array> {
      let sinceTurn = 0;
      let at = dataOffset; // where chunk i starts in the image
      for (let i = 0; i < payload.chunks.length; i++) {
        const c = payload.chunks[i]!;
        const view = into?.(c.size) ?? buf.subarray(0, c.size);
        let n = r.read(view);
        if (typeof n !== "number") n = await n;
        if (n < c.size) throw endsInChunk(payload.name, i, at, c.size, at + n);
        at += c.size;
        yield view;
        sinceTurn += c.size;
        if (sinceTurn >= TURN_BYTES) {
          sinceTurn = 0;
          await eventLoopTurn();
        }
      }
    }
    return { payload, index: index++, dataOffset, data: data(), readInto: (next) => void (into = next) };
  };
}

/** The two zero blocks that end a tar archive. */
const END_BLOCKS = 2 * BLOCK;

/**
 * What follows the last payload's padding, read with `read` (into `buf`, at
 * least one block): only zeros, at most MAX_TAIL bytes of them. A device's
 * end is not the image's: an image written raw to a larger stick is followed
 * by whatever the stick held before, so there the archive ends with the two
 * end-of-archive blocks (zeros; fewer when the device ends first) and nothing
 * after them is the image's. Shared by a fresh read (directPayloads) and a
 * resume that seeked to the last payload (tail.ts).
 * @throws {ZbError} IMG_FORMAT "data follows the last payload", or a tail too long; what `read` throws
 */
export async function checkArchiveEnd(read: (buf: Uint8Array) => Promise<number> | number, device: boolean, buf: Uint8Array): Promise<void> {
  if (device) {
    const end = new Uint8Array(END_BLOCKS);
    const n = await read(end);
    if (end.subarray(0, n).some((b) => b !== 0)) throw bad("data follows the last payload");
    return;
  }
  // One byte past the bound tells a tail that is too long without reading the rest of it.
  for (let tail = 0, n = -1; n !== 0 && tail <= MAX_TAIL; tail += n) {
    const part = buf.subarray(0, Math.min(buf.length, MAX_TAIL + 1 - tail));
    n = await read(part);
    if (part.subarray(0, n).some((b) => b !== 0)) throw bad("data follows the last payload");
    if (tail + n > MAX_TAIL) throw tooLongTail();
  }
}

/** Signatures, then compatible, then the serial floor: the order a user would fix them in. */
function applyPolicy(h: ImageHeader, p: Policy): void {
  h.signedBy = checkSignatures(h.manifestBytes, h.signatures, p.trust, p.required ?? 1).trustedSigners;
  if (p.compatible !== undefined && h.manifest.compatible !== p.compatible) {
    throw new ZbError("IMG_INCOMPATIBLE", `cannot accept the image: it is for ${JSON.stringify(h.manifest.compatible)}, this device is ${JSON.stringify(p.compatible)}`);
  }
  if (p.serialFloor !== undefined && h.manifest.serial < p.serialFloor) {
    throw new ZbError("ROLLBACK_REFUSED", `cannot accept the image: serial ${h.manifest.serial} is below the anti-rollback floor ${p.serialFloor}`, {
      hint: `images with serial ${p.serialFloor} or above are accepted; the version string (${h.manifest.version}) is not compared`,
    });
  }
}

/**
 * Pump the input into the tar parser with backpressure. A failure of the
 * source (a reset connection, a read error) becomes ZbError IO and reaches
 * the reader through the parser; anything the parser raises by itself is a
 * broken archive (tarError).
 */
async function feed(input: AsyncIterable<Uint8Array>, tar: Extract, trail: RawHeaders): Promise<void> {
  try {
    for await (const chunk of input) {
      if (tar.destroyed) return;
      trail.push(chunk);
      // A parser destroyed meanwhile (the image closed early) never drains: stop, which ends the source's request.
      if (!tar.write(chunk)) await drainedOrClosed(tar);
      if (tar.destroyed) return;
      // Zeros without end (an image followed by /dev/zero) would be read for ever: stop at the bound.
      if (trail.tooLong) {
        // Zeros from the first byte on (/dev/zero, a zeroed disk): there is no last payload to blame.
        tar.destroy(trail.dataAfterEnd ? bad("data follows the last payload") : trail.noEntry ? noEntry(trail.bytes) : tooLongTail());
        return;
      }
    }
    (tar.end as unknown as () => void).call(tar);
  } catch (e) {
    tar.destroy(ioError("read the image", e)); // a ZbError stays as it is; an errno reads as words ("input/output error")
  }
}

/** Until the parser wants more input or is gone (each wait removes both of its listeners). */
function drainedOrClosed(tar: Extract): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      tar.off("drain", done);
      tar.off("close", done);
      resolve();
    };
    tar.on("drain", done);
    tar.on("close", done);
  });
}

/** An entry's bytes, with the parser's own errors turned into ZbErrors. */
async function* guard(data: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  try {
    yield* data;
  } catch (e) {
    throw tarError(e);
  }
}

/**
 * An archive that ended before its first entry: nothing at all, or the
 * end-of-archive zeros (/dev/null, a zeroed file, /dev/zero). How many zeros
 * is not said: a stream is read only to its first block, a file up to the bound.
 */
function noEntry(bytes: number): ZbError {
  return bad(bytes === 0 ? "it is empty (0 bytes)" : "it is not a zb image: it holds no entry, only zeros");
}

function tarError(e: unknown): ZbError {
  if (e instanceof ZbError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  // tar-stream's text suggests gunzip; a .zbi is never compressed as a whole, so say what was found.
  if (msg.startsWith("Invalid tar header")) return bad("it is not a zb image: no valid tar header where one must start");
  return bad(`the tar structure is broken (${msg})`);
}
