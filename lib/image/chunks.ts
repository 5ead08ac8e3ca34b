/**
 * Cut a payload's byte stream into its chunks, exactly as the manifest sizes
 * them. A chunk that arrives whole inside one read is handed out as a view
 * (no copy); otherwise it is assembled in one reusable buffer. Either way the
 * view is only valid until the next pull, which keeps memory constant.
 */
import { bad, endsInChunk } from "./format.ts";

/** Where the stream starts: its payload, the index of its first chunk and that chunk's offset in the image. */
export interface ChunksAt {
  payload: string;
  firstChunk: number;
  imageOffset: number;
}

/**
 * @throws {ZbError} IMG_FORMAT when the stream has more bytes than the chunks, or ends inside one (naming the
 *   chunk, its image bytes and where the stream ended)
 * @example for await (const c of exactChunks(data, sizes, { payload: "rootfs", firstChunk: 0, imageOffset: 4096 })) use(c)
 */
export async function* exactChunks(data: AsyncIterable<Uint8Array>, sizes: readonly number[], where: ChunksAt): AsyncGenerator<Uint8Array> {
  const max = sizes.reduce((m, s) => Math.max(m, s), 0);
  const buf = new Uint8Array(max);
  let i = 0;
  let fill = 0;
  let start = where.imageOffset; // where chunk i starts in the image
  for await (const part of data) {
    let at = 0;
    while (at < part.length) {
      if (i >= sizes.length) throw bad(`payload ${where.payload} has more bytes than its chunks`);
      const need = sizes[i]! - fill;
      if (fill === 0 && part.length - at >= need) {
        yield part.subarray(at, at + need);
        at += need;
        start += sizes[i]!;
        i++;
        continue;
      }
      const take = Math.min(need, part.length - at);
      buf.set(part.subarray(at, at + take), fill);
      fill += take;
      at += take;
      if (fill === sizes[i]) {
        yield buf.subarray(0, fill);
        fill = 0;
        start += sizes[i]!;
        i++;
      }
    }
  }
  if (i !== sizes.length) throw endsInChunk(where.payload, where.firstChunk + i, start, sizes[i]!, start + fill);
}
