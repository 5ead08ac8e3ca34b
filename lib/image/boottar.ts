/**
 * The boot payload's tar: a boot folder walked once (files and folders only,
 * UTF-8 names, sorted) and written as a deterministic tar (mtime 0, owner
 * root, modes 0644/0755), with its exact size known before a byte is read.
 * Kept apart from spool.ts, which chunks and compresses whatever bytes it is
 * given: this is how a folder becomes those bytes, and what of a folder is
 * allowed onto the FAT boot partition.
 */
import * as fs from "node:fs";
import { join, relative } from "node:path";
import { pack, type Header } from "tar-stream";
import { ZbError, ioError } from "../errors.ts";
import { BLOCK, entryHeader, tarHeaderBytes } from "./format.ts";

/** One walked entry of a boot folder: its path, and the size and mode the tar gives it. */
export interface FolderEntry {
  path: string;
  dir: boolean;
  size: number;
  mode: number;
  /** "dev:ino" (HostSys.stat's id): create.ts refuses a boot folder holding a --key or the --rootfs file. */
  id: string;
}

/** An entry's name in the boot tar: relative, directories ending in "/" as tar(1) writes and lists them. */
function tarName(from: { dir: string }, f: FolderEntry): string {
  const rel = relative(from.dir, f.path);
  return f.dir ? `${rel}/` : rel;
}

/** The size of the tar tarFolder makes of these entries: each header as tar-stream writes it, the data padded to 512, two zero blocks. */
export function tarSize(dir: string, files: FolderEntry[]): number {
  return files.reduce((a, f) => a + tarHeaderBytes(folderHeader(dir, f)) + Math.ceil((f.dir ? 0 : f.size) / BLOCK) * BLOCK, 0) + 2 * BLOCK;
}

/** The header of one entry of the boot tar (deterministic: entryHeader, with the entry's kind and mode). */
function folderHeader(dir: string, f: FolderEntry): Header {
  return { ...entryHeader(tarName({ dir }, f), f.dir ? 0 : f.size), type: f.dir ? "directory" : "file", mode: f.mode };
}

/** A deterministic tar of a folder's walked entries: sorted paths, mtime 0, root-owned; only files and folders. */
export async function* tarFolder(dir: string, files: FolderEntry[]): AsyncGenerator<Uint8Array> {
  const t = pack();
  const writing = (async () => {
    for (const f of files) {
      const header = folderHeader(dir, f);
      const body = f.dir ? undefined : fs.readFileSync(f.path);
      await new Promise<void>((resolve, reject) => (body ? t.entry(header, body, (e) => (e ? reject(e) : resolve())) : t.entry(header, (e) => (e ? reject(e) : resolve()))));
    }
    t.finalize();
  })().catch((e: unknown) => {
    // A file that vanished or cannot be read: the reader below gets the error instead of waiting for ever.
    t.destroy(e as Error);
  });
  for await (const part of t as AsyncIterable<Uint8Array>) yield part;
  await writing;
}

/**
 * A boot folder's entries, depth first in sorted order, as the tar will hold them.
 * @throws {ZbError} IO when a folder cannot be read or an entry of it cannot be
 *   looked at; USAGE for anything but files and folders, or a name that is not UTF-8
 */
export function walk(dir: string): FolderEntry[] {
  const out: FolderEntry[] = [];
  let names: string[];
  try {
    names = fs.readdirSync(dir, { encoding: "buffer" }).map((raw) => utf8Name(dir, raw)).sort();
  } catch (e) {
    throw ioError(`read boot folder ${dir}`, e);
  }
  for (const name of names) {
    const path = join(dir, name);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(path);
    } catch (e) {
      // A folder that can be listed but not entered (mode r--), or a file removed since it was listed.
      throw ioError(`read boot folder entry ${path}`, e);
    }
    const id = `${st.dev}:${st.ino}`;
    if (st.isDirectory()) {
      out.push({ path, dir: true, size: 0, mode: 0o755, id });
      out.push(...walk(path));
    } else if (st.isFile()) out.push({ path, dir: false, size: st.size, mode: st.mode & 0o111 ? 0o755 : 0o644, id });
    else throw new ZbError("USAGE", `cannot put ${path} into the boot payload: only files and folders are allowed (the boot partition is FAT)`);
  }
  return out;
}

/** A file name as text; the payload's tar and the FAT partition need UTF-8 names. @throws {ZbError} USAGE */
function utf8Name(dir: string, raw: Buffer): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    throw new ZbError("USAGE", `cannot put a file of ${dir} into the boot payload: its name is not UTF-8 (${JSON.stringify(raw.toString("latin1"))})`);
  }
}

/**
 * A PEM private key's first line: PKCS#8 (plain and encrypted), SEC1,
 * PKCS#1, OpenSSH's and the like, at the start of a line (text that only
 * mentions the label within a sentence is no key).
 */
const PRIVATE_PEM = /(?:^|\n)[ \t\r]*-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----/;
/** How much of each file is looked at: keys come with a few lines before them at most. */
const KEY_SNIFF = 4096;

/**
 * Whether a file looks like a PEM private key: a text file (no NUL byte in
 * its first 4 KiB) with a private key's BEGIN line among them. Not only at
 * the very start: `openssl pkcs12 -nodes` writes "Bag Attributes" lines
 * before the key, and people keep a comment above it. Binary files (kernels,
 * dtbs, firmware) are never taken for keys, whatever strings they hold. Only
 * the first 4 KiB: a boot folder holds a few hundred files, most of them
 * dtbs and overlays. A file that cannot be read is no key here; reading it
 * into the tar reports it.
 * @returns true for `-----BEGIN PRIVATE KEY-----`, `-----BEGIN EC PRIVATE KEY-----`, `-----BEGIN ENCRYPTED PRIVATE KEY-----` and the like
 * @example looksLikePrivateKey("boot/release.key") // true for an `openssl genpkey` output
 */
export function looksLikePrivateKey(path: string): boolean {
  let fd: number;
  try {
    fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch {
    return false;
  }
  try {
    const head = Buffer.alloc(KEY_SNIFF);
    const n = fs.readSync(fd, head, 0, head.length, 0);
    const sample = head.subarray(0, n);
    if (sample.includes(0)) return false;
    return PRIVATE_PEM.test(sample.toString("latin1").replace(/^\xEF\xBB\xBF/, "")); // a UTF-8 BOM, as an editor may save it
  } catch {
    return false;
  } finally {
    fs.closeSync(fd);
  }
}
