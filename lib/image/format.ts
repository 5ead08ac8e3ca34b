/**
 * The `.zbi` container: a POSIX ustar archive whose entries come in a fixed
 * order (docs/image-format.md):
 *
 *   zbi-format        "zbi 1\n": what this file is
 *   manifest.json     canonical JSON (manifest.ts), the signed bytes
 *   signatures.json   signatures over manifest.json (sign.ts)
 *   <payload name>…   one entry per payload, in manifest order
 *
 * So a reader checks every signature before it has read one payload byte,
 * from a stream as well as a file. Entries are regular files with plain
 * names; links, devices, directories, pax/GNU extensions, duplicates,
 * unknown or out-of-order entries are refused. The archive is read with
 * tar-stream, each raw header also checked here (checkUstarHeader), and
 * written with zb's own header encoder (encodeUstarHeader), which gives
 * tar-stream's bytes.
 */
import type { Header } from "tar-stream";
// tar-stream's header encoder, which the package does not export by name (its
// exports map lists only the streams); the version is pinned in package-lock.json.
// @ts-expect-error no types for the internal module
import tarHeaders from "../../node_modules/tar-stream/headers.js";
import { ZbError } from "../errors.ts";

export const MARKER_NAME = "zbi-format";
export const MARKER = "zbi 1\n";
export const MANIFEST_NAME = "manifest.json";
export const SIGNATURES_NAME = "signatures.json";
const SIGNATURE_COUNT = 16;
/** Upper bound of one encoded signature entry: {"alg":"ed25519","keyid":"<64>","sig":"<96>"} is 190 bytes. */
const MAX_SIGNATURE_ENTRY_BYTES = 256;

/**
 * The largest signatures entry decodeSignatures (sign.ts) reads for
 * `maxCount` signatures: 32 bytes of framing and 256 per entry (4128 bytes
 * for 16). Here, with the other limits, so this module needs nothing above it.
 */
export function signaturesBytesLimit(maxCount: number): number {
  return 32 + maxCount * MAX_SIGNATURE_ENTRY_BYTES;
}

/**
 * Entry limits. `signatures` is what decodeSignatures accepts for 16
 * signatures (32 + 16 × 256 = 4128 bytes), so the entry is refused as it is
 * read rather than after buffering more than could ever be valid.
 */
export const LIMITS = { marker: 64, signatures: signaturesBytesLimit(SIGNATURE_COUNT), signatureCount: SIGNATURE_COUNT } as const;
export const BLOCK = 512;
/**
 * The most bytes a reader takes after the last payload's padding, all of
 * them zero. An archive ends with two zero blocks (POSIX ustar; what zb and
 * tar-stream's finalize write: 1024 bytes), and tar(1) pads the archive
 * with zeros to a whole record of its blocking factor: 20 blocks (10 KiB)
 * by default, so the end blocks and the padding come to at most a record
 * and a block (10 752 bytes). 64 KiB also covers records of up to 127 blocks
 * (`tar -b 127`: 65 024 + 512 bytes). More is refused, not read on: an
 * image followed by /dev/zero would otherwise be read for ever.
 */
export const MAX_TAIL = 64 << 10;

/** More zeros after the last payload than {@link MAX_TAIL}. */
export function tooLongTail(): ZbError {
  return bad(`more than ${MAX_TAIL} bytes of zeros follow the last payload (an archive's end blocks and padding are fewer)`);
}
/**
 * The smallest offset at which a payload's data can start: three entries
 * (marker, manifest, signatures) of a header and at least one data block
 * each, then the payload's own header. A journal naming less was not written
 * by zb.
 */
export const MIN_DATA_OFFSET = 3 * (BLOCK + BLOCK) + BLOCK;

/** ustar: a 512-byte header, then the data padded to 512. */
export function entrySpan(size: number): number {
  return BLOCK + Math.ceil(size / BLOCK) * BLOCK;
}

/**
 * Where each payload's data starts in the file, for the plain ustar layout
 * zb writes (resume seeks there and checks the header before it).
 */
