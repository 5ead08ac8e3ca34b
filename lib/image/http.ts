/**
 * The HTTP(S) image source: idle limits, redirects checked hop by hop,
 * `Range` for resumes, and reconnection after a body breaks off
 * (docs/image-format.md, "URL sources").
 */
import { describeErrno, ZbError } from "../errors.ts";
import type { ImageSource } from "./source.ts";

/** How long an HTTP server may send nothing (headers or body) before the download fails. */
export const DEFAULT_IDLE_SECONDS = 60;
/**
 * The slowest body that is not a stall, in bytes per second, averaged over
 * the idle limit's span (curl's --speed-limit over --speed-time): a server
 * that trickles a byte now and then never trips the idle timer.
 */
export const DEFAULT_MIN_SPEED = 1024;

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

/** Options of a URL source. */
export interface HttpOptions {
  /** How long the server may send nothing (headers or body) before the download fails. */
  idleSeconds?: number;
  /**
   * Fewer body bytes per second than this, over `idleSeconds` of waiting for
   * them, is a stall too (default DEFAULT_MIN_SPEED; 0: no limit).
   */
  minSpeed?: number;
  /** Reconnections after the body broke off, before the download fails (default 0). */
  retries?: number;
  /** Told before each reconnection's wait (a warning, a progress event). */
  onRetry?: (r: RetryEvent) => void;
  /** The wait before reconnection `attempt` (1, 2, …), in ms (default: `retryDelayMs`). */
  delayMs?: (attempt: number) => number;
}

/** A body that broke off and is about to be asked for again from `at`. */
export interface RetryEvent {
  type: "retry";
  /** The displayed URL (no credentials, no query). */
  url: string;
  /** Image bytes received before the break; the next request asks from here on. */
  at: number;
  attempt: number;
  of: number;
  waitS: number;
  why: string;
}

/** The default of `zb image … --retries`: a flaky link survives, a dead server fails within a minute. */
export const DEFAULT_RETRIES = 5;
/** Data received after a reconnection that counts as progress again: the attempts start over. */
const PROGRESS_RESETS_ATTEMPTS = 1 << 20;

/** 1, 2, 4, 8, 16, then 30 s: a server restarting gets time, a dead one costs ~30 s with 5 retries. */
export function retryDelayMs(attempt: number): number {
  return Math.min(2 ** (attempt - 1), 30) * 1000;
}

/**
 * An HTTP(S) source. A server that stops sending (a stalled connection, a
 * proxy that holds it open) fails the download after `idleSeconds` without a
 * byte, instead of after the runtime's own limit of several minutes; time
 * the install spends on the bytes it has does not count. A body that breaks
 * off (a reset, a stall, a connection closed before the length the server
 * announced) is asked for again from where it stopped, up to `retries`
 * times, with `If-Range` so that an image replaced on the server meanwhile
 * is an error instead of a splice (the chunk hashes would catch that too,
 * later and less clearly).
 */
