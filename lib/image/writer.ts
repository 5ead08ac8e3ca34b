/**
 * Write a `.zbi` archive with tar-stream: entries in the fixed order, each
 * with zb's deterministic header, streamed with backpressure into a temp
 * file that is fsynced and renamed over the output (a half-written image
 * never sits under the final name).
 */
import * as fs from "node:fs";
import { basename, dirname, join } from "node:path";
import { pack, type Pack } from "tar-stream";
import { ioError } from "../errors.ts";
import { entryHeader } from "./format.ts";

export interface ArchiveWriter {
  addBytes(name: string, bytes: Uint8Array): Promise<void>;
  /** The parts of `data` are queued, not copied: they must not be reused after they are yielded. */
  addStream(name: string, size: number, data: AsyncIterable<Uint8Array>): Promise<void>;
  /** Finish the archive and move it into place. */
  commit(): Promise<void>;
  /** Give up: remove the temp file. */
  abort(): void;
}

/** @throws {ZbError} IO */
export function archiveWriter(output: string): ArchiveWriter {
  const tmp = join(dirname(output), `.${basename(output)}.zb-new`);
  let fd: number;
  try {
    fd = fs.openSync(tmp, "w", 0o644);
  } catch (e) {
    throw ioError(`create ${output}`, e);
  }
  const tar: Pack = pack();
  let failure: unknown = null;
  const drained = (async () => {
    try {
      for await (const chunk of tar as AsyncIterable<Uint8Array>) {
        let done = 0;
        while (done < chunk.length) done += fs.writeSync(fd, chunk, done, chunk.length - done);
      }
    } catch (e) {
      failure = e;
    }
  })();
  const check = () => {
    if (failure) throw ioError(`write ${output}`, failure);
  };
  return {
    async addBytes(name, bytes) {
      check();
      await new Promise<void>((resolve, reject) => tar.entry(entryHeader(name, bytes.length), bytes, (e) => (e ? reject(e) : resolve())));
    },
    async addStream(name, size, data) {
      check();
      let done!: (e?: Error | null) => void;
      const finished = new Promise<void>((resolve, reject) => (done = (e) => (e ? reject(e) : resolve())));
      const sink = tar.entry(entryHeader(name, size), (e) => done(e));
      for await (const part of data) {
        if (!sink.write(part)) await new Promise<void>((r) => sink.once("drain", () => r()));
      }
      (sink.end as unknown as () => void).call(sink);
      await finished;
    },
    async commit() {
      tar.finalize();
      await drained;
      check();
      try {
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        fs.renameSync(tmp, output);
        const dir = fs.openSync(dirname(output), "r");
        fs.fsyncSync(dir);
        fs.closeSync(dir);
      } catch (e) {
        throw ioError(`write ${output}`, e);
      }
    },
    abort() {
      tar.destroy();
      try {
        fs.closeSync(fd);
      } catch {
        /* already closed */
      }
      fs.rmSync(tmp, { force: true });
    },
  };
}
