/**
 * Publisher side: build, sign and re-sign `.zbi` images.
 *
 * create: the options are checked first (output path, manifest fields, chunk
 * size, level, whether the chunks fit in the manifest: capacity.ts), so a
 * mistake on the command line is found before anything is compressed; then
 * each payload is encoded and spooled (spool.ts, with the boot folder's tar
 * from boottar.ts), the manifest is signed by every signer and the archive is
 * written in the fixed order.
 * sign: add signatures to an existing image whose signatures verify first,
 * copying its payload bytes as they are (the manifest, and so every digest,
 * is unchanged).
 */
import * as fs from "node:fs";
import { dirname, isAbsolute, relative, sep } from "node:path";
import { ZbError, isZbError } from "../errors.ts";
import { MARKER, MARKER_NAME, MANIFEST_NAME, SIGNATURES_NAME } from "./format.ts";
import { canonicalJson, encodeManifest, FORMAT_VERSION, MANIFEST_TOO_LARGE, LIMITS, type Manifest, type Payload } from "./manifest.ts";
import { checkManifestFits, manifestTooLarge, type ManifestHead } from "./capacity.ts";
import { openUnverified, openVerified, type ImageHeader, type OpenImage, type Policy } from "./reader.ts";
import { checkSignatureCount, imageSignatures, type Signature, type Signer } from "./sign.ts";
import { untilAborted, type ImageSource } from "./source.ts";
import { looksLikePrivateKey } from "./boottar.ts";
import { encodePayload, plan, type PayloadInput, type Plan } from "./spool.ts";
import { archiveWriter, checkNotTemp, checkReplaceable, spoolFile } from "./writer.ts";
import { atomicTemp } from "../sys/atomic.ts";
import { HostSys } from "../sys/sys.ts";

export const DEFAULT_CHUNK = 4 << 20;
export const DEFAULT_LEVEL = 3;
/** zstd's highest level (ZSTD_maxCLevel). */
export const MAX_LEVEL = 22;

