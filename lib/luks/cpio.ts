/**
 * The "newc" cpio format (magic `070701`), the one the Linux kernel unpacks
 * into its initial rootfs. Pure: bytes in, bytes out.
 *
 * Layout (kernel Documentation/driver-api/early-userspace/buffer-format.rst,
 * cpio(5) "New ASCII Format"): every entry is a 110-byte header — the magic
 * and 13 fields of 8 hex digits — then the name with its NUL, padded with
 * zeros to a multiple of 4, then the data, padded to a multiple of 4. An
 * archive ends with an entry named `TRAILER!!!`. The kernel accepts several
 * archives back to back, with runs of NUL bytes between them, as long as
 * each header starts at a 4-byte aligned offset of the whole buffer
 * (`initramfs := ("\0" * 4)* (cpio_archive | compressed_cpio_archive)*`).
 *
 * The writer emits directories and regular files only, with the metadata the
 * caller gives (mtime 0 by default, so output is reproducible). For the same
 * tree it produces the bytes of GNU cpio 2.13 `cpio -o -H newc --reproducible`
 * (upper-case hex, inode numbers counted from 0, directory link count
 * 2 + subdirectories, output padded to its 512-byte block); the tests check
 * that byte for byte.
 *
 * The reader is strict and bounded — it runs in the initramfs on input that
 * came from the boot partition — and throws CRED_INVALID for anything that is
 * not a well-formed archive.
 */
import { ZbError } from "../errors.ts";

export const NEWC_MAGIC = "070701";
export const TRAILER = "TRAILER!!!";
const HEADER_LEN = 110;
/** GNU cpio's default I/O block: it pads each archive to a multiple of this. */
export const CPIO_BLOCK = 512;

// st_mode file types (POSIX <sys/stat.h>), as cpio stores them in `mode`.
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

export type EntryKind = "file" | "dir" | "symlink" | "other";

/** One entry to write. `mode` holds permission bits only (e.g. 0o400); the type comes from `kind`. */
export interface CpioInput {
  name: string;
  kind: "file" | "dir";
  mode: number;
  data?: Uint8Array;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch; 0 (the default) keeps archives reproducible. */
  mtime?: number;
}

/** One entry as read. `data` is a view into the input (no copy). */
export interface CpioEntry {
  name: string;
  kind: EntryKind;
  /** The full st_mode: type and permission bits. */
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  nlink: number;
  ino: number;
  data: Uint8Array;
  /** Offset of the entry's header in the input. */
  offset: number;
}

/** One archive of a (possibly concatenated) input. */
export interface CpioArchive {
  /** Offset of its first header. */
  offset: number;
  /** Offset just past its trailer entry (before any padding). */
  end: number;
  entries: CpioEntry[];
}

/** Bounds for reading untrusted input. */
export interface CpioLimits {
  maxEntries: number;
  maxNameBytes: number;
  maxFileBytes: number;
  maxArchives: number;
}

export const DEFAULT_LIMITS: CpioLimits = {
  maxEntries: 100_000,
  maxNameBytes: 4096, // PATH_MAX
  maxFileBytes: 1 << 30,
  maxArchives: 64,
};

const align4 = (n: number): number => (n + 3) & ~3;

/**
 * Write one newc archive.
 * @param entries in the order they are to be unpacked (parents before children)
 * @param opts.block pad the archive to a multiple of this (default 512, like GNU cpio; 4 for none)
 * @returns the archive bytes, trailer included
 * @throws {ZbError} INTERNAL for an entry the format cannot hold (empty name, NUL in name, data on a directory)
 * @example writeCpio([{ name: "zb", kind: "dir", mode: 0o755 }])
 */
