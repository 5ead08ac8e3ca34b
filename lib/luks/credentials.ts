/**
 * Credentials: what a slot needs to open its LUKS volumes at boot — the
 * sealed root key, the sealed data key (optional) and metadata — packed as a
 * newc cpio archive that is appended to the slot's initramfs. The kernel
 * unpacks concatenated archives into the same rootfs (Documentation/
 * driver-api/early-userspace/buffer-format.rst), so zbunlock finds them
 * under /zb/credentials/ without the initramfs ever being rebuilt on the
 * device. Layout, schema and lifecycle: docs/credentials.md.
 *
 * This file is the archive: packing and parsing it, reading the files the
 * kernel unpacked, and finding one at the end of an initramfs. meta.json and
 * the consistency rules are in credmeta.ts; appending to the boot partition
 * is credappend.ts. Packing, parsing and locating are pure; readCredentials
 * (the unpacked initramfs at boot) and credentialTail go through the injected Sys.
 */
import { join } from "node:path";
import { decodeBlob, MAX_BLOB_BYTES, type SealedBlob } from "../hsm/blob.ts";
import type { Sys } from "../sys/sys.ts";
import { readCpio, readOneArchive, writeCpio, NEWC_MAGIC, type CpioEntry, type CpioInput, type CpioLimits } from "./cpio.ts";
import { checkCredentials, CRED_DIR, DATA_BLOB_PATH, encodeMeta, invalid, MAX_META_BYTES, META_PATH, parseMeta, ROOT_BLOB_PATH, type Credentials, type LoadedCredentials } from "./credmeta.ts";

/** A credentials archive is at most this long (meta + two blobs + headers, padded); also how far back from the end of an initramfs we look. */
export const MAX_CRED_ARCHIVE_BYTES = 256 * 1024;
/** Room around the archive in the tail that is read: its own padding after the trailer (up to its 512-byte block). */
const TAIL_PADDING_BYTES = 4096;
/** Step of the backwards scan over trailing NULs: memory stays bounded however much padding there is. */
const PADDING_SCAN_BYTES = 64 * 1024;

const CRED_LIMITS: CpioLimits = { maxEntries: 8, maxNameBytes: 64, maxFileBytes: MAX_BLOB_BYTES, maxArchives: 1 };

/**
 * The credentials as one newc archive: directories `zb` (0755) and
 * `zb/credentials` (0700), files `meta.json`, `root.sealed` and optionally
 * `data.sealed` (0400), owner root, mtime 0 — reproducible bytes.
 * @throws {ZbError} CRED_INVALID when the parts are inconsistent (see checkCredentials)
 * @example appendCredentials(sys, "/boot/firmware/slot-b/initramfs", packCredentials(creds))
 */
export function packCredentials(c: Credentials): Uint8Array {
  const checked = checkCredentials(c);
  const entries: CpioInput[] = [
    { name: "zb", kind: "dir", mode: 0o755 },
    { name: CRED_DIR, kind: "dir", mode: 0o700 },
    { name: META_PATH, kind: "file", mode: 0o400, data: encodeMeta(checked.meta) },
    { name: ROOT_BLOB_PATH, kind: "file", mode: 0o400, data: c.root },
  ];
  if (c.data) entries.push({ name: DATA_BLOB_PATH, kind: "file", mode: 0o400, data: c.data });
  return writeCpio(entries);
}

/**
 * Read a credentials archive (a `.cpio` made by packCredentials).
 * @throws {ZbError} CRED_INVALID
 */
export function unpackCredentials(cpio: Uint8Array): LoadedCredentials {
  const archives = readCpio(cpio, CRED_LIMITS);
  return fromEntries(archives[0]!.entries);
}

/** Strip "./" and "/" prefixes, as the kernel resolves names relative to the rootfs. */
function normalName(name: string): string {
  return name.replace(/^(\.\/|\/)+/, "");
}

const CRED_NAMES = new Set(["zb", CRED_DIR, META_PATH, ROOT_BLOB_PATH, DATA_BLOB_PATH]);

/** The directory entries a credentials archive starts with, in this order (packCredentials). */
const CRED_DIRS = ["zb", CRED_DIR];

