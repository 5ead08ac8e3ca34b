/**
 * The tar headers of an image stream as raw bytes, beside the tar parser
 * (lib/image/reader.ts): the parser hides some blocks (pax and GNU headers,
 * a block that is zero but for its checksum), so zb checks each header and
 * the archive's end on the bytes themselves.
 */
import { BLOCK, entrySpan, MAX_TAIL, ustarSize, zeros } from "./format.ts";

/**
 * The raw header blocks of a stream, found by following each header's size
 * as the bytes go to the parser (zb's layout has nothing between entries),
 * and whether only zero bytes come after the first all-zero block (the end
 * of the archive). Bytes between headers are skipped, not looked at: a few
 * comparisons per chunk.
 */
export class RawHeaders {
  /** Where the next header block starts. */
  private next = 0;
  private seen = 0;
  private readonly block = new Uint8Array(BLOCK);
  private fill = 0;
  private readonly blocks = new Map<number, Uint8Array>();
  /** Where the first all-zero block starts, once one was found at a header's place. */
  private zerosFrom: number | null = null;
  private nonZeroAfterEnd = false;
  /** A header whose size field is malformed, or more headers than any image has: not followed further. */
  private lost = false;

  push(chunk: Uint8Array): void {
    const start = this.seen;
    this.seen += chunk.length;
    let i = 0;
    while (i < chunk.length && !this.lost) {
      if (this.zerosFrom !== null) {
        if (!this.nonZeroAfterEnd && !zeros(chunk, i, chunk.length)) this.nonZeroAfterEnd = true;
        return;
      }
      const at = start + i;
      if (at < this.next) {
        i += Math.min(chunk.length - i, this.next - at); // entry data
        continue;
      }
      const take = Math.min(BLOCK - this.fill, chunk.length - i);
      this.block.set(chunk.subarray(i, i + take), this.fill);
      this.fill += take;
      i += take;
      if (this.fill < BLOCK) return;
      this.fill = 0;
      this.header();
    }
  }

  private header(): void {
    if (zeros(this.block, 0, BLOCK)) {
      this.zerosFrom = this.next;
      return;
    }
    // 3 entries and at most 8 payloads; anything after them is refused by name or as trailing data.
    if (this.blocks.size >= 16) {
      this.lost = true;
      return;
    }
    this.blocks.set(this.next, this.block.slice()); // kept even when malformed: checkUstarHeader says what is wrong
    const size = ustarSize(this.block);
    if (size === null) this.lost = true;
    else this.next += entrySpan(size);
  }

  /** Bytes pushed so far. */
  get bytes(): number {
    return this.seen;
  }

  /** A byte that is not zero came after the end of the archive. */
  get dataAfterEnd(): boolean {
    return this.nonZeroAfterEnd;
  }

  /** The end of the archive (a zero block at a header's place) came before any entry. */
  get noEntry(): boolean {
    return this.zerosFrom === 0;
  }

  /** More than {@link MAX_TAIL} bytes came after the end of the archive (the first zero block at a header's place). */
  get tooLong(): boolean {
    return this.zerosFrom !== null && this.seen - this.zerosFrom > MAX_TAIL;
  }

  /** The header block that started at `offset` (once). */
  take(offset: number): Uint8Array | undefined {
    const b = this.blocks.get(offset);
    this.blocks.delete(offset);
    return b;
  }
}

