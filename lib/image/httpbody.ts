/**
 * The body of a URL source's download (lib/image/http.ts): read under the
 * idle and low-speed limits, and carried on across short ranges and
 * reconnections.
 */
import { describeErrno, ZbError } from "../errors.ts";
import type { RetryEvent } from "./http.ts";
import { withoutSecrets } from "./urlshown.ts";

/** Data received after a reconnection that counts as progress again: the attempts start over. */
const PROGRESS_RESETS_ATTEMPTS = 1 << 20;

export interface Opened {
  res: Response;
  abort: AbortController;
  /** A 206 that covers less than the rest: the byte after the last one it carries (the next range starts there). */
  end: number | null;
  /** The URL as messages about this answer show it: with "(redirected to …)" when it came from a redirect's target. */
  shown: string;
}

/** The connection a body is read from, replaced on each reconnection. */
export interface Link {
  current(): Opened;
  closed(): boolean;
  /** The image's length as the answers so far said it (a later one may say it first). */
  total(): number | null;
  /** Ask for the bytes from `at` on: after a break (`retry`) or a short 206 (`next`). */
  reopen(at: number, asked: "retry" | "next"): Promise<Opened>;
  sleep(ms: number): Promise<void>;
}

/** Errors a reconnection may cure: the link broke, not the server's answer. */
const TRANSIENT = new WeakSet<ZbError>();
export function transient(e: ZbError): ZbError {
  TRANSIENT.add(e);
  return e;
}

/** Is `e` one a reconnection may cure ({@link transient})? */
export function isTransient(e: unknown): e is ZbError {
  return e instanceof ZbError && TRANSIENT.has(e);
}

/**
 * The image's bytes from `offset` on, across reconnections: after a
 * transient failure it waits, asks for the rest (`Range` from the bytes
 * received so far) and goes on; any other failure, or the last attempt's,
 * is thrown. The attempts start over once a reconnection has brought 1 MiB.
 */
export async function* resumable(
  link: Link,
  offset: number,
  o: { shown: string; idleMs: number; stalled: (name: string) => ZbError; slow: Slow; retries: number; onRetry: ((r: RetryEvent) => void) | undefined; delayMs: (attempt: number) => number },
): AsyncGenerator<Uint8Array> {
  let at = offset;
  let attempt = 0;
  let since = 0;
  const window: SpeedWindow = { got: 0, waited: 0 };
  /** The next request, from `at`: the wait for its answer counts in the low-speed window. */
  const reopen = async (why: "retry" | "next") => {
    const asked = performance.now();
    try {
      await link.reopen(at, why);
    } finally {
      window.waited += performance.now() - asked;
    }
  };
  /**
   * After a failure: throw it when it is not transient or the attempts are
   * used up, else report the retry and wait. False when the reader stopped
   * (cancel): whatever broke then is its own doing, not the server's.
   */
  const backOff = async (e: unknown): Promise<boolean> => {
    if (link.closed()) return false;
    if (!isTransient(e) || attempt >= o.retries) throw e;
    attempt++;
    const waitMs = o.delayMs(attempt);
    o.onRetry?.({ type: "retry", url: o.shown, at, attempt, of: o.retries, waitS: waitMs / 1000, why: reason(e, o.shown) });
    await link.sleep(waitMs);
    return !link.closed();
  };
  for (;;) {
    try {
      const { res, abort, end, shown } = link.current();
      for await (const part of watched(res.body as unknown as AsyncIterable<Uint8Array>, o.idleMs, abort, o.stalled, o.slow, window, shown)) {
        at += part.length;
        since += part.length;
        if (since >= PROGRESS_RESETS_ATTEMPTS) attempt = 0;
        if (end !== null && at > end) throw new ZbError("IO", `cannot download ${shown}: the server sent more than the range it named (bytes up to ${end - 1})`);
        yield part;
      }
      // A valid 206 for part of the rest, delivered whole (RFC 9110 §14.2 lets a server send less
      // than asked): the next range is asked for at once, neither a retry nor a wait.
      if (end !== null && at === end) {
        await reopen("next");
        if (link.closed()) return;
        continue;
      }
      // RFC 9112 §6.3: a body shorter than its Content-Length is incomplete, not an end.
      const total = link.total();
      if (total === null || at >= total) return;
      throw transient(new ZbError("IO", `cannot download ${shown}: the connection closed at byte ${at} of ${total}`));
    } catch (e) {
      if (!(await backOff(e))) return;
      since = 0;
      // A reconnection that fails the same way counts as the next attempt.
      for (;;) {
        try {
          await reopen("retry");
          break;
        } catch (again) {
          if (!(await backOff(again))) return;
        }
      }
      if (link.closed()) return;
    }
  }
}

/**
 * A transient error's cause, without the "cannot download URL: " it starts
 * with; a redirect's target it names is kept, after the cause.
 */
export function reason(e: ZbError, shown: string): string {
  const prefix = `cannot download ${shown}`;
  if (!e.message.startsWith(prefix)) return e.message;
  const rest = e.message.slice(prefix.length);
  const via = /^ \(redirected to (.*?)\): /s.exec(rest);
  return via ? `${rest.slice(via[0].length)}; redirected to ${via[1]}` : rest.replace(/^: /, "");
}

