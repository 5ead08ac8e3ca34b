/**
 * Synchronous output for the stages. process.stdout in Bun builds a Node
 * stream on first use, which costs ~10 ms of start-up — more than the whole
 * run of `zb env print` otherwise (bench/env-print.ts measures it). Plain
 * write(2) on fd 1/2 also needs no draining before process.exit.
 */
import { writeSync } from "node:fs";

/** Write all bytes to a file descriptor, retrying short writes and EAGAIN. */
function writeAll(fd: number, data: Uint8Array): void {
  let done = 0;
  while (done < data.length) {
    try {
      done += writeSync(fd, data, done, data.length - done);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === "EAGAIN") continue; // a non-blocking pipe that is full
      if (code === "EPIPE") return; // the reader went away (`| head`): not our failure
      throw e;
    }
  }
}

/** Text (UTF-8) or raw bytes to stdout. */
export function out(data: string | Uint8Array): void {
  writeAll(1, typeof data === "string" ? Buffer.from(data, "utf8") : data);
}

/** Text to stderr. */
export function err(text: string): void {
  writeAll(2, Buffer.from(text, "utf8"));
}
