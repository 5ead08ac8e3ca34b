/**
 * The hostile-input corpus: ~170 archives made in the test from one valid
 * image (boot folder + 400 KiB rootfs, 64 KiB chunks, signed by an Ed25519
 * and a P-256 key), each a row "what was done → the code zb must answer".
 * Bit flips in every region, truncations, entry games, special tar entries,
 * oversize and non-canonical manifests, signature and policy failures, and
 * re-signed manifests that lie about the payload (so only the chunk check or
 * the final raw check can catch them).
 *
 * For every row, read from a file (the read(2) payload path) and from a
 * stream (stdin, HTTP: through the tar parser, in odd-sized pieces):
 * `install` and `verifyImage --deep` refuse with the code of the row, the
 * same on both paths, and no unverified byte reached the target — the target (pre-filled
 * with a sentinel) is, chunk by chunk, verified payload for a prefix and the
 * untouched sentinel after; every journal version written is recorded and
 * none says "complete" or counts a chunk that is not on the target.
 */
import { afterAll, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ErrorCode } from "../../../lib/errors.ts";
import { install } from "../../../lib/image/install.ts";
import type { PrivateKey } from "../../../lib/image/keys.ts";
import { canonicalJson, zstdCompressBound } from "../../../lib/image/manifest.ts";
import type { Policy } from "../../../lib/image/reader.ts";
import { encodeSignatures, keySigner, loadTrustDir } from "../../../lib/image/sign.ts";
import { fileSource, type ImageSource } from "../../../lib/image/source.ts";
import { verifyImage } from "../../../lib/image/verify.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import {
  buildImage, entriesOf, fixChecksum, KEYS, listTar, outcome, pad512, paxRecords, RecordingSys, sentinel, sha256, tarArchive,
  trustDir, variedBytes, writtenChunks, type RawEntry,
} from "./fixture.ts";

