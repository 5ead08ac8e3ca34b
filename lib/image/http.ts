/**
 * The HTTP(S) image source: idle limits, redirects checked hop by hop,
 * `Range` for resumes, and reconnection after a body breaks off
 * (docs/image-format.md, "URL sources"). The body's reading and
 * reconnections are in httpbody.ts, what a response's headers say in
 * httprange.ts.
 */
import { ZbError } from "../errors.ts";
import { fetchFailure, isTransient, reason, resumable, transient, type Link, type Opened, type Slow } from "./httpbody.ts";
import { checkResponse, validator, type Asked, type Known } from "./httprange.ts";
import type { ImageSource } from "./source.ts";
import { displayUrl } from "./urlshown.ts";

export { displayUrl };

/** How long an HTTP server may send nothing (headers or body) before the download fails. */
export const DEFAULT_IDLE_SECONDS = 60;
/**
 * The slowest body that is not a stall, in bytes per second, averaged over
 * the idle limit's span (curl's --speed-limit over --speed-time): a server
 * that trickles a byte now and then never trips the idle timer.
 */
export const DEFAULT_MIN_SPEED = 1024;

/** Options of a URL source. */
export interface HttpOptions {
  /** How long the server may send nothing (headers or body) before the download fails. */
  idleSeconds?: number;
  /**
   * Fewer body bytes per second than this, over `idleSeconds` of waiting for
   * them, is a stall too (default DEFAULT_MIN_SPEED; 0: no limit).
   */
  minSpeed?: number;
  /** Requests again after the body broke off, or the first request failed transiently, before the download fails (default 0). */
  retries?: number;
  /** Told before each reconnection's wait (a warning, a progress event). */
  onRetry?: (r: RetryEvent) => void;
  /** The wait before reconnection `attempt` (1, 2, …), in ms (default: `retryDelayMs`). */
  delayMs?: (attempt: number) => number;
}

/** A body that broke off (or a first request that failed: `at` is then the offset opened) and is about to be asked for again from `at`. */
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
 * times, and so is a first request that failed as a link does (a refused or
 * reset connection, a stall before the answer, 502/503/504), with `If-Range` so that an image replaced on the server meanwhile
 * is an error instead of a splice (the chunk hashes would catch that too,
 * later and less clearly).
 */
export function httpSource(url: string, opts: HttpOptions = {}): ImageSource {
  const shown = displayUrl(url);
  if (!URL.canParse(url)) throw new ZbError("USAGE", `cannot download ${shown}: it is not a valid URL`);
  // Timers hold at most 2^31 - 1 ms (~24.8 days); a larger value would fire at once.
  const idleMs = Math.min((opts.idleSeconds ?? DEFAULT_IDLE_SECONDS) * 1000, MAX_TIMER_MS);
  // `name`: the URL as the messages show it, with the redirect's target when a hop led elsewhere (follow).
  const stalled = (name = shown) => transient(new ZbError("IO", `cannot download ${name}: the server sent nothing for ${Math.round(idleMs / 1000)} s`));
  const minSpeed = opts.minSpeed ?? DEFAULT_MIN_SPEED;
  const slow: Slow = {
    windowMs: idleMs,
    minBytes: Math.ceil((minSpeed * idleMs) / 1000),
    error: (got, name) => transient(new ZbError("IO", `cannot download ${name}: the server sent ${got} bytes in ${Math.round(idleMs / 1000)} s, slower than ${minSpeed} bytes/s`)),
  };
  /**
   * What the source's answers said of the image: the first one's validator,
   * which the later requests (a reconnection, the next range, the later opens
   * of a resume) send as If-Range, and its length, said by the first answer
   * that said it (a first 200 sent chunked leaves it to a later 206). Each
   * answer is checked against it (checkResponse), so an image replaced on the
   * server meanwhile is "changed", not a splice or a chunk that fails its hash.
   */
  let known: Known | null = null;
  const request = async (offset: number, asked: Asked, abort = new AbortController()): Promise<Opened> => {
    const { res, name } = await follow(url, shown, offset, known?.ifRange ?? null, abort, idleMs, stalled);
    let checked: { end: number | null; total: number | null };
    try {
      checked = checkResponse(res, name, offset, asked, known ?? { ifRange: null, total: null });
    } catch (e) {
      abort.abort(); // the body is not wanted: close the connection now
      throw e;
    }
    known ??= { ifRange: validator(res), total: null };
    known.total = checked.total;
    return { res, abort, end: checked.end, shown: name };
  };
  const retries = opts.retries ?? 0;
  const delayMs = opts.delayMs ?? retryDelayMs;
  /**
   * The first request of an open(), under the policy a broken body has
   * (resumable): a refused or reset connection, a stall before the answer, a
   * 502/503/504 are asked again after the same waits, each one told
   * (onRetry, `at` the offset asked); any other failure, or the last
   * attempt's, is thrown. `signal` (stoppable's) ends a request or a wait at once.
   */
  const firstAnswer = async (offset: number, signal: AbortSignal | undefined): Promise<Opened> => {
    for (let attempt = 1; ; attempt++) {
      const abort = new AbortController();
      const stop = () => abort.abort();
      signal?.addEventListener("abort", stop, { once: true });
      try {
        return await request(offset, "open", abort);
      } catch (e) {
        if (signal?.aborted || !isTransient(e) || attempt > retries) throw e;
        const waitMs = delayMs(attempt);
        opts.onRetry?.({ type: "retry", url: shown, at: offset, attempt, of: retries, waitS: waitMs / 1000, why: reason(e, shown) });
        await pause(waitMs, signal);
        if (signal?.aborted) throw signal.reason;
      } finally {
        signal?.removeEventListener("abort", stop);
      }
    }
  };
  return {
    name: shown,
    seekable: true,
    async open(offset, signal) {
      let current = await firstAnswer(offset, signal);
      let closed = false;
      let wake = () => {};
      /** A reconnection's request in flight: cancel() ends it too, not only the dead connection. */
      let inflight: AbortController | null = null;
      const link: Link = {
        current: () => current,
        closed: () => closed,
        total: () => known?.total ?? null,
        reopen: async (at, asked) => {
          inflight = new AbortController();
          let next: Opened;
          try {
            next = await request(at, asked, inflight);
          } finally {
            inflight = null;
          }
          if (closed) {
            next.abort.abort();
            return current;
          }
          return (current = next);
        },
        sleep: (ms) => new Promise<void>((done) => {
          const timer = setTimeout(done, ms);
          wake = () => (clearTimeout(timer), done());
        }),
      };
      const body = resumable(link, offset, { shown, idleMs, stalled, slow, retries, onRetry: opts.onRetry, delayMs });
      // cancel(): a reader that stops early ends the request at once, even while a read or a
      // retry's wait is pending (a generator's return() would wait for them).
      return Object.assign(body, { cancel: () => ((closed = true), current.abort.abort(), inflight?.abort(), wake()) });
    },
  };
}

