/**
 * How much one image holds: its manifest lists every chunk (~91–94 bytes
 * each) and may be 4 MiB at most (LIMITS.manifestBytes), so the chunk size
 * bounds the payloads. `zb image create` checks this from the payloads' raw
 * sizes before it compresses or spools anything: with encoding `none` a
 * chunk's stored size is its raw size, so the manifest's size is known to the
 * byte; with `zstd` each chunk is counted at the largest frame zstd may make of
 * it (zstdCompressBound, the most the manifest reader accepts), so an input
 * that passes fits whatever zstd makes of it. Pure.
 */
import { ZbError } from "../errors.ts";
import { LIMITS, manifestSize, zstdCompressBound, type Encoding, type Manifest, type PayloadKind } from "./manifest.ts";

/** The manifest's own fields, as the image will carry them. */
export type ManifestHead = Omit<Manifest, "payloads">;

/** A payload before it is encoded: its manifest fields and how many raw bytes it has. */
export interface PayloadPlan {
  input: { name: string; kind: PayloadKind; encoding: Encoding };
  rawTotal: number;
}

/**
 * The size of the manifest of these payloads: exact when every payload is
 * `none`, and the most it can be otherwise (every zstd chunk at its bound).
 */
export function plannedManifestSize(head: ManifestHead, plans: readonly PayloadPlan[]): number {
  const cs = head.chunkSize;
  return manifestSize({
    ...head,
    payloads: plans.map(({ input, rawTotal }) => {
      const count = Math.ceil(rawTotal / cs);
      const lastRaw = rawTotal - Math.max(0, count - 1) * cs;
      const stored = input.encoding === "zstd" ? zstdCompressBound : (n: number) => n;
      const chunks = { count, size: stored(cs), last: stored(lastRaw) };
      return { ...input, raw: rawTotal, stored: count === 0 ? 0 : (count - 1) * chunks.size + chunks.last, chunks };
    }),
  });
}

/**
 * Refuse payloads whose manifest may be larger than LIMITS.manifestBytes, from
 * their raw sizes alone: before anything is compressed or written.
 * @throws {ZbError} USAGE naming the manifest size needed, the limit and a --chunk-size that fits
 */
export function checkManifestFits(head: ManifestHead, plans: readonly PayloadPlan[]): void {
  const need = plannedManifestSize(head, plans);
  if (need <= LIMITS.manifestBytes) return;
  throw manifestTooLarge(head, plans, need, plans.every((p) => p.input.encoding === "none"));
}

/**
 * The refusal of a manifest of `need` bytes: the figures, and the smallest
 * --chunk-size above `head.chunkSize` whose manifest fits (checked the way
 * {@link checkManifestFits} checks it), if any does.
 * @param exact `need` is the manifest's size, not the most it may be
 */
export function manifestTooLarge(head: ManifestHead, plans: readonly PayloadPlan[], need: number, exact: boolean): ZbError {
  const chunks = plans.reduce((a, p) => a + Math.ceil(p.rawTotal / head.chunkSize), 0);
  const size = exact ? `${need} bytes` : `up to ${need} bytes (a zstd chunk counted at its largest)`;
  const message = `cannot create an image: ${chunks} chunks of ${head.chunkSize} bytes need a manifest of ${size}, more than its limit of ${LIMITS.manifestBytes}`;
  for (let cs = head.chunkSize * 2; cs <= LIMITS.maxChunk; cs *= 2) {
    if (plannedManifestSize({ ...head, chunkSize: cs }, plans) <= LIMITS.manifestBytes) {
      return new ZbError("USAGE", message, { hint: `give --chunk-size ${cs} (it fits) or larger, up to ${LIMITS.maxChunk}` });
    }
  }
  return new ZbError("USAGE", message, { hint: `even --chunk-size ${LIMITS.maxChunk} does not make the manifest fit: make the payloads smaller` });
}
