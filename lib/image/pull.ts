/**
 * Reading a stream into the caller's buffers (lib/image/reader.ts reads a
 * stream's payloads so, straight into the install pipeline's slots): a pipe
 * or FIFO with read(2) on the I/O thread pool, which makes no buffer per
 * read, anything else by copying its parts. What a streamed install holds
 * is then what a file install holds (bench/README.md, P3).
 */
import { close as closeAsync, open as openAsync, read as readAsync } from "node:fs";
import { ZbError } from "../errors.ts";
import type { Cancelable } from "./source.ts";

/**
 * A stream that can also be read straight into the caller's buffers (a pipe
 * read with read(2) on the thread pool): no buffer is made per read, so
 * nothing is left for the garbage collector. Either `reader()` or the
 * iteration is used, never both.
 */
export interface Pullable {
  reader(): StreamReader;
}

/**
 * Sequential reads of a stream into the caller's buffers: a stream's
 * payloads are read with it as a file's are with a DirectReader
 * (reader.ts), without the tar parser and without collecting the parts.
 */
export interface StreamReader {
  /** Bytes consumed so far. */
  readonly position: number;
  /** Fill `buf` completely; @returns the bytes read (fewer only at the end of the stream). @throws {ZbError} IO */
  read(buf: Uint8Array): Promise<number>;
  readonly device?: undefined;
  /** End the stream (a read still pending in the thread pool is left behind). */
  close(): void;
}

/**
 * A wait (a read) raced with `signal`: at the abort, `stop()` ends what it
 * waits for (a stream, a connection) and the wait is given up at once. A
 * wait the abort cannot end (a read(2) pending in the thread pool:
 * destroying its stream does not) is left behind, its late failure handled;
 * none is started once `signal` has aborted. One promise and one listener
 * per wait, the listener removed when the wait ends: a wait raced against
 * one promise pending for a whole stream (Promise.race) would leave a
 * reaction on it per read, each keeping its read's bytes reachable, so
 * memory grew with the image. Shared by untilAborted (source.ts) and
 * readerUntilAborted.
 * @returns what `start()` resolves with; rejects with `signal.reason` once it has aborted, else with `start()`'s own failure
 */
export function unlessAborted<T>(start: () => Promise<T>, signal: AbortSignal, stop: () => void = () => {}): Promise<T> {
  if (signal.aborted) {
    stop();
    return Promise.reject(signal.reason);
  }
  const waiting = start();
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      stop();
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    // Also handles a failure after the abort (a read left behind): the reason was given already.
    waiting.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener("abort", onAbort);
        reject(signal.aborted ? signal.reason : e);
      },
    );
  });
}

/**
 * A stream reader whose reads throw `signal.reason` once it has aborted; a
 * read waiting for bytes that do not come (an idle pipe) is left behind.
 */
export function readerUntilAborted(r: StreamReader, signal: AbortSignal, stop: () => void): StreamReader {
  return {
    get position() {
      return r.position;
    },
    read: (buf) => unlessAborted(() => r.read(buf), signal, stop),
    close: () => r.close(),
  };
}

/**
 * Read `data` into the caller's buffers: natively when it is {@link Pullable}
 * (no buffer per read), else by copying its parts.
 * @returns a reader whose reads throw what the stream throws
 */
export function streamReader(data: AsyncIterable<Uint8Array>): StreamReader {
  const native = (data as Partial<Pullable>).reader;
  if (native) return native.call(data);
  const it = data[Symbol.asyncIterator]();
  let part: Uint8Array | null = null;
  let at = 0;
  let position = 0;
  let ended = false;
  return {
    get position() {
      return position;
    },
    async read(buf) {
      let done = 0;
      while (done < buf.length && !ended) {
        if (part === null || at === part.length) {
          const r = await it.next();
          if (r.done) {
            ended = true;
            break;
          }
          [part, at] = [r.value, 0];
          continue;
        }
        const n = Math.min(buf.length - done, part.length - at);
        buf.set(part.subarray(at, at + n), done);
        [done, at] = [done + n, at + n];
      }
      position += done;
      return done;
    },
    close() {
      part = null;
      if (ended) return;
      ended = true;
      (data as Cancelable).cancel?.(); // an HTTP body not read to its end: its connection goes now
      it.return?.(undefined)?.catch(() => undefined);
    },
  };
}

