/**
 * Write a `.zbi` archive: entries in the fixed order, each with zb's
 * deterministic ustar header (format.ts encodeUstarHeader, byte for byte
 * what tar-stream writes), with plain write(2) into a temp file that is
 * fsynced and renamed over the output (a half-written image never sits
 * under the final name). Synchronous writes keep every failure — a full
 * disk, an I/O error — a ZbError of the call that made it, with the temp
 * file removed by abort(); a stream pipeline would raise it as an event
 * no one listens to.
 */
import * as fs from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { ioError, ZbError } from "../errors.ts";
import { atomicTemp } from "../sys/atomic.ts";
import { BLOCK, encodeUstarHeader, MARKER_NAME } from "./format.ts";

export interface ArchiveWriter {
  addBytes(name: string, bytes: Uint8Array): Promise<void>;
  /** Write the parts of `data` as the entry's bytes; they must add up to `size`. */
  addStream(name: string, size: number, data: AsyncIterable<Uint8Array>): Promise<void>;
  /** Finish the archive and move it into place. */
  commit(): Promise<void>;
  /** Give up: remove the temp file. */
  abort(): void;
}

/** The end of a tar archive: two zero blocks (what tar-stream's finalize writes). */
const END_OF_ARCHIVE = new Uint8Array(2 * BLOCK);

/**
 * @throws {ZbError} USAGE when `output` is "-" or an existing file that is not
 *   a `.zbi` image (see {@link checkReplaceable}); IO
 */
export function archiveWriter(output: string): ArchiveWriter {
  checkReplaceable(output);
  const tmp = atomicTemp(output);
  const fd = createExclusive(tmp, 0o644, `create ${output}`);
  let open = true;
  const write = (bytes: Uint8Array) => {
    try {
      for (let done = 0; done < bytes.length; ) done += fs.writeSync(fd, bytes, done, bytes.length - done);
    } catch (e) {
      throw ioError(`write ${output}`, e);
    }
  };
  const pad = (size: number) => {
    const rest = size % BLOCK;
    if (rest) write(new Uint8Array(BLOCK - rest));
  };
  return {
    async addBytes(name, bytes) {
      write(encodeUstarHeader(name, bytes.length));
      write(bytes);
      pad(bytes.length);
    },
    async addStream(name, size, data) {
      write(encodeUstarHeader(name, size));
      let n = 0;
      for await (const part of data) {
        n += part.length;
        if (n > size) break;
        write(part);
      }
      if (n !== size) throw new ZbError("INTERNAL", `internal error: entry ${name} has ${n > size ? "more" : "fewer"} bytes than its header's ${size}`);
      pad(size);
    },
    async commit() {
      write(END_OF_ARCHIVE);
      try {
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        open = false;
        fs.renameSync(tmp, output);
        const dir = fs.openSync(dirname(output), "r");
        fs.fsyncSync(dir);
        fs.closeSync(dir);
      } catch (e) {
        throw ioError(`write ${output}`, e);
      }
    },
    abort() {
      if (open) {
        try {
          fs.closeSync(fd);
        } catch {
          /* already closed */
        }
        open = false;
      }
      fs.rmSync(tmp, { force: true });
    },
  };
}

/** The spool file of one payload of `zb image create`, beside the output: `.OUT.NAME.zb-spool`. */
export function spoolFile(output: string, payload: string): string {
  return join(dirname(output), `.${basename(output)}.${payload}.zb-spool`);
}

/**
 * No input may be one of the temp files written beside the output (the
 * archive's `.OUT.zb-new`, create's spool files): createExclusive deletes
 * what has that name, so a rootfs by that name would be lost and an empty
 * spool read in its place (an image that installs nothing, signed), a sign's
 * input image or a signing key deleted. Compared by path (the folder with
 * links followed, and every link the input's name leads through) and by
 * device and inode (a hard link).
 * @param what "create OUT" or "sign OUT"
 * @param inputs each file read, with its role in words ("the rootfs file")
 * @throws {ZbError} USAGE
 */