/** The low-speed limit: fewer than `minBytes` in `windowMs` of waiting for the body is a stall. */
export interface Slow {
  windowMs: number;
  /** 0: no limit. */
  minBytes: number;
  /** `name`: the URL as the message shows it. */
  error(got: number, name: string): ZbError;
}

/**
 * The low-speed limit's current window: body bytes received, and time spent
 * waiting for the server (for parts, and for the headers of the requests
 * after the first). One per download, so that neither a short 206 nor a
 * reconnection starts it over.
 */
export interface SpeedWindow {
  got: number;
  waited: number;
}

/**
 * The body's parts, each awaited under the idle timer (started when the next
 * part is asked for) and the low-speed limit: the bytes of each window of
 * `slow.windowMs` spent waiting must come to `slow.minBytes`. `w` is the
 * download's window, carried on from the answers before this one. Time
 * the reader spends on a part it has does not count in either (a slow
 * target is not a slow server). A reader that stops early (a resume's header
 * check, an image closed before its end) ends the request, so no connection
 * stays open behind it.
 */
async function* watched(body: AsyncIterable<Uint8Array>, idleMs: number, abort: AbortController, stalled: (name: string) => ZbError, slow: Slow, w: SpeedWindow, shown: string): AsyncGenerator<Uint8Array> {
  const it = body[Symbol.asyncIterator]();
  let finished = false;
  /** A window that ended too slow: the next one (a retry's) starts empty. */
  const fail = (got: number): ZbError => {
    w.got = 0;
    w.waited = 0;
    return got === 0 ? stalled(shown) : slow.error(got, shown);
  };
  try {
    for (;;) {
      // A window already over (the wait for this answer's headers ended it) is judged before the next wait.
      if (slow.minBytes > 0 && w.waited >= slow.windowMs) {
        if (w.got < slow.minBytes) throw fail(w.got);
        w.got = 0;
        w.waited = 0;
      }
      const timer = setTimeout(() => abort.abort(), idleMs);
      let since = performance.now();
      let tooSlow: number | null = null;
      let check: ReturnType<typeof setTimeout> | undefined;
      // Checked when the window's waiting time is up, also in the middle of a wait.
      const arm = (ms: number) => {
        check = setTimeout(() => {
          if (w.got < slow.minBytes) {
            tooSlow = w.got;
            abort.abort();
            return;
          }
          w.got = 0;
          w.waited = 0;
          since = performance.now();
          arm(slow.windowMs);
        }, Math.max(0, ms));
      };
      if (slow.minBytes > 0) arm(slow.windowMs - w.waited);
      let r: IteratorResult<Uint8Array>;
      try {
        r = await it.next();
      } catch (e) {
        if (!abort.signal.aborted) throw fetchFailure(e, shown);
        throw tooSlow === null ? stalled(shown) : fail(tooSlow);
      } finally {
        clearTimeout(timer);
        clearTimeout(check);
      }
      w.waited += performance.now() - since;
      if (r.done) {
        finished = true;
        return;
      }
      w.got += r.value.length;
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
  // The runtime's own text for these is `<Code> fetching "<the whole URL>"`: the query (a
  // pre-signed token) and, after a redirect, the target's own. Said in words instead.
  Malformed_HTTP_Response: "the server's answer is not valid HTTP",
  InvalidHTTPResponse: "the server's answer is not valid HTTP",
  InvalidContentLength: "the server's Content-Length is not a valid length",
  ZlibError: "the server's gzip (or deflate) body is corrupt",
  BrotliDecompressionError: "the server's br (Brotli) body is corrupt",
  ZstdDecompressionError: "the server's zstd body is corrupt",
};

/**
 * Fetch failures a reconnection would meet again: an answer the runtime
 * cannot parse or decode, a TLS handshake or certificate refused. Retried,
 * each would cost the whole back-off (~31 s with --retries 5) for nothing.
 */
const LASTING = new Set(["Malformed_HTTP_Response", "InvalidHTTPResponse", "InvalidContentLength", "ZlibError", "BrotliDecompressionError", "ZstdDecompressionError", "EPROTO"]);

/**
 * A failed fetch (its request or its body) as the error zb reports: IO,
 * transient (retried) unless it is one a reconnection would meet again.
 * @param name the URL as the message shows it
 */
export function fetchFailure(e: unknown, name: string, o?: { hint: string }): ZbError {
  const code = String((e as { code?: unknown } | undefined)?.code ?? "");
  const err = new ZbError("IO", `cannot download ${name}: ${fetchReason(e)}`, o);
  return LASTING.has(code) || /CERT|^ERR_TLS_|^ERR_SSL_/.test(code) ? err : transient(err);
}

/**
 * A fetch error in a few words, without the runtime's advice on fetch()
 * options, and without the URL's secrets: any other code's text has its
 * ` fetching "URL"` dropped and any URL left shown as displayUrl shows it.
 */
export function fetchReason(e: unknown): string {
  const text = describeErrno(e, FETCH_CODES).replace(/\.?\s*For more information, pass `verbose: true`.*$/s, "");
  return withoutSecrets(text.replace(/ fetching "[^"]*"/g, ""));
}
