/**
 * What a URL source's responses say about the bytes they carry (RFC 9110):
 * the status and `Content-Range` checked against the request, the image's
 * length, and the validator a later request sends in `If-Range`.
 */
import { ZbError } from "../errors.ts";
import { transient } from "./httpbody.ts";

/**
 * What `If-Range` can carry (RFC 9110 §13.1.5): a strong entity tag, else the
 * Last-Modified date; null when the server gives neither (a reconnection then
 * relies on the chunk hashes alone).
 */
export function validator(res: Response): string | null {
  const etag = res.headers.get("etag");
  if (etag !== null && !etag.startsWith("W/")) return etag;
  // A date is a strong validator only when it lies at least a second before the response's Date
  // (§13.1.5, §8.8.2.2): a file changed within that second could carry the same date.
  const modified = res.headers.get("last-modified");
  const date = Date.parse(res.headers.get("date") ?? "");
  return modified !== null && Number.isFinite(date) && date - Date.parse(modified) >= 1000 ? modified : null;
}

/** The image's whole length from a response starting at `offset`, when the server says it. */
export function totalLength(res: Response, offset: number): number | null {
  const contentRange = res.headers.get("content-range");
  // A partial answer's Content-Length is its range's, not the rest's: only "/length" tells ("/*": unknown).
  if (contentRange !== null) {
    const range = /\/(\d+)\s*$/.exec(contentRange)?.[1];
    return range === undefined ? null : Number(range);
  }
  const length = res.headers.get("content-length");
  return length !== null && /^\d+$/.test(length) ? offset + Number(length) : null;
}

/** Answers of a proxy or a server that is restarting: a reconnection may get through. */
const TRANSIENT_STATUS = [502, 503, 504];

/**
 * Why a request is made: the first of an open() (`open`: from byte 0, or
 * a --resume's offset), a reconnection after the body broke off (`retry`),
 * or the range after a short 206 (`next`).
 */
export type Asked = "open" | "retry" | "next";

/**
 * `ifRange`: this is a later request of the source, and a `200` with another
 * validator means the image changed on the server (RFC 9110 §13.1.5: the
 * whole new representation instead of the range). `total`: the image's
 * length when an earlier answer said it, so that a 206 of unknown length
 * (`bytes N-M/*`) that ends before it is a short range too.
 * @returns for a 206 that ends before the image does, the byte after its range; else null
 * @throws {ZbError} IO when the response is not the one asked for
 */
export function checkResponse(res: Response, shown: string, offset: number, ifRange: string | null, asked: Asked, total: number | null): number | null {
  if (TRANSIENT_STATUS.includes(res.status)) throw transient(new ZbError("IO", `cannot download ${shown}: HTTP ${res.status}`));
  let end: number | null = null;
  if (offset > 0) {
    // The whole representation again: with the validator it had, the server ignores Range; with another, the image changed.
    const same = ifRange !== null && (res.headers.get("etag") === ifRange || res.headers.get("last-modified") === ifRange);
    if (res.status === 200 && ifRange !== null && !same) throw new ZbError("IO", `cannot resume ${shown} at byte ${offset}: the image changed on the server since the download began (it no longer matches ${ifRange})`);
    if (res.status === 200 && asked === "retry") throw new ZbError("IO", `cannot download ${shown}: the connection broke at byte ${offset}, and the server sends the whole image again instead of the rest (it does not serve byte ranges)`);
    if (res.status === 200 && asked === "next") throw new ZbError("IO", `cannot download ${shown}: the server answered the request for the next range (from byte ${offset}) with the whole image: it stopped serving byte ranges`);
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
    // "/*": the length is not said; the one an earlier answer said (the caller compares it with any said here) stands in.
    const length = named?.[3] === undefined || named[3] === "*" ? total : Number(named[3]);
    if (last !== null && (last < offset || (length !== null && last >= length))) {
      throw new ZbError("IO", `cannot resume ${shown} at byte ${offset}: the server's partial answer names an impossible range (${JSON.stringify(range.slice(0, 80))})`);
    }
    // Less than the rest (only a known length tells): the next range follows it.
    if (last !== null && length !== null && last + 1 < length) end = last + 1;
  } else if (res.status !== 200) throw new ZbError("IO", `cannot download ${shown}: HTTP ${res.status}`);
  if (!res.body) throw new ZbError("IO", `cannot download ${shown}: empty response`);
  return end;
}