const root = mkdtempSync(join(tmpdir(), "zb-hostile-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const base = await buildImage(join(root, "base"), { rootfs: variedBytes(400 * 1024 + 1234, 7) });
const plain = await buildImage(join(root, "plain"), { rootfs: variedBytes(300 * 1024, 8), encoding: "none", boot: false });
const M = base.manifest;
const CHUNK = M.chunkSize;
const ENTRIES = entriesOf(base.bytes);
const HDR = listTar(base.bytes);
const at = (name: string) => HDR.find((e) => e.name === name)!;
const entry = (name: string) => ENTRIES.find((e) => e.name === name)!;
const rootfsP = M.payloads[1]!;
const bootP = M.payloads[0]!;
const host = new HostSys();
const TRUST = {
  both: loadTrustDir(host, trustDir(root, "trust-both", [KEYS.k1, KEYS.k2])),
  k1: loadTrustDir(host, trustDir(root, "trust-k1", [KEYS.k1])),
  other: loadTrustDir(host, trustDir(root, "trust-other", [KEYS.other])),
};
/** The device's policy unless a row says otherwise: both keys must sign, serial floor = the image's serial. */
const POLICY: Policy = { trust: TRUST.both, required: 2, compatible: "pi4", serialFloor: 5 };

interface Row {
  name: string;
  bytes: Uint8Array;
  code: ErrorCode;
  /** verifyImage --deep's code when it differs from install's. */
  verifyCode?: ErrorCode;
  payload?: "boot" | "rootfs";
  policy?: Partial<Policy>;
  /** header: refused before any payload byte; payload: leading chunks (at most `written`) may be on the target. */
  stage: "header" | "payload";
  written?: number;
  /** The number of written chunks is exactly `written` (a flip in chunk k: chunks 0..k-1 are written). */
  exact?: boolean;
}
const rows: Row[] = [];
const add = (r: Row) => rows.push(r);

// ---- byte-level helpers ----
const flip = (b: Uint8Array, offset: number, mask = 0x01) => {
  const c = b.slice();
  c[offset]! ^= mask;
  return c;
};
const cut = (n: number) => base.bytes.slice(0, n);
const text = (b: Uint8Array) => Buffer.from(b).toString("latin1");
/** Absolute offset of the first `needle` inside entry `name`'s data. */
const find = (name: string, needle: string) => {
  const e = at(name);
  const i = text(base.bytes.subarray(e.dataAt, e.dataAt + e.size)).indexOf(needle);
  if (i < 0) throw new Error(`fixture: ${needle} not in ${name}`);
  return e.dataAt + i;
};
/** Flip one bit of a lowercase hex digit so it stays a hex digit. */
const hexMask = (c: number) => (c >= 0x30 && c <= 0x39 ? 1 : c === 0x61 || c === 0x66 ? 2 : 1);
const pack = (edit: (e: RawEntry[]) => RawEntry[]) => tarArchive(edit(ENTRIES.map((e) => ({ ...e }))));
const withEntry = (name: string, data: Uint8Array) => pack((es) => es.map((e) => (e.name === name ? { ...e, data } : e)));

/** An image with these manifest bytes, signed over them by `signers` (valid signatures: only the content is wrong). */
async function signed(manifest: Uint8Array, o: { signers?: PrivateKey[]; payloads?: Record<string, Uint8Array> } = {}): Promise<Uint8Array> {
  const sigs = await Promise.all((o.signers ?? [KEYS.k1, KEYS.k2]).map((k) => keySigner(k).sign(manifest)));
  return pack((es) => es.map((e) => {
    if (e.name === "manifest.json") return { ...e, data: manifest };
    if (e.name === "signatures.json") return { ...e, data: encodeSignatures(sigs) };
    return o.payloads?.[e.name] ? { ...e, data: o.payloads[e.name]! } : e;
  }));
}
/** The base manifest as a plain object, edited, in canonical JSON (no validation). */
const edited = (f: (m: any) => void) => {
  const m = structuredClone(M);
  f(m);
  return canonicalJson(m);
};
/** The stored chunks of the rootfs entry. */
const rootfsChunks = (() => {
  let o = at("rootfs").dataAt;
  return rootfsP.chunks.map((c) => base.bytes.slice(o, (o += c.size)));
})();
/** The rootfs entry with chunk `k` replaced by `frame`, and the manifest re-signed to match it. */
async function replaceChunk(k: number, frame: Uint8Array): Promise<Uint8Array> {
  const chunks = rootfsChunks.map((c, i) => (i === k ? frame : c));
  const data = new Uint8Array(Buffer.concat(chunks));
  const m = edited((x) => {
    x.payloads[1].chunks[k] = { size: frame.length, sha256: sha256(frame) };
    x.payloads[1].stored = { size: data.length, sha256: sha256(data) };
  });
  return signed(m, { payloads: { rootfs: data } });
}
const N = rootfsP.chunks.length;

// ---- 1. bit flips: marker, manifest, signatures ----
for (let i = 0; i < 6; i++) add({ name: `marker byte ${i} flipped`, bytes: flip(base.bytes, at("zbi-format").dataAt + i), code: "IMG_FORMAT", stage: "header" });
const manifestFlips: [string, number, number, ErrorCode][] = [
  ["opening brace", find("manifest.json", "{"), 1, "IMG_FORMAT"],
  ["last brace", at("manifest.json").dataAt + at("manifest.json").size - 1, 1, "IMG_FORMAT"],
  ['key "chunkSize" → "bhunkSize"', find("manifest.json", "chunkSize"), 1, "IMG_FORMAT"],
  ['compatible "pi4" → "pi5"', find("manifest.json", '"pi4"') + 3, 1, "SIG_INVALID"],
  ["version 1.0.0 → 0.0.0", find("manifest.json", '"1.0.0"') + 1, 1, "SIG_INVALID"],
  ["serial 5 → 4 (also below the floor: signatures are checked first)", find("manifest.json", '"serial":5') + 9, 1, "SIG_INVALID"],
  ["created year digit", find("manifest.json", '"2025-') + 4, 1, "SIG_INVALID"],
  ['encoding "zstd" → "zsud"', find("manifest.json", '"zstd"') + 3, 1, "IMG_FORMAT"],
  ['kind "rootfs" → "sootfs"', find("manifest.json", '"kind":"rootfs"') + 8, 1, "IMG_FORMAT"],
  ["a quote", find("manifest.json", '"format"'), 0x04, "IMG_FORMAT"],
  ["rootfs chunk 0 size digit (chunks no longer add up)", find("manifest.json", `"size":${rootfsP.chunks[0]!.size}`) + 8, 1, "IMG_FORMAT"],
  ["chunkSize digit (not a power of two)", find("manifest.json", '"chunkSize":65536') + 16, 1, "IMG_FORMAT"],
];
for (const [what, offset, mask, code] of manifestFlips) add({ name: `manifest: ${what}`, bytes: flip(base.bytes, offset, mask), code, stage: "header" });
for (const [what, digest] of [
  ["boot chunk 0 sha256", bootP.chunks[0]!.sha256], ["rootfs chunk 0 sha256", rootfsP.chunks[0]!.sha256], [`rootfs chunk ${N - 1} sha256`, rootfsP.chunks[N - 1]!.sha256],
  ["rootfs raw sha256", rootfsP.raw.sha256], ["rootfs stored sha256", rootfsP.stored.sha256],
] as const) {
  const o = find("manifest.json", digest) + 10;
  add({ name: `manifest: a hex digit of the ${what} (still valid JSON: the signature fails)`, bytes: flip(base.bytes, o, hexMask(base.bytes[o]!)), code: "SIG_INVALID", stage: "header" });
}
const sigJson = JSON.parse(text(entry("signatures.json").data)) as { signatures: { alg: string; keyid: string; sig: string }[] };
const sigWith = (f: (s: typeof sigJson.signatures) => void) => {
  const s = structuredClone(sigJson);
  f(s.signatures);
  return withEntry("signatures.json", new TextEncoder().encode(JSON.stringify(s)));
};
for (const [idx, s] of sigJson.signatures.entries()) {
  const raw = Buffer.from(s.sig, "base64");
  for (const byte of [0, raw.length >> 1, raw.length - 1]) {
    add({ name: `signature ${idx} (${s.alg}): raw byte ${byte} flipped`, bytes: sigWith((l) => (l[idx]!.sig = Buffer.from(flip(raw, byte)).toString("base64"))), code: "SIG_INVALID", stage: "header" });
  }
  add({ name: `signature ${idx} (${s.alg}): a base64 character replaced by "!"`, bytes: sigWith((l) => (l[idx]!.sig = "!" + s.sig.slice(1))), code: "IMG_FORMAT", stage: "header" });
  add({ name: `signature ${idx} (${s.alg}): last keyid digit changed (claims an unknown key)`, bytes: sigWith((l) => (l[idx]!.keyid = s.keyid.slice(0, 63) + (s.keyid[63] === "0" ? "1" : "0"))), code: "SIG_INVALID", stage: "header" });
}
const edIdx = sigJson.signatures.findIndex((s) => s.alg === "ed25519");
add({ name: "signatures: the Ed25519 entry relabelled p256 (64 bytes fit a DER length)", bytes: sigWith((l) => (l[edIdx]!.alg = "p256")), code: "SIG_INVALID", stage: "header" });
add({ name: "signatures: unknown algorithm rsa", bytes: sigWith((l) => (l[edIdx]!.alg = "rsa")), code: "IMG_FORMAT", stage: "header" });
add({ name: "signatures: alg ed25519 → ed25518", bytes: sigWith((l) => (l[edIdx]!.alg = "ed25518")), code: "IMG_FORMAT", stage: "header" });
add({ name: "signatures: entries out of keyid order", bytes: sigWith((l) => l.reverse()), code: "IMG_FORMAT", stage: "header" });
add({ name: "signatures: the same entry twice", bytes: sigWith((l) => l.push(l[0]!)), code: "IMG_FORMAT", stage: "header" });
add({ name: "signatures: an empty list", bytes: sigWith((l) => l.splice(0)), code: "SIG_INVALID", stage: "header" });
add({ name: "signatures: an extra field", bytes: withEntry("signatures.json", new TextEncoder().encode(JSON.stringify({ ...sigJson, x: 1 }))), code: "IMG_FORMAT", stage: "header" });
add({ name: "signatures: pretty-printed (not canonical)", bytes: withEntry("signatures.json", new TextEncoder().encode(JSON.stringify(sigJson, null, 1))), code: "IMG_FORMAT", stage: "header" });
add({ name: "signatures: 17 entries (limit 16)", bytes: sigWith((l) => l.push(...Array.from({ length: 15 }, (_, i) => ({ alg: "ed25519", keyid: (i + 16).toString(16).padStart(64, "f"), sig: l[edIdx]!.sig })))), code: "IMG_FORMAT", stage: "header" });
for (const [what, needle, mask] of [["opening brace", '{"signatures"', 1], ['key "signatures"', '"signatures"', 2], ["the list bracket", "[", 1], ['key "keyid"', '"keyid"', 1]] as const) {
  add({ name: `signatures.json: ${what} flipped`, bytes: flip(base.bytes, find("signatures.json", needle) + (needle.startsWith('"') ? 1 : 0), mask), code: "IMG_FORMAT", stage: "header" });
}

// ---- 2. policy: keys, compatible, serial floor ----
const onlyK1 = await signed(entry("manifest.json").data, { signers: [KEYS.k1] });
const onlyK2 = await signed(entry("manifest.json").data, { signers: [KEYS.k2] });
const byOther = await signed(entry("manifest.json").data, { signers: [KEYS.other] });
for (const r of [
  { name: "policy: the trust dir holds a different key", policy: { trust: TRUST.other, required: 1 }, code: "SIG_INVALID" },
  { name: "policy: required 2, one of the signers trusted", policy: { trust: TRUST.k1, required: 2 }, code: "SIG_INVALID" },
  { name: "policy: wrong compatible", policy: { compatible: "pi5" }, code: "IMG_INCOMPATIBLE" },
  { name: "policy: compatible differs in case only", policy: { compatible: "PI4" }, code: "IMG_INCOMPATIBLE" },
  // Equal, not a prefix either way: "pi" is no "pi4", "pi4b" no "pi4", a trailing space is another name.
  { name: "policy: compatible \"pi\", the image's \"pi4\" begins with it", policy: { compatible: "pi" }, code: "IMG_INCOMPATIBLE" },
  { name: "policy: compatible \"pi4 \" (a trailing space)", policy: { compatible: "pi4 " }, code: "IMG_INCOMPATIBLE" },
  { name: "policy: compatible \"pi4b\", which begins with the image's \"pi4\"", policy: { compatible: "pi4b" }, code: "IMG_INCOMPATIBLE" },
  { name: "policy: serial 5 below the floor 6", policy: { serialFloor: 6 }, code: "ROLLBACK_REFUSED" },
  { name: "policy: wrong compatible and serial below the floor (compatible reported first)", policy: { compatible: "pi5", serialFloor: 9 }, code: "IMG_INCOMPATIBLE" },
  { name: "policy: wrong key and wrong compatible (signatures reported first)", policy: { trust: TRUST.other, required: 1, compatible: "pi5" }, code: "SIG_INVALID" },
] as const) add({ ...r, bytes: base.bytes, stage: "header" });
add({ name: 'policy: compatible "pi4", a signed image for "pi4b" (begins with it)', bytes: await signed(edited((m) => (m.compatible = "pi4b"))), code: "IMG_INCOMPATIBLE", stage: "header" });
add({ name: "policy: required 2, the image carries one signature", bytes: onlyK1, code: "SIG_INVALID", stage: "header" });
add({ name: "policy: signed only by a key that is not trusted", bytes: onlyK2, policy: { trust: TRUST.k1, required: 1 }, code: "SIG_INVALID", stage: "header" });
add({ name: "policy: signed only by an untrusted key, required 1", bytes: byOther, policy: { required: 1 }, code: "SIG_INVALID", stage: "header" });
const otherManifest = edited((m) => (m.version = "9.9.9"));
const foreignSigs = await Promise.all([KEYS.k1, KEYS.k2].map((k) => keySigner(k).sign(otherManifest)));
add({ name: "policy: valid signatures by both trusted keys, over another manifest", bytes: withEntry("signatures.json", encodeSignatures(foreignSigs)), code: "SIG_INVALID", stage: "header" });

// ---- 3. manifests that are signed but break a rule ----
const enc = (s: string) => new TextEncoder().encode(s);
const canon = text(entry("manifest.json").data);
const manifestRows: [string, Uint8Array][] = [
  ["pretty-printed JSON (not canonical)", enc(JSON.stringify(M, null, 2))],
  ["keys in creation order (not sorted)", enc(JSON.stringify(M))],
  ["a trailing newline", enc(canon + "\n")],
  ["a duplicate key", enc(canon.replace('{"chunkSize":65536,', '{"chunkSize":65536,"chunkSize":65536,'))],
  ["a UTF-8 BOM", enc("\ufeff" + canon)],
  ["a byte that is not UTF-8", new Uint8Array(Buffer.concat([Buffer.from(canon.slice(0, canon.indexOf('"1.0.0"') + 5)), Buffer.from([0xff]), Buffer.from(canon.slice(canon.indexOf('"1.0.0"') + 6))]))],
  ["an extra top-level field", edited((m) => (m.extra = 1))],
  ["an extra field in a payload", edited((m) => (m.payloads[1].mode = "0644"))],
  ["an extra field in a chunk digest", edited((m) => (m.payloads[1].chunks[0].offset = 0))],
  ["serial as a string", edited((m) => (m.serial = "5"))],
  ["serial negative", edited((m) => (m.serial = -1))],
  ["chunkSize as a string", edited((m) => (m.chunkSize = "65536"))],
  ["chunkSize not a power of two", edited((m) => (m.chunkSize = 98304))],
  ["chunkSize below the minimum", edited((m) => (m.chunkSize = 32768))],
  ["format 2", edited((m) => (m.format = 2))],
  ["payloads an object", edited((m) => (m.payloads = { rootfs: m.payloads[1] }))],
  ["payloads empty", edited((m) => (m.payloads = []))],
  ["9 payloads", edited((m) => (m.payloads = Array.from({ length: 9 }, (_, i) => ({ ...m.payloads[1], name: `p${i}` }))))],
  ["two payloads named rootfs", edited((m) => (m.payloads[0] = { ...m.payloads[1] }))],
  ['payload name "../rootfs"', edited((m) => (m.payloads[1].name = "../rootfs"))],
  ['encoding "gzip"', edited((m) => (m.payloads[1].encoding = "gzip"))],
  ['kind "kernel"', edited((m) => (m.payloads[1].kind = "kernel"))],
  ["a chunk sha256 in upper case", edited((m) => (m.payloads[1].chunks[0].sha256 = m.payloads[1].chunks[0].sha256.toUpperCase()))],
  ["a chunk size as a float", edited((m) => (m.payloads[1].chunks[0].size += 0.5))],
  ["an empty chunk", edited((m) => (m.payloads[1].chunks[1].size = 0))],
  ["chunk sizes that do not add up to the stored size", edited((m) => (m.payloads[1].chunks[1].size += 1))],
  ["one chunk too few (stored size adjusted)", edited((m) => (m.payloads[1].stored.size -= m.payloads[1].chunks.pop().size))],
  ["one chunk too many (stored size adjusted)", edited((m) => (m.payloads[1].chunks.push(m.payloads[1].chunks[0]), (m.payloads[1].stored.size += m.payloads[1].chunks[0].size)))],
  ["encoding none with stored ≠ raw", edited((m) => (m.payloads[1].encoding = "none"))],
  ["empty compatible", edited((m) => (m.compatible = ""))],
  ["created not RFC 3339", edited((m) => (m.created = "2025-01-02 03:04:05"))],
];
for (const [what, bytes] of manifestRows) add({ name: `signed manifest: ${what}`, bytes: await signed(bytes), code: "IMG_FORMAT", stage: "header" });
add({ name: "signed manifest: without the rootfs payload (install asks for it)", bytes: await signed(edited((m) => m.payloads.pop())), code: "USAGE", verifyCode: "IMG_FORMAT", stage: "header" });
add({ name: "signed manifest: last chunk and stored size +100, tar entry unchanged", bytes: await signed(edited((m) => ((m.payloads[1].chunks[N - 1].size += 100), (m.payloads[1].stored.size += 100)))), code: "IMG_FORMAT", stage: "header" });
add({ name: "tar: rootfs entry 512 bytes longer than the manifest says", bytes: withEntry("rootfs", new Uint8Array(Buffer.concat([entry("rootfs").data, new Uint8Array(512)]))), code: "IMG_FORMAT", stage: "header" });
add({ name: "tar: boot entry 1 byte shorter than the manifest says", bytes: withEntry("boot", entry("boot").data.slice(0, -1)), code: "IMG_FORMAT", stage: "header" });
add({ name: "oversize manifest.json (4 MiB + 1)", bytes: withEntry("manifest.json", new Uint8Array((4 << 20) + 1).fill(0x20)), code: "IMG_FORMAT", stage: "header" });
add({ name: "oversize signatures.json (64 KiB + 1)", bytes: withEntry("signatures.json", new Uint8Array((64 << 10) + 1).fill(0x20)), code: "IMG_FORMAT", stage: "header" });
add({ name: "signatures.json of 5000 bytes (above 16 entries' worth)", bytes: withEntry("signatures.json", enc(JSON.stringify(sigJson).padEnd(5000, " "))), code: "IMG_FORMAT", stage: "header" });
add({ name: "zbi-format says zbi 2", bytes: withEntry("zbi-format", enc("zbi 2\n")), code: "IMG_FORMAT", stage: "header" });
add({ name: "zbi-format of 100 bytes (limit 64)", bytes: withEntry("zbi-format", new Uint8Array(100).fill(0x7a)), code: "IMG_FORMAT", stage: "header" });

// ---- 4. re-signed manifests that lie about the payload: only the payload checks catch them ----
for (const k of [0, 3, N - 1]) {
  add({ name: `re-signed manifest: rootfs chunk ${k} digest changed`, bytes: await signed(edited((m) => (m.payloads[1].chunks[k].sha256 = sha256(enc(`not chunk ${k}`))))), code: "PAYLOAD_CORRUPT", stage: "payload", written: k, exact: true });
}
add({ name: "re-signed manifest: boot chunk 1 digest changed", payload: "boot", bytes: await signed(edited((m) => (m.payloads[0].chunks[1].sha256 = "0".repeat(64)))), code: "PAYLOAD_CORRUPT", stage: "payload", written: 1, exact: true });
add({ name: "re-signed manifest: rootfs chunks 1 and 2 swapped", bytes: await signed(edited((m) => m.payloads[1].chunks.splice(1, 2, m.payloads[1].chunks[2], m.payloads[1].chunks[1]))), code: "PAYLOAD_CORRUPT", stage: "payload", written: 1, exact: true });
add({ name: "re-signed manifest: rootfs raw sha256 changed (the final check)", bytes: await signed(edited((m) => (m.payloads[1].raw.sha256 = "f".repeat(64)))), code: "PAYLOAD_CORRUPT", stage: "payload", written: N, exact: true });
add({ name: "re-signed manifest: rootfs raw size +1 (last frame is 1 byte short)", bytes: await signed(edited((m) => (m.payloads[1].raw.size += 1))), code: "IMG_FORMAT", stage: "payload", written: N - 1, exact: true });
add({ name: "re-signed chunk 2: a zstd frame of 1000 bytes", bytes: await replaceChunk(2, Bun.zstdCompressSync(variedBytes(1000, 3))), code: "IMG_FORMAT", stage: "payload", written: 2, exact: true });
add({ name: "re-signed chunk 2: a zstd bomb (16 MiB of zeros)", bytes: await replaceChunk(2, Bun.zstdCompressSync(new Uint8Array(16 << 20))), code: "IMG_FORMAT", stage: "payload", written: 2, exact: true });
add({ name: "re-signed chunk 2: bytes that are not zstd", bytes: await replaceChunk(2, variedBytes(5000, 4, 1)), code: "IMG_FORMAT", stage: "payload", written: 2, exact: true });
add({ name: "re-signed chunk 2: a zstd frame that does not declare its size (streamed)", bytes: await replaceChunk(2, unsizedFrame(base.raw.rootfs!.slice(2 * CHUNK, 3 * CHUNK))), code: "IMG_FORMAT", stage: "payload", written: 2, exact: true });
add({ name: "re-signed chunk 2: two frames of half a chunk each", bytes: await replaceChunk(2, new Uint8Array(Buffer.concat([Bun.zstdCompressSync(base.raw.rootfs!.slice(2 * CHUNK, 2.5 * CHUNK)), Bun.zstdCompressSync(base.raw.rootfs!.slice(2.5 * CHUNK, 3 * CHUNK))]))), code: "IMG_FORMAT", stage: "payload", written: 2, exact: true });
add({ name: "re-signed manifest: a stored chunk larger than zstd's bound for its raw size (readers would allocate it)", bytes: await replaceChunk(2, new Uint8Array(zstdCompressBound(CHUNK) + 1)), code: "IMG_FORMAT", stage: "header" });
add({ name: "re-signed chunk 2: the raw bytes, not compressed", bytes: await replaceChunk(2, base.raw.rootfs!.slice(2 * CHUNK, 3 * CHUNK)), code: "IMG_FORMAT", stage: "payload", written: 2, exact: true });

// ---- 5. payload bit flips (first, middle, last byte of every chunk) ----
for (const p of [bootP, rootfsP]) {
  let o = at(p.name).dataAt;
  p.chunks.forEach((c, k) => {
    for (const [where, d] of [["first", 0], ["middle", c.size >> 1], ["last", c.size - 1]] as const) {
      add({ name: `${p.name} chunk ${k}: ${where} stored byte flipped`, payload: p.name as "boot" | "rootfs", bytes: flip(base.bytes, o + d, 0x10), code: "PAYLOAD_CORRUPT", stage: "payload", written: k, exact: true });
    }
    o += c.size;
  });
}
for (const k of [0, 2, 4]) add({ name: `encoding none: chunk ${k} byte flipped`, bytes: flip(plain.bytes, listTar(plain.bytes)[3]!.dataAt + k * CHUNK + 777), code: "PAYLOAD_CORRUPT", stage: "payload", written: k, exact: true });

// ---- 6. tar headers: flips the tar layer catches (checksum) and ones only zb catches (checksum recomputed) ----
const headerField = { name: 0, mode: 101, mtime: 140, size: 134, checksum: 150, typeflag: 156, magic: 257 } as const;
for (const e of HDR) {
  for (const [field, off] of Object.entries(headerField)) {
    add({ name: `tar header of ${e.name}: ${field} flipped, checksum stale`, bytes: flip(base.bytes, e.headerAt + off), code: "IMG_FORMAT", stage: "header" });
  }
  for (const [field, off, mask] of [["name", 0, 1], ["size (last digit)", 134, 1], ["size (first digit: huge)", 124, 4], ["typeflag → 1 (hard link)", 156, 1], ["typeflag → 2 (symlink)", 156, 2], ["typeflag → 8", 156, 8]] as const) {
    const b = flip(base.bytes, e.headerAt + off, mask);
    fixChecksum(b.subarray(e.headerAt, e.headerAt + 512));
    add({ name: `tar header of ${e.name}: ${field}, checksum fixed`, bytes: b, code: "IMG_FORMAT", stage: "header" });
  }
}

// ---- 7. truncation ----
const headerEnd = at("boot").dataAt;
for (let n = 0; n <= headerEnd; n += 512) add({ name: `truncated at byte ${n} (block boundary)`, bytes: cut(n), code: "IMG_FORMAT", stage: "header" });
for (const n of [100, 1100, 1536 + 7, 3584 + 100]) add({ name: `truncated at byte ${n} (inside a block)`, bytes: cut(n), code: "IMG_FORMAT", stage: "header" });
add({ name: "truncated inside the boot data (installing rootfs)", bytes: cut(at("boot").dataAt + 5000), code: "IMG_FORMAT", stage: "header" });
add({ name: "truncated inside the boot data (installing boot)", payload: "boot", bytes: cut(at("boot").dataAt + bootP.chunks[0]!.size + 10), code: "IMG_FORMAT", stage: "payload", written: 1 });
add({ name: "truncated before the rootfs header", bytes: cut(at("rootfs").headerAt), code: "IMG_FORMAT", stage: "header" });
{
  let o = at("rootfs").dataAt;
  rootfsP.chunks.forEach((c, k) => {
    if (k % 2 === 0) add({ name: `truncated inside rootfs chunk ${k}`, bytes: cut(o + (c.size >> 1)), code: "IMG_FORMAT", stage: "payload", written: k });
    if (k > 0 && k % 3 === 0) add({ name: `truncated exactly before rootfs chunk ${k}`, bytes: cut(o), code: "IMG_FORMAT", stage: "payload", written: k });
    o += c.size;
  });
  add({ name: "truncated 1 byte before the end of the rootfs data", bytes: cut(o - 1), code: "IMG_FORMAT", stage: "payload", written: N - 1 });
}

// ---- 8. entries reordered, duplicated, added, missing ----
const names = ["zbi-format", "manifest.json", "signatures.json", "boot", "rootfs"];
const order = (...ns: string[]) => pack(() => ns.map((n) => ({ ...entry(n) })));
const junk = { name: "extra", data: enc("not part of any image\n") };
for (const [what, bytes, stage] of [
  ["manifest before the marker", order("manifest.json", "zbi-format", "signatures.json", "boot", "rootfs"), "header"],
  ["signatures before the manifest", order("zbi-format", "signatures.json", "manifest.json", "boot", "rootfs"), "header"],
  ["rootfs before boot", order("zbi-format", "manifest.json", "signatures.json", "rootfs", "boot"), "header"],
  ["the marker twice", order("zbi-format", "zbi-format", "manifest.json", "signatures.json", "boot", "rootfs"), "header"],
  ["the manifest twice", order("zbi-format", "manifest.json", "manifest.json", "signatures.json", "boot", "rootfs"), "header"],
  ["signatures twice", order("zbi-format", "manifest.json", "signatures.json", "signatures.json", "boot", "rootfs"), "header"],
  ["boot twice", order("zbi-format", "manifest.json", "signatures.json", "boot", "boot", "rootfs"), "header"],
  ["no marker", order("manifest.json", "signatures.json", "boot", "rootfs"), "header"],
  ["no manifest", order("zbi-format", "signatures.json", "boot", "rootfs"), "header"],
  ["no signatures", order("zbi-format", "manifest.json", "boot", "rootfs"), "header"],
  ["no boot payload", order("zbi-format", "manifest.json", "signatures.json", "rootfs"), "header"],
  ["no rootfs payload", order("zbi-format", "manifest.json", "signatures.json", "boot"), "header"],
  ["an unknown entry before the marker", pack((es) => [junk, ...es]), "header"],
  ["an unknown entry between signatures and boot", pack((es) => [...es.slice(0, 3), junk, ...es.slice(3)]), "header"],
  ["an unknown entry between boot and rootfs", pack((es) => [...es.slice(0, 4), junk, ...es.slice(4)]), "header"],
  ["an empty entry between boot and rootfs", pack((es) => [...es.slice(0, 4), { name: "empty", data: new Uint8Array(0) }, ...es.slice(4)]), "header"],
] as const) add({ name: `entries: ${what}`, bytes, code: "IMG_FORMAT", stage });
for (const [what, bytes] of [
  ["an extra entry after the last payload", pack((es) => [...es, junk])],
  ["rootfs twice (the copy after the last payload)", order(...names, "rootfs")],
  ["512 bytes of junk after the end-of-archive blocks", new Uint8Array(Buffer.concat([base.bytes, new Uint8Array(512).fill(0x41)]))],
  ["100 bytes of junk after the end-of-archive blocks", new Uint8Array(Buffer.concat([base.bytes, new Uint8Array(100).fill(0x41)]))],
] as const) add({ name: `entries: ${what}`, bytes, code: "IMG_FORMAT", stage: "payload", written: N });

// ---- 9. names and entry types other than a plain regular file (in the rootfs slot) ----
const asRootfs = (e: Partial<RawEntry>) => pack((es) => es.map((x) => (x.name === "rootfs" ? { ...x, ...e } : x)));
const before = (e: RawEntry) => pack((es) => [...es.slice(0, 4), e, ...es.slice(4)]);
for (const [what, bytes] of [
  ['name "../rootfs"', asRootfs({ name: "../rootfs" })],
  ['name "a/b"', asRootfs({ name: "a/b" })],
  ['name "/rootfs"', asRootfs({ name: "/rootfs" })],
  ['name "rootfs/" (a directory by its slash)', asRootfs({ name: "rootfs/" })],
  ['name ".."', asRootfs({ name: ".." })],
  ['ustar prefix "a" (a/rootfs)', asRootfs({ prefix: "a" })],
  ["a symlink rootfs → /dev/mmcblk0", asRootfs({ typeflag: "2", linkname: "/dev/mmcblk0", data: new Uint8Array(0), headerSize: 0 })],
  ["a hard link rootfs → boot", asRootfs({ typeflag: "1", linkname: "boot", data: new Uint8Array(0) })],
  ["a directory rootfs", asRootfs({ typeflag: "5", data: new Uint8Array(0) })],
  ["a character device rootfs", asRootfs({ typeflag: "3", data: new Uint8Array(0), devmajor: 1 })],
  ["a block device rootfs", asRootfs({ typeflag: "4", data: new Uint8Array(0), devmajor: 179 })],
  ["a fifo rootfs", asRootfs({ typeflag: "6", data: new Uint8Array(0) })],
  ["a contiguous file rootfs (typeflag 7)", asRootfs({ typeflag: "7" })],
  ["an unknown typeflag Z", asRootfs({ typeflag: "Z" })],
  ["a symlink as the marker", pack((es) => [{ name: "zbi-format", typeflag: "2", linkname: "/etc/passwd", data: new Uint8Array(0) }, ...es.slice(1)])],
  ["a pax header (path=rootfs) before rootfs", before({ name: "PaxHeaders/rootfs", typeflag: "x", data: paxRecords({ path: "rootfs" }) })],
  ["a pax header overriding the size", before({ name: "PaxHeaders/rootfs", typeflag: "x", data: paxRecords({ size: "10" }) })],
  ["a pax global header before rootfs", before({ name: "pax_global_header", typeflag: "g", data: paxRecords({ comment: "hi" }) })],
  ["a GNU long name (a 150-byte name) before rootfs", before({ name: "././@LongLink", typeflag: "L", data: enc("r".repeat(150) + "\0") })],
  ['a GNU long name "../rootfs"', before({ name: "././@LongLink", typeflag: "L", data: enc("../rootfs\0") })],
  ['a GNU long name that says "rootfs"', before({ name: "././@LongLink", typeflag: "L", data: enc("rootfs\0") })],
  ["a GNU long link name before rootfs", before({ name: "././@LongLink", typeflag: "K", data: enc("/dev/mmcblk0\0") })],
] as const) add({ name: `entry type: ${what}`, bytes, code: "IMG_FORMAT", stage: "header" });

// ---- 10. one ustar rule on every path: what tar-stream alone would let through ----
/** Entries re-packed with header bytes changed (checksum fixed): `which` selects the entries by index. */
const withHeader = (which: (i: number) => boolean, edit: (h: Uint8Array) => void, from = pack((es) => es)) => {
  const b = from.slice();
  listTar(b).forEach((e, i) => {
    if (!which(i)) return;
    const h = b.subarray(e.headerAt, e.headerAt + 512);
    edit(h);
    fixChecksum(h);
  });
  return b;
};
const nulType = (h: Uint8Array) => void (h[156] = 0);
const gnuMagic = (h: Uint8Array) => h.set(Buffer.from("ustar  \0", "latin1"), 257);
const all = () => true;
const firstThree = (i: number) => i < 3;
const rootfsOnly = (i: number) => i === 4;
for (const [what, bytes] of [
  ["typeflag NUL (old tar's regular file) on every entry", withHeader(all, nulType)],
  ["typeflag NUL on the marker, manifest and signatures", withHeader(firstThree, nulType)],
  ["typeflag NUL on rootfs", withHeader(rootfsOnly, nulType)],
  ['GNU magic "ustar  \\0" on every entry', withHeader(all, gnuMagic)],
  ["GNU magic on the marker, manifest and signatures", withHeader(firstThree, gnuMagic)],
  ["GNU magic on rootfs", withHeader(rootfsOnly, gnuMagic)],
  ['ustar version "  " instead of "00" on the marker', withHeader((i) => i === 0, (h) => h.set(Buffer.from("  ", "latin1"), 263))],
  ["rootfs size field: spaces, the digits, then junk", withHeader(rootfsOnly, (h) => h.set(Buffer.from(("  " + rootfsP.stored.size.toString(8) + " junk").padEnd(12, "\0").slice(0, 12), "latin1"), 124))],
  ['rootfs name "rootfs\\0evil" (junk after the NUL)', withHeader(rootfsOnly, (h) => h.set(Buffer.from("rootfs\0evil", "latin1"), 0))],
  ['manifest name "manifest.json\\0x"', withHeader((i) => i === 1, (h) => h.set(Buffer.from("manifest.json\0x", "latin1"), 0))],
] as const) add({ name: `ustar: ${what}`, bytes, code: "IMG_FORMAT", stage: "header" });
{
  // Blocks that are zero but for the checksum field (tar-stream reads them as null blocks) after the archive.
  const tail = new Uint8Array(2048);
  tail.set(Buffer.from("DEADBEEF", "latin1"), 512 + 148);
  tail.set(Buffer.from("CAFEBABE", "latin1"), 1024 + 148);
  add({ name: "ustar: blocks that are zero but for bytes 148–155 after the end-of-archive blocks", bytes: new Uint8Array(Buffer.concat([base.bytes.subarray(0, base.bytes.length - 1024), tail])), code: "IMG_FORMAT", stage: "payload", written: N });
  const cksumOnly = new Uint8Array(512);
  cksumOnly.set(Buffer.from("00000400", "latin1"), 148);
  add({ name: "ustar: a checksum-only block in place of the first end-of-archive block", bytes: new Uint8Array(Buffer.concat([base.bytes.subarray(0, base.bytes.length - 1024), cksumOnly, new Uint8Array(512)])), code: "IMG_FORMAT", stage: "payload", written: N });
}

// ---- the run ----
console.log(`hostile corpus: ${rows.length} cases`);

test("the corpus is large, and its base image, repacked and re-signed, installs (the rows fail only for what they change)", async () => {
  expect(rows.length).toBeGreaterThanOrEqual(150);
  expect(new Set(rows.map((r) => r.name)).size).toBe(rows.length);
  for (const bytes of [base.bytes, pack((es) => es), await signed(entry("manifest.json").data)]) {
    for (const via of ["file", "stream"] as const) {
      const r = await attempt({ name: "base", bytes, code: "USAGE", stage: "header" }, via);
      expect([via, r.install, r.verify]).toEqual([via, "ok", "ok"]);
      expect(sha256(r.target.subarray(0, base.raw.rootfs!.length))).toBe(sha256(base.raw.rootfs!));
    }
  }
});

test("the target check itself catches unverified bytes (a stray chunk, a gap, a byte past the end)", () => {
  const raw = base.raw.rootfs!;
  const before = sentinel(raw.length + 3000);
  const partial = before.slice();
  partial.set(raw.subarray(0, 2 * CHUNK));
  expect(writtenChunks(partial, raw, before, CHUNK)).toBe(2);
  const gap = before.slice();
  gap.set(raw.subarray(CHUNK, 2 * CHUNK), CHUNK);
  expect(() => writtenChunks(gap, raw, before, CHUNK)).toThrow(/neither/);
  const stray = partial.slice();
  stray[2 * CHUNK + 5]! ^= 1;
  expect(() => writtenChunks(stray, raw, before, CHUNK)).toThrow(/neither/);
  const tail = before.slice();
  tail[raw.length + 1]! ^= 1;
  expect(() => writtenChunks(tail, raw, before, CHUNK)).toThrow(/beyond/);
});

/** A stream source in odd-sized pieces, so headers and chunks straddle reads. */
const streamOf = (bytes: Uint8Array): ImageSource => ({
  name: "stdin",
  seekable: false,
  open: async () => (async function* () {
    for (let at = 0; at < bytes.length; at += 7777) yield bytes.subarray(at, at + 7777);
  })(),
});

/** A zstd frame without Frame_Content_Size: what a streaming compressor writes (RFC 8878 §3.1.1.1.1, FCS flag 0 and no single segment). */
function unsizedFrame(raw: Uint8Array): Uint8Array {
  // Bun writes the size; build the frame by hand from raw blocks: header 28 b5 2f fd, FHD 0, window descriptor.
  const parts: Uint8Array[] = [new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58])]; // window 2^(10+11) = 2 MiB
  for (let at = 0; at < raw.length; at += 128 << 10) {
    const piece = raw.subarray(at, at + (128 << 10));
    const last = at + piece.length >= raw.length ? 1 : 0;
    const h = (piece.length << 3) | last; // Block_Type 0: raw
    parts.push(new Uint8Array([h & 0xff, (h >> 8) & 0xff, (h >> 16) & 0xff]), piece);
  }
  const frame = new Uint8Array(Buffer.concat(parts));
  if (sha256(Bun.zstdDecompressSync(frame)) !== sha256(raw)) throw new Error("fixture: the unsized frame does not decode");
  return frame;
}