function fromEntries(entries: CpioEntry[]): LoadedCredentials {
  const files = new Map<string, Uint8Array>();
  entries.forEach((e, i) => {
    const name = normalName(e.name);
    if (!CRED_NAMES.has(name)) throw invalid(`unexpected entry ${JSON.stringify(e.name)} in the credentials archive`);
    const dir = CRED_DIRS.includes(name);
    if (e.kind !== (dir ? "dir" : "file")) throw invalid(`${JSON.stringify(e.name)} is a ${e.kind}, expected a ${dir ? "dir" : "file"}`);
    // The kernel creates no parent directories (init/initramfs.c): a file
    // whose folder no earlier entry made is dropped at boot without a word.
    if (i < CRED_DIRS.length && name !== CRED_DIRS[i]) {
      throw invalid(`the archive must start with the directories ${CRED_DIRS.map((d) => JSON.stringify(d)).join(" and ")}, in this order, but entry ${i + 1} is ${JSON.stringify(e.name)}`, "the kernel does not create parent directories: make the archive with zb cred create");
    }
    if (i >= CRED_DIRS.length && dir) throw invalid(`${JSON.stringify(e.name)} appears twice in the credentials archive`);
    if (!dir) {
      if (files.has(name)) throw invalid(`${JSON.stringify(e.name)} appears twice in the credentials archive`);
      files.set(name, e.data);
    }
  });
  const meta = files.get(META_PATH);
  const root = files.get(ROOT_BLOB_PATH);
  if (!meta || !root) throw invalid(`the archive has no ${meta ? "root.sealed" : "meta.json"}`);
  const data = files.get(DATA_BLOB_PATH);
  return checkCredentials({ meta: parseMeta(meta), root, ...(data ? { data } : {}) });
}

/**
 * Read the credentials the kernel unpacked from the initramfs (at boot
 * `root` is "/": /zb/credentials/meta.json, root.sealed, data.sealed).
 * @throws {ZbError} CRED_INVALID when they are missing, too large or malformed; IO when a read fails
 * @example const creds = readCredentials(new HostSys(), "/")
 */
export function readCredentials(sys: Sys, root = "/"): LoadedCredentials {
  const read = (rel: string, max: number, required: boolean): Uint8Array | undefined => {
    const path = join(root, rel);
    const st = sys.stat(path);
    if (!st) {
      if (!required) return undefined;
      throw invalid(`${path} does not exist`, "this initramfs carries no credentials: enrol the slot (zb cred create) and append the archive to the slot's initramfs");
    }
    if (st.kind !== "file") throw invalid(`${path} is not a regular file`);
    if (st.size > max) throw invalid(`${path} is larger than ${max} bytes`);
    return sys.readAt(path, 0, st.size);
  };
  const meta = parseMeta(read(META_PATH, MAX_META_BYTES, true)!);
  const rootBlob = read(ROOT_BLOB_PATH, MAX_BLOB_BYTES, true)!;
  const data = read(DATA_BLOB_PATH, MAX_BLOB_BYTES, false);
  return checkCredentials({ meta, root: rootBlob, ...(data ? { data } : {}) });
}

/**
 * The sealed keys under `root`/zb/credentials read one by one, for locking
 * when the credentials cannot be read as a whole: a meta.json this zb does
 * not understand, or a damaged data.sealed beside a good root.sealed, must
 * not leave a key that still unseals unlocked (zbunlock --lock-only before a
 * shell). Each file is read only when it is a regular file within the blob
 * size limit; one that is missing or does not decode is left out. Never throws.
 */
export function looseSealedBlobs(sys: Sys, root = "/"): SealedBlob[] {
  const blobs: SealedBlob[] = [];
  for (const rel of [ROOT_BLOB_PATH, DATA_BLOB_PATH]) {
    const path = join(root, rel);
    try {
      const st = sys.stat(path);
      if (st?.kind !== "file" || st.size > MAX_BLOB_BYTES) continue;
      blobs.push(decodeBlob(sys.readAt(path, 0, st.size), path));
    } catch {
      // unreadable or malformed: nothing can unseal it either
    }
  }
  return blobs;
}

/** Where a trailing credentials archive sits in an initramfs. */
export interface AppendedCredentials {
  /** Offset of its first header (4-byte aligned). */
  offset: number;
  /** Offset just past its trailer; only NUL padding follows. */
  end: number;
  credentials: LoadedCredentials;
}

/**
 * Find the uncompressed credentials archive at the end of an initramfs
 * (what appendCredentials wrote): the last newc archive, followed only by
 * NUL padding, whose entries all lie under zb/credentials.
 * @param initramfs the whole file, or its tail from a 4-aligned offset, as
 *   credentialTail reads it (offsets are then relative to the tail)
 * @returns null when the initramfs ends in something else (no credentials appended)
 * @throws {ZbError} CRED_INVALID when such an archive is there but its content is malformed
 * @example findAppendedCredentials(readFileSync("slot-a/initramfs"))?.credentials.meta
 */
export function findAppendedCredentials(initramfs: Uint8Array): AppendedCredentials | null {
  const found = locateCredentialArchive(initramfs);
  if (!found) return null;
  return { offset: found.offset, end: found.end, credentials: fromEntries(found.entries) };
}

