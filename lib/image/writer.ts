/**
 * Write a `.zbi` archive with tar-stream: entries in the fixed order, each
 * with zb's deterministic header, streamed with backpressure into a temp
 * file that is fsynced and renamed over the output (a half-written image
 * never sits under the final name).
 */
import * as fs from "node:fs";
import { basename, dirname, join } from "node:path";
import { pack, type Pack } from "tar-stream";
import { ioError, ZbError } from "../errors.ts";
import { BLOCK, entryHeader, MARKER_NAME } from "./format.ts";

export interface ArchiveWriter {
  addBytes(name: string, bytes: Uint8Array): Promise<void>;
  /** The parts of `data` are queued, not copied: they must not be reused after they are yielded. */
  addStream(name: string, size: number, data: AsyncIterable<Uint8Array>): Promise<void>;
  /** Finish the archive and move it into place. */
  commit(): Promise<void>;
  /** Give up: remove the temp file. */
  abort(): void;
}

/**
 * @throws {ZbError} USAGE when `output` is "-" or an existing file that is not
 *   a `.zbi` image (see {@link checkReplaceable}); IO
 */
export function archiveWriter(output: string): ArchiveWriter {
  checkReplaceable(output);
  const tmp = join(dirname(output), `.${basename(output)}.zb-new`);
  let fd: number;
  try {
    fd = fs.openSync(tmp, "w", 0o644);
  } catch (e) {
    throw ioError(`create ${output}`, e);
  }
  const tar: Pack = pack();
  let failure: unknown = null;
  const drained = (async () => {
    try {
      for await (const chunk of tar as AsyncIterable<Uint8Array>) {
        let done = 0;
        while (done < chunk.length) done += fs.writeSync(fd, chunk, done, chunk.length - done);
      }
    } catch (e) {
      failure = e;
    }
  })();
  const check = () => {
    if (failure) throw ioError(`write ${output}`, failure);
  };
  return {
    async addBytes(name, bytes) {
      check();
      await new Promise<void>((resolve, reject) => tar.entry(entryHeader(name, bytes.length), bytes, (e) => (e ? reject(e) : resolve())));
    },
    async addStream(name, size, data) {
      check();
      let done!: (e?: Error | null) => void;
      const finished = new Promise<void>((resolve, reject) => (done = (e) => (e ? reject(e) : resolve())));
      const sink = tar.entry(entryHeader(name, size), (e) => done(e));
      for await (const part of data) {
        if (!sink.write(part)) await new Promise<void>((r) => sink.once("drain", () => r()));
      }
      (sink.end as unknown as () => void).call(sink);
      await finished;
    },
    async commit() {
      tar.finalize();
      await drained;
      check();
      try {
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        fs.renameSync(tmp, output);
        const dir = fs.openSync(dirname(output), "r");
        fs.fsyncSync(dir);
        fs.closeSync(dir);
      } catch (e) {
        throw ioError(`write ${output}`, e);
      }
    },
    abort() {
      tar.destroy();
      try {
        fs.closeSync(fd);
      } catch {
        /* already closed */
      }
      fs.rmSync(tmp, { force: true });
    },
  };
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
