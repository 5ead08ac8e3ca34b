/**
 * What follows the last payload, for a resume that seeks to it (install.ts):
 * checked as a fresh install's reader checks it (reader.ts), so that data
 * appended to the image is refused on either path.
 */
import { ioError } from "../errors.ts";
import { bad, BLOCK, MAX_TAIL, tooLongTail } from "./format.ts";

/** The two zero blocks that end a tar archive: all of a device's tail that is the image's. */
const END_BLOCKS = 2 * BLOCK;

/** A stream split in two: the payload's bytes, then what follows them. */
export interface PayloadAndTail {
  /** The first `n` bytes; the stream stays open after them for `check`. */
  payload: AsyncGenerator<Uint8Array>;
  /**
   * Read on past the payload: its entry's padding must be there, then only
   * zeros may follow — at most MAX_TAIL bytes, or for a block device, whose
   * end is not the image's (an image written raw to a larger stick), the two
   * end blocks (fewer where the device ends). Ends the stream.
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
  const check = async () => {
    let pad = padding;
    let tail = 0;
    try {
      for (;;) {
        let part = rest;
        rest = null;
        if (part === null) {
          if (ended) break;
          const r = await it.next();
          if (r.done) {
            ended = true;
            break;
          }
          part = r.value;
        }
        const skipped = Math.min(pad, part.length);
        pad -= skipped;
        let after = part.subarray(skipped);
        if (device) after = after.subarray(0, END_BLOCKS - tail);
        if (after.some((b) => b !== 0)) throw bad("data follows the last payload");
        tail += after.length;
        if (device && tail >= END_BLOCKS) break;
        if (tail > MAX_TAIL) throw tooLongTail();
      }
      if (pad > 0) throw bad("the archive ends early");
    } catch (e) {
      throw ioError("read the image", e); // a ZbError stays as it is; an errno reads as words
    } finally {
      await close();
    }
  };
  return { payload: payload(), check, close };
}
