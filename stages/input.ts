/** Reading a script argument (`--script FILE`, `-s FILE`, `-` = stdin) for the stages. */
import { readFileSync } from "node:fs";
import { ioError } from "../lib/errors.ts";

/** The file (or stdin) as a byte string, one char per byte. @throws {ZbError} IO */
export function readInput(path: string): string {
  try {
    return readFileSync(path === "-" ? 0 : path).toString("latin1");
  } catch (e) {
    throw ioError(`read script ${path === "-" ? "from stdin" : path}`, e);
  }
}
