/**
 * Where an image comes from: a file, stdin, or an HTTP(S) URL. Files and
 * URLs can start at an offset (a file seeks, HTTP asks for `Range`), which
 * is how an interrupted install resumes without reading the image again.
 */
import { closeSync, createReadStream, openSync, readSync, statSync } from "node:fs";
import { describeErrno, ZbError, ioError } from "../errors.ts";

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

/** How long an HTTP server may send nothing (headers or body) before the download fails. */
export const DEFAULT_IDLE_SECONDS = 60;

export function sourceFor(spec: string, opts: { idleSeconds?: number } = {}): ImageSource {
  if (spec === "-") return stdinSource();
  if (/^https?:\/\//i.test(spec)) return httpSource(spec, opts);
  return fileSource(spec);
}

export function fileSource(path: string): ImageSource {
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

/**
 * An HTTP(S) source. A server that stops sending (a stalled connection, a
 * proxy that holds it open) fails the download after `idleSeconds` without a
 * byte, instead of after the runtime's own limit of several minutes; time
 * the install spends on the bytes it has does not count.
 */
export function httpSource(url: string, opts: { idleSeconds?: number } = {}): ImageSource {
  const idleMs = (opts.idleSeconds ?? DEFAULT_IDLE_SECONDS) * 1000;
  const stalled = () => new ZbError("IO", `cannot download ${url}: the server sent nothing for ${idleMs / 1000} s`);
  return {
    name: url,
    seekable: true,
    async open(offset) {
      const abort = new AbortController();
      let res: Response;
      const timer = setTimeout(() => abort.abort(), idleMs);
      try {
        res = await fetch(url, { headers: offset > 0 ? { Range: `bytes=${offset}-` } : {}, signal: abort.signal });
      } catch (e) {
        throw abort.signal.aborted ? stalled() : new ZbError("IO", `cannot download ${url}: ${fetchReason(e)}`);
      } finally {
        clearTimeout(timer);
      }
      if (offset > 0 && res.status !== 206) {
        throw new ZbError("IO", `cannot resume ${url} at byte ${offset}: the server answered ${res.status} instead of 206 Partial Content`);
      }
      if (offset === 0 && res.status !== 200) throw new ZbError("IO", `cannot download ${url}: HTTP ${res.status}`);
      if (!res.body) throw new ZbError("IO", `cannot download ${url}: empty response`);
      return watched(res.body as unknown as AsyncIterable<Uint8Array>, idleMs, abort, stalled, url);
    },
  };
}

/** The body's parts, each awaited under the idle timer (started when the next part is asked for). */
async function* watched(body: AsyncIterable<Uint8Array>, idleMs: number, abort: AbortController, stalled: () => ZbError, url: string): AsyncGenerator<Uint8Array> {
  const it = body[Symbol.asyncIterator]();
  for (;;) {
    const timer = setTimeout(() => abort.abort(), idleMs);
    let r: IteratorResult<Uint8Array>;
    try {
      r = await it.next();
    } catch (e) {
      throw abort.signal.aborted ? stalled() : new ZbError("IO", `cannot download ${url}: ${fetchReason(e)}`);
    } finally {
      clearTimeout(timer);
    }
    if (r.done) return;
    yield r.value;
  }
}

/** Bun's own codes for fetch failures, beside the errno names lib/errors.ts knows. */
const FETCH_CODES: Record<string, string> = {
  ConnectionRefused: "the connection was refused",
  ConnectionClosed: "the connection was closed early",
};

/** A fetch error in a few words, without the runtime's advice on fetch() options. */
function fetchReason(e: unknown): string {
  return describeErrno(e, FETCH_CODES).replace(/\s*For more information, pass `verbose: true`.*$/s, "");
}
