/**
 * What a URL source's answers say of the image (lib/image/httprange.ts),
 * without a server: sameImage, the one check that a later answer carries the
 * image the earlier ones described (the validator of a 200 to a range asked
 * with If-Range, the length a 200 or 206 says) and the length known after it;
 * and the length and range end checkResponse hands on.
 */
import { describe, expect, test } from "bun:test";
import { checkResponse, sameImage, type Known } from "../../../lib/image/httprange.ts";

const shown = "http://h/image.zbi";
const answer = (status: number, headers: Record<string, string> = {}) => new Response("x", { status, headers });
const none: Known = { ifRange: null, total: null };
const outcome = (f: () => unknown): unknown => {
  try {
    return f();
  } catch (e) {
    return `${(e as { code?: string }).code}: ${(e as Error).message}`;
  }
};
const changed = (at: number, why: string) => `IO: cannot resume ${shown} at byte ${at}: the image changed on the server since the download began (${why})`;

describe("sameImage: the image an answer carries, against what the earlier ones said", () => {
  test.each([
    { name: "the first answer, a 200 with its Content-Length: the length", res: answer(200, { "content-length": "4096" }), offset: 0, known: none, want: 4096 },
    { name: "the first answer, a 200 without a length (chunked): unknown", res: answer(200), offset: 0, known: none, want: null },
    { name: "a 206 after a chunked first answer: the length it names is learned", res: answer(206, { "content-range": "bytes 1000-4095/4096" }), offset: 1000, known: none, want: 4096 },
    { name: "a 206 naming the length known", res: answer(206, { "content-range": "bytes 1000-4095/4096" }), offset: 1000, known: { ifRange: null, total: 4096 }, want: 4096 },
    { name: "a 206 naming another length: changed", res: answer(206, { "content-range": "bytes 1000-4999/5000" }), offset: 1000, known: { ifRange: '"v1"', total: 4096 }, want: changed(1000, "4096 bytes then, 5000 now") },
    { name: "a 206 of unknown length (/*): the one known stands", res: answer(206, { "content-range": "bytes 1000-1999/*" }), offset: 1000, known: { ifRange: null, total: 4096 }, want: 4096 },
    { name: "a 206 of unknown length (/*), none known: unknown", res: answer(206, { "content-range": "bytes 1000-1999/*" }), offset: 1000, known: none, want: null },
    { name: "a 206's Content-Length is its range's, not the image's", res: answer(206, { "content-length": "100" }), offset: 1000, known: { ifRange: null, total: 4096 }, want: 4096 },
    { name: "a 200 from byte 0 with another length (a later open): changed", res: answer(200, { "content-length": "5000" }), offset: 0, known: { ifRange: null, total: 4096 }, want: changed(0, "4096 bytes then, 5000 now") },
    { name: "a 200 to a range, another ETag than If-Range's: changed", res: answer(200, { etag: '"v2"', "content-length": "4096" }), offset: 1000, known: { ifRange: '"v1"', total: 4096 }, want: changed(1000, 'it no longer matches "v1"') },
    { name: "a 200 to a range, no ETag, If-Range's: changed", res: answer(200), offset: 1000, known: { ifRange: '"v1"', total: 4096 }, want: changed(1000, 'it no longer matches "v1"') },
    { name: "a 200 to a range, If-Range's ETag: not changed (the server ignores Range)", res: answer(200, { etag: '"v1"' }), offset: 1000, known: { ifRange: '"v1"', total: 4096 }, want: 4096 },
    {
      name: "a 200 to a range, If-Range's Last-Modified: not changed",
      res: answer(200, { "last-modified": "Tue, 01 Jul 2025 10:00:00 GMT" }),
      offset: 1000,
      known: { ifRange: "Tue, 01 Jul 2025 10:00:00 GMT", total: 4096 },
      want: 4096,
    },
    // A server (or a cache) that ignores If-Range: a 206 of another image would be spliced onto the bytes before.
    { name: "a 206 with another strong ETag than If-Range's: changed", res: answer(206, { etag: '"v2"', "content-range": "bytes 1000-4095/4096" }), offset: 1000, known: { ifRange: '"v1"', total: 4096 }, want: changed(1000, 'ETag "v1" then, "v2" now') },
    { name: "a 206 with If-Range's ETag", res: answer(206, { etag: '"v1"', "content-range": "bytes 1000-4095/4096" }), offset: 1000, known: { ifRange: '"v1"', total: 4096 }, want: 4096 },
    { name: "a 206 with a weak ETag: says nothing", res: answer(206, { etag: 'W/"v2"', "content-range": "bytes 1000-4095/4096" }), offset: 1000, known: { ifRange: '"v1"', total: 4096 }, want: 4096 },
    { name: "a 206 without an ETag: says nothing", res: answer(206, { "content-range": "bytes 1000-4095/4096" }), offset: 1000, known: { ifRange: '"v1"', total: 4096 }, want: 4096 },
    { name: "a 206 with an ETag, the validator a date: says nothing", res: answer(206, { etag: '"v2"', "content-range": "bytes 1000-4095/4096" }), offset: 1000, known: { ifRange: "Tue, 01 Jul 2025 10:00:00 GMT", total: 4096 }, want: 4096 },
    {
      name: "a 206 with another Last-Modified than If-Range's date: changed",
      res: answer(206, { "last-modified": "Wed, 02 Jul 2025 10:00:00 GMT", "content-range": "bytes 1000-4095/4096" }),
      offset: 1000,
      known: { ifRange: "Tue, 01 Jul 2025 10:00:00 GMT", total: 4096 },
      want: changed(1000, "Last-Modified Tue, 01 Jul 2025 10:00:00 GMT then, Wed, 02 Jul 2025 10:00:00 GMT now"),
    },
    {
      name: "a 206 with If-Range's date, written otherwise (the same instant)",
      res: answer(206, { "last-modified": "Tuesday, 01-Jul-25 10:00:00 GMT", "content-range": "bytes 1000-4095/4096" }),
      offset: 1000,
      known: { ifRange: "Tue, 01 Jul 2025 10:00:00 GMT", total: 4096 },
      want: 4096,
    },
    { name: "a 200 from byte 0 (a later open) with another strong ETag: changed", res: answer(200, { etag: '"v2"', "content-length": "4096" }), offset: 0, known: { ifRange: '"v1"', total: 4096 }, want: changed(0, 'ETag "v1" then, "v2" now') },
    // Its Content-Length is the whole image's, not offset + it: not compared (checkResponse refuses the 200).
    { name: "a 200 to a range, no validator known: not changed", res: answer(200, { "content-length": "4096" }), offset: 1000, known: { ifRange: null, total: 4096 }, want: 4096 },
  ])("$name", ({ res, offset, known, want }) => {
    expect(outcome(() => sameImage(res, shown, offset, known))).toEqual(want);
  });
});

