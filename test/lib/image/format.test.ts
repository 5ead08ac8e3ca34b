/**
 * The `.zbi` container's ustar rules (lib/image/format.ts), row by row: the
 * header zb writes is tar-stream's byte for byte; checkUstarHeader accepts
 * what zb's writer writes — octal sizes and, from 8 GiB (2^33 bytes) on,
 * GNU base-256 — and refuses every other form; the entry limits are the
 * ones the codecs really apply. Then an image with an 8 GiB payload, served
 * from memory (no 8 GiB file), through the three paths that read a payload
 * header: read(2) from a file, a stream, and a seeking resume.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { checkUstarHeader, entryHeader, encodeUstarHeader, LIMITS, MIN_DATA_OFFSET, payloadOffsets, ustarSize } from "../../../lib/image/format.ts";
import { install } from "../../../lib/image/install.ts";
import { canonicalJson, type Manifest } from "../../../lib/image/manifest.ts";
import { decodeSignatures, encodeSignatures, keySigner, loadTrustDir, signaturesBytesLimit } from "../../../lib/image/sign.ts";
import type { DirectReader, ImageSource } from "../../../lib/image/source.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { fixChecksum, KEYS, trustDir } from "./fixture.ts";
// tar-stream's own header encoder: the reference zb's writer must match (not exported by the package).
// @ts-expect-error no types for the internal module
import tarHeaders from "../../../node_modules/tar-stream/headers.js";

const tarStream = (name: string, size: number) => new Uint8Array(tarHeaders.encode(entryHeader(name, size)));
const GiB = 2 ** 30;

describe("the header zb writes reads back through GNU tar and checkUstarHeader", () => {
  test.each([0, 1, 6, 511, 512, 4128, 2 ** 33 - 1, 2 ** 33, 20 * GiB, 2 ** 46])("size %p", (size) => {
    const h = encodeUstarHeader("rootfs", size);
    expect(() => checkUstarHeader(h, "rootfs", size)).not.toThrow();
    // GNU tar lists a header alone (an archive cut after it) with the size it holds.
    const listed = Bun.spawnSync(["tar", "-tv", "--numeric-owner", "-f", "-"], { stdin: Buffer.concat([h, new Uint8Array(1024)]) }).stdout.toString();
    expect(listed).toMatch(new RegExp(`^-rw-r--r-- 0/0 +${size} 1970-01-01 00:00 rootfs\n`));
  });
});

describe("checkUstarHeader", () => {
  /** A header tar-stream writes for rootfs of `size`, edited, checksum fixed. */
  const edited = (size: number, edit: (h: Uint8Array) => void) => {
    const h = tarStream("rootfs", size);
    edit(h);
    return fixChecksum(h);
  };
  const ok = [
    { name: "octal size", block: tarStream("rootfs", 123456), size: 123456 },
    { name: "the largest octal size (2^33 - 1)", block: tarStream("rootfs", 2 ** 33 - 1), size: 2 ** 33 - 1 },
    { name: "8 GiB: tar-stream switches to base-256", block: tarStream("rootfs", 2 ** 33), size: 2 ** 33 },
    { name: "20 GiB, base-256", block: tarStream("rootfs", 20 * GiB), size: 20 * GiB },
    { name: "2^46 bytes (the manifest's limit), base-256", block: tarStream("rootfs", 2 ** 46), size: 2 ** 46 },
    { name: "octal with leading spaces and a NUL terminator (old tars)", block: edited(100, (h) => h.set(Buffer.from("        144\0", "latin1"), 124)), size: 100 },
  ];
  const verdict = (block: Uint8Array, size: number, why?: RegExp) => {
    try {
      checkUstarHeader(block, "rootfs", size);
      return "ok";
    } catch (e) {
      const z = e as { code?: string; message?: string };
      return why && !why.test(z.message ?? "") ? `${z.code}: ${z.message}` : z.code;
    }
  };
  test("accepts the sizes zb's writer writes: octal, and base-256 from 8 GiB on", () => {
    expect(ok.map((r) => [r.name, verdict(r.block, r.size), ustarSize(r.block)])).toEqual(ok.map((r) => [r.name, "ok", r.size]));
  });

  const refused = [
    { name: "a negative base-256 size (0xff)", block: edited(100, (h) => h.fill(0xff, 124, 136)), why: /neither octal nor base-256/ },
    { name: "a high first byte that is not 0x80", block: edited(100, (h) => (h[124] = 0x81)), why: /neither octal nor base-256/ },
    { name: "base-256 beyond 2^53", block: edited(100, (h) => ((h[124] = 0x80), h.fill(0xff, 125, 136))), why: /neither octal nor base-256/ },
    { name: "junk after the octal digits", block: edited(100, (h) => h.set(Buffer.from("  144 junk\0\0", "latin1"), 124)), why: /neither octal nor base-256/ },
    { name: "an empty size field", block: edited(100, (h) => h.fill(0, 124, 136)), why: /neither octal nor base-256/ },
    { name: "another size than expected", block: tarStream("rootfs", 2 ** 33), size: 2 ** 33 + 512, why: /another size than the manifest/ },
    { name: "typeflag NUL", block: edited(100, (h) => (h[156] = 0)), why: /not a regular file/ },
    { name: "GNU magic", block: edited(100, (h) => h.set(Buffer.from("ustar  \0", "latin1"), 257)), why: /not a POSIX ustar header/ },
    { name: 'version "0 "', block: edited(100, (h) => h.set(Buffer.from("0 ", "latin1"), 263)), why: /not a POSIX ustar header/ },
    { name: "junk after the name's NUL", block: edited(100, (h) => h.set(Buffer.from("rootfs\0x", "latin1"), 0)), why: /names "rootfs\\u0000x"/ },
    { name: "a prefix", block: edited(100, (h) => h.set(Buffer.from("a", "latin1"), 345)), why: /names "rootfs"/ },
    { name: "a stale checksum", block: (() => { const h = tarStream("rootfs", 100); h[0]! ^= 1; return h; })(), why: /bad checksum/ },
  ];
  test("refuses every other form, saying what is wrong (IMG_FORMAT)", () => {
    expect(refused.map((r) => [r.name, verdict(r.block, r.size ?? 100, r.why)])).toEqual(refused.map((r) => [r.name, "IMG_FORMAT"]));
  });
});

