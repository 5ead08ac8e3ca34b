/**
 * Where an image comes from: a file, stdin, or an HTTP(S) URL (lib/image/http.ts).
 * Files and URLs can start at an offset (a file seeks, HTTP asks for
 * `Range`), which is how an interrupted install resumes without reading the
 * image again.
 */
import { closeSync, constants, createReadStream, fstatSync, openSync, readFileSync, readSync, statSync } from "node:fs";
import { isatty } from "node:tty";
import { ZbError, ioError } from "../errors.ts";
import { isNullDevice } from "../sys/sys.ts";
import { displayUrl, httpSource, type HttpOptions } from "./http.ts";
import { eitherWay, pipeReader, readerUntilAborted, unlessAborted, type Pullable } from "./pull.ts";

export { streamReader, type Pullable, type StreamReader } from "./pull.ts";
export { DEFAULT_IDLE_SECONDS, DEFAULT_MIN_SPEED, DEFAULT_RETRIES, displayUrl, httpSource, retryDelayMs, type HttpOptions, type RetryEvent } from "./http.ts";

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
  /**
   * The image's bytes from `offset` on. `signal`: a stop (stoppable) that ends
   * what the open itself waits for (a URL's first request, its retries' waits).
   * @throws {ZbError} IO
   */
  open(offset: number, signal?: AbortSignal): Promise<AsyncIterable<Uint8Array>>;
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
  /**
   * A block device: its end is not the image's (an image written raw to a
   * larger USB stick), so the reader stops at the archive's end blocks
   * instead of requiring only zeros up to the end (reader.ts).
   */
  readonly device?: boolean;
  close(): void;
}

/** Read size per request: large reads keep the per-read overhead out of the hashing rate. */
const READ_SIZE = 1 << 20;

/**
 * The source `spec` names: `-` stdin, an http(s) URL, else a path.
 * @throws {ZbError} USAGE for a URL that does not parse, or of another scheme (`file://`,
 *   `ftp://`: read as a path, it would be "no such file", for a file that exists)
 */
export function sourceFor(spec: string, opts: HttpOptions = {}): ImageSource {
  if (spec === "-") return stdinSource();
  if (/^https?:\/\//i.test(spec)) return httpSource(spec, opts);
  if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(spec)) {
    throw new ZbError("USAGE", `cannot read image ${displayUrl(spec)}: only http:// and https:// URLs are read (or a path, or - for stdin)`);
  }
  return fileSource(spec);
}

/**
 * The same source, stopped by `signal` (the stages abort it on SIGINT and
 * SIGTERM): every read after the abort throws `signal.reason`, so the
 * command that reads fails the way it fails on a broken source, cleaning up
 * as it does then. A stream waiting for bytes that do not come (a stalled
 * server, an idle pipe) is ended at once; a direct read checks a flag per
 * chunk, nothing more (the install's hot path).
 * @returns a source whose open(), stream reads and direct reads throw `signal.reason` once it has aborted
 */
export function stoppable(source: ImageSource, signal: AbortSignal): ImageSource {
  const direct = source.direct?.bind(source);
  return {
    name: source.name,
    seekable: source.seekable,
    ...(source.file !== undefined ? { file: source.file } : {}),
    async open(offset) {
      if (signal.aborted) throw signal.reason;
      // Raced with the abort: a server that accepts and never answers would hold the signal until --timeout.
      const opening = source.open(offset, signal);
      const aborted = whenAborted(signal, null);
      let data: AsyncIterable<Uint8Array> | null;
      try {
        data = await Promise.race([opening, aborted.promise]);
      } catch (e) {
        if (signal.aborted) throw signal.reason; // the open failed because of the stop
        throw e;
      } finally {
        aborted.dispose();
      }
      if (data === null) {
        // The open goes on without anyone waiting: whatever it yields is ended, a failure is not unhandled.
        opening.then((d) => untilAborted(d, signal).cancel?.(), () => undefined);
        throw signal.reason;
      }
      return untilAborted(data, signal);
    },
    ...(direct
      ? {
          direct(): DirectReader {
            const r = direct();
            return {
              get position() {
                return r.position;
              },
              ...(r.device ? { device: true } : {}),
              read(buf) {
                if (signal.aborted) throw signal.reason;
                return r.read(buf);
              },
              close: () => r.close(),
            };
          },
        }
      : {}),
  };
}

