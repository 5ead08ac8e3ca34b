/**
 * Where an image comes from: a file, stdin, or an HTTP(S) URL (lib/image/http.ts).
 * Files and URLs can start at an offset (a file seeks, HTTP asks for
 * `Range`), which is how an interrupted install resumes without reading the
 * image again.
 */
import { closeSync, createReadStream, openSync, readSync, statSync } from "node:fs";
import { ZbError, ioError } from "../errors.ts";
import { httpSource, type HttpOptions } from "./http.ts";

export { DEFAULT_IDLE_SECONDS, DEFAULT_RETRIES, displayUrl, httpSource, retryDelayMs, type HttpOptions, type RetryEvent } from "./http.ts";

/** A stream of image bytes that can be ended early (HTTP: the request is aborted). */
export interface Cancelable {
  cancel?(): void;
}

export interface ImageSource {
  readonly name: string;
  /** Can `open` start at an offset other than 0? */
  readonly seekable: boolean;
  /** The local file a file source reads (the install keeps its target and journal off it). */
  readonly file?: string;
  /** The image's bytes from `offset` on. @throws {ZbError} IO */
  open(offset: number): Promise<AsyncIterable<Uint8Array>>;
  /** Files only: synchronous sequential reads from byte 0 (the payload fast path, reader.ts). */
  direct?(): DirectReader;
}

/**
 * Sequential read(2) into the caller's buffer: no stream buffers to collect
 * (constant memory) and no positioned reads (slow in Bun 1.4, see
 * lib/sys/target.ts).
 */
export interface DirectReader {
  /** Bytes consumed so far. */
  readonly position: number;
  /** Fill `buf` completely; @returns the bytes read (fewer only at the end of the file). */
  read(buf: Uint8Array): number;
  close(): void;
}

/** Read size per request: large reads keep the per-read overhead out of the hashing rate. */
const READ_SIZE = 1 << 20;

/** @throws {ZbError} USAGE for a URL that does not parse */
export function sourceFor(spec: string, opts: HttpOptions = {}): ImageSource {
  if (spec === "-") return stdinSource();
  if (/^https?:\/\//i.test(spec)) return httpSource(spec, opts);
  return fileSource(spec);
}

/**
 * A local image. A regular file or a block device is read with seeks (resume)
 * and direct reads; anything else — a FIFO, `<(…)` process substitution,
 * /dev/stdin on a pipe — is a stream like stdin: positioned reads fail there
 * (ESPIPE), and opening the path a second time would split one stream
 * between two readers.
 * @returns a source whose open() throws {ZbError} IO when the path cannot be read
 * @example await openImage(await fileSource("update.zbi").open(0), { unverified: true })
 */
export function fileSource(path: string): ImageSource {
  if (isStream(path)) return streamSource(path);
  return {
    name: path,
    seekable: true,
    file: path,
    async open(offset) {
      try {
        if (!statSync(path).isFile() && offset > 0) throw new Error("not a regular file");
      } catch (e) {
        throw new ZbError("IO", `cannot read image ${path}: ${(e as { code?: string }).code === "ENOENT" ? "no such file" : (e as Error).message}`);
      }
      return createReadStream(path, { start: offset, highWaterMark: READ_SIZE });
    },
    direct() {
      let fd: number;
      try {
        fd = openSync(path, "r");
      } catch (e) {
        throw ioError(`read image ${path}`, e);
      }
      let position = 0;
      let open = true;
      return {
        get position() {
          return position;
        },
        read(buf) {
          let done = 0;
          try {
            while (done < buf.length) {
              const n = readSync(fd, buf, done, buf.length - done, null);
              if (n === 0) break;
              done += n;
            }
          } catch (e) {
            throw ioError(`read image ${path}`, e);
          }
          position += done;
          return done;
        },
        close() {
          if (open) closeSync(fd);
          open = false;
        },
      };
    },
  };
}

/** Neither a regular file nor a block device (a folder or a missing path is left to open() to report). */
function isStream(path: string): boolean {
  try {
    const st = statSync(path);
    return !st.isFile() && !st.isBlockDevice() && !st.isDirectory();
  } catch {
    return false;
  }
}

/** A FIFO or the like: read once, from its start, in sequence. */
function streamSource(path: string): ImageSource {
  let used = false;
  return {
    name: path,
    seekable: false,
    file: path,
    async open(offset) {
      if (offset !== 0 || used) throw new ZbError("IO", `cannot read image ${path} twice or from an offset: it is a pipe, not a file`);
      used = true;
      // No start: a start makes every read positioned (pread), which a pipe refuses with ESPIPE.
      return createReadStream(path, { highWaterMark: READ_SIZE });
    },
  };
}

export function stdinSource(): ImageSource {
  let used = false;
  return {
    name: "stdin",
    seekable: false,
    async open(offset) {
      if (offset !== 0 || used) throw new ZbError("IO", "cannot read the image from stdin twice or from an offset");
      used = true;
      return process.stdin;
    },
  };
}
