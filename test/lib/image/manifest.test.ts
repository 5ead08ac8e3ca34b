/** Manifest rules, row by row: a valid manifest, then one change each. */
import { describe, expect, test } from "bun:test";
import { canonicalJson, decodeManifest, encodeManifest, zstdCompressBound, type Manifest } from "../../../lib/image/manifest.ts";

const H = (c: string) => c.repeat(64);
function valid(): Manifest {
  return {
    format: 1, compatible: "acme-pi4", version: "1.2", serial: 5, created: "2026-11-22T04:36:48Z", chunkSize: 65536,
    payloads: [
      { name: "rootfs", kind: "rootfs", encoding: "zstd", stored: { size: 300, sha256: H("a") }, raw: { size: 100000, sha256: H("b") },
        chunks: [{ size: 200, sha256: H("c") }, { size: 100, sha256: H("d") }] },
      { name: "boot", kind: "boot", encoding: "none", stored: { size: 70000, sha256: H("e") }, raw: { size: 70000, sha256: H("e") },
        chunks: [{ size: 65536, sha256: H("f") }, { size: 4464, sha256: H("0") }] },
    ],
  };
}

test("a valid manifest round-trips through canonical bytes", () => {
  const bytes = encodeManifest(valid());
  expect(new TextDecoder().decode(bytes).startsWith('{"chunkSize":65536,"compatible":"acme-pi4","created"')).toBe(true);
  expect(decodeManifest(bytes)).toEqual(valid());
});

describe("refused, with the field named", () => {
  test.each([
    { name: "format 2", edit: (m: any) => (m.format = 2), why: /format is 2/ },
    { name: "compatible with a space", edit: (m: any) => (m.compatible = "acme pi"), why: /compatible "acme pi" must be/ },
    { name: "negative serial", edit: (m: any) => (m.serial = -1), why: /serial must be an integer/ },
    { name: "fractional serial", edit: (m: any) => (m.serial = 1.5), why: /serial must be an integer/ },
    { name: "created not RFC 3339 UTC", edit: (m: any) => (m.created = "2026-11-22 04:36"), why: /created "2026-11-22 04:36" must be/ },
    { name: "chunk size not a power of two", edit: (m: any) => (m.chunkSize = 65537), why: /power of two/ },
    { name: "chunk size below 64 KiB", edit: (m: any) => (m.chunkSize = 4096), why: /chunkSize must be/ },
    { name: "no payloads", edit: (m: any) => (m.payloads = []), why: /payloads must be a list of 1 to 8/ },
    { name: "unknown kind", edit: (m: any) => (m.payloads[0].kind = "firmware"), why: /kind "firmware"/ },
    { name: "unknown encoding", edit: (m: any) => (m.payloads[0].encoding = "xz"), why: /encoding "xz"/ },
    { name: "a name with a slash", edit: (m: any) => (m.payloads[0].name = "../rootfs"), why: /name "\.\.\/rootfs" must be/ },
    { name: "duplicate payload names", edit: (m: any) => (m.payloads[1].name = "rootfs"), why: /appears twice/ },
    { name: "an extra field", edit: (m: any) => (m.payloads[0].extra = 1), why: /has fields .*extra/ },
    { name: "a missing field", edit: (m: any) => delete m.version, why: /manifest has fields/ },
    { name: "an upper-case digest", edit: (m: any) => (m.payloads[0].chunks[0].sha256 = H("A")), why: /sha256 "A{64}" must be/ },
    { name: "too few chunks for the raw size", edit: (m: any) => m.payloads[0].chunks.pop(), why: /make 2/ },
    { name: "chunks not adding up to the stored size", edit: (m: any) => (m.payloads[0].stored.size = 301), why: /add up to 300 bytes, stored size is 301/ },
    { name: "an empty chunk", edit: (m: any) => { m.payloads[0].chunks[1].size = 0; m.payloads[0].stored.size = 200; }, why: /is empty/ },
    { name: "unencoded payload whose stored and raw differ", edit: (m: any) => (m.payloads[1].raw.sha256 = H("9")), why: /stored and raw must be equal/ },
    { name: "unencoded chunk of the wrong size", edit: (m: any) => { m.payloads[1].chunks[0].size = 65535; m.payloads[1].chunks[1].size = 4465; }, why: /is 65535 bytes, expected 65536/ },
  ])("$name", ({ edit, why }) => {
    const m = valid();
    edit(m);
    expect(() => encodeManifest(m)).toThrow(expect.objectContaining({ code: "IMG_FORMAT", message: expect.stringMatching(why) }));
    expect(() => decodeManifest(canonicalJson(m))).toThrow(expect.objectContaining({ code: "IMG_FORMAT" }));
  });
});