export function httpSource(url: string, opts: HttpOptions = {}): ImageSource {
  const shown = displayUrl(url);
  if (!URL.canParse(url)) throw new ZbError("USAGE", `cannot download ${shown}: it is not a valid URL`);
  // Timers hold at most 2^31 - 1 ms (~24.8 days); a larger value would fire at once.
  const idleMs = Math.min((opts.idleSeconds ?? DEFAULT_IDLE_SECONDS) * 1000, MAX_TIMER_MS);
  const stalled = () => transient(new ZbError("IO", `cannot download ${shown}: the server sent nothing for ${Math.round(idleMs / 1000)} s`));
  const minSpeed = opts.minSpeed ?? DEFAULT_MIN_SPEED;
  const slow: Slow = {
    windowMs: idleMs,
    minBytes: Math.ceil((minSpeed * idleMs) / 1000),
    error: (got) => transient(new ZbError("IO", `cannot download ${shown}: the server sent ${got} bytes in ${Math.round(idleMs / 1000)} s, slower than ${minSpeed} bytes/s`)),
  };
  const request = async (offset: number, ifRange: string | null, reconnect: boolean, abort = new AbortController()): Promise<Opened> => {
    const res = await follow(url, shown, offset, ifRange, abort, idleMs, stalled);
    let end: number | null;
    try {
      end = checkResponse(res, shown, offset, ifRange, reconnect);
    } catch (e) {
      abort.abort(); // the body is not wanted: close the connection now
      throw e;
    }
    return { res, abort, end };
  };
  /**
   * The image as the source's first response described it: the later opens
   * of a resume (the payload's header, then its missing chunks) ask with
   * If-Range and compare the length, so an image replaced on the server in
   * between is "changed", not a chunk that fails its hash.
   */
  let seen: { ifRange: string | null; total: number | null } | null = null;
  return {
    name: shown,
    seekable: true,
    async open(offset) {
      const first = await request(offset, seen?.ifRange ?? null, false);
      const ifRange = seen?.ifRange ?? validator(first.res);
      const total = totalLength(first.res, offset);
      if (seen !== null && seen.total !== null && total !== null && total !== seen.total) {
        first.abort.abort();
        throw new ZbError("IO", `cannot resume ${shown} at byte ${offset}: the image changed on the server since the download began (${seen.total} bytes then, ${total} now)`);
      }
      seen ??= { ifRange, total };
      let current = first;
      let closed = false;
      let wake = () => {};
      /** A reconnection's request in flight: cancel() ends it too, not only the dead connection. */
      let inflight: AbortController | null = null;
      const link: Link = {
        current: () => current,
        closed: () => closed,
        reopen: async (at) => {
          inflight = new AbortController();
          let next: Opened;
          try {
            next = await request(at, ifRange, true, inflight);
          } finally {
            inflight = null;
          }
          if (closed) {
            next.abort.abort();
            return current;
          }
          const length = totalLength(next.res, at);
          if (total !== null && length !== null && length !== total) {
            next.abort.abort();
            throw new ZbError("IO", `cannot resume ${shown} at byte ${at}: the image changed on the server since the download began (${total} bytes then, ${length} now)`);
          }
          return (current = next);
        },
        sleep: (ms) => new Promise<void>((done) => {
          const timer = setTimeout(done, ms);
          wake = () => (clearTimeout(timer), done());
        }),
      };
      const body = resumable(link, offset, total, { shown, idleMs, stalled, slow, retries: opts.retries ?? 0, onRetry: opts.onRetry, delayMs: opts.delayMs ?? retryDelayMs });
      // cancel(): a reader that stops early ends the request at once, even while a read or a
      // retry's wait is pending (a generator's return() would wait for them).
      return Object.assign(body, { cancel: () => ((closed = true), current.abort.abort(), inflight?.abort(), wake()) });
    },
  };
}

interface Opened {
  res: Response;
  abort: AbortController;
  /** A 206 that covers less than the rest: the byte after the last one it carries (the next range starts there). */
  end: number | null;
}

/** The connection a body is read from, replaced on each reconnection. */
interface Link {
  current(): Opened;
  closed(): boolean;
  reopen(at: number): Promise<Opened>;
  sleep(ms: number): Promise<void>;
}

/** Errors a reconnection may cure: the link broke, not the server's answer. */
const TRANSIENT = new WeakSet<ZbError>();
function transient(e: ZbError): ZbError {
  TRANSIENT.add(e);
  return e;
}

/**
 * The image's bytes from `offset` on, across reconnections: after a
 * transient failure it waits, asks for the rest (`Range` from the bytes
 * received so far) and goes on; any other failure, or the last attempt's,
 * is thrown. The attempts start over once a reconnection has brought 1 MiB.
 */
async function* resumable(
  link: Link,
  offset: number,
  total: number | null,
  o: { shown: string; idleMs: number; stalled: () => ZbError; slow: Slow; retries: number; onRetry: ((r: RetryEvent) => void) | undefined; delayMs: (attempt: number) => number },
): AsyncGenerator<Uint8Array> {
  let at = offset;
  let attempt = 0;
  let since = 0;
  /**
   * After a failure: throw it when it is not transient or the attempts are
   * used up, else report the retry and wait. False when the reader stopped
   * (cancel): whatever broke then is its own doing, not the server's.
   */
  const backOff = async (e: unknown): Promise<boolean> => {
    if (link.closed()) return false;
    if (!(e instanceof ZbError) || !TRANSIENT.has(e) || attempt >= o.retries) throw e;
    attempt++;
    const waitMs = o.delayMs(attempt);
    o.onRetry?.({ type: "retry", url: o.shown, at, attempt, of: o.retries, waitS: waitMs / 1000, why: reason(e, o.shown) });
    await link.sleep(waitMs);
    return !link.closed();
  };
  for (;;) {
    try {
      const { res, abort, end } = link.current();
      for await (const part of watched(res.body as unknown as AsyncIterable<Uint8Array>, o.idleMs, abort, o.stalled, o.slow, o.shown)) {
        at += part.length;
        since += part.length;
        if (since >= PROGRESS_RESETS_ATTEMPTS) attempt = 0;
        if (end !== null && at > end) throw new ZbError("IO", `cannot download ${o.shown}: the server sent more than the range it named (bytes up to ${end - 1})`);
        yield part;
      }
      // A valid 206 for part of the rest, delivered whole (RFC 9110 §14.2 lets a server send less
      // than asked): the next range is asked for at once, neither a retry nor a wait.
      if (end !== null && at === end) {
        await link.reopen(at);
        if (link.closed()) return;
        continue;
      }
      // RFC 9112 §6.3: a body shorter than its Content-Length is incomplete, not an end.
      if (total === null || at >= total) return;
      throw transient(new ZbError("IO", `cannot download ${o.shown}: the connection closed at byte ${at} of ${total}`));
    } catch (e) {
      if (!(await backOff(e))) return;
      since = 0;
      // A reconnection that fails the same way counts as the next attempt.
      for (;;) {
        try {
          await link.reopen(at);
          break;
        } catch (again) {
          if (!(await backOff(again))) return;
        }
      }
      if (link.closed()) return;
    }
  }
}