export function writeCpio(entries: readonly CpioInput[], opts: { block?: number } = {}): Uint8Array {
  const block = opts.block ?? CPIO_BLOCK;
  const parts: Uint8Array[] = [];
  let size = 0;
  const push = (b: Uint8Array) => {
    parts.push(b);
    size += b.length;
  };
  entries.forEach((e, ino) => {
    checkInput(e);
    const data = e.kind === "file" ? (e.data ?? new Uint8Array(0)) : new Uint8Array(0);
    const type = e.kind === "dir" ? S_IFDIR : S_IFREG;
    const nlink = e.kind === "dir" ? 2 + subdirCount(entries, e.name) : 1;
    push(entryHead(e.name, [ino, type | (e.mode & 0o7777), e.uid ?? 0, e.gid ?? 0, nlink, e.mtime ?? 0, data.length]));
    push(data);
    push(new Uint8Array(align4(data.length) - data.length));
  });
  push(entryHead(TRAILER, [0, 0, 0, 0, 1, 0, 0]));
  const total = Math.ceil(size / block) * block;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function checkInput(e: CpioInput): void {
  const bad = (why: string) => new ZbError("INTERNAL", `internal error: cannot write cpio entry ${JSON.stringify(e.name)}: ${why}`);
  if (e.name.length === 0 || e.name.includes("\0")) throw bad("empty name or NUL in name");
  if (e.kind === "dir" && e.data && e.data.length > 0) throw bad("a directory has no data");
  for (const n of [e.mode, e.uid ?? 0, e.gid ?? 0, e.mtime ?? 0]) {
    if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw bad("a field is not a 32-bit unsigned integer");
  }
}

/** A directory's st_nlink as the file system reports it: ".", its name in the parent, ".." of each subdirectory. */
function subdirCount(entries: readonly CpioInput[], dir: string): number {
  const prefix = `${dir}/`;
  return entries.filter((x) => x.kind === "dir" && x.name.startsWith(prefix) && !x.name.slice(prefix.length).includes("/")).length;
}

/** Header + name + padding to 4. Fields: ino mode uid gid nlink mtime filesize; devices and check are 0. */
function entryHead(name: string, f: number[]): Uint8Array {
  const nameBytes = new TextEncoder().encode(name);
  const fields = [...f, 0, 0, 0, 0, nameBytes.length + 1, 0];
  const text = NEWC_MAGIC + fields.map((n) => n.toString(16).toUpperCase().padStart(8, "0")).join("");
  const out = new Uint8Array(align4(HEADER_LEN + nameBytes.length + 1));
  out.set(new TextEncoder().encode(text), 0);
  out.set(nameBytes, HEADER_LEN);
  return out;
}

/**
 * Read every archive of a buffer: archives back to back, with runs of NUL
 * bytes between and after them, each starting 4-byte aligned (as the kernel
 * requires). A compressed archive is not read: it is an error here.
 * @throws {ZbError} CRED_INVALID on malformed input or when a limit is exceeded
 * @example readCpio(bytes).flatMap((a) => a.entries).map((e) => e.name)
 */
export function readCpio(bytes: Uint8Array, limits: CpioLimits = DEFAULT_LIMITS): CpioArchive[] {
  const archives: CpioArchive[] = [];
  let at = skipZeros(bytes, 0);
  if (at === bytes.length) throw invalid(0, "no cpio archive (empty or all zeros)");
  let entryCount = 0;
  while (at < bytes.length) {
    if (archives.length >= limits.maxArchives) throw invalid(at, `more than ${limits.maxArchives} archives`);
    if (at % 4 !== 0) throw invalid(at, "archive does not start at a 4-byte boundary");
    const archive = readOneArchive(bytes, at, limits, limits.maxEntries - entryCount);
    entryCount += archive.entries.length;
    archives.push(archive);
    at = skipZeros(bytes, align4(archive.end));
  }
  return archives;
}

/**
 * Read the one archive that starts at `offset` (up to and including its trailer).
 * @throws {ZbError} CRED_INVALID on malformed input or when a limit is exceeded
 */
export function readOneArchive(bytes: Uint8Array, offset: number, limits: CpioLimits = DEFAULT_LIMITS, maxEntries = limits.maxEntries): CpioArchive {
  const entries: CpioEntry[] = [];
  let at = offset;
  for (;;) {
    const { entry, next } = readEntry(bytes, at, limits);
    if (entry.name === TRAILER) return { offset, end: next, entries };
    if (entries.length >= maxEntries) throw invalid(at, `more than ${limits.maxEntries} entries`);
    entries.push(entry);
    at = next;
  }
}

function readEntry(bytes: Uint8Array, at: number, limits: CpioLimits): { entry: CpioEntry; next: number } {
  if (at >= bytes.length) throw invalid(at, "truncated archive (no trailer)");
  const head = new TextDecoder("latin1").decode(bytes.subarray(at, at + HEADER_LEN));
  const magic = head.slice(0, 6);
  if (magic !== NEWC_MAGIC.slice(0, magic.length)) {
    const why = magic === "070702" ? "crc-format cpio (070702) is not supported" : "not a newc cpio header (compressed or garbage?)";
    throw invalid(at, why);
  }
  if (head.length < HEADER_LEN) throw invalid(at, "truncated header (no trailer)");
  const f: number[] = [];
  for (let i = 0; i < 13; i++) {
    const hex = head.slice(6 + 8 * i, 14 + 8 * i);
    if (!/^[0-9A-Fa-f]{8}$/.test(hex)) throw invalid(at, `header field ${i} is not 8 hex digits`);
    f.push(parseInt(hex, 16));
  }
  // Field order after the magic: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check.
  const [ino, mode, uid, gid, nlink, mtime, filesize, namesize] = [f[0]!, f[1]!, f[2]!, f[3]!, f[4]!, f[5]!, f[6]!, f[11]!];
  if (namesize < 2 || namesize > limits.maxNameBytes + 1) throw invalid(at, `name size ${namesize} out of range`);
  const nameEnd = at + HEADER_LEN + namesize;
  if (nameEnd > bytes.length) throw invalid(at, "truncated name");
  if (bytes[nameEnd - 1] !== 0) throw invalid(at, "name is not NUL-terminated");
  const nameBytes = bytes.subarray(at + HEADER_LEN, nameEnd - 1);
  if (nameBytes.includes(0)) throw invalid(at, "NUL inside the name");
  const name = new TextDecoder("utf-8").decode(nameBytes);
  const dataAt = align4(nameEnd);
  if (filesize > limits.maxFileBytes) throw invalid(at, `${JSON.stringify(name)} is larger than ${limits.maxFileBytes} bytes`);
  if (dataAt + filesize > bytes.length) throw invalid(at, `truncated data of ${JSON.stringify(name)}`);
  const kind = kindOf(mode);
  if (kind === "dir" && filesize !== 0) throw invalid(at, `directory ${JSON.stringify(name)} has data`);
  const data = bytes.subarray(dataAt, dataAt + filesize);
  const entry: CpioEntry = { name, kind, mode, uid, gid, mtime, nlink, ino, data, offset: at };
  return { entry, next: align4(dataAt + filesize) };
}

function kindOf(mode: number): EntryKind {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return "file";
    case S_IFDIR:
      return "dir";
    case S_IFLNK:
      return "symlink";
    default:
      return "other";
  }
}

function skipZeros(bytes: Uint8Array, at: number): number {
  while (at < bytes.length && bytes[at] === 0) at++;
  return at;
}

function invalid(at: number, why: string): ZbError {
  return new ZbError("CRED_INVALID", `cannot read cpio archive at offset ${at}: ${why}`);
}