let seq = 0;
async function attempt(row: Row, via: "file" | "stream" = "file") {
  const dir = join(root, `case-${seq++}`);
  const image = join(dir + ".zbi");
  writeFileSync(image, row.bytes);
  const source = () => (via === "file" ? fileSource(image) : streamOf(row.bytes));
  const payload = row.payload ?? "rootfs";
  const raw = (row.bytes === plain.bytes || row.name.startsWith("encoding none") ? plain : base).raw[payload]!;
  const target = `${dir}.target`;
  const journal = `${dir}.journal`;
  const before = sentinel(raw.length + 3000);
  writeFileSync(target, before);
  const sys = new RecordingSys(journal);
  const policy = { ...POLICY, ...row.policy };
  const installed = await outcome(install(sys, source(), policy, { payload, target, journal }));
  const verified = await outcome(verifyImage(source(), policy, { deep: true }));
  const final = existsSync(journal) ? JSON.parse(readFileSync(journal, "utf8")) : null;
  const result = { install: installed, verify: verified, target: new Uint8Array(readFileSync(target)), before, raw, journals: sys.journals, final };
  rmSync(image);
  return result;
}

test.each(rows)("$name → $code", async (row) => {
  if (!row.policy) expect(sha256(row.bytes)).not.toBe(sha256(base.bytes)); // the row changed something
  for (const via of ["file", "stream"] as const) await check(row, via);
});

