/**
 * Credentials: what a slot needs to open its LUKS volumes at boot — the
 * sealed root key, the sealed data key (optional) and metadata — packed as a
 * newc cpio archive that is appended to the slot's initramfs. The kernel
 * unpacks concatenated archives into the same rootfs (Documentation/
 * driver-api/early-userspace/buffer-format.rst), so zbunlock finds them
 * under /zb/credentials/ without the initramfs ever being rebuilt on the
 * device. Layout, schema and lifecycle: docs/credentials.md.
 *
 * Packing, parsing and locating are pure; readCredentials (the unpacked
 * initramfs at boot) and appendCredentials (the boot partition) go through
 * the injected Sys.
 */
import { basename, dirname, join } from "node:path";
import type { Slot } from "../bootstate/state.ts";
import { ZbError } from "../errors.ts";
import { decodeBlob, MAX_BLOB_BYTES, type SealedBlob } from "../hsm/blob.ts";
import { BACKENDS, type BackendName } from "../hsm/types.ts";
import type { Sys } from "../sys/sys.ts";
import { readCpio, readOneArchive, writeCpio, NEWC_MAGIC, type CpioEntry, type CpioInput, type CpioLimits } from "./cpio.ts";

export const CRED_FORMAT = "zb-credentials/1";
export const CRED_DIR = "zb/credentials";
export const META_PATH = `${CRED_DIR}/meta.json`;
export const ROOT_BLOB_PATH = `${CRED_DIR}/root.sealed`;
export const DATA_BLOB_PATH = `${CRED_DIR}/data.sealed`;
/** device-mapper names zbunlock opens the volumes as (/dev/mapper/zb-root, /dev/mapper/zb-data). */
export const ROOT_MAPPING = "zb-root";
export const DATA_MAPPING = "zb-data";
export const MAX_META_BYTES = 16 * 1024;
/** A credentials archive is at most this long (meta + two blobs + headers, padded); also how far back from the end of an initramfs we look. */
export const MAX_CRED_ARCHIVE_BYTES = 256 * 1024;
/** Room around the archive in the tail that is read: its own padding after the trailer (up to its 512-byte block). */
const TAIL_PADDING_BYTES = 4096;
/** Step of the backwards scan over trailing NULs: memory stays bounded however much padding there is. */
const PADDING_SCAN_BYTES = 64 * 1024;

/** meta.json. Every field is documented in docs/credentials.md. */
export interface CredentialMeta {
  format: typeof CRED_FORMAT;
  slot: Slot;
  /** The backend that sealed both keys. */
  backend: BackendName;
  /** When the slot was enrolled: ISO 8601, UTC. */
  created: string;
  root: { uuid: string; name: typeof ROOT_MAPPING };
  data?: { uuid: string; name: typeof DATA_MAPPING };
}

/** The three parts; the blobs are the canonical bytes of lib/hsm/blob.ts's envelope. */
export interface Credentials {
  meta: CredentialMeta;
  root: Uint8Array;
  data?: Uint8Array;
}

/** Credentials whose blobs were decoded and checked against the metadata. */
export interface LoadedCredentials extends Credentials {
  rootBlob: SealedBlob;
  dataBlob?: SealedBlob;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const ISO_UTC_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/;

const CRED_LIMITS: CpioLimits = { maxEntries: 8, maxNameBytes: 64, maxFileBytes: MAX_BLOB_BYTES, maxArchives: 1 };

function invalid(why: string, hint?: string): ZbError {
  return new ZbError("CRED_INVALID", `cannot read credentials: ${why}`, hint === undefined ? {} : { hint });
}

/**
 * meta.json bytes: fixed key order, two-space indent, final newline.
 * @throws {ZbError} CRED_INVALID when `meta` breaks the schema
 * @example encodeMeta({ format: "zb-credentials/1", slot: "a", backend: "tpm2", created: new Date().toISOString(), root: { uuid, name: "zb-root" } })
 */
export function encodeMeta(meta: CredentialMeta): Uint8Array {
  const m = parseMetaObject(meta);
  const ordered: Record<string, unknown> = { format: m.format, slot: m.slot, backend: m.backend, created: m.created, root: m.root };
  if (m.data) ordered.data = m.data;
  return new TextEncoder().encode(`${JSON.stringify(ordered, ["format", "slot", "backend", "created", "root", "data", "uuid", "name"], 2)}\n`);
}

/**
 * Parse and check meta.json.
 * @throws {ZbError} CRED_INVALID naming the first field that is wrong
 */
export function parseMeta(bytes: Uint8Array): CredentialMeta {
  if (bytes.length > MAX_META_BYTES) throw invalid(`meta.json is larger than ${MAX_META_BYTES} bytes`);
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw invalid("meta.json is not JSON");
  }
  return parseMetaObject(v);
}