export function checkNotTemp(what: string, temps: string[], inputs: { role: string; path: string }[]): void {
  const tempKeys = temps.map((t) => ({ t, keys: [...pathKeys(t, false), ...idKeys(t, fs.lstatSync)] }));
  for (const i of inputs) {
    const keys = [...pathKeys(i.path, true), ...idKeys(i.path, fs.statSync)];
    const hit = tempKeys.find((t) => t.keys.some((k) => keys.includes(k)));
    if (!hit) continue;
    const is = i.path === hit.t ? "has the name of" : `is ${hit.t},`;
    throw new ZbError("USAGE", `cannot ${what}: ${i.role} ${i.path} ${is} a temp file of this output, which zb deletes before writing it`, {
      hint: `rename ${hit.t}, or write the image to another path`,
    });
  }
}

/** A path as its folder with links followed and its name; with `follow`, also every link its name leads through. */
function pathKeys(path: string, follow: boolean): string[] {
  const keys: string[] = [];
  let p = path;
  for (let hops = 0; hops < 40; hops++) {
    let dir: string;
    try {
      dir = fs.realpathSync(dirname(p));
    } catch {
      dir = resolve(dirname(p));
    }
    keys.push(`path:${join(dir, basename(p))}`);
    if (!follow) break;
    try {
      p = resolve(dirname(p), fs.readlinkSync(p));
    } catch {
      break; // not a link (or gone): the end of the chain
    }
  }
  return keys;
}

function idKeys(path: string, stat: (p: string) => fs.Stats): string[] {
  try {
    const st = stat(path);
    return [`id:${st.dev}:${st.ino}`];
  } catch {
    return []; // not there: its path counts alone
  }
}

/**
 * Create a temp file that is ours alone: O_EXCL|O_NOFOLLOW, so a symlink or
 * file planted under its name (the folder may be shared) is never followed
 * or truncated. A stale one, left by a run that was killed, is removed first
 * when it is a plain file or a link (unlink removes the link, not its
 * target); anything else there is an error.
 * @returns the descriptor, open for writing
 * @throws {ZbError} IO naming `what`
 */
export function createExclusive(path: string, mode: number, what: string): number {
  try {
    const st = lstatOrNull(path);
    if (st && !st.isFile() && !st.isSymbolicLink()) throw Object.assign(new Error(`${path} is in the way and is not a file`), { code: "EEXIST_OTHER" });
    if (st) fs.unlinkSync(path);
    const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
    return fs.openSync(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode);
  } catch (e) {
    throw ioError(what, e);
  }
}

function lstatOrNull(path: string): fs.Stats | null {
  try {
    return fs.lstatSync(path);
  } catch (e) {
    if ((e as { code?: string }).code === "ENOENT") return null;
    throw e;
  }
}

/**
 * An image may replace an older image of the same name (a rebuild, or `image
 * sign` in place), never another file: `-o` naming a signing key, a trusted
 * public key or a rootfs by mistake would destroy it. An existing output must
 * be a regular file that starts with the marker entry of a `.zbi`.
 * @throws {ZbError} USAGE; IO when the output folder cannot be used
 */
export function checkReplaceable(output: string): void {
  if (output === "-") throw new ZbError("USAGE", "cannot write an image to stdout: give -o a file name");
  try {
    if (!fs.statSync(dirname(output)).isDirectory()) throw Object.assign(new Error("not a directory"), { code: "ENOTDIR" });
  } catch (e) {
    throw ioError(`create ${output}`, e);
  }
  let st: fs.Stats;
  try {
    st = fs.lstatSync(output);
  } catch {
    return; // a new file
  }
  if (st.isFile() && startsLikeImage(output)) return;
  throw new ZbError("USAGE", `cannot write the image to ${output}: the file exists and is not a zb image (zb replaces only an older image)`, { hint: "choose another output path" });
}

/** The first tar header names the marker entry and carries the ustar magic. */
function startsLikeImage(path: string): boolean {
  const head = new Uint8Array(BLOCK);
  let fd: number;
  try {
    fd = fs.openSync(path, "r");
  } catch {
    return false;
  }
  try {
    if (fs.readSync(fd, head, 0, BLOCK, 0) < BLOCK) return false;
  } finally {
    fs.closeSync(fd);
  }
  const text = (from: number, to: number) => Buffer.from(head.subarray(from, to)).toString("latin1");
  return text(0, 100).split("\0")[0] === MARKER_NAME && text(257, 262) === "ustar";
}
