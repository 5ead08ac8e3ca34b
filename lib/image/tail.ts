/**
 * What follows the last payload, for a resume that seeks to it (install.ts):
 * checked as a fresh install's reader checks it (reader.ts), so that data
 * appended to the image is refused on either path.
 */
import { ioError } from "../errors.ts";
import { bad, BLOCK } from "./format.ts";
import { streamReader } from "./pull.ts";
import { checkArchiveEnd } from "./reader.ts";

/** A stream split in two: the payload's bytes, then what follows them. */
export interface PayloadAndTail {
  /** The first `n` bytes; the stream stays open after them for `check`. */
  payload: AsyncGenerator<Uint8Array>;
  /**
   * Read on past the payload: its entry's padding must be there, then what
   * follows is checked as a fresh read checks it (reader.ts checkArchiveEnd:
   * only zeros, at most MAX_TAIL; a block device's two end blocks). Ends the stream.
   * @throws {ZbError} IMG_FORMAT "data follows the last payload", "the archive ends early", or a tail
   *   too long; the source's own failure (IO)
   */
  check(): Promise<void>;
  /** End the stream unread (the install failed before the check). */
  close(): Promise<void>;
}

/**
 * `data` as the last payload's `n` bytes and the tail after them, `padding`
 * bytes of its entry's padding first.
 */
export function payloadAndTail(data: AsyncIterable<Uint8Array>, n: number, padding: number, device: boolean): PayloadAndTail {
  const it = data[Symbol.asyncIterator]();
  /** Bytes of the part that held the payload's end, past it. */
  let rest: Uint8Array | null = null;
  let ended = false;
  const close = async () => {
    if (ended) return;
    ended = true;
    await it.return?.();
  };
  async function* payload(): AsyncGenerator<Uint8Array> {
    let left = n;
    try {
      while (left > 0) {
        const r = await it.next();
        if (r.done) {
          ended = true;
          return; // short: the chunks' reader says where (endsInChunk)
        }
        const part = r.value;
        if (part.length > left) {
          rest = part.slice(left); // a copy: the reader may keep or reuse what it is given
          const last = part.subarray(0, left);
          left = 0;
          yield last;
        } else {
          left -= part.length;
          yield part;
        }
      }
    } finally {
      if (left > 0) await close(); // the reader stopped early: nothing more is wanted
    }
  }
  /** What the stream holds after the payload: the rest of the part that ended it, then the parts after. */
  async function* after(): AsyncGenerator<Uint8Array> {
    if (rest !== null) yield rest;
    while (!ended) {
      const r = await it.next();
      if (r.done) ended = true;
      else yield r.value;
    }
  }
  const check = async () => {
    const r = streamReader(after());
    try {
      if ((await r.read(new Uint8Array(padding))) < padding) throw bad("the archive ends early");
      await checkArchiveEnd((b) => r.read(b), device, new Uint8Array(BLOCK * 16));
    } catch (e) {
      throw ioError("read the image", e); // a ZbError stays as it is; an errno reads as words
    } finally {
      await close();
    }
  };
  return { payload: payload(), check, close };
}
