/**
 * One payload of `zb image create`, from its input to its manifest entry:
 * the raw bytes (a rootfs image file, or the boot folder's tar from
 * boottar.ts) are cut into `chunkSize` pieces, each piece becomes one zstd
 * frame (Bun's native zstd) or stays as it is, and is spooled to a temp file
 * while the chunk digests and the stored and raw SHA-256 are computed. Kept
 * apart from create.ts, which checks the options and assembles the manifest
 * and the archive: this is the streaming work on one payload's bytes.
 */
import * as fs from "node:fs";
import { ioError } from "../errors.ts";
import { tarFolder, tarSize, walk, type FolderEntry } from "./boottar.ts";
import type { Digest, Encoding, Payload, PayloadKind } from "./manifest.ts";
import { createExclusive } from "./writer.ts";
import { encodeFrame } from "./zstd.ts";

/** One payload of the image to create, as the command line names it. */
export interface PayloadInput {
  name: string;
  kind: PayloadKind;
  encoding: Encoding;
  /** A raw image file (rootfs) or a folder to tar (boot). */
  from: { file: string } | { dir: string };
}

/** A payload to encode: where its raw bytes come from and how many there are (before reading them). */
export interface Plan {
  input: PayloadInput;
  rawTotal: number;
  /** A boot folder's entries, walked once: the tar is made of exactly these. */
  files?: FolderEntry[];
}

/**
 * Where a payload's bytes come from and how many there are, before any is read.
 * @throws {ZbError} IO when the rootfs file or the boot folder cannot be read; USAGE for a
 *   boot folder entry that is neither file nor folder, or whose name is not UTF-8 (boottar.ts)
 */
export function plan(input: PayloadInput): Plan {
  if ("file" in input.from) {
    const path = input.from.file;
    let size: number;
    try {
      const st = fs.statSync(path);
      if (!st.isFile()) throw new Error("not a regular file");
      size = st.size;
    } catch (e) {
      throw ioError(`read payload ${input.name} from ${path}`, e);
    }
    return { input, rawTotal: size };
  }
  const files = walk(input.from.dir);
  return { input, rawTotal: tarSize(input.from.dir, files), files };
}

/**
 * Chunk, compress, hash and spool one payload. A failure to read the input
 * is IO naming the input; a failure to write the spool (beside the output,
 * so a full disk there) is IO naming the output.
 * @param created called once the spool file exists (the caller removes it)
 * @throws {ZbError} IO; `signal.reason` once the signal aborts
 */
export async function encodePayload(p: Plan, chunkSize: number, level: number, spool: string, output: string, created: () => void, progress?: (rawBytes: number) => void, signal?: AbortSignal): Promise<Payload> {
  const { input } = p;
  const raw = new Bun.CryptoHasher("sha256");
  const stored = new Bun.CryptoHasher("sha256");
  const chunks: Digest[] = [];
  let rawSize = 0;
  let storedSize = 0;
  const fd = createExclusive(spool, 0o600, `create ${output}`);
  created();
  const source = "file" in input.from ? input.from.file : input.from.dir;
  const pieces = rechunk(rawStream(p), chunkSize)[Symbol.asyncIterator]();
  try {
    for (;;) {
      let r: IteratorResult<Uint8Array>;
      try {
        r = await pieces.next();
      } catch (e) {
        throw ioError(`read payload ${input.name} from ${source}`, e);
      }
      if (r.done) break;
      if (signal?.aborted) throw signal.reason;
      const piece = r.value;
      raw.update(piece);
      rawSize += piece.length;
      const out = input.encoding === "zstd" ? encodeFrame(piece, level) : piece;
      stored.update(out);
      storedSize += out.length;
      chunks.push({ size: out.length, sha256: new Bun.CryptoHasher("sha256").update(out).digest("hex") });
      try {
        for (let done = 0; done < out.length; ) done += fs.writeSync(fd, out, done, out.length - done);
      } catch (e) {
        throw ioError(`write ${output}`, e);
      }
      progress?.(rawSize);
    }
  } finally {
    fs.closeSync(fd);
    await pieces.return?.(undefined).catch(() => undefined); // after a failure: the input file is closed now
  }
  return {
    name: input.name, kind: input.kind, encoding: input.encoding,
    stored: { size: storedSize, sha256: stored.digest("hex") },
    raw: { size: rawSize, sha256: raw.digest("hex") },
    chunks,
  };
}

function rawStream(p: Plan): AsyncIterable<Uint8Array> {
  const { from } = p.input;
  if ("file" in from) return fs.createReadStream(from.file, { highWaterMark: 1 << 20 });
  return tarFolder(from.dir, p.files!);
}

/** Exactly `size`-byte pieces (the last may be shorter). */
async function* rechunk(data: AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Uint8Array> {
  let buf = new Uint8Array(size);
  let fill = 0;
  for await (const part of data) {
    let at = 0;
    while (at < part.length) {
      const take = Math.min(size - fill, part.length - at);
      buf.set(part.subarray(at, at + take), fill);
      fill += take;
      at += take;
      if (fill === size) {
        yield buf;
        buf = new Uint8Array(size);
        fill = 0;
      }
    }
  }
  if (fill > 0) yield buf.subarray(0, fill);
}