describe("checkResponse: the length known after an answer, and where its range ends", () => {
  test.each([
    { name: "a first 200, chunked", res: answer(200), offset: 0, known: none, want: { end: null, total: null } },
    { name: "a 206 for the rest, the length said first here", res: answer(206, { "content-range": "bytes 1000-4095/4096" }), offset: 1000, known: none, want: { end: null, total: 4096 } },
    { name: "a 206 for less than the rest, the length said first here", res: answer(206, { "content-range": "bytes 1000-1999/4096" }), offset: 1000, known: none, want: { end: 2000, total: 4096 } },
    { name: "a 206 of unknown length for less than the length known", res: answer(206, { "content-range": "bytes 1000-1999/*" }), offset: 1000, known: { ifRange: null, total: 4096 }, want: { end: 2000, total: 4096 } },
    { name: "a 206 past the length known, naming no length: impossible", res: answer(206, { "content-range": "bytes 1000-4096/*" }), offset: 1000, known: { ifRange: null, total: 4096 }, want: `IO: cannot resume ${shown} at byte 1000: the server's partial answer names an impossible range ("bytes 1000-4096/*")` },
    { name: "a 206 naming another length than the one known: changed", res: answer(206, { "content-range": "bytes 1000-1999/5000" }), offset: 1000, known: { ifRange: null, total: 4096 }, want: changed(1000, "4096 bytes then, 5000 now") },
    { name: "a 200 whose body is gzip-encoded: refused", res: answer(200, { "content-encoding": "gzip" }), offset: 0, known: none, want: `IO: cannot download ${shown}: the server sent a gzip-encoded body (Content-Encoding: gzip) though zb asked for identity` },
    { name: "a 206 whose body is br-encoded: refused", res: answer(206, { "content-encoding": "br", "content-range": "bytes 1000-4095/4096" }), offset: 1000, known: none, want: `IO: cannot download ${shown}: the server sent a br-encoded body (Content-Encoding: br) though zb asked for identity` },
    { name: "a 200 that says Content-Encoding: identity", res: answer(200, { "content-encoding": "identity" }), offset: 0, known: none, want: { end: null, total: null } },
  ])("$name", ({ res, offset, known, want }) => {
    expect(outcome(() => checkResponse(res, shown, offset, "next", known))).toEqual(want);
  });
});
