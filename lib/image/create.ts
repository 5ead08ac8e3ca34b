/**
 * Publisher side: build, sign and re-sign `.zbi` images.
 *
 * create: each payload's raw bytes (a rootfs image file, or a deterministic
 * tar of a boot folder) are cut into `chunkSize` pieces; each piece becomes
 * one zstd frame (Bun's native zstd), spooled to a temp file while the chunk
 * digests and the stored and raw SHA-256 are computed; then the manifest is
 * signed by every signer and the archive is written in the fixed order.
 * sign: add signatures to an existing image, copying its payload bytes as
 * they are (the manifest, and so every digest, is unchanged).
 */
import * as fs from "node:fs";
import { basename, dirname, isAbsolute, join, relative, sep } from "node:path";
import { pack, type Header } from "tar-stream";
import { ZbError, ioError, isZbError } from "../errors.ts";
import { BLOCK, MARKER, MARKER_NAME, MANIFEST_NAME, SIGNATURES_NAME, entryHeader, tarHeaderBytes } from "./format.ts";
import { encodeManifest, FORMAT_VERSION, MANIFEST_TOO_LARGE, LIMITS, type Digest, type Encoding, type Manifest, type Payload, type PayloadKind } from "./manifest.ts";
import { openImage } from "./reader.ts";
import { checkSignatureCount, imageSignatures, type Signature, type Signer } from "./sign.ts";
import { untilAborted, type ImageSource } from "./source.ts";
import { archiveWriter, checkReplaceable, createExclusive } from "./writer.ts";
import { encodeFrame } from "./zstd.ts";
import { HostSys } from "../sys/sys.ts";

export const DEFAULT_CHUNK = 4 << 20;
export const DEFAULT_LEVEL = 3;
/** zstd's highest level (ZSTD_maxCLevel). */
export const MAX_LEVEL = 22;

export interface PayloadInput {
  name: string;
  kind: PayloadKind;
  encoding: Encoding;
  /** A raw image file (rootfs) or a folder to tar (boot). */
  from: { file: string } | { dir: string };
}

export interface CreateOptions {
  compatible: string;
  version: string;
  serial: number;
  created?: Date;
  chunkSize?: number;
  level?: number;
  payloads: PayloadInput[];
  signers: Signer[];
  output: string;
  /** Called after each chunk is encoded. */
  progress?: (e: CreateProgress) => void;
  /**
   * Stops the work (the stages abort it on SIGINT and SIGTERM): the next
   * chunk to encode, or the next part copied into the output, fails with
   * `signal.reason`; the spool files and the half-written output are removed
   * as on any failure, and an older image at the output path stays.
   */
  signal?: AbortSignal;
}

/** Progress of `createImage`: the payload being encoded, and all payloads together. */
export interface CreateProgress {
  payload: string;
  /** Raw bytes of this payload encoded so far, and its size (known before the first chunk). */
  rawBytes: number;
  rawTotal: number;
  /** The same over every payload of the image. */
  allBytes: number;
  allTotal: number;
}

/**
 * @throws {ZbError} IMG_FORMAT for values the manifest refuses, IO, USAGE (more than 16 signing keys among them, before anything is written);
 *   `opts.signal.reason` once the signal aborts
 */
