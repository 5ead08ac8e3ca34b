/**
 * The signed manifest of a `.zbi` image (docs/image-format.md): what the
 * image is for, its version and anti-rollback serial, and for each payload
 * its sizes, SHA-256 digests and per-chunk digests. Pure.
 *
 * Bytes are canonical JSON — object keys sorted, no whitespace, UTF-8 — so
 * the signed bytes are reproducible and a reader can demand that re-encoding
 * what it parsed gives back exactly what was signed (that also refuses
 * duplicate keys, which JSON.parse would silently merge).
 *
 * Chunks: payload bytes are cut into `chunkSize` pieces of *raw* data. With
 * encoding `zstd` each piece is one independent zstd frame, so a chunk's
 * stored size varies and is listed with its digest; with `none` the stored
 * bytes are the raw bytes. Every chunk is checked against its digest before
 * it is decompressed or written, and an install can resume at any chunk.
 * The frames concatenate into a valid zstd stream (`zstd -d` reads it).
 */
import { ZbError } from "../errors.ts";

export const FORMAT_VERSION = 1;
export const PAYLOAD_KINDS = ["boot", "rootfs"] as const;
export const ENCODINGS = ["zstd", "none"] as const;
export type PayloadKind = (typeof PAYLOAD_KINDS)[number];
export type Encoding = (typeof ENCODINGS)[number];

/** Hard limits: anything beyond them is refused before it is used. */
export const LIMITS = {
  manifestBytes: 4 << 20,
  payloads: 8,
  minChunk: 64 << 10,
  maxChunk: 64 << 20,
  /** 2^20 chunks of at most 64 MiB: far beyond any slot. */
  chunks: 1 << 20,
  payloadBytes: 2 ** 46,
  compatible: 128,
  version: 64,
  nameLength: 64,
} as const;

export interface Digest {
  size: number;
  sha256: string;
}

export interface Payload {
  name: string;
  kind: PayloadKind;
  encoding: Encoding;
  stored: Digest;
  raw: Digest;
  /** One entry per chunk of `chunkSize` raw bytes: its stored size and the SHA-256 of its stored bytes. */
  chunks: Digest[];
}

export interface Manifest {
  format: number;
  compatible: string;
  version: string;
  serial: number;
  /** RFC 3339 UTC, seconds. */
  created: string;
  chunkSize: number;
  payloads: Payload[];
}

/** Canonical JSON: sorted keys, no whitespace. */
export function canonicalJson(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(sortKeys(value)));
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.keys(v as object).sort().map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]));
  }
  return v;
}

/** The cause of the IMG_FORMAT error for a manifest over LIMITS.manifestBytes (create.ts tells it apart by this, not by words). */
export const MANIFEST_TOO_LARGE = Symbol("manifest too large");

/**
 * A manifest told by its sizes alone, before its payloads exist: what
 * {@link manifestSize} needs. Digests are left out (every one is 64 hex
 * characters); each payload's chunks are `count` entries of `size` stored
 * bytes, the last of `last`.
 */
export type ManifestSizes = Omit<Manifest, "payloads"> & {
  payloads: { name: string; kind: PayloadKind; encoding: Encoding; raw: number; stored: number; chunks: { count: number; size: number; last: number } }[];
};

/** Bytes of one chunk entry, `{"sha256":"<64 hex>","size":}` and the digits of its size; entries are joined by commas. */
const CHUNK_ENTRY = '{"sha256":"","size":}'.length + 64;

/**
 * The length of the bytes {@link encodeManifest} makes of a manifest with
 * these sizes (and any digests), without listing its chunks: create checks
 * with it that an input's chunks fit in LIMITS.manifestBytes before it
 * compresses anything (a sparse 64 TiB file in 64 KiB chunks would be a
 * billion entries). Everything but the chunk lists goes through the same
 * canonicalJson as the manifest itself, so the two cannot drift.
 */
export function manifestSize(m: ManifestSizes): number {
  const digest = (size: number): Digest => ({ size, sha256: "0".repeat(64) });
  const payloads = m.payloads.map((p) => ({ name: p.name, kind: p.kind, encoding: p.encoding, raw: digest(p.raw), stored: digest(p.stored), chunks: [] }));
  const rest = canonicalJson({ ...m, payloads }).length;
  return m.payloads.reduce((sum, { chunks: { count, size, last } }) => {
    if (count === 0) return sum;
    return sum + (count - 1) * (CHUNK_ENTRY + digits(size) + 1) + CHUNK_ENTRY + digits(last);
  }, rest);
}

