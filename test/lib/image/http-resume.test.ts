/**
 * A URL source opened more than once, as `--resume` does (the header from
 * byte 0, then the payload's header and its missing chunks from their
 * offsets), against a Bun.serve server on 127.0.0.1 whose object can be
 * swapped between the opens: a 206 must say where it starts (Content-Range);
 * the later opens carry the first response's ETag as If-Range and compare
 * the length, so a replaced image is IO "changed", not a chunk that fails its
 * hash later (PAYLOAD_CORRUPT).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { httpSource } from "../../../lib/image/source.ts";
import { readAll } from "./fixture.ts";

/** What the server holds now, and how it answers a Range. */
const state = { bytes: new Uint8Array(0), etag: null as string | null, contentRange: "right" as "right" | "none" | "unparsable" };
const requests: { range: string | null; ifRange: string | null; status: number }[] = [];
let server: ReturnType<typeof Bun.serve>;
let url = "";

const version = (n: number, size = 4096) => new Uint8Array(size).map((_, i) => (i * 7 + n) & 0xff);

beforeAll(() => {
  server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const range = req.headers.get("range");
      const ifRange = req.headers.get("if-range");
      const from = Number(/^bytes=(\d+)-$/.exec(range ?? "")?.[1] ?? 0);
      const { bytes, etag } = state;
      const headers: Record<string, string> = etag ? { etag } : {};
      // RFC 9110 §13.1.5: a validator that no longer matches gets the whole new representation.
      const partial = from > 0 && (ifRange === null || ifRange === etag);
      if (partial && state.contentRange !== "none") headers["content-range"] = state.contentRange === "right" ? `bytes ${from}-${bytes.length - 1}/${bytes.length}` : "pages 1-2";
      const res = new Response(partial ? bytes.slice(from) : bytes, { status: partial ? 206 : 200, headers });
      requests.push({ range, ifRange, status: res.status });
      return res;
    },
  });
  url = `http://127.0.0.1:${server.port}/image.zbi`;
});
afterAll(() => server.stop(true));

describe("a URL source opened again at an offset (a resume)", () => {
  test.each([
    { name: "unchanged, with an ETag: the rest, asked with If-Range", etag: '"v1"', then: { bytes: 1, etag: '"v1"' }, outcome: "the rest", ifRange: '"v1"' },
    { name: "unchanged, no validator: the rest, no If-Range", etag: null, then: { bytes: 1, etag: null }, outcome: "the rest", ifRange: null },
    { name: "replaced (another ETag): IO, the image changed", etag: '"v1"', then: { bytes: 2, etag: '"v2"' }, outcome: `IO: cannot resume URL at byte 1000: the image changed on the server since the download began (it no longer matches "v1")`, ifRange: '"v1"' },
    { name: "replaced by a longer one, no validator: IO, the image changed", etag: null, then: { bytes: 3, etag: null }, outcome: "IO: cannot resume URL at byte 1000: the image changed on the server since the download began (4096 bytes then, 5000 now)", ifRange: null },
  ])("$name", async ({ etag, then, outcome, ifRange }) => {
    Object.assign(state, { bytes: version(1), etag, contentRange: "right" });
    const source = httpSource(url);
    const whole = await readAll(await source.open(0));
    Object.assign(state, { bytes: then.bytes === 3 ? version(3, 5000) : version(then.bytes), etag: then.etag });
    requests.length = 0;
    const got = await source.open(1000).then(readAll).then(
      (rest) => (Buffer.from(rest).equals(Buffer.from(whole.subarray(1000))) ? "the rest" : "other bytes"),
      (e: { code?: string; message?: string }) => `${e.code}: ${e.message?.replace(url, "URL")}`,
    );
    expect({ got, asked: requests.map((r) => ({ range: r.range, ifRange: r.ifRange })) }).toEqual({ got: outcome, asked: [{ range: "bytes=1000-", ifRange }] });
  });

  test.each([
    { name: "a 206 without Content-Range", contentRange: "none", outcome: "IO: cannot resume URL at byte 1000: the server's partial answer has no Content-Range" },
    { name: "a 206 whose Content-Range names no range", contentRange: "unparsable", outcome: `IO: cannot resume URL at byte 1000: the server's partial answer has a Content-Range that names no range ("pages 1-2")` },
    { name: "a 206 with its Content-Range", contentRange: "right", outcome: "the rest" },
  ] as const)("$name", async ({ contentRange, outcome }) => {
    Object.assign(state, { bytes: version(1), etag: null, contentRange });
    const got = await httpSource(url).open(1000).then(readAll).then(
      (rest) => (Buffer.from(rest).equals(Buffer.from(version(1).subarray(1000))) ? "the rest" : "other bytes"),
      (e: { code?: string; message?: string }) => `${e.code}: ${e.message?.replace(url, "URL")}`,
    );
    expect(got).toBe(outcome);
  });
});
