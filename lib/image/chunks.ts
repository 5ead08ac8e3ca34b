/**
 * Cut a payload's byte stream into its chunks, exactly as the manifest sizes
 * them. A chunk that arrives whole inside one read is handed out as a view
 * (no copy); otherwise it is assembled in one reusable buffer. Either way the
 * view is only valid until the next pull, which keeps memory constant.
 */
import { bad } from "./format.ts";

export async function* exactChunks(data: AsyncIterable<Uint8Array>, sizes: readonly number[], what: string): AsyncGenerator<Uint8Array> {
  const max = sizes.reduce((m, s) => Math.max(m, s), 0);
  const buf = new Uint8Array(max);
  let i = 0;
  let fill = 0;
  for await (const part of data) {
    let at = 0;
    while (at < part.length) {
      if (i >= sizes.length) throw bad(`${what} has more bytes than its chunks`);
      const need = sizes[i]! - fill;
      if (fill === 0 && part.length - at >= need) {
        yield part.subarray(at, at + need);
        at += need;
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
        i++;
      }
    }
  }
  if (i !== sizes.length || fill !== 0) throw bad(`${what} ends after ${i} of ${sizes.length} chunks`);
}