describe("limits", () => {
  test("signatures.json: the entry limit is what decodeSignatures reads for 16 signatures, 32 + 16 × 256 = 4128 bytes", () => {
    expect({ signatures: LIMITS.signatures, count: LIMITS.signatureCount }).toEqual({ signatures: 4128, count: 16 });
    expect(signaturesBytesLimit(LIMITS.signatureCount)).toBe(LIMITS.signatures);
    expect(() => decodeSignatures(new Uint8Array(LIMITS.signatures + 1).fill(0x20), { maxCount: 16 })).toThrow(expect.objectContaining({ code: "IMG_FORMAT" }));
  });

  test("the smallest payload data offset: three one-block entries and the payload's header", () => {
    expect(MIN_DATA_OFFSET).toBe(payloadOffsets(1, 1, [1])[0]!);
    expect(MIN_DATA_OFFSET).toBe(3584);
  });
});

// ---- an 8 GiB payload, served from memory ----

const root = mkdtempSync(join(tmpdir(), "zb-format-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const host = new HostSys();
const policy = { trust: loadTrustDir(host, trustDir(root, "trust", [KEYS.k1])) };
const CHUNK = 4 << 20;
const SIZE = 2 ** 33;
const hex = (c: string) => c.repeat(64);
/** Encoding none, 2048 chunks of 4 MiB whose digests no bytes have: an install fails at the first chunk it checks. */
const manifest: Manifest = {
  format: 1, compatible: "pi4", version: "1", serial: 1, created: "2025-01-01T00:00:00Z", chunkSize: CHUNK,
  payloads: [{ name: "rootfs", kind: "rootfs", encoding: "none", stored: { size: SIZE, sha256: hex("a") }, raw: { size: SIZE, sha256: hex("a") },
    chunks: Array.from({ length: SIZE / CHUNK }, () => ({ size: CHUNK, sha256: hex("b") })) }],
};
const manifestBytes = canonicalJson(manifest);
const sigBytes = encodeSignatures([await keySigner(KEYS.k1).sign(manifestBytes)]);
const pad = (n: number) => new Uint8Array((512 - (n % 512)) % 512);
const entry = (name: string, data: Uint8Array) => [tarStream(name, data.length), data, pad(data.length)];
/** Everything before the payload's data, with tar-stream's headers (base-256 size for the payload). */
const prefix = new Uint8Array(Buffer.concat([
  ...entry("zbi-format", new TextEncoder().encode("zbi 1\n")), ...entry("manifest.json", manifestBytes), ...entry("signatures.json", sigBytes),
  tarStream("rootfs", SIZE),
]));
const dataAt = prefix.length;
expect(dataAt).toBe(payloadOffsets(manifestBytes.length, sigBytes.length, [SIZE])[0]!);
const TOTAL = dataAt + SIZE + 1024;

/** The image's bytes [from, from + into.length): the prefix, then zeros. */
function fill(into: Uint8Array, from: number): number {
  const n = Math.max(0, Math.min(into.length, TOTAL - from));
  into.fill(0, 0, n);
  if (from < dataAt) into.set(prefix.subarray(from, Math.min(dataAt, from + n)), 0);
  return n;
}
/** A seekable source of the virtual image: open(offset) streams it, direct() reads it like read(2). */
function virtual(seekable: boolean): ImageSource & { opened: number[] } {
  const opened: number[] = [];
  return {
    name: "virtual.zbi", seekable, opened,
    async open(offset) {
      opened.push(offset);
      return (async function* () {
        for (let at = offset; at < TOTAL; ) {
          const part = new Uint8Array(1 << 20);
          const n = fill(part, at);
          at += n;
          yield part.subarray(0, n);
        }
      })();
    },
    ...(seekable ? {
      direct(): DirectReader {
        let position = 0;
        return { get position() { return position; }, read(buf) { const n = fill(buf, position); position += n; return n; }, close() {} };
      },
    } : {}),
  };
}

describe("an 8 GiB payload (base-256 size in its header): the header is accepted on every path", () => {
  // PAYLOAD_CORRUPT at chunk 0 (or 1, resuming) means the header was read and accepted, and the chunk checked.
  test("install from a file (read(2) after the header) and from a stream (tar-stream) → PAYLOAD_CORRUPT at chunk 0 on both, not IMG_FORMAT", async () => {
    const seen: Record<string, string> = {};
    for (const via of ["file", "stream"]) {
      const target = join(root, `t-${via}`);
      const e = (await install(host, virtual(via === "file"), policy, { payload: "rootfs", target, journal: `${target}.j` }).catch((x: unknown) => x)) as { code?: string; message?: string };
      seen[via] = /chunk 0 of rootfs/.test(e.message ?? "") ? e.code! : `${e.code}: ${e.message}`;
    }
    expect(seen).toEqual({ file: "PAYLOAD_CORRUPT", stream: "PAYLOAD_CORRUPT" });
  });

  test("a seeking resume checks the header before the data at the journal's dataOffset → PAYLOAD_CORRUPT at chunk 1", async () => {
    const target = join(root, "resume.img");
    writeFileSync(target, new Uint8Array(CHUNK));
    const journal = `${target}.j`;
    const image = new Bun.CryptoHasher("sha256").update(manifestBytes).digest("hex");
    writeFileSync(journal, JSON.stringify({ version: 1, image, payload: "rootfs", target, state: "writing", chunksDone: 1, dataOffset: dataAt }));
    const src = virtual(true);
    const e = (await install(host, src, policy, { payload: "rootfs", target, journal, resume: true }).catch((x: unknown) => x)) as { code?: string; message?: string };
    expect({ code: e.code, chunk1: /chunk 1 of rootfs/.test(e.message ?? ""), seeked: src.opened.includes(dataAt - 512) }).toEqual({ code: "PAYLOAD_CORRUPT", chunk1: true, seeked: true });
  });
});