/** A transient error's cause, without the "cannot download URL: " it starts with. */
function reason(e: ZbError, shown: string): string {
  const prefix = `cannot download ${shown}: `;
  return e.message.startsWith(prefix) ? e.message.slice(prefix.length) : e.message;
}

/**
 * What `If-Range` can carry (RFC 9110 §13.1.5): a strong entity tag, else the
 * Last-Modified date; null when the server gives neither (a reconnection then
 * relies on the chunk hashes alone).
 */
function validator(res: Response): string | null {
  const etag = res.headers.get("etag");
  if (etag !== null && !etag.startsWith("W/")) return etag;
  // A date is a strong validator only when it lies at least a second before the response's Date
  // (§13.1.5, §8.8.2.2): a file changed within that second could carry the same date.
  const modified = res.headers.get("last-modified");
  const date = Date.parse(res.headers.get("date") ?? "");
  return modified !== null && Number.isFinite(date) && date - Date.parse(modified) >= 1000 ? modified : null;
}

/** The image's whole length from a response starting at `offset`, when the server says it. */
function totalLength(res: Response, offset: number): number | null {
  const contentRange = res.headers.get("content-range");
  // A partial answer's Content-Length is its range's, not the rest's: only "/length" tells ("/*": unknown).
  if (contentRange !== null) {
    const range = /\/(\d+)\s*$/.exec(contentRange)?.[1];
    return range === undefined ? null : Number(range);
  }
  const length = res.headers.get("content-length");
  return length !== null && /^\d+$/.test(length) ? offset + Number(length) : null;
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
async function follow(url: string, shown: string, offset: number, ifRange: string | null, abort: AbortController, idleMs: number, stalled: () => ZbError): Promise<Response> {
  // identity: a .zbi is compressed already, and a Range must count the bytes zb counts
  // (a server with a gzip-encoded copy would apply it to the encoded bytes).
  const headers: Record<string, string> = { "Accept-Encoding": "identity" };
  if (offset > 0) headers.Range = `bytes=${offset}-`;
  if (offset > 0 && ifRange !== null) headers["If-Range"] = ifRange;
  let current = url;
  for (let hop = 0; ; hop++) {
    let res: Response;
    const timer = setTimeout(() => abort.abort(), idleMs);
    try {
      res = await fetch(current, { headers, signal: abort.signal, redirect: "manual" });
    } catch (e) {
      throw abort.signal.aborted ? stalled() : transient(new ZbError("IO", `cannot download ${shown}: ${fetchReason(e)}`));
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

/** Answers of a proxy or a server that is restarting: a reconnection may get through. */
const TRANSIENT_STATUS = [502, 503, 504];

/**
 * `ifRange`: this is a reconnection, and a `200` means the image changed on
 * the server (RFC 9110 §13.1.5: the whole new representation instead of the range).
 * `reconnect`: a reconnection within one download (not a --resume).
 * @returns for a 206 that ends before the image does, the byte after its range; else null
 * @throws {ZbError} IO when the response is not the one asked for
 */
function checkResponse(res: Response, shown: string, offset: number, ifRange: string | null, reconnect: boolean): number | null {
  if (TRANSIENT_STATUS.includes(res.status)) throw transient(new ZbError("IO", `cannot download ${shown}: HTTP ${res.status}`));
  let end: number | null = null;
  if (offset > 0) {
    // The whole representation again: with the validator it had, the server ignores Range; with another, the image changed.
    const same = ifRange !== null && (res.headers.get("etag") === ifRange || res.headers.get("last-modified") === ifRange);
    if (res.status === 200 && ifRange !== null && !same) throw new ZbError("IO", `cannot resume ${shown} at byte ${offset}: the image changed on the server since the download began (it no longer matches ${ifRange})`);
    if (res.status === 200 && reconnect) throw new ZbError("IO", `cannot download ${shown}: the connection broke at byte ${offset}, and the server sends the whole image again instead of the rest (it does not serve byte ranges)`);
    if (res.status !== 206) {
      throw new ZbError("IO", `cannot resume ${shown} at byte ${offset}: the server answered ${res.status} instead of 206 Partial Content`, {
        ...(res.status === 200 ? { hint: "the server does not serve byte ranges: install without --resume (from the start), or from a server that does" } : {}),
      });
    }
    // RFC 9110 §14.4: the range sent. A server that starts elsewhere would shift every byte after it,
    // and one that does not say where it starts (§15.3.7: a 206 must) could have done so.
    const range = res.headers.get("content-range");
    if (range === null) throw new ZbError("IO", `cannot resume ${shown} at byte ${offset}: the server's partial answer has no Content-Range`);
    const named = /^bytes (\d+)-(\d+)?\/(\d+|\*)\s*$/.exec(range) ?? /^bytes (\d+)-/.exec(range);
    const start = named?.[1];
    if (start === undefined) throw new ZbError("IO", `cannot resume ${shown} at byte ${offset}: the server's partial answer has a Content-Range that names no range (${JSON.stringify(range.slice(0, 80))})`);
    if (Number(start) !== offset) {
      throw new ZbError("IO", `cannot resume ${shown} at byte ${offset}: the server sent the bytes from ${start} on`);
    }
    // §14.4: "bytes first-last/complete". The image's length against the one known is compared by the caller.
    const last = named?.[2] === undefined ? null : Number(named[2]);
    const length = named?.[3] === undefined || named[3] === "*" ? null : Number(named[3]);
    if (last !== null && (last < offset || (length !== null && last >= length))) {
      throw new ZbError("IO", `cannot resume ${shown} at byte ${offset}: the server's partial answer names an impossible range (${JSON.stringify(range.slice(0, 80))})`);
    }
    // Less than the rest (only a known length tells): the next range follows it.
    if (last !== null && length !== null && last + 1 < length) end = last + 1;
  } else if (res.status !== 200) throw new ZbError("IO", `cannot download ${shown}: HTTP ${res.status}`);
  if (!res.body) throw new ZbError("IO", `cannot download ${shown}: empty response`);
  return end;
}

/** The low-speed limit: fewer than `minBytes` in `windowMs` of waiting for the body is a stall. */
interface Slow {
  windowMs: number;
  /** 0: no limit. */
  minBytes: number;
  error(got: number): ZbError;
}

/**
 * The body's parts, each awaited under the idle timer (started when the next
 * part is asked for) and the low-speed limit: the bytes of each window of
 * `slow.windowMs` spent waiting for parts must come to `slow.minBytes`. Time
 * the reader spends on a part it has does not count in either (a slow
 * target is not a slow server). A reader that stops early (a resume's header
 * check, an image closed before its end) ends the request, so no connection
 * stays open behind it.
 */
async function* watched(body: AsyncIterable<Uint8Array>, idleMs: number, abort: AbortController, stalled: () => ZbError, slow: Slow, shown: string): AsyncGenerator<Uint8Array> {
  const it = body[Symbol.asyncIterator]();
  let finished = false;
  /** The current window: bytes received, and time spent waiting for them. */
  let got = 0;
  let waited = 0;
  try {
    for (;;) {
      const timer = setTimeout(() => abort.abort(), idleMs);
      let since = performance.now();
      let tooSlow: number | null = null;
      let check: ReturnType<typeof setTimeout> | undefined;
      // Checked when the window's waiting time is up, also in the middle of a wait.
      const arm = (ms: number) => {
        check = setTimeout(() => {
          if (got < slow.minBytes) {
            tooSlow = got;
            abort.abort();
            return;
          }
          got = 0;
          waited = 0;
          since = performance.now();
          arm(slow.windowMs);
        }, Math.max(0, ms));
      };
      if (slow.minBytes > 0) arm(slow.windowMs - waited);
      let r: IteratorResult<Uint8Array>;
      try {
        r = await it.next();
      } catch (e) {
        if (!abort.signal.aborted) throw transient(new ZbError("IO", `cannot download ${shown}: ${fetchReason(e)}`));
        throw tooSlow === null || tooSlow === 0 ? stalled() : slow.error(tooSlow);
      } finally {
        clearTimeout(timer);
        clearTimeout(check);
      }
      waited += performance.now() - since;
      if (r.done) {
        finished = true;
        return;
      }
      got += r.value.length;
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
