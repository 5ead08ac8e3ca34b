/**
 * One zstd frame per chunk (lib/image/zstd.ts): the frame header's declared
 * content size (RFC 8878 §3.1.1.1.4) is read before anything is
 * decompressed, by both decoders — libzstd through bun:ffi and the fallback
 * on Bun's zstd (no libzstd.so.1) — so a small frame that declares or
 * expands to far more than the chunk's raw size costs nothing, and both
 * accept and refuse the same frames.
 */
import { describe, expect, test } from "bun:test";
import { frameContentSize, frameDecoder } from "../../../lib/image/zstd.ts";
import { variedBytes } from "./fixture.ts";

const le24 = (n: number) => [n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff];
const BLOCK_MAX = 128 << 10;
/**
 * A frame of `total` bytes of `byte` made of RLE blocks (4 bytes each per 128 KiB): a "bomb" that
 * needs no memory to build. `declare`: the Frame_Content_Size to write (8-byte field), or null for none.
 */
function rleFrame(total: number, declare: number | null, byte = 0): Uint8Array {
  // FHD: FCS flag 3 (8 bytes) or 0; Single_Segment 0, so a Window_Descriptor follows (2^(10+7) · 8/8... = 128 KiB).
  const head = declare === null ? [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38] : [0x28, 0xb5, 0x2f, 0xfd, 0xc0, 0x38];
  const fcs: number[] = [];
  if (declare !== null) for (let i = 0, n = declare; i < 8; i++, n = Math.floor(n / 256)) fcs.push(n % 256);
  const blocks: number[] = [];
  for (let at = 0; at < total; at += BLOCK_MAX) {
    const n = Math.min(BLOCK_MAX, total - at);
    const last = at + n >= total ? 1 : 0;
    blocks.push(...le24((n << 3) | (1 << 1) | last), byte); // Block_Type 1: RLE, Block_Size = the repeat count
  }
  return new Uint8Array([...head, ...fcs, ...blocks]);
}

const raw = variedBytes(300_000, 5);
const frame = Bun.zstdCompressSync(raw, { level: 3 });
const concat = (...parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));

describe("frameContentSize: exactly one frame that declares its size, else null", () => {
  const rows: { name: string; frame: Uint8Array; size: number | null }[] = [
    { name: "zb's frame (Bun.zstdCompressSync) of 300000 bytes", frame, size: 300_000 },
    ...[1, 255, 256, 65_535, 65_536 + 256, 4 << 20].map((n) => ({ name: `zb's frame of ${n} bytes (FCS field of ${n < 256 ? 1 : n < 65_536 + 256 ? 2 : 4} bytes)`, frame: Bun.zstdCompressSync(variedBytes(n, n)), size: n })),
    { name: "an RLE frame declaring 512 MiB (8-byte field)", frame: rleFrame(512 << 20, 512 << 20), size: 512 << 20 },
    { name: "a frame that does not declare its size", frame: rleFrame(1 << 20, null), size: null },
    { name: "two frames", frame: concat(frame, frame), size: null },
    { name: "a frame and one more byte", frame: concat(frame, new Uint8Array([0])), size: null },
    { name: "a frame cut short", frame: frame.subarray(0, frame.length - 1), size: null },
    { name: "a skippable frame (magic 0x184D2A50)", frame: new Uint8Array([0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]), size: null },
    { name: "the reserved bit of the descriptor set", frame: concat(frame.subarray(0, 4), new Uint8Array([frame[4]! | 0x08]), frame.subarray(5)), size: null },
    { name: "not zstd at all", frame: raw.subarray(0, 1000), size: null },
  ];
  test("table", () => {
    expect(rows.map((r) => [r.name, frameContentSize(r.frame)])).toEqual(rows.map((r) => [r.name, r.size]));
  });
});

describe("both decoders, alike", () => {
  const decoders = [
    { name: "native (libzstd)", make: () => frameDecoder() },
    { name: "fallback (Bun.zstdDecompressSync)", make: () => frameDecoder({ preferNative: false }) },
  ];
  const rows = [
    { name: "zb's frame into its raw size", frame, out: raw.length, ok: true },
    { name: "zb's frame into one byte less", frame, out: raw.length - 1, ok: false },
    { name: "an RLE frame of 64 KiB declared", frame: rleFrame(64 << 10, 64 << 10), out: 64 << 10, ok: true },
    { name: "a 16 KiB frame declaring 512 MiB, into 64 KiB", frame: rleFrame(512 << 20, 512 << 20), out: 64 << 10, ok: false },
    { name: "a frame of 512 MiB that declares 64 KiB", frame: rleFrame(512 << 20, 64 << 10), out: 64 << 10, ok: false },
    { name: "a 1 MiB frame without a declared size, into 1 MiB", frame: rleFrame(1 << 20, null), out: 1 << 20, ok: false },
    { name: "two frames of half the size each", frame: concat(Bun.zstdCompressSync(raw.subarray(0, 150_000)), Bun.zstdCompressSync(raw.subarray(150_000))), out: raw.length, ok: false },
  ];
  test("the same verdict for every frame", () => {
    const verdicts = decoders.map((d) => {
      const dec = d.make();
      const got = rows.map((r) => [r.name, dec.decode(r.frame, new Uint8Array(r.out))]);
      dec.close();
      return [d.name, got];
    });
    expect(verdicts).toEqual(decoders.map((d) => [d.name, rows.map((r) => [r.name, r.ok])]));
  });

  test("the fallback checks the declared size before it decompresses: a 16 KiB frame of 512 MiB costs no memory", () => {
    const bomb = rleFrame(512 << 20, 512 << 20);
    const dec = frameDecoder({ preferNative: false });
    expect(dec.native).toBe(false);
    Bun.gc(true);
    const before = process.memoryUsage().rss;
    const ok = dec.decode(bomb, new Uint8Array(64 << 10));
    const grew = process.memoryUsage().rss - before;
    expect({ ok, bomb: bomb.length < 20_000, grewUnder64MiB: grew < 64 << 20 }).toEqual({ ok: false, bomb: true, grewUnder64MiB: true });
  });
});