// The stored payload's whole SHA-256 is checked by verify --deep alone: every chunk digest matches, so
// a plain verify (and an install, which checks the raw SHA-256) has nothing to refuse.
test("re-signed manifest: rootfs stored sha256 changed → verify --deep PAYLOAD_CORRUPT, plain verify accepts it", async () => {
  const bytes = await signed(edited((m) => (m.payloads[1].stored.sha256 = "f".repeat(64))));
  for (const via of ["file", "stream"] as const) {
    const image = join(root, `stored-sha-${via}.zbi`);
    writeFileSync(image, bytes);
    const source = () => (via === "file" ? fileSource(image) : streamOf(bytes));
    const deep = await verifyImage(source(), POLICY, { deep: true }).then(() => "ok", (e: unknown) => `${(e as { code?: string }).code}: ${(e as Error).message}`);
    expect({ via, plain: await outcome(verifyImage(source(), POLICY)), deep }).toEqual({
      via, plain: "ok", deep: "PAYLOAD_CORRUPT: cannot verify rootfs: the stored payload's SHA-256 differs from the signed one",
    });
  }
});

async function check(row: Row, via: "file" | "stream") {
  const r = await attempt(row, via);
  expect({ via, install: r.install, verify: r.verify }).toEqual({ via, install: row.code, verify: row.verifyCode ?? row.code });
  // No unverified byte reached the target, and no journal version claims more than the target holds.
  const w = writtenChunks(r.target, r.raw, r.before, CHUNK);
  if (row.stage === "header") expect(w).toBe(0);
  else if (row.exact) expect(w).toBe(row.written!);
  else expect(w).toBeLessThanOrEqual(row.written!);
  expect(r.journals.filter((j) => j.state === "complete")).toEqual([]);
  for (const j of r.journals) expect(j.chunksDone).toBeLessThanOrEqual(w);
  if (r.final) expect(r.final.state).toBe("failed");
}
