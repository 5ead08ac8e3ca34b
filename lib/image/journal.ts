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
  /**
   * Where the payload's data starts in the image the last run read (null until it got there). A
   * resume does not seek there but to the offset in the image it is given (ImageHeader.dataOffsets):
   * a re-signed copy of the same image has the same manifest and its payloads elsewhere.
   */
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
 * A journal is a few hundred bytes: a larger file is not one, and is not
 * read whole to find out (a --journal that names a rootfs image by mistake).
 */
const MAX_JOURNAL = 64 << 10;

/** What is at a journal path. */
export type JournalFile =
  | { kind: "none" }
  | { kind: "journal"; journal: Journal }
  /**
   * Not a journal zb reads: `why` says what it is instead ("it is empty", "it is not JSON"…);
   * `journalLike` when it still has a journal's shape (an object with a version and an image:
   * another version's, or one with a field out of range) rather than some other file's content.
   */
  | { kind: "unusable"; size: number; why: string; journalLike: boolean };

/**
 * Look at the file at a journal path without trusting it. `dataOffset` must
 * be where a payload's data can start in a `.zbi` (format.ts): a multiple of
 * 512 and at least MIN_DATA_OFFSET (3584: three entries of a header and a
 * data block, then the payload's header), as zb writes it.
 * @returns what is there; never the runtime's own parser text
 * @throws {ZbError} IO when the file cannot be read at all (permissions, a read error)
 * @example inspectJournal(sys, "/var/lib/zb/rootfs-b.journal").kind === "journal"
 */
export function inspectJournal(sys: Sys, path: string): JournalFile {
  const st = sys.stat(path);
  if (!st) return { kind: "none" };
  if (st.size === 0) return { kind: "unusable", size: 0, why: "it is empty", journalLike: false };
  if (st.size > MAX_JOURNAL) return { kind: "unusable", size: st.size, why: `it is not a zb journal (${st.size} bytes; a journal is a few hundred)`, journalLike: false };
  let j: Partial<Journal>;
  try {
    j = JSON.parse(sys.readText(path)) as Partial<Journal>;
  } catch (e) {
    if (e instanceof ZbError) throw e; // the read failed: sys says why, naming the file
    return { kind: "unusable", size: st.size, why: "it is not a zb journal (not JSON)", journalLike: false };
  }
  if (typeof j !== "object" || j === null || Array.isArray(j)) return { kind: "unusable", size: st.size, why: "it is not a zb journal (not a JSON object)", journalLike: false };
  const ok =
    j.version === 1 && typeof j.image === "string" && typeof j.payload === "string" && typeof j.target === "string" &&
    ["writing", "failed", "complete"].includes(j.state ?? "") && Number.isSafeInteger(j.chunksDone) && (j.chunksDone ?? -1) >= 0 &&
    (j.dataOffset === null || (Number.isSafeInteger(j.dataOffset) && j.dataOffset! >= MIN_DATA_OFFSET && j.dataOffset! % BLOCK === 0)) &&
    (j.readBack === undefined || typeof j.readBack === "boolean");
  if (ok) return { kind: "journal", journal: j as Journal };
  return { kind: "unusable", size: st.size, why: "it is not a zb journal", journalLike: typeof j.version === "number" && typeof j.image === "string" };
}

/**
 * Read the journal a `--resume` continues from. Anything there that is not
 * a journal is an error rather than a fresh start: the run that made it is
 * unknown, so what the target holds is too.
 * @returns null when there is no journal
 * @throws {ZbError} IO naming the file, with a hint, when it is not a journal ("it is empty",
 *   "it is not a zb journal (not JSON)", "it is not a zb journal") or cannot be read
 * @example readJournal(sys, "slot.img.zb-journal")?.chunksDone
 */
export function readJournal(sys: Sys, path: string): Journal | null {
  const f = inspectJournal(sys, path);
  if (f.kind === "none") return null;
  if (f.kind === "journal") return f.journal;
  // Without --resume an empty file or one shaped like a journal is simply replaced (checkReplaceable).
  const fresh = f.size === 0 || f.journalLike ? "or install without --resume" : "and install again";
  throw new ZbError("IO", `cannot read install journal ${path}: ${f.why}`, {
    hint: `there is nothing to resume from: remove ${path} ${fresh} (the install then starts from chunk 0)`,
  });
}

/**
 * An install without `--resume` starts from chunk 0 and writes a new journal
 * over whatever is at the path: it needs nothing of the old one. It replaces
 * only what is no file at all, an empty file (`mktemp`, `: > FILE`) or
 * something shaped like a journal (of another image or target, another
 * version, an older run that broke): a `--journal` naming any other file
 * (a typo for the rootfs image, a config file) would be destroyed, as
 * `image create -o` refuses to replace what is not an image.
 * @throws {ZbError} USAGE for a file with other content; IO when it cannot be read
 * @example checkReplaceable(sys, opts.journal)
 */
export function checkReplaceable(sys: Sys, path: string): void {
  const f = inspectJournal(sys, path);
  if (f.kind !== "unusable" || f.size === 0 || f.journalLike) return;
  throw new ZbError("USAGE", `cannot use ${path} as the install journal: ${f.why}, and an install replaces its journal`, {
    hint: `give --journal a new file or a journal's path; remove ${path} first if it is a broken journal`,
  });
}