/** A wait of `ms`, ended early when `signal` aborts. */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise<void>((done) => {
    const end = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", end);
      done();
    };
    const timer = setTimeout(end, ms);
    signal?.addEventListener("abort", end, { once: true });
  });
}

/** setTimeout's largest delay. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Redirects followed before giving up (what browsers allow: 20; an update server needs one or two). */
const MAX_REDIRECTS = 10;
const REDIRECTS = [301, 302, 303, 307, 308];

/** The runtime's fetch connects through these when they are set (NO_PROXY and no_proxy list hosts it reaches directly). */
const PROXY_VARS = ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"];

/**
 * For a connection that failed: the proxy variables that are set, so "the
 * connection was refused" is not read as the server's when it was the
 * proxy's (values shown as URLs are, without credentials). None set: no hint.
 * @example proxyHint({ http_proxy: "http://u:p@10.0.0.1:3128" })?.hint // "http_proxy=http://10.0.0.1:3128/ is set: … (NO_PROXY …)"
 */
export function proxyHint(env: Record<string, string | undefined>): { hint: string } | undefined {
  const set = PROXY_VARS.filter((v) => (env[v] ?? "") !== "").map((v) => `${v}=${displayUrl(env[v]!)}`);
  if (set.length === 0) return undefined;
  return { hint: `${set.join(", ")} ${set.length === 1 ? "is" : "are"} set: the connection may have gone to the proxy rather than the server (NO_PROXY lists hosts to reach directly)` };
}

/**
 * GET `url`, following redirects one by one so each target is checked
 * before it is asked for: only http and https, and never from https down to
 * plain http (signatures protect the bytes, not their secrecy, and the
 * request itself may carry a token). Each hop has the idle limit.
 * @returns the last hop's response, and `name`: the URL as messages about it show it (the
 *   first one's, with "(redirected to …)" when a redirect led elsewhere)
 * @throws {ZbError} IO; a failure after a redirect names its target too
 */
async function follow(url: string, shown: string, offset: number, ifRange: string | null, abort: AbortController, idleMs: number, stalled: (name: string) => ZbError): Promise<{ res: Response; name: string }> {
  // identity: a .zbi is compressed already, and a Range must count the bytes zb counts
  // (a server with a gzip-encoded copy would apply it to the encoded bytes).
  const headers: Record<string, string> = { "Accept-Encoding": "identity" };
  if (offset > 0) headers.Range = `bytes=${offset}-`;
  if (offset > 0 && ifRange !== null) headers["If-Range"] = ifRange;
  let current = url;
  for (let hop = 0; ; hop++) {
    // Which server failed matters after a redirect: it may be another host (a CDN, a mirror).
    const name = current === url ? shown : `${shown} (redirected to ${displayUrl(current)})`;
    let res: Response;
    const timer = setTimeout(() => abort.abort(), idleMs);
    try {
      // decompress: false, so an encoded body is refused (checkResponse) without the runtime decoding
      // it first (and printing its own "Decompression error" line for a corrupt one).
      res = await fetch(current, { headers, signal: abort.signal, redirect: "manual", decompress: false });
    } catch (e) {
      throw abort.signal.aborted ? stalled(name) : fetchFailure(e, name, proxyHint(process.env));
    } finally {
      clearTimeout(timer);
    }
    const location = REDIRECTS.includes(res.status) ? res.headers.get("location") : null;
    if (location === null) return { res, name };
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