const digits = (n: number): number => String(n).length;

/** @throws {ZbError} IMG_FORMAT when the manifest breaks a rule (cause {@link MANIFEST_TOO_LARGE} when it is too large) */
export function encodeManifest(m: Manifest): Uint8Array {
  validate(m);
  const bytes = canonicalJson(m);
  if (bytes.length > LIMITS.manifestBytes) {
    throw new ZbError("IMG_FORMAT", `cannot read the image manifest: it is ${bytes.length} bytes, more than ${LIMITS.manifestBytes}`, { cause: MANIFEST_TOO_LARGE });
  }
  return bytes;
}

/**
 * Parse and validate signed manifest bytes.
 * @throws {ZbError} IMG_FORMAT for invalid JSON, non-canonical bytes, or any rule broken
 */
export function decodeManifest(bytes: Uint8Array): Manifest {
  if (bytes.length > LIMITS.manifestBytes) throw bad(`it is ${bytes.length} bytes, more than ${LIMITS.manifestBytes}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw bad(`it is not UTF-8 JSON (${(e as Error).message})`);
  }
  const again = canonicalJson(parsed);
  if (again.length !== bytes.length || !again.every((b, i) => b === bytes[i])) throw bad("it is not canonical JSON (sorted keys, no whitespace, no duplicate keys)");
  validate(parsed);
  return parsed as Manifest;
}

/** Every structural rule, with the path of the first offending field. */
function validate(m: unknown): asserts m is Manifest {
  const o = object(m, "manifest", ["chunkSize", "compatible", "created", "format", "payloads", "serial", "version"]);
  if (o.format !== FORMAT_VERSION) throw bad(`format is ${JSON.stringify(o.format)}; this zb reads format ${FORMAT_VERSION}`);
  text(o.compatible, "compatible", TEXT.compatible);
  text(o.version, "version", TEXT.version);
  integer(o.serial, "serial", 0, Number.MAX_SAFE_INTEGER);
  text(o.created, "created", TEXT.created);
  integer(o.chunkSize, "chunkSize", LIMITS.minChunk, LIMITS.maxChunk);
  const chunk = o.chunkSize as number;
  if ((chunk & (chunk - 1)) !== 0) throw bad("chunkSize is not a power of two");
  if (!Array.isArray(o.payloads) || o.payloads.length === 0 || o.payloads.length > LIMITS.payloads) {
    throw bad(`payloads must be a list of 1 to ${LIMITS.payloads}`);
  }
  const names = new Set<string>();
  o.payloads.forEach((p, i) => {
    const name = validatePayload(p, `payloads[${i}]`, chunk);
    if (names.has(name)) throw bad(`payload name ${name} appears twice`);
    names.add(name);
  });
}

function validatePayload(v: unknown, at: string, chunkSize: number): string {
  const p = object(v, at, ["chunks", "encoding", "kind", "name", "raw", "stored"]);
  text(p.name, `${at}.name`, TEXT.name);
  if (!PAYLOAD_KINDS.includes(p.kind as PayloadKind)) throw bad(`${at}.kind ${JSON.stringify(p.kind)} is not one of ${PAYLOAD_KINDS.join(", ")}`);
  if (!ENCODINGS.includes(p.encoding as Encoding)) throw bad(`${at}.encoding ${JSON.stringify(p.encoding)} is not one of ${ENCODINGS.join(", ")}`);
  const stored = digest(p.stored, `${at}.stored`);
  const raw = digest(p.raw, `${at}.raw`);
  if (!Array.isArray(p.chunks) || p.chunks.length > LIMITS.chunks) throw bad(`${at}.chunks must be a list of at most ${LIMITS.chunks}`);
  const want = Math.ceil(raw.size / chunkSize);
  if (p.chunks.length !== want) throw bad(`${at} has ${p.chunks.length} chunks; ${raw.size} raw bytes in chunks of ${chunkSize} make ${want}`);
  let sum = 0;
  p.chunks.forEach((c, i) => {
    const d = digest(c, `${at}.chunks[${i}]`);
    if (d.size === 0) throw bad(`${at}.chunks[${i}] is empty`);
    // Readers allocate buffers of the largest stored chunk: a signed manifest must not choose their
    // size. A zstd chunk is at most the worst case of its raw size; a plain one is exactly it (below).
    const rawLen = Math.min(chunkSize, raw.size - i * chunkSize);
    if (p.encoding === "zstd" && d.size > zstdCompressBound(rawLen)) {
      throw bad(`${at}.chunks[${i}] is ${d.size} bytes, more than a zstd frame of ${rawLen} raw bytes can be (${zstdCompressBound(rawLen)})`);
    }
    sum += d.size;
  });
  if (sum !== stored.size) throw bad(`${at} chunks add up to ${sum} bytes, stored size is ${stored.size}`);
  if (p.encoding === "none") {
    if (stored.size !== raw.size || stored.sha256 !== raw.sha256) throw bad(`${at} is not encoded, so stored and raw must be equal`);
    p.chunks.forEach((c, i) => {
      const expect = Math.min(chunkSize, raw.size - i * chunkSize);
      if ((c as Digest).size !== expect) throw bad(`${at}.chunks[${i}] is ${(c as Digest).size} bytes, expected ${expect}`);
    });
  }
  return p.name as string;
}

/**
 * The largest zstd frame libzstd writes for `rawSize` bytes in one pass:
 * ZSTD_COMPRESSBOUND of zstd.h (v1.5.x), "maximum compressed size in worst
 * case single-pass scenario":
 *   srcSize + (srcSize >> 8) + (srcSize < 128 KiB ? (128 KiB - srcSize) >> 11 : 0)
 * It covers the frame header, block headers and the optional checksum; a
 * frame zb writes (one Bun.zstdCompressSync call per chunk) never exceeds it.
 */
export function zstdCompressBound(rawSize: number): number {
  const margin = rawSize < 128 << 10 ? ((128 << 10) - rawSize) >> 11 : 0;
  return rawSize + Math.floor(rawSize / 256) + margin;
}

function digest(v: unknown, at: string): Digest {
  const d = object(v, at, ["sha256", "size"]);
  integer(d.size, `${at}.size`, 0, LIMITS.payloadBytes);
  text(d.sha256, `${at}.sha256`, TEXT.sha256);
  return d as unknown as Digest;
}

function object(v: unknown, at: string, keys: string[]): Record<string, unknown> {
  if (!v || typeof v !== "object" || Array.isArray(v)) throw bad(`${at} is not an object`);
  const have = Object.keys(v).sort();
  if (have.join(",") !== keys.join(",")) throw bad(`${at} has fields ${have.join(", ") || "(none)"}; expected ${keys.join(", ")}`);
  return v as Record<string, unknown>;
}

function integer(v: unknown, at: string, min: number, max: number): void {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) throw bad(`${at} must be an integer from ${min} to ${max}`);
}

/**
 * The text fields' rules, each told in words: a refusal reaches the publisher
 * as "cannot create an image: --version ...", and a regex is no answer there.
 */
const TEXT = {
  compatible: { pattern: /^[A-Za-z0-9._+-]+$/, max: LIMITS.compatible, says: `1 to ${LIMITS.compatible} characters, each an ASCII letter, a digit or one of . _ + -` },
  version: { pattern: /^[\x21-\x7e]+$/, max: LIMITS.version, says: `1 to ${LIMITS.version} printable ASCII characters without spaces` },
  created: { pattern: /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/, max: 20, says: "a UTC time written YYYY-MM-DDTHH:MM:SSZ" },
  name: { pattern: /^[a-z0-9][a-z0-9._-]*$/, max: LIMITS.nameLength, says: `1 to ${LIMITS.nameLength} characters, each a lower-case ASCII letter, a digit or one of . _ -, the first a letter or digit` },
  sha256: { pattern: /^[0-9a-f]{64}$/, max: 64, says: "64 lower-case hex digits" },
} as const;

function text(v: unknown, at: string, rule: { pattern: RegExp; max: number; says: string }): void {
  if (typeof v === "string" && v.length > 0 && v.length <= rule.max && rule.pattern.test(v)) return;
  // The value is shown quoted (control characters escaped) when it is short; a signed manifest's could be megabytes.
  const shown = typeof v !== "string" ? " (not text)" : v.length > rule.max ? ` (${v.length} characters)` : ` ${JSON.stringify(v)}`;
  throw bad(`${at}${shown} must be ${rule.says}`);
}

function bad(why: string): ZbError {
  return new ZbError("IMG_FORMAT", `cannot read the image manifest: ${why}`);
}