function parseMetaObject(v: unknown): CredentialMeta {
  const o = plainObject(v, "meta.json");
  onlyKeys(o, ["format", "slot", "backend", "created", "root", "data"], "meta.json");
  if (o.format !== CRED_FORMAT) throw invalid(`meta.json format is ${JSON.stringify(o.format)}, expected ${JSON.stringify(CRED_FORMAT)}`);
  if (o.slot !== "a" && o.slot !== "b") throw invalid(`meta.json slot is ${JSON.stringify(o.slot)}, expected "a" or "b"`);
  if (typeof o.backend !== "string" || !(BACKENDS as readonly string[]).includes(o.backend)) {
    throw invalid(`meta.json backend ${JSON.stringify(o.backend)} is not one of ${BACKENDS.join(", ")}`);
  }
  if (typeof o.created !== "string" || !ISO_UTC_RE.test(o.created) || Number.isNaN(Date.parse(o.created))) {
    throw invalid(`meta.json created ${JSON.stringify(o.created)} is not an ISO 8601 UTC time`);
  }
  const meta: CredentialMeta = {
    format: CRED_FORMAT, slot: o.slot, backend: o.backend as BackendName, created: o.created,
    root: volume(o.root, "root", ROOT_MAPPING) as CredentialMeta["root"],
  };
  if (o.data !== undefined) meta.data = volume(o.data, "data", DATA_MAPPING) as NonNullable<CredentialMeta["data"]>;
  if (meta.data && meta.data.uuid === meta.root.uuid) throw invalid("meta.json root and data have the same UUID");
  return meta;
}

function volume(v: unknown, field: string, name: string): { uuid: string; name: string } {
  const o = plainObject(v, `meta.json ${field}`);
  onlyKeys(o, ["uuid", "name"], `meta.json ${field}`);
  if (typeof o.uuid !== "string" || !UUID_RE.test(o.uuid)) throw invalid(`meta.json ${field}.uuid ${JSON.stringify(o.uuid)} is not a lower-case LUKS UUID`);
  if (o.name !== name) throw invalid(`meta.json ${field}.name is ${JSON.stringify(o.name)}, expected ${JSON.stringify(name)}`);
  return { uuid: o.uuid, name };
}