/**
 * The end of a file that can hold appended credentials, read without the
 * rest: trailing NULs are skipped first (a tool may have padded the file with
 * any number of them, which the kernel skips too), then the 260 KiB before
 * the last other byte (the largest archive plus 4 KiB) and up to 4 KiB of the
 * NULs after it (the archive's own padding) are read. `start` is rounded down
 * to a multiple of 4, so an offset that is 4-aligned in the tail is 4-aligned
 * in the file, where the kernel looks for headers (buffer-format.rst). The
 * file's size need not be.
 * @param size the file's size (Sys.stat)
 * @returns the tail and its offset in the file; at most 264 KiB, however long the padding
 * @throws {ZbError} IO
 * @example const tail = credentialTail(sys, "slot-b/initramfs", sys.stat("slot-b/initramfs")!.size)
 */
export function credentialTail(sys: Sys, path: string, size: number): { start: number; bytes: Uint8Array } {
  const last = contentEndOfFile(sys, path, size);
  const start = Math.max(0, last - MAX_CRED_ARCHIVE_BYTES - TAIL_PADDING_BYTES) & ~3;
  const end = Math.min(size, last + TAIL_PADDING_BYTES);
  return { start, bytes: sys.readAt(path, start, end - start) };
}

/** Offset just past the last byte of the file that is not NUL (0 for a file of NULs), read backwards in bounded steps. */
function contentEndOfFile(sys: Sys, path: string, size: number): number {
  for (let end = size; end > 0; ) {
    const from = Math.max(0, end - PADDING_SCAN_BYTES);
    const chunk = sys.readAt(path, from, end - from);
    // A file that shrank under us: what is there now ends the scan.
    if (chunk.length < end - from) return from + contentEnd(chunk);
    const last = contentEnd(chunk);
    if (last > 0) return from + last;
    end = from;
  }
  return 0;
}

/**
 * The trailing archive whose entries are all credential paths, unvalidated otherwise.
 * Candidate headers are tried from the end backwards: parsing from any entry
 * of the last archive reaches its trailer at the end of the input, so the
 * archive starts at the earliest such candidate. A candidate inside file data
 * or an earlier archive does not parse to the end and is skipped.
 */
export function locateCredentialArchive(bytes: Uint8Array): { offset: number; end: number; entries: CpioEntry[] } | null {
  const last = contentEnd(bytes);
  let best: { offset: number; end: number; entries: CpioEntry[] } | null = null;
  for (const p of headerCandidates(bytes, last)) {
    let archive;
    try {
      archive = readOneArchive(bytes, p, CRED_LIMITS);
    } catch {
      continue;
    }
    if (archive.end < last || archive.entries.length === 0) continue;
    // Reaches the end but holds other files: credentials inside someone else's archive, not appended ones.
    if (!archive.entries.every((e) => CRED_NAMES.has(normalName(e.name)))) return null;
    best = archive;
  }
  return best;
}

/** Where the content ends: trailing NULs are padding, which the kernel skips at any length. */
function contentEnd(bytes: Uint8Array): number {
  let last = bytes.length;
  while (last > 0 && bytes[last - 1] === 0) last--;
  return last;
}

/**
 * Offsets of possible newc headers in the 256 KiB before `last`, from the end
 * backwards: 4-aligned ones only, since the kernel reads a header nowhere
 * else (bytes must start 4-aligned in the file: credentialTail).
 */
function* headerCandidates(bytes: Uint8Array, last: number): Generator<number> {
  const lo = Math.max(0, last - MAX_CRED_ARCHIVE_BYTES);
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let p = buf.lastIndexOf(NEWC_MAGIC, last - 1, "latin1"); p >= lo; p = p > 0 ? buf.lastIndexOf(NEWC_MAGIC, p - 1, "latin1") : -1) {
    if (p % 4 === 0) yield p;
  }
}

/**
 * A credentials archive that does not end the file (bytes other than NULs
 * follow it): the offset of the last one, or null. Appending after it would
 * leave two sets for the kernel to unpack, the old files mixed with the new
 * (a data.sealed the new credentials do not have would stay).
 */
export function strandedCredentials(bytes: Uint8Array): { offset: number; other: number } | null {
  const last = contentEnd(bytes);
  let found: { offset: number; end: number } | null = null;
  for (const p of headerCandidates(bytes, last)) {
    let a;
    try {
      a = readOneArchive(bytes, p, CRED_LIMITS);
    } catch {
      continue; // not the start of an archive
    }
    if (a.end >= last || a.entries.length === 0 || !a.entries.every((e) => CRED_NAMES.has(normalName(e.name)))) continue;
    // Each entry of an archive parses to its trailer: the archive starts at the earliest of them.
    if (found !== null && a.end !== found.end) break;
    found = { offset: p, end: a.end };
  }
  if (found === null) return null;
  let other = found.end;
  while (bytes[other] === 0) other++; // the archive's own padding
  return { offset: found.offset, other };
}