/**
 * A stream's parts until `signal` aborts; then `signal.reason` is thrown,
 * also when the stream was waiting (it is cancelled or destroyed, which ends
 * that wait). `cancel()` ends the stream as its own would.
 */
export function untilAborted(data: AsyncIterable<Uint8Array>, signal: AbortSignal): AsyncIterable<Uint8Array> & Cancelable {
  const stop = () => {
    const d = data as Cancelable & { destroy?(): void };
    if (d.cancel) d.cancel();
    else d.destroy?.();
  };
  async function* parts(): AsyncGenerator<Uint8Array> {
    if (signal.aborted) {
      stop(); // never read: ended here, not left open behind the caller
      throw signal.reason;
    }
    // Ended at the abort, also while the caller holds a part. A read pending then is left behind
    // (unlessAborted): destroying a file stream does not end a read(2) already pending in the thread
    // pool (a FIFO whose writer sends nothing, or has not even opened it).
    signal.addEventListener("abort", stop, { once: true });
    const it = data[Symbol.asyncIterator]();
    let ended = false;
    try {
      for (;;) {
        const r = await unlessAborted(() => it.next(), signal);
        if (signal.aborted) throw signal.reason; // aborted as the read returned
        if (r.done) {
          ended = true;
          return;
        }
        yield r.value;
      }
    } catch (e) {
      // The stream's own failure ended it; the abort left it to be ended below, and is what happened.
      if (!signal.aborted) ended = true;
      throw signal.aborted ? signal.reason : e;
    } finally {
      signal.removeEventListener("abort", stop);
      // Left early (the caller stopped reading, or the abort): the stream is ended as for await would end it;
      // after an abort without waiting, since a pending read may never return.
      if (!ended) {
        const closing = it.return?.();
        if (signal.aborted) closing?.catch(() => undefined);
        else await closing;
      }
    }
  }
  const native = (data as Partial<Pullable>).reader;
  return Object.assign(parts(), { cancel: stop }, native ? { reader: () => readerUntilAborted(native.call(data), signal, stop) } : {});
}

/**
 * A promise that resolves with `value` when `signal` aborts (after `first`
 * runs), to race a wait with; dispose() removes its listener.
 */