export function payloadOffsets(manifestSize: number, signaturesSize: number, storedSizes: readonly number[]): number[] {
  let at = entrySpan(MARKER.length) + entrySpan(manifestSize) + entrySpan(signaturesSize);
  return storedSizes.map((size) => {
    const dataAt = at + BLOCK;
    at += entrySpan(size);
    return dataAt;
  });
}

/**
 * An entry header must be a plain regular file with the expected name.
 * @throws {ZbError} IMG_FORMAT
 */
export function checkEntry(h: Header, expected: string, index: number): void {
  const what = `entry ${index + 1} (${JSON.stringify(h.name)})`;
  if (h.type !== "file") throw bad(`${what} is a ${h.type ?? "special entry"}, not a regular file`);
  if (h.pax) throw bad(`${what} uses pax extended headers`);
  if (h.name.includes("/") || h.name.includes("\0") || h.name === "." || h.name === "..") throw bad(`${what} is not a plain file name`);
  if (h.name !== expected) throw bad(`${what} is out of place: expected ${JSON.stringify(expected)}`);
}

/**
 * Check a raw ustar header block (POSIX.1-2017 pax, "ustar Interchange
 * Format"), for every entry on every path — the file path's payloads read
 * with read(2), a seeking resume, and each header of a stream under
 * tar-stream, which alone would accept more (a NUL typeflag, the GNU magic,
 * junk after a number) — so one rule decides what an image is:
 *
 *   - the checksum field holds the header's sum (bytes 148–155 as spaces);
 *   - magic "ustar\0" and version "00" (GNU tar's "ustar  \0" is another format);
 *   - the name, then only NULs; an empty prefix (zb's names are plain);
 *   - typeflag '0', a regular file (not NUL, which old tars also used);
 *   - the size as zb's writer gives it: octal digits ended by spaces or NULs,
 *     or, from 8 GiB (8^11 bytes) on, GNU base-256 (0x80, then 11 bytes big-endian),
 *     which is what tar-stream writes there ({@link ustarSize}).
 * @throws {ZbError} IMG_FORMAT
 */
export function checkUstarHeader(block: Uint8Array, name: string, size: number): void {
  const what = `the header of ${JSON.stringify(name)}`;
  if (block.length !== BLOCK) throw bad(`${what} is cut short`);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
  if (octal(block, 148, 8) !== sum) throw bad(`${what} has a bad checksum`);
  if (latin1(block, 257, 265) !== "ustar\x0000") throw bad(`${what} is not a POSIX ustar header (magic "ustar", version "00")`);
  const stored = latin1(block, 0, 100);
  const written = stored.replace(/\0+$/, "");
  if (written.includes("\0") || !zeros(block, 345, 500) || written !== name) throw bad(`${what} names ${JSON.stringify(written)}`);
  if (block[156] !== 0x30) throw bad(`${what} is not a regular file (typeflag '0')`);
  const declared = ustarSize(block);
  if (declared === null) throw bad(`${what} has a size field that is neither octal nor base-256`);
  if (declared !== size) throw bad(`${what} gives another size than the manifest`);
}

/**
 * The size field (bytes 124–135) of a ustar header, or null when it is
 * malformed. Octal digits (leading spaces allowed, as old tars wrote them)
 * ended by spaces or NULs; or GNU base-256 — first byte 0x80, the value in
 * the other 11 bytes, big-endian — which ustar's 11 octal digits force from
 * 8^11 = 2^33 bytes on (tar-stream's encodeSize switches there). A negative
 * (0xff) or larger-than-2^53 base-256 value is malformed.
 */
export function ustarSize(block: Uint8Array): number | null {
  if (block[124] === 0x80) {
    let n = 0;
    for (let i = 125; i < 136; i++) n = n * 256 + block[i]!;
    return Number.isSafeInteger(n) ? n : null;
  }
  return octal(block, 124, 12);
}

/** A strict octal number field: ` *[0-7]+[ \0]*`, else null. */
function octal(block: Uint8Array, at: number, len: number): number | null {
  const m = /^ *([0-7]+)[ \0]*$/.exec(latin1(block, at, at + len));
  return m ? parseInt(m[1]!, 8) : null;
}

