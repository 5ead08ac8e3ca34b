/**
 * One zstd frame per chunk, in and out of fixed buffers.
 *
 * Decompression calls libzstd's ZSTD_decompressDCtx through bun:ffi with one
 * reused context into a buffer of exactly the chunk's raw size: ~1.7× the
 * speed of Bun.zstdDecompressSync here (which grows its output), and a frame
 * can never expand beyond the buffer (no decompression bomb). Without
 * libzstd.so.1 (a minimal initramfs) it falls back to Bun's zstd and checks
 * the size afterwards. Compression (publishing side) uses Bun's native zstd.
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

/** Compress one chunk as an independent frame. @throws {ZbError} INTERNAL */
export function encodeFrame(raw: Uint8Array, level: number): Uint8Array {
  try {
    return Bun.zstdCompressSync(raw, { level });
  } catch (e) {
    throw new ZbError("INTERNAL", `internal error: zstd compression failed: ${(e as Error).message}`);
  }
}