export async function createImage(opts: CreateOptions): Promise<Manifest> {
  if (opts.signers.length === 0) throw new ZbError("USAGE", "cannot create an image: no signing key given");
  // Before anything is compressed or created: an image with more signatures than readers take is useless.
  checkSignatureCount(new Set(opts.signers.map((s) => s.publicKey.id)).size, `create ${opts.output}`);
  checkOutput(opts);
  checkReplaceable(opts.output);
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK;
  if (!Number.isSafeInteger(chunkSize) || chunkSize < LIMITS.minChunk || chunkSize > LIMITS.maxChunk || (chunkSize & (chunkSize - 1)) !== 0) {
    throw new ZbError("USAGE", `cannot create an image: --chunk-size ${chunkSize} is not a power of two from ${LIMITS.minChunk} (64 KiB) to ${LIMITS.maxChunk} (64 MiB)`);
  }
  checkHeader(opts, chunkSize);
  const level = opts.level ?? DEFAULT_LEVEL;
  if (!Number.isInteger(level) || level < 1 || level > MAX_LEVEL) throw new ZbError("USAGE", `cannot create an image: --level ${level} is not a zstd level from 1 to ${MAX_LEVEL}`);
  const plans = opts.payloads.map(plan);
  checkChunkCount(plans, chunkSize);
  const allTotal = plans.reduce((a, p) => a + p.rawTotal, 0);
  let allBefore = 0;
  const spools: string[] = [];
  try {
    const payloads: Payload[] = [];
    for (const p of plans) {
      const spool = join(dirname(opts.output), `.${basename(opts.output)}.${p.input.name}.zb-spool`);
      const before = allBefore;
      const progress = opts.progress && ((rawBytes: number) => opts.progress!({ payload: p.input.name, rawBytes, rawTotal: p.rawTotal, allBytes: before + rawBytes, allTotal }));
      payloads.push(await encodePayload(p, chunkSize, level, spool, opts.output, () => spools.push(spool), progress, opts.signal));
      allBefore += payloads.at(-1)!.raw.size;
    }
    const manifest: Manifest = {
      format: FORMAT_VERSION,
      compatible: opts.compatible,
      version: opts.version,
      serial: opts.serial,
      created: (opts.created ?? new Date()).toISOString().replace(/\.\d{3}Z$/, "Z"),
      chunkSize,
      payloads,
    };
    let manifestBytes: Uint8Array;
    try {
      manifestBytes = encodeManifest(manifest);
    } catch (e) {
      // Checked early (checkChunkCount) with the smallest chunk entries; real entries are a little longer.
      if (isZbError(e, "IMG_FORMAT") && e.cause === MANIFEST_TOO_LARGE) throw tooManyChunks(payloads.reduce((a, p) => a + p.chunks.length, 0), chunkSize);
      throw e;
    }
    // One signature per key, however often a key was given.
    const signers = [...new Map(opts.signers.map((s) => [s.publicKey.id, s])).values()];
    const signatures = await Promise.all(signers.map((s) => s.sign(manifestBytes)));
    const sigBytes = imageSignatures(signatures, `create ${opts.output}`);
    const w = archiveWriter(opts.output);
    try {
      await w.addBytes(MARKER_NAME, Buffer.from(MARKER, "latin1"));
      await w.addBytes(MANIFEST_NAME, manifestBytes);
      await w.addBytes(SIGNATURES_NAME, sigBytes);
      for (const [i, p] of payloads.entries()) {
        // Checked before the spool is opened: a stream never read would report its file removed (the finally below).
        if (opts.signal?.aborted) throw opts.signal.reason;
        const spooled = fs.createReadStream(spools[i]!, { highWaterMark: 1 << 20 });
        await w.addStream(p.name, p.stored.size, opts.signal ? untilAborted(spooled, opts.signal) : spooled);
      }
      await w.commit();
    } catch (e) {
      w.abort();
      throw e;
    }
    return manifest;
  } finally {
    for (const s of spools) fs.rmSync(s, { force: true });
  }
}

/**
 * The output must not be an input. It is renamed into place at the end, so
 * an output that is the rootfs file replaces it; inside a boot folder, the
 * output and its spool files would be packed into the image itself.
 * @throws {ZbError} USAGE
 */
function checkOutput(opts: CreateOptions): void {
  const output = fileId(opts.output);
  const outDir = realDir(dirname(opts.output));
  for (const p of opts.payloads) {
    if ("file" in p.from) {
      if (output !== null && output === fileId(p.from.file)) {
        throw new ZbError("USAGE", `cannot create ${opts.output}: it is the ${p.name} input itself`, { hint: "write the image to another path" });
      }
      continue;
    }
    const dir = realDir(p.from.dir);
    if (outDir === null || dir === null) continue; // reading or writing reports it
    const rel = relative(dir, outDir);
    if (rel === "" || (!isAbsolute(rel) && rel.split(sep)[0] !== "..")) {
      throw new ZbError("USAGE", `cannot create ${opts.output}: it lies inside the ${p.name} folder ${p.from.dir}, which would pack it into itself`, { hint: "write the image outside that folder" });
    }
  }
}

