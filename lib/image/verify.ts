/**
 * `zb image verify`: the whole image checked without installing it —
 * marker, manifest, signatures against the trust policy, compatible and
 * serial floor, then every payload chunk's SHA-256, and that nothing follows
 * the last payload. That is one SHA-256 pass over the image, like
 * `sha256sum`: the signed chunk digests pin every stored byte, so the
 * whole-payload digests add no security. `deep` checks them too and
 * decompresses every chunk against the raw SHA-256, as an install would.
 */
import { ZbError } from "../errors.ts";
import { exactChunks } from "./chunks.ts";
import { sha256hex } from "./install.ts";
import { openVerified, type Policy } from "./reader.ts";
import type { ImageSource } from "./source.ts";
import { frameDecoder } from "./zstd.ts";

export interface VerifyResult {
  compatible: string;
  version: string;
  serial: number;
  signedBy: string[];
  payloads: { name: string; chunks: number; storedBytes: number; rawChecked: boolean }[];
  seconds: number;
}

/**
 * @throws {ZbError} IMG_FORMAT, SIG_INVALID, IMG_INCOMPATIBLE, ROLLBACK_REFUSED, PAYLOAD_CORRUPT, IO
 */
export async function verifyImage(source: ImageSource, policy: Policy, opts: { deep?: boolean; progress?: (storedBytes: number, storedTotal: number) => void } = {}): Promise<VerifyResult> {
  const started = performance.now();
  const img = await openVerified(source, policy);
  const decoder = opts.deep ? frameDecoder() : null;
  try {
    const m = img.header.manifest;
    const total = m.payloads.reduce((a, p) => a + p.stored.size, 0);
    let done = 0;
    const payloads: VerifyResult["payloads"] = [];
    for (let e = await img.nextPayload(); e; e = await img.nextPayload()) {
      const p = e.payload;
      const whole = decoder ? new Bun.CryptoHasher("sha256") : null;
      const raw = decoder ? new Bun.CryptoHasher("sha256") : null;
      const rawBuf = decoder ? new Uint8Array(Math.min(m.chunkSize, p.raw.size)) : null;
      let i = 0;
      let at = 0;
      for await (const stored of exactChunks(e.data, p.chunks.map((c) => c.size), { payload: p.name, firstChunk: 0, imageOffset: e.dataOffset })) {
        if (sha256hex(stored) !== p.chunks[i]!.sha256) {
          throw new ZbError("PAYLOAD_CORRUPT", `cannot verify ${p.name}: chunk ${i} (stored bytes ${at}–${at + stored.length - 1}, image byte ${e.dataOffset + at}) does not match its signed SHA-256`);
        }
        whole?.update(stored);
        if (raw && rawBuf && decoder) {
          const out = p.encoding === "none" ? stored : rawBuf.subarray(0, Math.min(m.chunkSize, p.raw.size - i * m.chunkSize));
          if (p.encoding === "zstd" && !decoder.decode(stored, out)) throw new ZbError("IMG_FORMAT", `cannot verify ${p.name}: chunk ${i} is not a zstd frame of ${out.length} bytes`);
          raw.update(out);
        }
        at += stored.length;
        done += stored.length;
        i++;
        opts.progress?.(done, total);
      }
      if (whole && whole.digest("hex") !== p.stored.sha256) throw new ZbError("PAYLOAD_CORRUPT", `cannot verify ${p.name}: the stored payload's SHA-256 differs from the signed one`);
      if (raw && raw.digest("hex") !== p.raw.sha256) throw new ZbError("PAYLOAD_CORRUPT", `cannot verify ${p.name}: the decompressed payload's SHA-256 differs from the signed one`);
      payloads.push({ name: p.name, chunks: p.chunks.length, storedBytes: p.stored.size, rawChecked: raw !== null });
    }
    return { compatible: m.compatible, version: m.version, serial: m.serial, signedBy: img.header.signedBy, payloads, seconds: (performance.now() - started) / 1000 };
  } finally {
    decoder?.close();
    img.close();
  }
}
