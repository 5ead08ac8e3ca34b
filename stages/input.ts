/** Reading a script argument (`--script FILE`, `-s FILE`, `-` = stdin) for the stages. */
import { MAX_SCRIPT_BYTES } from "../lib/env/script.ts";
import { readFdBounded, readFileBounded, type ReadLimit } from "../lib/sys/bounded.ts";
import { waitReadable } from "../lib/sys/fdwait.ts";

/**
 * The file (or stdin) as a byte string, one char per byte, at most
 * {@link MAX_SCRIPT_BYTES}: a path that is no script (/dev/zero, a
 * partition) is refused, not read until memory runs out.
 * @throws {ZbError} IO; USAGE when larger (the file is the command line's)
 */
export function readInput(path: string): string {
  const limit: ReadLimit = { max: MAX_SCRIPT_BYTES, code: "USAGE", what: `script ${path === "-" ? "from stdin" : path}`, wait: waitReadable };
  const bytes = path === "-" ? readFdBounded(0, limit) : readFileBounded(path, limit);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1");
}