const latin1 = (b: Uint8Array, from: number, to: number) => Buffer.from(b.buffer, b.byteOffset + from, to - from).toString("latin1");

/** Bytes `from` … `to` of `b` are all zero (padding, end-of-archive blocks). */
export function zeros(b: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (b[i] !== 0) return false;
  return true;
}

/**
 * The ustar header zb writes for a regular file: tar-stream's own encoder
 * applied to {@link entryHeader} (mtime 0, root, 0644), so images stay
 * reproducible and are written with tar-stream's bytes: numbers as
 * zero-padded octal, the size from 8 GiB on in base-256. Only the encoder
 * is used, not tar-stream's pack stream: a stream reports a full disk as an
 * event nobody can await (lib/image/writer.ts writes synchronously).
 * @throws {ZbError} INTERNAL for a name that is not 1–100 printable ASCII bytes or a size that is not a safe integer ≥ 0
 */
export function encodeUstarHeader(name: string, size: number): Uint8Array {
  if (Buffer.byteLength(name) > 100 || !/^[\x21-\x7e]+$/.test(name)) throw new ZbError("INTERNAL", `internal error: entry name ${JSON.stringify(name)} does not fit a ustar header`);
  if (!Number.isSafeInteger(size) || size < 0) throw new ZbError("INTERNAL", `internal error: entry size ${size}`);
  const block = (tarHeaders as { encode(h: Header): Uint8Array | null }).encode(entryHeader(name, size));
  if (block === null || block.length !== BLOCK) throw new ZbError("INTERNAL", `internal error: tar-stream cannot encode a header for ${JSON.stringify(name)}`);
  return new Uint8Array(block);
}

/**
 * Bytes tar-stream writes before an entry's data (pack.js `_encode`): the
 * ustar header, or, when the header cannot hold the name (non-ASCII, too
 * long to split), a pax entry (its header and padded records) and then it.
 */
export function tarHeaderBytes(h: Header): number {
  const t = tarHeaders as { encode(h: Header): Uint8Array | null; encodePax(o: { name: string; linkname?: string | null }): Uint8Array };
  if (t.encode(h) !== null) return BLOCK;
  return BLOCK + Math.ceil(t.encodePax({ name: h.name, linkname: h.linkname ?? null }).length / BLOCK) * BLOCK + BLOCK;
}

/** The header zb writes for an entry: deterministic (mtime 0, root-owned, 0644). */
export function entryHeader(name: string, size: number): Header {
  return { name, size, type: "file", mode: 0o644, uid: 0, gid: 0, uname: "", gname: "", mtime: new Date(0), linkname: "", devmajor: 0, devminor: 0 };
}

/**
 * Read a whole small entry, refusing more than `limit` bytes.
 * @throws {ZbError} IMG_FORMAT
 */
export async function readSmallEntry(entry: AsyncIterable<Uint8Array>, name: string, limit: number): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let total = 0;
  for await (const part of entry) {
    total += part.length;
    if (total > limit) throw bad(`${name} is larger than ${limit} bytes`);
    parts.push(part);
  }
  return Buffer.concat(parts);
}

/**
 * An image that ends inside a payload's chunk: which chunk, where it lies in
 * the image and where the image ends, for every way a payload is read (the
 * reader's direct reads, a seeking resume).
 * @example endsInChunk("rootfs", 5, 331776, 65536, 340000).message
 *   // "cannot read the image: the archive ends inside payload rootfs: chunk 5 (image bytes 331776–397311) is cut short at byte 340000"
 */
export function endsInChunk(payload: string, chunk: number, start: number, size: number, end: number): ZbError {
  return bad(`the archive ends inside payload ${payload}: chunk ${chunk} (image bytes ${start}–${start + size - 1}) is cut short at byte ${end}`);
}

export function bad(why: string): ZbError {
  return new ZbError("IMG_FORMAT", `cannot read the image: ${why}`);
}