/** How long a read of a non-blocking pipe that had nothing waits before it asks again. */
const EAGAIN_WAIT_MS = 2;

/**
 * A pipe's descriptor (`fd`, or `path` opened on the thread pool: a FIFO's
 * open waits for its writer) read with read(2) on the thread pool straight
 * into the caller's buffer. Reads wait there, not on this thread, so a
 * stalled pipe leaves the event loop free (a signal stops the command,
 * readerUntilAborted). A descriptor it opened is closed once no read is
 * pending on it (its number must not be reused under one).
 */
export function pipeReader(from: { fd: number } | { path: string }, what: string, mapError: (e: unknown) => ZbError): StreamReader {
  let fd: Promise<number> | null = null;
  let position = 0;
  let pending = 0;
  let closed = false;
  const release = () => {
    if (!closed || pending > 0 || fd === null || "fd" in from) return;
    fd.then((n) => closeAsync(n, () => undefined), () => undefined);
    fd = null;
  };
  const open = (): Promise<number> => {
    if ("fd" in from) return Promise.resolve(from.fd);
    const path = from.path;
    return new Promise((resolve, reject) => openAsync(path, "r", (e, n) => (e ? reject(e) : resolve(n))));
  };
  const readAsyncOnce = (f: number, buf: Uint8Array, off: number) =>
    new Promise<number>((resolve, reject) => readAsync(f, buf, off, buf.length - off, null, (e, n) => (e ? reject(e) : resolve(n))));
  // A pipe the parent made non-blocking (O_NONBLOCK is shared with it: Node's child_process, some
  // supervisors) answers EAGAIN until its writer has written: waited for in short sleeps on the
  // event loop (a signal still stops the command), never retried at once, never an error.
  const readOnce = async (f: number, buf: Uint8Array, off: number): Promise<number> => {
    for (;;) {
      try {
        return await readAsyncOnce(f, buf, off);
      } catch (e) {
        if ((e as { code?: string }).code !== "EAGAIN" || closed) throw e;
        await Bun.sleep(EAGAIN_WAIT_MS);
      }
    }
  };
  return {
    get position() {
      return position;
    },
    async read(buf) {
      if (closed) throw new ZbError("IO", `cannot read ${what}: it was closed`);
      pending++;
      let done = 0;
      try {
        fd ??= open();
        const f = await fd;
        while (done < buf.length) {
          const n = await readOnce(f, buf, done);
          if (n === 0) break;
          done += n;
        }
      } catch (e) {
        throw mapError(e);
      } finally {
        pending--;
        release();
      }
      position += done;
      return done;
    },
    close() {
      closed = true;
      release();
    },
  };
}

/**
 * A stream made when it is first iterated, or read with `reader()` instead:
 * whichever the caller takes, the other is never made (a FIFO opened twice
 * would split its bytes between two readers).
 */
export function eitherWay(iterate: () => AsyncIterable<Uint8Array> & { destroy?(): void }, reader: () => StreamReader): AsyncIterable<Uint8Array> & Pullable & Cancelable {
  let stream: (AsyncIterable<Uint8Array> & { destroy?(): void }) | null = null;
  let pulled: StreamReader | null = null;
  return {
    [Symbol.asyncIterator]() {
      stream ??= iterate();
      return stream[Symbol.asyncIterator]();
    },
    reader: () => (pulled = reader()),
    cancel() {
      stream?.destroy?.();
      pulled?.close();
    },
  };
}
