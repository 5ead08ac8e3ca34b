/**
 * What a URL source's responses say about the bytes they carry (RFC 9110):
 * the status and `Content-Range` checked against the request, the image's
 * length, the validator a later request sends in `If-Range`, and whether the
 * image is still the one the earlier responses described.
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

/**
 * The image's whole length as a response says it: a 206's Content-Range
 * (`bytes N-M/LENGTH`), a 200's Content-Length; null when it does not say
 * (`/*`, chunked).
 */
function totalLength(res: Response): number | null {
  // A partial answer's Content-Length is its range's, not the rest's: only "/length" tells ("/*": unknown).
  if (res.status === 206) {
    const range = /^bytes \d+-\d*\/(\d+)\s*$/.exec(res.headers.get("content-range") ?? "")?.[1];
    return range === undefined ? null : Number(range);
  }
  const length = res.headers.get("content-length");
  return length !== null && /^\d+$/.test(length) ? Number(length) : null;
}

/**
 * What a source's earlier answers said of the image: the validator its later
 * requests send in `If-Range` (the first answer's), and the image's length
 * (the first answer that said it: a first 200 sent chunked leaves it to the
 * 206 of a reconnection).
 */
export interface Known {
  ifRange: string | null;
  total: number | null;
}

/**
 * Is the image a response carries the one the source's earlier answers
 * described? Not when a 200 answers a range asked with `If-Range` under
 * another validator (RFC 9110 §13.1.5: the whole new representation instead
 * of the range), nor when the answer asked for (a 206, or a 200 from byte 0)
 * carries another strong ETag or Last-Modified than that validator, nor when
 * the response says another length.
 * @returns the image's length as known now: the one `res` says, else the one known before
 * @throws {ZbError} IO "the image changed on the server since the download began"
 */
export function sameImage(res: Response, shown: string, offset: number, known: Known): number | null {
  const changed = (why: string) => new ZbError("IO", `cannot resume ${shown} at byte ${offset}: the image changed on the server since the download began (${why})`);
  // The whole representation again: with the validator it had, the server ignores Range; with another, the image changed.
  if (offset > 0 && res.status === 200) {
    const same = res.headers.get("etag") === known.ifRange || res.headers.get("last-modified") === known.ifRange;
    if (known.ifRange !== null && !same) throw changed(`it no longer matches ${known.ifRange}`);
    return known.total; // refused by the caller: not the range asked for
  }
  // Only an answer that is the one asked for says the image's length (a 200 from byte 0, a 206 for a range).
  const asked = res.status === (offset > 0 ? 206 : 200);
  if (asked && known.ifRange !== null) {
    const other = otherValidator(res, known.ifRange);
    if (other !== null) throw changed(`${other.name} ${known.ifRange} then, ${other.now} now`);
  }
  const said = asked ? totalLength(res) : null;
  if (known.total !== null && said !== null && said !== known.total) throw changed(`${known.total} bytes then, ${said} now`);
  return said ?? known.total;
}

/**
 * The answer's own validator of the kind `ifRange` is, when it differs from
 * it: a strong ETag, or a Last-Modified date when that was the validator
 * (compared as dates). A 206 with another one is a server that ignored
 * If-Range (or a cache in between that did), serving the range of another
 * image: spliced onto the bytes before, every chunk after the break would
 * fail its hash. A weak ETag, or none, says nothing.
 */
function otherValidator(res: Response, ifRange: string): { name: string; now: string } | null {
  const date = ifRange.startsWith('"') ? NaN : Date.parse(ifRange);
  if (Number.isFinite(date)) {
    const modified = res.headers.get("last-modified") ?? "";
    const now = Date.parse(modified); // one that is not a date says nothing
    return Number.isFinite(now) && now !== date ? { name: "Last-Modified", now: modified } : null;
  }
  const etag = res.headers.get("etag");
  return etag !== null && !etag.startsWith("W/") && etag !== ifRange ? { name: "ETag", now: etag } : null;
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
 * `known`: what the source's earlier answers said (none yet: both null), the
 * image checked against it ({@link sameImage}). Its length, when known, also
 * makes a 206 of unknown length (`bytes N-M/*`) that ends before it a short
 * range.
 * @returns `end`: for a 206 that ends before the image does, the byte after its range, else
 *   null; `total`: the image's length as known now (said by this answer or an earlier one)
 * @throws {ZbError} IO when the response is not the one asked for, its body is encoded
 *   (Content-Encoding other than identity), or the image changed
 */
export function checkResponse(res: Response, shown: string, offset: number, asked: Asked, known: Known): { end: number | null; total: number | null } {
  if (TRANSIENT_STATUS.includes(res.status)) throw transient(new ZbError("IO", `cannot download ${shown}: HTTP ${res.status}`));
  const total = sameImage(res, shown, offset, known);
  let end: number | null = null;
  if (offset > 0) {
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
    // §14.4: "bytes first-last/complete", the length checked against the one known above;
    // "/*": the length is not said, the one an earlier answer said stands in.
    const last = named?.[2] === undefined ? null : Number(named[2]);
    if (last !== null && (last < offset || (total !== null && last >= total))) {
      throw new ZbError("IO", `cannot resume ${shown} at byte ${offset}: the server's partial answer names an impossible range (${JSON.stringify(range.slice(0, 80))})`);
    }
    // Less than the rest (only a known length tells): the next range follows it.
    if (last !== null && total !== null && last + 1 < total) end = last + 1;
  } else if (res.status !== 200) throw new ZbError("IO", `cannot download ${shown}: HTTP ${res.status}`);
  // Refused before its body is read: a Range counts the encoded bytes, not the image's (zb asks for
  // identity; the runtime would decode the body, and report a corrupt one only as it reads it).
  const encoding = res.headers.get("content-encoding")?.trim();
  if (encoding !== undefined && encoding !== "" && encoding.toLowerCase() !== "identity") {
    const named = JSON.stringify(encoding.slice(0, 40)).slice(1, -1);
    throw new ZbError("IO", `cannot download ${shown}: the server sent a ${named}-encoded body (Content-Encoding: ${named}) though zb asked for identity`);
  }
  if (!res.body) throw new ZbError("IO", `cannot download ${shown}: empty response`);
  return { end, total };
}
