/**
 * One zstd frame per chunk, in and out of fixed buffers.
 *
 * Decompression calls libzstd's ZSTD_decompressDCtx through bun:ffi with one
 * reused context into a buffer of exactly the chunk's raw size: ~1.7× the
 * speed of Bun.zstdDecompressSync here (which grows its output), and a frame
 * can never expand beyond the buffer (no decompression bomb). Without
 * libzstd.so.1 (a minimal initramfs) it falls back to Bun's zstd and checks
 * the size afterwards. Compression (publishing side) uses Bun's native zstd.
 *
 * Both decoders first read the frame's header and block headers (RFC 8878
 * §3.1.1, {@link frameContentSize}): a chunk must be exactly one frame that
 * declares its content size, equal to the chunk's raw size. Bun's zstd
 * expands a whole frame before its size can be compared (a 16 KiB frame of
 * 512 MiB of zeros would take 512 MiB), so the declared size is checked
 * before anything is decompressed; the native decoder applies the same rule,
 * so an image is accepted or refused alike with and without libzstd. zb's
 * writer (one Bun.zstdCompressSync call per chunk, ZSTD_compress) always
 * writes Frame_Content_Size.
 */
import { ZbError } from "../errors.ts";
import { systemLibrary } from "../sys/dlopen.ts";

export interface FrameDecoder {
  readonly native: boolean;
  /**
   * Decompress one frame into `out`, which must be exactly the expected raw size.
   * @returns false when the frame is not a valid zstd frame of exactly that size
   */
  decode(frame: Uint8Array, out: Uint8Array): boolean;
  close(): void;
}

type Lib = {
  symbols: {
    ZSTD_createDCtx: () => unknown;
    ZSTD_freeDCtx: (ctx: unknown) => unknown;
    ZSTD_decompressDCtx: (ctx: unknown, dst: unknown, cap: number, src: unknown, size: number) => number | bigint;
    ZSTD_isError: (code: number | bigint) => number;
  };
};

let lib: Lib | null | undefined;

function loadLib(): Lib | null {
  if (lib !== undefined) return lib;
  try {
    const { dlopen, FFIType } = require("bun:ffi") as typeof import("bun:ffi");
    // From the system's library folders only: never a libzstd planted in the working directory.
    const path = systemLibrary("libzstd.so.1");
    if (path === null) return (lib = null);
    lib = dlopen(path, {
      ZSTD_createDCtx: { args: [], returns: FFIType.ptr },
      ZSTD_freeDCtx: { args: [FFIType.ptr], returns: FFIType.u64 },
      ZSTD_decompressDCtx: { args: [FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.ptr, FFIType.u64], returns: FFIType.u64 },
      ZSTD_isError: { args: [FFIType.u64], returns: FFIType.u32 },
    }) as unknown as Lib;
  } catch {
    lib = null;
  }
  return lib;
}

/** A decoder for one install; `preferNative: false` forces the fallback (tests). */
export function frameDecoder(opts: { preferNative?: boolean } = {}): FrameDecoder {
  const l = opts.preferNative === false ? null : loadLib();
  if (!l) return fallbackDecoder();
  const { ptr } = require("bun:ffi") as typeof import("bun:ffi");
  const ctx = l.symbols.ZSTD_createDCtx();
  if (!ctx) return fallbackDecoder();
  let open = true;
  return {
    native: true,
    decode(frame, out) {
      if (frame.length === 0 || out.length === 0) return frame.length === 0 && out.length === 0;
      if (frameContentSize(frame) !== out.length) return false;
      const n = l.symbols.ZSTD_decompressDCtx(ctx, ptr(out), out.length, ptr(frame), frame.length);
      if (l.symbols.ZSTD_isError(n) !== 0) return false;
      return Number(n) === out.length;
    },
    close() {
      if (open) l.symbols.ZSTD_freeDCtx(ctx);
      open = false;
    },
  };
}

function fallbackDecoder(): FrameDecoder {
  return {
    native: false,
    decode(frame, out) {
      if (frame.length === 0 || out.length === 0) return frame.length === 0 && out.length === 0;
      // Before Bun.zstdDecompressSync, which would expand the whole frame whatever its size.
      if (frameContentSize(frame) !== out.length) return false;
      let raw: Uint8Array;
      try {
        raw = Bun.zstdDecompressSync(frame);
      } catch {
        return false;
      }
      if (raw.length !== out.length) return false;
      out.set(raw);
      return true;
    },
    close() {},
  };
}

const MAGIC = 0xfd2fb528;
const FCS_BYTES = [0, 2, 4, 8];
const DICT_ID_BYTES = [0, 1, 2, 4];

/**
 * The Frame_Content_Size of `frame` when it is exactly one zstd frame that
 * declares it (RFC 8878 §3.1.1); null otherwise — another magic (a
 * skippable frame), a reserved bit set, no declared size, a block header
 * of the reserved type, or bytes before the end that are not this frame
 * (a second frame). Reads headers only: a 4 MiB chunk has ~32 blocks.
 */
export function frameContentSize(frame: Uint8Array): number | null {
  if (frame.length < 6) return null;
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  if (view.getUint32(0, true) !== MAGIC) return null;
  // Frame_Header_Descriptor (§3.1.1.1.1): FCS flag (bits 7-6), Single_Segment (5), reserved (3), checksum (2), dictionary id flag (1-0).
  const fhd = frame[4]!;
  if (fhd & 0x08) return null;
  const single = (fhd >> 5) & 1;
  const fcsFlag = fhd >> 6;
  const fcsBytes = fcsFlag === 0 ? single : FCS_BYTES[fcsFlag]!;
  if (fcsBytes === 0) return null; // the size is not declared
  let at = 5 + (single ? 0 : 1) + DICT_ID_BYTES[fhd & 3]!; // Window_Descriptor, Dictionary_ID
  if (at + fcsBytes > frame.length) return null;
  // Frame_Content_Size (§3.1.1.1.4): little-endian; the 2-byte form is offset by 256.
  let size: number;
  if (fcsBytes === 1) size = frame[at]!;
  else if (fcsBytes === 2) size = view.getUint16(at, true) + 256;
  else if (fcsBytes === 4) size = view.getUint32(at, true);
  else size = view.getUint32(at, true) + view.getUint32(at + 4, true) * 2 ** 32;
  at += fcsBytes;
  // Blocks (§3.1.1.2): a 3-byte header — Last_Block (bit 0), Block_Type (bits 2-1), Block_Size (bits 23-3).
  for (;;) {
    if (at + 3 > frame.length) return null;
    const h = frame[at]! | (frame[at + 1]! << 8) | (frame[at + 2]! << 16);
    const type = (h >> 1) & 3;
    if (type === 3) return null; // reserved
    at += 3 + (type === 1 ? 1 : h >>> 3); // an RLE block stores one byte
    if (h & 1) break;
  }
  if (fhd & 0x04) at += 4; // Content_Checksum
  return at === frame.length && Number.isSafeInteger(size) ? size : null;
}

/** Compress one chunk as an independent frame. @throws {ZbError} INTERNAL */
export function encodeFrame(raw: Uint8Array, level: number): Uint8Array {
  try {
    return Bun.zstdCompressSync(raw, { level });
  } catch (e) {
    throw new ZbError("INTERNAL", `internal error: zstd compression failed: ${(e as Error).message}`);
  }
}