// Before: "<field> must be 1 to <max> characters matching /^[\x21-\x7e]+$/" (a regex; for version it hid that a space is refused).
describe("a text field refused: its rule in words, naming the field and showing the value", () => {
  const PAYLOAD_NAME = "1 to 64 characters, each a lower-case ASCII letter, a digit or one of . _ -, the first a letter or digit";
  test.each([
    { name: "compatible with a space", edit: (m: any) => (m.compatible = "acme pi"), why: 'compatible "acme pi" must be 1 to 128 characters, each an ASCII letter, a digit or one of . _ + -' },
    { name: "version with a space", edit: (m: any) => (m.version = "1.2 beta"), why: 'version "1.2 beta" must be 1 to 64 printable ASCII characters without spaces' },
    { name: "version with an escape character (shown escaped)", edit: (m: any) => (m.version = "1\u001b[31m"), why: 'version "1\\u001b[31m" must be 1 to 64 printable ASCII characters without spaces' },
    { name: "version too long (its length, not its text)", edit: (m: any) => (m.version = "v".repeat(65)), why: "version (65 characters) must be 1 to 64 printable ASCII characters without spaces" },
    { name: "version a number", edit: (m: any) => (m.version = 12), why: "version (not text) must be 1 to 64 printable ASCII characters without spaces" },
    { name: "created not RFC 3339 UTC", edit: (m: any) => (m.created = "2026-11-22 04:36"), why: 'created "2026-11-22 04:36" must be a UTC time written YYYY-MM-DDTHH:MM:SSZ' },
    { name: "a payload name with a slash", edit: (m: any) => (m.payloads[0].name = "../rootfs"), why: `payloads[0].name "../rootfs" must be ${PAYLOAD_NAME}` },
    { name: "an upper-case digest", edit: (m: any) => (m.payloads[0].chunks[0].sha256 = H("A")), why: `payloads[0].chunks[0].sha256 "${H("A")}" must be 64 lower-case hex digits` },
  ])("$name", ({ edit, why }) => {
    const m = valid();
    edit(m);
    const message = `cannot read the image manifest: ${why}`;
    expect(() => encodeManifest(m)).toThrow(expect.objectContaining({ code: "IMG_FORMAT", message }));
    expect(() => decodeManifest(canonicalJson(m))).toThrow(expect.objectContaining({ code: "IMG_FORMAT", message }));
    expect(message).not.toMatch(/matching|\/\^|\$\//);
  });
});

describe("only the exact canonical bytes are read", () => {
  const canon = new TextDecoder().decode(encodeManifest(valid()));
  test.each([
    { name: "whitespace", text: canon.replace(",", ", ") },
    { name: "keys out of order", text: canon.replace('{"chunkSize":65536,"compatible":"acme-pi4"', '{"compatible":"acme-pi4","chunkSize":65536') },
    { name: "a duplicate key (JSON.parse would keep the last)", text: canon.replace('"serial":5', '"serial":1,"serial":5') },
    { name: "not JSON", text: canon.slice(0, -1) },
    { name: "invalid UTF-8", text: "\uFFFD" },
  ])("$name", ({ text }) => {
    const bytes = text === "\uFFFD" ? new Uint8Array([0xff, 0xfe]) : new TextEncoder().encode(text);
    expect(() => decodeManifest(bytes)).toThrow(expect.objectContaining({ code: "IMG_FORMAT" }));
  });
});

test("a manifest over 4 MiB is refused before parsing", () => {
  expect(() => decodeManifest(new Uint8Array((4 << 20) + 1))).toThrow(expect.objectContaining({ code: "IMG_FORMAT", message: expect.stringMatching(/more than 4194304/) }));
});

describe("a stored chunk is at most what zstd can make of its raw size (readers allocate buffers of the largest)", () => {
  // ZSTD_COMPRESSBOUND (zstd.h): srcSize + srcSize/256 + (srcSize < 128 KiB ? (128 KiB - srcSize) >> 11 : 0).
  test("zstdCompressBound is zstd.h's ZSTD_COMPRESSBOUND", () => {
    expect([1, 100, 65536, 131072, 4 << 20, 64 << 20].map(zstdCompressBound)).toEqual([64, 163, 65824, 131584, 4210688, 67371008]);
  });

  /** The first payload (zstd: chunks of 65536 and 34464 raw bytes) with chunk `i` declared `size` stored bytes. */
  const withChunk = (i: number, size: number) => {
    const m = valid();
    const c = m.payloads[0]!.chunks;
    m.payloads[0]!.stored.size += size - c[i]!.size;
    c[i]!.size = size;
    return m;
  };
  const rows = [
    { name: "chunk 0 at the bound (65824): accepted", m: withChunk(0, 65824), ok: true },
    { name: "chunk 0 one byte over the bound", m: withChunk(0, 65825), ok: false },
    { name: "the last chunk (34464 raw) one byte over its own bound (34464 + 134 + 47)", m: withChunk(1, 34464 + 134 + 47 + 1), ok: false },
    { name: "chunk 0 declared 2^33 bytes (the audit's out-of-memory)", m: withChunk(0, 2 ** 33), ok: false },
    { name: "chunk 0 declared 512 MiB", m: withChunk(0, 512 << 20), ok: false },
  ];
  test("over the bound is IMG_FORMAT naming the chunk; at it, accepted", () => {
    const verdict = (m: Manifest) => {
      try {
        decodeManifest(canonicalJson(m));
        return "ok";
      } catch (e) {
        return /payloads\[0\]\.chunks\[\d\] is \d+ bytes, more than a zstd frame of \d+ raw bytes can be/.test((e as Error).message) ? (e as { code: string }).code : (e as Error).message;
      }
    };
    expect(rows.map((r) => [r.name, verdict(r.m)])).toEqual(rows.map((r) => [r.name, r.ok ? "ok" : "IMG_FORMAT"]));
  });
});