function plainObject(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw invalid(`${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

function onlyKeys(o: Record<string, unknown>, keys: string[], what: string): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw invalid(`${what} has an unknown field ${JSON.stringify(k)}`);
}

/**
 * Decode both blobs and check them against the metadata: the data blob is
 * there exactly when meta.data is, and both were sealed by meta.backend.
 * @throws {ZbError} CRED_INVALID
 */
export function checkCredentials(c: Credentials): LoadedCredentials {
  const meta = parseMetaObject(c.meta);
  const rootBlob = decodeBlob(c.root, "root.sealed");
  if (rootBlob.backend !== meta.backend) throw invalid(`root.sealed was sealed by ${rootBlob.backend}, meta.json says ${meta.backend}`);
  if (!meta.data !== !c.data) throw invalid(meta.data ? "meta.json names a data volume but data.sealed is missing" : "data.sealed is present but meta.json names no data volume");
  const out: LoadedCredentials = { meta, root: c.root, rootBlob };
  if (c.data) {
    out.data = c.data;
    out.dataBlob = decodeBlob(c.data, "data.sealed");
    if (out.dataBlob.backend !== meta.backend) throw invalid(`data.sealed was sealed by ${out.dataBlob.backend}, meta.json says ${meta.backend}`);
  }
  return out;
}

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
function locateCredentialArchive(bytes: Uint8Array): { offset: number; end: number; entries: CpioEntry[] } | null {
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
function strandedCredentials(bytes: Uint8Array): { offset: number; other: number } | null {
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

/**
 * Append a credentials archive to an initramfs file, replacing credentials
 * appended earlier. The existing content is padded with NULs to a 4-byte
 * boundary (the kernel looks for a cpio header only at aligned offsets), then
 * the archive follows. Durable and atomic: a copy is written next to the file,
 * fsynced and renamed over it, so a power cut leaves the old or the new file.
 * When a step fails before the rename (a full partition), the copy is removed
 * again, so the failure leaves no partial copy taking up the space. The copy
 * gets the file's mode and owner. `initramfsPath` must be the real
 * file, not a symbolic link (the rename would replace the link).
 * @param cpio an archive from packCredentials (checked before anything is written)
 * @returns the offset of the archive in the new file, and whether older credentials were replaced
 * @throws {ZbError} CRED_INVALID when `cpio` is not a credentials archive, or
 *   when credentials appended earlier are followed by other data (they could
 *   not be replaced, and the kernel would unpack both sets); IO when the file
 *   cannot be read or written
 * @example appendCredentials(sys, "/boot/firmware/slot-b/initramfs", packCredentials(creds))
 */
export function appendCredentials(sys: Sys, initramfsPath: string, cpio: Uint8Array): { offset: number; replaced: boolean } {
  unpackCredentials(cpio);
  if (cpio[0] !== NEWC_MAGIC.charCodeAt(0)) throw invalid("the archive to append starts with padding");
  const { st, keep, old, tmp } = appendPlan(sys, initramfsPath);
  const offset = (keep + 3) & ~3;
  // The new file keeps the old one's permissions and owner (an initramfs made 0600 stays 0600).
  const like = { create: true, ...(st.mode !== undefined ? { mode: st.mode } : {}), ...(st.uid !== undefined && st.gid !== undefined ? { owner: { uid: st.uid, gid: st.gid } } : {}) };
  sys.unlink(tmp);
  try {
    copyPrefix(sys, initramfsPath, tmp, keep, like);
    const added = new Uint8Array(offset - keep + cpio.length);
    added.set(cpio, offset - keep);
    sys.writeAt(tmp, keep, added, like);
    sys.fsync(tmp);
    sys.rename(tmp, initramfsPath);
  } catch (e) {
    // A partial copy on a full boot partition would keep it full (and nothing else reads it).
    removeQuietly(sys, tmp);
    throw e;
  }
  sys.fsync(dirname(initramfsPath));
  return { offset, replaced: old !== null };
}

/**
 * Check, without changing anything, that credentials can be appended to
 * `initramfsPath`: a regular file whose tail reads, in a folder where the
 * temp copy can be created. `zb cred create` calls it before it formats a
 * device, so a wrong path fails while the disks are still as they were.
 * @throws {ZbError} IO; CRED_INVALID when credentials appended earlier are
 *   followed by other data (appendCredentials would refuse)
 */
export function checkAppendable(sys: Sys, initramfsPath: string): void {
  const { tmp } = appendPlan(sys, initramfsPath);
  sys.unlink(tmp);
  try {
    sys.writeAt(tmp, 0, new Uint8Array(0), { create: true, mode: 0o600 });
  } catch (e) {
    removeQuietly(sys, tmp); // created, then its mode could not be set
    throw e;
  }
  sys.unlink(tmp);
}

/** Remove a temp file after a failure; the failure is what gets reported, not this. */
function removeQuietly(sys: Sys, path: string): void {
  try {
    sys.unlink(path);
  } catch {
    // The next append removes it first.
  }
}

/**
 * The file's state, how much of it stays (older credentials cut off) and the temp copy's path.
 * @throws {ZbError} IO; CRED_INVALID when credentials appended earlier are followed by other data
 */
function appendPlan(sys: Sys, initramfsPath: string) {
  const st = sys.stat(initramfsPath);
  if (!st || st.kind !== "file") throw new ZbError("IO", `cannot append credentials to ${initramfsPath}: ${st ? "not a regular file" : "no such file"}`);
  const tail = credentialTail(sys, initramfsPath, st.size);
  const old = locateCredentialArchive(tail.bytes);
  if (!old) {
    const stranded = strandedCredentials(tail.bytes);
    if (stranded) {
      throw new ZbError("CRED_INVALID", `cannot append credentials to ${initramfsPath}: the credentials at byte ${tail.start + stranded.offset} are followed by data zb does not recognise (from byte ${tail.start + stranded.other}); appending more would make the kernel unpack both`, {
        hint: "rebuild the initramfs (update-initramfs -u), then append the credentials again",
      });
    }
  }
  const keep = old ? tail.start + old.offset : st.size;
  return { st, old, keep, tmp: join(dirname(initramfsPath), `.${basename(initramfsPath)}.zb-new`) };
}

const COPY_CHUNK = 1 << 20;

function copyPrefix(sys: Sys, from: string, to: string, length: number, opts: Parameters<Sys["writeAt"]>[3]): void {
  for (let at = 0; at < length; at += COPY_CHUNK) {
    const chunk = sys.readAt(from, at, Math.min(COPY_CHUNK, length - at));
    sys.writeAt(to, at, chunk, opts);
  }
}