/**
 * The manifest's own fields, checked before the payloads are compressed: a
 * bad --compatible, --version or --chunk-size is the command line's mistake,
 * found in a moment, not after the whole rootfs went through zstd.
 * @throws {ZbError} USAGE
 */
function checkHeader(opts: CreateOptions, chunkSize: number): void {
  const empty = { size: 0, sha256: new Bun.CryptoHasher("sha256").update(new Uint8Array(0)).digest("hex") };
  try {
    encodeManifest({
      format: FORMAT_VERSION, compatible: opts.compatible, version: opts.version, serial: opts.serial,
      created: "2000-01-01T00:00:00Z", chunkSize, payloads: [{ name: "probe", kind: "rootfs", encoding: "none", stored: empty, raw: empty, chunks: [] }],
    });
  } catch (e) {
    if (isZbError(e, "IMG_FORMAT")) throw new ZbError("USAGE", e.message.replace(/^cannot read the image manifest: /, "cannot create an image: "));
    throw e;
  }
}

/** "dev:ino" of a path (HostSys.stat), or null when it does not exist. */
const fileId = (path: string): string | null => new HostSys().stat(path)?.id ?? null;

function realDir(path: string): string | null {
  try {
    return fs.realpathSync(path);
  } catch {
    return null;
  }
}

/** A payload to encode: where its raw bytes come from and how many there are (before reading them). */
interface Plan {
  input: PayloadInput;
  rawTotal: number;
  /** A boot folder's entries, walked once: the tar is made of exactly these. */
  files?: FolderEntry[];
}