export interface CreateOptions {
  compatible: string;
  version: string;
  serial: number;
  created?: Date;
  chunkSize?: number;
  level?: number;
  payloads: PayloadInput[];
  signers: Signer[];
  /** The files the signers' keys were read from (`--key`): a boot folder must not hold one. */
  keyFiles?: string[];
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
 * @throws {ZbError} IMG_FORMAT for values the manifest refuses, IO, USAGE (more than 16 signing keys among them, an empty
 *   rootfs file, a `level` with no zstd payload, a boot folder holding a private key or the rootfs file, more chunks than the
 *   manifest can list; before anything is written);
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
  // Ignored silently, it would look applied.
  if (opts.level !== undefined && opts.payloads.every((p) => p.encoding === "none")) {
    throw new ZbError("USAGE", `cannot create an image: --level ${level} is a zstd level, and --encoding none compresses nothing`, { hint: "drop --level, or use --encoding zstd" });
  }
  const plans = opts.payloads.map(plan);
  checkBootFolders(plans, opts);
  checkNotEmpty(plans);
  const head: ManifestHead = {
    format: FORMAT_VERSION,
    compatible: opts.compatible,
    version: opts.version,
    serial: opts.serial,
    created: (opts.created ?? new Date()).toISOString().replace(/\.\d{3}Z$/, "Z"),
    chunkSize,
  };
  checkManifestFits(head, plans);
  const allTotal = plans.reduce((a, p) => a + p.rawTotal, 0);
  let allBefore = 0;
  const spools: string[] = [];
  try {
    const payloads: Payload[] = [];
    for (const p of plans) {
      const spool = spoolFile(opts.output, p.input.name);
      const before = allBefore;
      const progress = opts.progress && ((rawBytes: number) => opts.progress!({ payload: p.input.name, rawBytes, rawTotal: p.rawTotal, allBytes: before + rawBytes, allTotal }));
      payloads.push(await encodePayload(p, chunkSize, level, spool, opts.output, () => spools.push(spool), progress, opts.signal));
      allBefore += payloads.at(-1)!.raw.size;
    }
    const manifest: Manifest = { ...head, payloads };
    let manifestBytes: Uint8Array;
    try {
      manifestBytes = encodeManifest(manifest);
    } catch (e) {
      // Checked before compressing (checkManifestFits) at the most it can be; this stays as a backstop
      // for an input that grew while it was read.
      if (!isZbError(e, "IMG_FORMAT") || e.cause !== MANIFEST_TOO_LARGE) throw e;
      throw manifestTooLarge(head, payloads.map((p) => ({ input: p, rawTotal: p.raw.size })), canonicalJson(manifest).length, true);
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
 * output and its spool files would be packed into the image itself. Nor may
 * a rootfs file or a key file be one of the temp files beside the output,
 * which are deleted first (writer.ts checkNotTemp).
 * @throws {ZbError} USAGE
 */
function checkOutput(opts: CreateOptions): void {
  checkNotTemp(`create ${opts.output}`, [atomicTemp(opts.output), ...opts.payloads.map((p) => spoolFile(opts.output, p.name))], [
    ...opts.payloads.flatMap((p) => ("file" in p.from ? [{ role: `the ${p.name} file`, path: p.from.file }] : [])),
    ...(opts.keyFiles ?? []).map((k) => ({ role: "the signing key", path: k })),
  ]);
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
 * A boot folder is published in every image, world-readable on the device's
 * FAT partition: it must not hold a signing key (a `--key` file, compared by
 * device and inode, so a hard link or another spelling counts), nor any text
 * file that holds a PEM private key near its start (a key of another name), nor the
 * `--rootfs` file (packed twice, once into the boot payload).
 * @throws {ZbError} USAGE
 */
function checkBootFolders(plans: Plan[], opts: CreateOptions): void {
  const keys = new Map<string, string>();
  for (const k of opts.keyFiles ?? []) {
    const id = fileId(k);
    if (id !== null) keys.set(id, k);
  }
  const rootfs = new Map<string, string>();
  for (const p of opts.payloads) {
    const id = "file" in p.from ? fileId(p.from.file) : null;
    if (id !== null) rootfs.set(id, p.name);
  }
  for (const p of plans) {
    if (!("dir" in p.input.from)) continue;
    const where = `cannot create an image: the ${p.input.name} folder ${p.input.from.dir} holds`;
    for (const f of p.files ?? []) {
      if (f.dir) continue;
      const hint = { hint: `move ${f.path} out of ${p.input.from.dir}` };
      const key = keys.get(f.id);
      if (key !== undefined) throw new ZbError("USAGE", `${where} the signing key ${f.path}${key === f.path ? "" : ` (--key ${key})`} (it would be published in every image)`, hint);
      const payload = rootfs.get(f.id);
      if (payload !== undefined) throw new ZbError("USAGE", `${where} the ${payload} file ${f.path} (it would be packed into the ${p.input.name} payload too)`, hint);
      if (looksLikePrivateKey(f.path)) throw new ZbError("USAGE", `${where} a private key, ${f.path} (it would be published in every image)`, hint);
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
    // Named as the command line names them: "--version "1.2 beta" must be ...".
    if (isZbError(e, "IMG_FORMAT")) throw new ZbError("USAGE", e.message.replace(/^cannot read the image manifest: (?:(compatible|version|serial)\b)?/, (_, f?: string) => `cannot create an image: ${f ? `--${f}` : ""}`));
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

/**
 * An empty rootfs (a payload file) makes a signed image that every device
 * accepts and that "installs" nothing: a slot with no file system, marked
 * complete. A boot folder with no file in it (nothing, or only folders)
 * likewise: a slot folder with no kernel. Most likely a build step failed
 * and left its output empty.
 * @throws {ZbError} USAGE
 */
function checkNotEmpty(plans: Plan[]): void {
  for (const p of plans) {
    if ("file" in p.input.from) {
      if (p.rawTotal > 0) continue;
      throw new ZbError("USAGE", `cannot create an image: the ${p.input.name} file ${p.input.from.file} is empty (0 bytes): the image would install nothing`, {
        hint: "give the file system image the build made (did the step that writes it fail?)",
      });
    }
    if ((p.files ?? []).some((f) => !f.dir)) continue;
    throw new ZbError("USAGE", `cannot create an image: the ${p.input.name} folder ${p.input.from.dir} holds no file: the slot would get no kernel`, {
      hint: "give the folder the build filled with the kernel, initramfs, .dtb files and cmdline.txt",
    });
  }
}

/**
 * Add signatures to an image without touching its payloads. A signature by
 * a key that already signed replaces the old one. `output` may be the input
 * (re-signed in place): the new image is written beside it and renamed over
 * it once the input was read to its end. Everything that can be
 * refused before — more signatures than a reader takes among them — is,
 * before that file is created, so a refused run leaves the input as it was.
 *
 * `check.policy`: the signatures the image has must pass the policy first,
 * with the manifest checks verify makes before the payloads (reader.ts
 * openVerified; the payloads are copied, not hashed). A new signature vouches
 * for the manifest as it is: added to one edited since it was signed (which
 * no device accepts), it would make the edit verify with the new key alone.
 * `{ unverified: true }` is the explicit escape hatch (`--no-verify`).
 * @param check the trust policy the image must pass, or `{ unverified: true }`
 * @param inputs the files the signers' keys were read from: none may be the output's temp file
 * @returns every signature the new image carries
 * @throws {ZbError} SIG_INVALID, IMG_INCOMPATIBLE, ROLLBACK_REFUSED when the image fails the policy (nothing written);
 *   USAGE for more than 16 signatures in all, or an input (the image, a key) that is the output's temp file; IMG_FORMAT, IO
 * @example await resignImage(fileSource("a.zbi"), [keySigner(key)], "a.zbi", { policy: { trust } })
 */
export async function resignImage(source: ImageSource, signers: Signer[], output: string, check: { policy: Policy } | { unverified: true }, inputs: { keyFiles?: string[] } = {}): Promise<Signature[]> {
  checkNotTemp(`sign ${output}`, [atomicTemp(output)], [
    ...(source.file !== undefined ? [{ role: "the input image", path: source.file }] : []),
    ...(inputs.keyFiles ?? []).map((k) => ({ role: "the signing key", path: k })),
  ]);
  const img = await openChecked(source, check);
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
      // Payload bytes are copied as they are: the manifest covers them already. Each chunk is written
      // before the next is read (a file's direct reads reuse one buffer).
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

/** The image opened for a re-sign; a failed signature check gets a hint for the publisher, not a device's. */
async function openChecked(source: ImageSource, check: { policy: Policy } | { unverified: true }): Promise<OpenImage<ImageHeader>> {
  if (!("policy" in check)) return await openUnverified(source);
  try {
    return await openVerified(source, check.policy);
  } catch (e) {
    if (!isZbError(e, "SIG_INVALID")) throw e;
    throw new ZbError("SIG_INVALID", e.message, {
      cause: e,
      hint: "zb image sign adds to signatures that verify: give --trust the folder with the public keys of the keys that signed it; an image changed since it was signed must be created anew (zb image create)",
    });
  }
}
