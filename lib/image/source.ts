/**
 * Where an image comes from: a file, stdin, or an HTTP(S) URL. Files and
 * URLs can start at an offset (a file seeks, HTTP asks for `Range`), which
 * is how an interrupted install resumes without reading the image again.
 */
import { closeSync, createReadStream, openSync, readSync, statSync } from "node:fs";
import { describeErrno, ZbError, ioError } from "../errors.ts";

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

/** How long an HTTP server may send nothing (headers or body) before the download fails. */
export const DEFAULT_IDLE_SECONDS = 60;

/** @throws {ZbError} USAGE for a URL that does not parse */
export function sourceFor(spec: string, opts: { idleSeconds?: number } = {}): ImageSource {
  if (spec === "-") return stdinSource();
  if (/^https?:\/\//i.test(spec)) return httpSource(spec, opts);
  return fileSource(spec);
}

/**
 * A URL as zb shows it (messages, the journal, JSON output): without
 * `user:password@` and without the query, where pre-signed URLs carry their
 * tokens. The request itself uses the whole URL.
 */
export function displayUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return url.replace(/\/\/[^/?#]*@/, "//").replace(/[?#].*$/s, "");
  }
  const query = u.search !== "" ? "?…" : "";
  u.username = "";
  u.password = "";
  u.search = "";
  u.hash = "";
  return u.toString() + query;
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
  const shown = displayUrl(url);
  if (!URL.canParse(url)) throw new ZbError("USAGE", `cannot download ${shown}: it is not a valid URL`);
  // Timers hold at most 2^31 - 1 ms (~24.8 days); a larger value would fire at once.
  const idleMs = Math.min((opts.idleSeconds ?? DEFAULT_IDLE_SECONDS) * 1000, MAX_TIMER_MS);
  const stalled = () => new ZbError("IO", `cannot download ${shown}: the server sent nothing for ${Math.round(idleMs / 1000)} s`);
  return {
    name: shown,
    seekable: true,
    async open(offset) {
      const abort = new AbortController();
      const res = await follow(url, shown, offset, abort, idleMs, stalled);
      try {
        checkResponse(res, shown, offset);
      } catch (e) {
        abort.abort(); // the body is not wanted: close the connection now
        throw e;
      }
      // cancel(): a reader that stops early ends the request at once, even while a read is pending
      // (a generator's return() would wait for that read).
      return Object.assign(watched(res.body as unknown as AsyncIterable<Uint8Array>, idleMs, abort, stalled, shown), { cancel: () => abort.abort() });
    },
  };
}

/** setTimeout's largest delay. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Redirects followed before giving up (what browsers allow: 20; an update server needs one or two). */
const MAX_REDIRECTS = 10;
const REDIRECTS = [301, 302, 303, 307, 308];

/**
 * GET `url`, following redirects one by one so each target is checked
 * before it is asked for: only http and https, and never from https down to
 * plain http (signatures protect the bytes, not their secrecy, and the
 * request itself may carry a token). Each hop has the idle limit.
 * @throws {ZbError} IO
 */
async function follow(url: string, shown: string, offset: number, abort: AbortController, idleMs: number, stalled: () => ZbError): Promise<Response> {
  // identity: a .zbi is compressed already, and a Range must count the bytes zb counts
  // (a server with a gzip-encoded copy would apply it to the encoded bytes).
  const headers: Record<string, string> = { "Accept-Encoding": "identity", ...(offset > 0 ? { Range: `bytes=${offset}-` } : {}) };
  let current = url;
  for (let hop = 0; ; hop++) {
    let res: Response;
    const timer = setTimeout(() => abort.abort(), idleMs);
    try {
      res = await fetch(current, { headers, signal: abort.signal, redirect: "manual" });
    } catch (e) {
      throw abort.signal.aborted ? stalled() : new ZbError("IO", `cannot download ${shown}: ${fetchReason(e)}`);
    } finally {
      clearTimeout(timer);
    }
    const location = REDIRECTS.includes(res.status) ? res.headers.get("location") : null;
    if (location === null) return res;
    await res.body?.cancel().catch(() => undefined);
    const next = URL.parse(location, current);
    const why =
      next === null ? `it redirected to ${JSON.stringify(location.slice(0, 80))}, which is not a URL`
      : next.protocol !== "http:" && next.protocol !== "https:" ? "the server redirected to a scheme other than http or https"
      : current.toLowerCase().startsWith("https:") && next.protocol === "http:" ? `the server redirected it to plain http (${displayUrl(next.href)})`
      : hop >= MAX_REDIRECTS ? `the server redirected more than ${MAX_REDIRECTS} times`
      : null;
    if (why !== null) throw new ZbError("IO", `cannot download ${shown}: ${why}`);
    current = next!.href;
  }
}

/** @throws {ZbError} IO when the response is not the one asked for */
function checkResponse(res: Response, shown: string, offset: number): void {
  if (offset > 0) {
    if (res.status !== 206) throw new ZbError("IO", `cannot resume ${shown} at byte ${offset}: the server answered ${res.status} instead of 206 Partial Content`);
    // RFC 9110 §14.4: the range sent. A server that starts elsewhere would shift every byte after it.
    const start = /^bytes (\d+)-/.exec(res.headers.get("content-range") ?? "")?.[1];
    if (start !== undefined && Number(start) !== offset) {
      throw new ZbError("IO", `cannot resume ${shown} at byte ${offset}: the server sent the bytes from ${start} on`);
    }
  } else if (res.status !== 200) throw new ZbError("IO", `cannot download ${shown}: HTTP ${res.status}`);
  if (!res.body) throw new ZbError("IO", `cannot download ${shown}: empty response`);
}

/**
 * The body's parts, each awaited under the idle timer (started when the next
 * part is asked for). A reader that stops early (a resume's header check, an
 * image closed before its end) ends the request, so no connection stays open
 * behind it.
 */
async function* watched(body: AsyncIterable<Uint8Array>, idleMs: number, abort: AbortController, stalled: () => ZbError, shown: string): AsyncGenerator<Uint8Array> {
  const it = body[Symbol.asyncIterator]();
  let finished = false;
  try {
    for (;;) {
      const timer = setTimeout(() => abort.abort(), idleMs);
      let r: IteratorResult<Uint8Array>;
      try {
        r = await it.next();
      } catch (e) {
        throw abort.signal.aborted ? stalled() : new ZbError("IO", `cannot download ${shown}: ${fetchReason(e)}`);
      } finally {
        clearTimeout(timer);
      }
      if (r.done) {
        finished = true;
        return;
      }
      yield r.value;
    }
  } finally {
    if (!finished) abort.abort();
  }
}

/** Bun's own codes for fetch failures, beside the errno names lib/errors.ts knows. */
const FETCH_CODES: Record<string, string> = {
  ConnectionRefused: "the connection was refused",
  ConnectionClosed: "the connection was closed early",
  UnsupportedRedirectProtocol: "the server redirected to a scheme other than http or https",
  TooManyRedirects: "the server redirected too many times",
  ERR_TLS_CERT_ALTNAME_INVALID: "the server's TLS certificate is for another host name",
};

/** A fetch error in a few words, without the runtime's advice on fetch() options. */
function fetchReason(e: unknown): string {
  return describeErrno(e, FETCH_CODES).replace(/\s*For more information, pass `verbose: true`.*$/s, "");
}