function whenAborted<T>(signal: AbortSignal, value: T, first?: () => void): { promise: Promise<T>; dispose(): void } {
  let listener = () => undefined as void;
  const promise = new Promise<T>((resolve) => {
    listener = () => {
      first?.();
      resolve(value);
    };
  });
  signal.addEventListener("abort", listener, { once: true });
  return { promise, dispose: () => signal.removeEventListener("abort", listener) };
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
        // A device is read with seeks as a file is (a resume from an image written raw to a stick).
        const st = statSync(path);
        if (!st.isFile() && !st.isBlockDevice() && offset > 0) throw new Error("not a regular file or block device");
      } catch (e) {
        throw new ZbError("IO", `cannot read image ${path}: ${(e as { code?: string }).code === "ENOENT" ? "no such file" : (e as Error).message}`);
      }
      return createReadStream(path, { start: offset, highWaterMark: READ_SIZE });
    },
    direct() {
      let fd: number;
      let device: boolean;
      try {
        fd = openSync(path, "r");
        device = fstatSync(fd).isBlockDevice();
      } catch (e) {
        throw ioError(`read image ${path}`, e);
      }
      let position = 0;
      let open = true;
      return {
        get position() {
          return position;
        },
        device,
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

/**
 * Is `path` a terminal (`/dev/stdin` or `/dev/fd/0` while stdin is one,
 * `/dev/tty`, a serial console)? Refused as `-` on a terminal is
 * (stdinMissing). Asked of the device itself: opened O_NONBLOCK (which never
 * waits for a carrier or a writer) and O_NOCTTY (which never makes it zb's
 * controlling terminal). Only character devices are opened: a FIFO's open
 * would count as its reader arriving.
 */
function isTerminal(path: string): boolean {
  let fd: number;
  try {
    if (!statSync(path).isCharacterDevice()) return false;
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch {
    return false; // left to the read to report
  }
  try {
    return isatty(fd);
  } finally {
    closeSync(fd);
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
      if (isTerminal(path)) throw new ZbError("IO", `cannot read image ${path}: it is a terminal (pipe the image in, or give a file or URL)`, { hint: STDIN_HINT });
      // No start: a start makes every read positioned (pread), which a pipe refuses with ESPIPE.
      return eitherWay(
        () => createReadStream(path, { highWaterMark: READ_SIZE }),
        () => pipeReader({ path }, `image ${path}`, (e) => ioError(`read image ${path}`, e)),
      );
    },
  };
}

/**
 * Standard input, read once from its start.
 * @returns a source whose open() throws {ZbError} IO when stdin is closed or /dev/null
 *   (there is no image to read) or a terminal (no one types an image), and whose reads fail
 *   with IO when stdin is not open for reading
 */
export function stdinSource(): ImageSource {
  const file = stdinFile();
  if (file !== null) return { ...fileSource(file), name: "stdin" };
  let used = false;
  return {
    name: "stdin",
    seekable: false,
    async open(offset) {
      if (offset !== 0 || used) throw new ZbError("IO", "cannot read the image from stdin twice or from an offset");
      used = true;
      const why = stdinMissing();
      if (why) throw new ZbError("IO", `cannot read the image from stdin: ${why}`, { hint: STDIN_HINT });
      // A pipe is read with read(2) into the install's own buffers (reader()), or as process.stdin.
      // cancel(): the reader stopped early, or was stopped (untilAborted) while stdin had nothing to give.
      return eitherWay(
        () => Object.assign(readStdin(), { destroy: () => void process.stdin.destroy() }),
        () => pipeReader({ fd: 0 }, "the image from stdin", stdinError),
      );
    },
  };
}

const STDIN_HINT = "send the image to stdin (zb image … - < IMAGE.zbi, or through a pipe), or give its path or URL instead of -";

/**
 * Why stdin cannot carry an image, or null. A descriptor 0 closed when zb
 * started (`<&-`) is opened on /dev/null by the runtime, so the two look the
 * same, and neither has an image to give: said so, rather than reporting an
 * empty archive (IMG_FORMAT). A terminal is refused at once too, as zstd,
 * gzip and tar refuse to read compressed data from one: `zb image verify -`
 * typed without a pipe would otherwise wait silently for bytes no one types.
 */
function stdinMissing(): string | null {
  try {
    fstatSync(0);
  } catch {
    return "it is closed";
  }
  if (isNullDevice(0)) return "it is closed or /dev/null, so there is no image to read";
  return isatty(0) ? "it is a terminal (pipe the image in, or give a file or URL)" : null;
}

/**
 * Descriptor 0 as a path to open again, when it is a regular file or a block
 * device open for reading at its start (`zb … - < IMAGE`): read as that file
 * is, with direct reads and seeks (a resume), instead of as a stream. Null
 * for anything else, and for a file whose offset is not 0 (the image starts
 * where the offset is; read as a stream from there) or that is open for
 * writing only (reported by the read, stdinError).
 */
function stdinFile(): string | null {
  try {
    const st = fstatSync(0);
    if (!st.isFile() && !st.isBlockDevice()) return null;
    const info = readFileSync("/proc/self/fdinfo/0", "latin1");
    const pos = /^pos:\s+(\d+)$/m.exec(info)?.[1];
    const flags = /^flags:\s+([0-7]+)$/m.exec(info)?.[1];
    if (pos !== "0" || flags === undefined || (parseInt(flags, 8) & 3) === constants.O_WRONLY) return null;
    // Opening it again checks the file's own permissions: a file a more privileged parent opened
    // for zb (runuser … < /root/img.zbi, systemd's StandardInput=file: with User=) may refuse zb
    // by path though fd 0 reads. Then it is read as a stream, as a pipe is.
    closeSync(openSync("/proc/self/fd/0", "r"));
    return "/proc/self/fd/0";
  } catch {
    return null;
  }
}

/** A read error of stdin, with "opened for writing only" (`0>FILE`, EBADF) said in words. */
function stdinError(e: unknown): ZbError {
  if ((e as { code?: string }).code === "EBADF") return new ZbError("IO", "cannot read the image from stdin: it is not open for reading", { hint: STDIN_HINT });
  return ioError("read the image from stdin", e);
}

/** process.stdin, its errors as stdinError says them. */
async function* readStdin(): AsyncGenerator<Uint8Array> {
  try {
    yield* process.stdin;
  } catch (e) {
    if ((e as { code?: string }).code === "EBADF") throw stdinError(e);
    throw e;
  }
}
