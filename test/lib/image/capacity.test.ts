/**
 * How much an image holds (lib/image/capacity.ts): the manifest size
 * `zb image create` computes from the payloads' raw sizes, before it
 * compresses anything, is the size of the manifest it then writes (exact
 * for `none`, the most it can be for `zstd`), so the check before and the
 * one after cannot disagree. Rows at the 4 MiB limit, one byte either side.
 * Before: the check assumed 87 bytes a chunk (~48 210 chunks), so inputs of
 * ~45 000–48 210 chunks were compressed and spooled whole, then refused.
 */
import { describe, expect, test } from "bun:test";
import { checkManifestFits, plannedManifestSize, type ManifestHead, type PayloadPlan } from "../../../lib/image/capacity.ts";
import { canonicalJson, encodeManifest, manifestSize, zstdCompressBound, type Digest, type Encoding, type Manifest, type ManifestSizes } from "../../../lib/image/manifest.ts";

const LIMIT = 4 << 20;
const head = (chunkSize: number, more: Partial<ManifestHead> = {}): ManifestHead => ({ format: 1, compatible: "a", version: "1", serial: 1, created: "2026-01-01T00:00:00Z", chunkSize, ...more });
const rootfs = (encoding: Encoding, rawTotal: number): PayloadPlan => ({ input: { name: "rootfs", kind: "rootfs", encoding }, rawTotal });
const boot = (encoding: Encoding, rawTotal: number): PayloadPlan => ({ input: { name: "boot", kind: "boot", encoding }, rawTotal });
const hex = (n: number) => n.toString(16).padStart(64, "0");

/** The manifest create writes when every chunk is as large as it may be: `none` chunks are their raw size, `zstd` ones zstd's bound. */
function largest(h: ManifestHead, plans: readonly PayloadPlan[]): Manifest {
  const cs = h.chunkSize;
  let n = 0;
  return {
    ...h,
    payloads: plans.map(({ input, rawTotal }) => {
      const chunks: Digest[] = [];
      for (let at = 0; at < rawTotal; at += cs) {
        const raw = Math.min(cs, rawTotal - at);
        chunks.push({ size: input.encoding === "zstd" ? zstdCompressBound(raw) : raw, sha256: hex(n++) });
      }
      const stored = { size: chunks.reduce((a, c) => a + c.size, 0), sha256: hex(n++) };
      return { ...input, stored, raw: input.encoding === "none" ? stored : { size: rawTotal, sha256: hex(n++) }, chunks };
    }),
  };
}

const K64 = 64 << 10;
const M4 = 4 << 20;
describe("the manifest size from raw sizes: before → after, at the limit", () => {
  test.each([
    // 46 086 full 64 KiB chunks of 91 bytes each (5 digits and a comma) and the rest of the manifest.
    { name: "none, 46 086 chunks of 64 KiB", chunkSize: K64, plans: [rootfs("none", 46086 * K64)], size: 4194214, fits: true },
    { name: "none, 46 087 chunks of 64 KiB (before: passed, spooled 2.8 GiB, refused after)", chunkSize: K64, plans: [rootfs("none", 46087 * K64)], size: 4194305, fits: false },
    // A last chunk of 4 digits' size (9 999 bytes) just fits; of 5 digits (10 000), one byte too many.
    { name: "none, 46 086 chunks and a last of 9 999 bytes: the limit exactly", chunkSize: K64, plans: [rootfs("none", 46086 * K64 + 9999)], size: LIMIT, fits: true },
    { name: "none, 46 086 chunks and a last of 10 000 bytes", chunkSize: K64, plans: [rootfs("none", 46086 * K64 + 10000)], size: LIMIT + 1, fits: false },
    // zstd counts each chunk at its bound: 64 KiB → 65 824 (5 digits); 9 902 raw bytes → 9 999, 9 903 → 10 000.
    { name: "zstd, 46 086 chunks and a last of 9 902 raw bytes: the limit exactly", chunkSize: K64, plans: [rootfs("zstd", 46086 * K64 + 9902)], size: LIMIT, fits: true },
    { name: "zstd, 46 086 chunks and a last of 9 903 raw bytes", chunkSize: K64, plans: [rootfs("zstd", 46086 * K64 + 9903)], size: LIMIT + 1, fits: false },
    // The default 4 MiB: a zstd chunk of up to 4 210 688 bytes (7 digits), 93 bytes an entry.
    { name: "zstd, 45 095 chunks of 4 MiB (176 GiB)", chunkSize: M4, plans: [rootfs("zstd", 45095 * M4)], size: 4194229, fits: true },
    { name: "zstd, 45 096 chunks of 4 MiB", chunkSize: M4, plans: [rootfs("zstd", 45096 * M4)], size: 4194322, fits: false },
    // Everything else counts too: a second payload, and a version with characters JSON escapes ("\" is 2 bytes each).
    { name: "boot (zstd, 300 000 bytes) and rootfs (none, 46 079 chunks), a version with \" and \\", chunkSize: K64, plans: [boot("zstd", 300_000), rootfs("none", 46079 * K64)], version: '1.2"\\', size: 4194296, fits: true },
    { name: "the same with 1 rootfs chunk more", chunkSize: K64, plans: [boot("zstd", 300_000), rootfs("none", 46080 * K64)], version: '1.2"\\', size: 4194387, fits: false },
  ])("$name: $size bytes", ({ chunkSize, plans, version, size, fits }) => {
    const h = head(chunkSize, version ? { version } : {});
    const planned = plannedManifestSize(h, plans);
    const refused = (() => {
      try {
        checkManifestFits(h, plans);
        return null;
      } catch (e) {
        return (e as { code: string }).code;
      }
    })();
    expect({ planned, refused }).toEqual({ planned: size, refused: fits ? null : "USAGE" });
    // The manifest create writes afterwards has exactly that size, and encodeManifest takes it or refuses it alike.
    const m = largest(h, plans);
    expect(canonicalJson(m).length).toBe(size);
    if (fits) expect(encodeManifest(m).length).toBe(size);
    else expect(() => encodeManifest(m)).toThrow(expect.objectContaining({ code: "IMG_FORMAT", message: expect.stringMatching(/more than 4194304/) }));
  });
});

describe("manifestSize is the length of the encoded manifest, whatever the sizes", () => {
  test.each([
    { name: "one chunk of 1 byte", count: 1, size: 1, last: 1 },
    { name: "chunks of 4 digits, the last of 1", count: 5, size: 9000, last: 7 },
    { name: "chunks of 4 digits, the last of 5 (more than the others)", count: 3, size: 5000, last: 65824 },
    { name: "no chunk at all", count: 0, size: 0, last: 0 },
  ])("$name", ({ count, size, last }) => {
    const raw = count === 0 ? 0 : (count - 1) * K64 + 1000;
    const stored = count === 0 ? 0 : (count - 1) * size + last;
    const sizes: ManifestSizes = { ...head(K64, { serial: 98765 }), payloads: [{ name: "rootfs", kind: "rootfs", encoding: "zstd", raw, stored, chunks: { count, size, last } }] };
    const chunks = Array.from({ length: count }, (_, i) => ({ size: i === count - 1 ? last : size, sha256: hex(i + 3) }));
    const m: Manifest = { ...head(K64, { serial: 98765 }), payloads: [{ name: "rootfs", kind: "rootfs", encoding: "zstd", raw: { size: raw, sha256: hex(1) }, stored: { size: stored, sha256: hex(2) }, chunks }] };
    expect(manifestSize(sizes)).toBe(canonicalJson(m).length);
  });
});
