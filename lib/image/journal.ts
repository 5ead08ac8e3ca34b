/**
 * The install journal: a small JSON file beside the target (path chosen by
 * the caller) that says which image and payload the target is receiving and
 * how many chunks are verified *and* durably written. It is replaced
 * atomically after the target was fsynced, so it never claims more than the
 * disk holds. Only `state: "complete"` means installed; anything else —
 * including no journal — means the target must not be made bootable.
 */
import { ZbError } from "../errors.ts";
import { BLOCK, MIN_DATA_OFFSET } from "./format.ts";
import { writeFileAtomic } from "../sys/atomic.ts";
import type { Sys } from "../sys/sys.ts";

export interface Journal {
  version: 1;
  /** SHA-256 of the signed manifest bytes: identifies the image. */
  image: string;
  payload: string;
  target: string;
  state: "writing" | "failed" | "complete";
  /** Chunks 0..chunksDone-1 are verified and on disk. */
  chunksDone: number;
  /** Where the payload's data starts in the image file (for a seeking resume). */
  dataOffset: number | null;
  /**
   * The install was asked to read the payload back (--read-back): a resume
   * reads it back too, asked or not, so a read-back that failed
   * (TARGET_MISMATCH) is never followed by "complete" without one.
   */
  readBack?: boolean;
  error?: string;
}

export function writeJournal(sys: Sys, path: string, j: Journal): void {
  writeFileAtomic(sys, path, JSON.stringify(j) + "\n");
}

/**
 * Read the journal beside a target. `dataOffset` must be where a payload's
 * data can start in a `.zbi` (format.ts): a multiple of 512 and at least
 * MIN_DATA_OFFSET (3584: three entries of a header and a data block, then
 * the payload's header) — a resume seeks there.
 * @returns null when there is no journal
 * @throws {ZbError} IO when it is unreadable or malformed ("it is not a zb journal")
 */
export function readJournal(sys: Sys, path: string): Journal | null {
  if (!sys.stat(path)) return null;
  let j: Partial<Journal>;
  try {
    j = JSON.parse(sys.readText(path)) as Partial<Journal>;
  } catch (e) {
    throw new ZbError("IO", `cannot read install journal ${path}: ${(e as Error).message}`);
  }
  const ok =
    j.version === 1 && typeof j.image === "string" && typeof j.payload === "string" && typeof j.target === "string" &&
    ["writing", "failed", "complete"].includes(j.state ?? "") && Number.isSafeInteger(j.chunksDone) && (j.chunksDone ?? -1) >= 0 &&
    (j.dataOffset === null || (Number.isSafeInteger(j.dataOffset) && j.dataOffset! >= MIN_DATA_OFFSET && j.dataOffset! % BLOCK === 0)) &&
    (j.readBack === undefined || typeof j.readBack === "boolean");
  if (!ok) throw new ZbError("IO", `cannot read install journal ${path}: it is not a zb journal`);
  return j as Journal;
}