function plan(input: PayloadInput): Plan {
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

/** Bytes of the canonical JSON of one chunk entry, at least: {"sha256":"<64 hex>","size":N} and a comma. */
const MIN_CHUNK_ENTRY = 87;

/**
 * The manifest (4 MiB at most) lists every chunk (~87–95 bytes each), so an
 * image holds at most ~48 000 chunks in all: refused before anything is
 * compressed when even the shortest entries would not fit.
 * @throws {ZbError} USAGE
 */
function checkChunkCount(plans: Plan[], chunkSize: number): void {
  const chunks = plans.reduce((a, p) => a + Math.ceil(p.rawTotal / chunkSize), 0);
  if (chunks * MIN_CHUNK_ENTRY > LIMITS.manifestBytes) throw tooManyChunks(chunks, chunkSize);
}

function tooManyChunks(chunks: number, chunkSize: number): ZbError {
  return new ZbError("USAGE", `cannot create an image: ${chunks} chunks of ${chunkSize} bytes do not fit in the manifest (at most ${LIMITS.manifestBytes} bytes, ~${Math.floor(LIMITS.manifestBytes / MIN_CHUNK_ENTRY)} chunks)`, {
    hint: `give a larger --chunk-size (up to ${LIMITS.maxChunk})`,
  });
}

/**
 * Chunk, compress, hash and spool one payload. A failure to read the input
 * is IO naming the input; a failure to write the spool (beside the output,
 * so a full disk there) is IO naming the output.
 * @param created called once the spool file exists (the caller removes it)
 */
async function encodePayload(p: Plan, chunkSize: number, level: number, spool: string, output: string, created: () => void, progress?: (rawBytes: number) => void, signal?: AbortSignal): Promise<Payload> {
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

interface FolderEntry {
  path: string;
  dir: boolean;
  size: number;
  mode: number;
}

/** An entry's name in the boot tar: relative, directories ending in "/" as tar(1) writes and lists them. */
function tarName(from: { dir: string }, f: FolderEntry): string {
  const rel = relative(from.dir, f.path);
  return f.dir ? `${rel}/` : rel;
}

/** The size of the tar tarFolder makes of these entries: each header as tar-stream writes it, the data padded to 512, two zero blocks. */
function tarSize(dir: string, files: FolderEntry[]): number {
  return files.reduce((a, f) => a + tarHeaderBytes(folderHeader(dir, f)) + Math.ceil((f.dir ? 0 : f.size) / BLOCK) * BLOCK, 0) + 2 * BLOCK;
}

/** The header of one entry of the boot tar (deterministic: entryHeader, with the entry's kind and mode). */
function folderHeader(dir: string, f: FolderEntry): Header {
  return { ...entryHeader(tarName({ dir }, f), f.dir ? 0 : f.size), type: f.dir ? "directory" : "file", mode: f.mode };
}

/** A deterministic tar of a folder's walked entries: sorted paths, mtime 0, root-owned; only files and folders. */
async function* tarFolder(dir: string, files: FolderEntry[]): AsyncGenerator<Uint8Array> {
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

function walk(dir: string): FolderEntry[] {
  const out: FolderEntry[] = [];
  let names: string[];
  try {
    names = fs.readdirSync(dir, { encoding: "buffer" }).map((raw) => utf8Name(dir, raw)).sort();
  } catch (e) {
    throw ioError(`read boot folder ${dir}`, e);
  }
  for (const name of names) {
    const path = join(dir, name);
    const st = fs.lstatSync(path);
    if (st.isDirectory()) {
      out.push({ path, dir: true, size: 0, mode: 0o755 });
      out.push(...walk(path));
    } else if (st.isFile()) out.push({ path, dir: false, size: st.size, mode: st.mode & 0o111 ? 0o755 : 0o644 });
    else throw new ZbError("USAGE", `cannot put ${path} into the boot payload: only files and folders are allowed (the boot partition is FAT)`);
  }
  return out;
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

/**
 * Add signatures to an image without touching its payloads. A signature by
 * a key that already signed replaces the old one. `output` may be the input
 * (re-signed in place): the new image is written beside it and renamed over
 * it once the input was read to its end. Everything that can be
 * refused before — more signatures than a reader takes among them — is,
 * before that file is created, so a refused run leaves the input as it was.
 * @throws {ZbError} USAGE for more than 16 signatures in all; IMG_FORMAT, IO
 */
export async function resignImage(source: ImageSource, signers: Signer[], output: string): Promise<Signature[]> {
  const img = await openImage(await source.open(0), { unverified: true });
  try {
    const unique = [...new Map(signers.map((s) => [s.publicKey.id, s])).values()];
    const old = img.header.signatures;
    const keys = new Set([...old.map((s) => s.keyId), ...unique.map((s) => s.publicKey.id)]);
    checkSignatureCount(keys.size, `sign ${output}`, `the image carries ${old.length} signature(s) already and signing only adds to them; sign with fewer keys, or create the image again`);
    const added = await Promise.all(unique.map((s) => s.sign(img.header.manifestBytes)));
    const byKey = new Map<string, Signature>(old.map((s) => [s.keyId, s]));
    for (const s of added) byKey.set(s.keyId, s);
    const signatures = [...byKey.values()];
    const sigBytes = imageSignatures(signatures, `sign ${output}`);
    const w = archiveWriter(output);
    try {
      await w.addBytes(MARKER_NAME, Buffer.from(MARKER, "latin1"));
      await w.addBytes(MANIFEST_NAME, img.header.manifestBytes);
      await w.addBytes(SIGNATURES_NAME, sigBytes);
      // Payload bytes are copied as they are: the manifest covers them already.
      for (let e = await img.nextPayload(); e; e = await img.nextPayload()) await w.addStream(e.payload.name, e.payload.stored.size, e.data);
      await w.commit();
    } catch (e) {
      w.abort();
      throw e;
    }
    return signatures;
  } finally {
    img.close();
  }
}

/** A file name as text; the payload's tar and the FAT partition need UTF-8 names. @throws {ZbError} USAGE */
function utf8Name(dir: string, raw: Buffer): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    throw new ZbError("USAGE", `cannot put a file of ${dir} into the boot payload: its name is not UTF-8 (${JSON.stringify(raw.toString("latin1"))})`);
  }
}
