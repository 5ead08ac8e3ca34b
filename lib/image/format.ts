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
 * unknown or out-of-order entries are refused. The archive is read and
 * written with tar-stream.
 */
import type { Header } from "tar-stream";
import { ZbError } from "../errors.ts";

export const MARKER_NAME = "zbi-format";
export const MARKER = "zbi 1\n";
export const MANIFEST_NAME = "manifest.json";
export const SIGNATURES_NAME = "signatures.json";
export const LIMITS = { marker: 64, signatures: 64 << 10, signatureCount: 16 } as const;
export const BLOCK = 512;

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
 * Check a raw ustar header block when tar-stream is not reading it (the
 * direct payload path and a seeking resume): checksum, magic, name, size and
 * a regular-file typeflag.
 * @throws {ZbError} IMG_FORMAT
 */
export function checkUstarHeader(block: Uint8Array, name: string, size: number): void {
  const field = (at: number, len: number) => Buffer.from(block.subarray(at, at + len)).toString("latin1").replace(/\0.*$/s, "");
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
  const stored = parseInt(field(148, 8).trim() || "x", 8);
  const what = `the header of ${JSON.stringify(name)}`;
  if (block.length !== BLOCK || stored !== sum) throw bad(`${what} has a bad checksum`);
  if (field(257, 6) !== "ustar") throw bad(`${what} is not a ustar header`);
  if (field(345, 155) !== "" || field(0, 100) !== name) throw bad(`${what} names ${JSON.stringify(field(0, 100))}`);
  if (block[156] !== 0x30) throw bad(`${what} is not a regular file`);
  if (parseInt(field(124, 12).trim() || "x", 8) !== size) throw bad(`${what} gives another size than the manifest`);
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

export function bad(why: string): ZbError {
  return new ZbError("IMG_FORMAT", `cannot read the image: ${why}`);
}
