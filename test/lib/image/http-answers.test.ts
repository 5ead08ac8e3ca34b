/**
 * Answers a server should not send, with the compiled binary against the
 * resetting server of http-fixture.ts (its own routes, under /raw/): what zb
 * says of them, and that the URL's secrets stay out of what it says.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import type { RawAnswer } from "./fixture.ts";
import { httpFixture, closedPort } from "./http-fixture.ts";

const http = httpFixture();
const { routes, requests, url, target, zb, payloadCut } = http;
let resetsPort = 0;
beforeAll(() => (resetsPort = http.resets.port));

/** An answer sent as it is, status line and all. */
const raw = (text: string): RawAnswer => ({ status: 0, body: new Uint8Array(), raw: text });
const redirect = (location: string): RawAnswer => ({ status: 302, headers: { location }, body: new Uint8Array() });

describe("the runtime's words for a malformed answer never carry the URL's query", () => {
  const BAD_LENGTH = "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n";
  beforeAll(() => {
    routes.set("/raw/badlength/image.zbi", () => raw(BAD_LENGTH));
    // The redirect's target carries a token of its own, which the runtime's text would name.
    routes.set("/raw/to-badlength/image.zbi", () => redirect("/raw/badlength/image.zbi?X-Amz-Signature=SECRET2"));
    routes.set("/raw/cut-to-badlength/image.zbi", (_req, bytes, first) =>
      first ? { status: 200, body: bytes, breakAfter: payloadCut() } : redirect("/raw/badlength/image.zbi?X-Amz-Signature=SECRET2"));
  });

  test.each([
    { name: "the first answer", path: "/raw/badlength/image.zbi", retries: "0", journal: false, redirected: false },
    { name: "the answer after a redirect", path: "/raw/to-badlength/image.zbi", retries: "0", journal: false, redirected: true },
    { name: "a reconnection's answer, after a redirect, mid-payload", path: "/raw/cut-to-badlength/image.zbi", retries: "1", journal: true, redirected: true },
  ])("Content-Length: abc in $name: said in words, SECRET in none of stderr, --json, the journal", async ({ path, retries, journal, redirected }) => {
    const t = target();
    const r = await zb(`${url(path)}?X-Amz-Signature=SECRET1`, t, { more: ["--retries", retries] });
    expect(r.exit).toBe(5);
    const via = redirected ? ` (redirected to http://127.0.0.1:${resetsPort}/raw/badlength/image.zbi?…)` : "";
    expect(r.err).toContain(`zb: cannot download http://127.0.0.1:${resetsPort}${path}?…${via}: the server's Content-Length is not a valid length`);
    const journalText = journal ? readFileSync(`${t}.zb-journal`, "utf8") : "";
    if (journal) expect(JSON.parse(journalText)).toMatchObject({ state: "failed", error: expect.stringContaining("Content-Length is not a valid length") });
    expect(JSON.parse(r.out.trim().split("\n").at(-1)!)).toMatchObject({ ok: false, code: "IO" });
    for (const text of [r.err, r.out, journalText]) expect(text).not.toContain("SECRET");
  }, 30_000);
});

describe("a failure after a redirect names the redirect's target too", () => {
  let dead = 0;
  beforeAll(() => {
    dead = closedPort();
    routes.set("/raw/to-dead/image.zbi", () => redirect(`http://127.0.0.1:${dead}/image.zbi?t=SECRET`));
    routes.set("/raw/to-missing/image.zbi", () => redirect(`${url("/missing.zbi")}?t=SECRET`));
    routes.set("/raw/to-stall/image.zbi", () => redirect(url("/stall-2000/image.zbi")));
  });

  test.each([
    { name: "a refused connection", path: "/raw/to-dead/image.zbi", more: [], to: () => `http://127.0.0.1:${dead}/image.zbi?…`, why: "the connection was refused" },
    { name: "an HTTP status of the last hop", path: "/raw/to-missing/image.zbi", more: [], to: () => `${url("/missing.zbi")}?…`, why: "HTTP 404" },
    { name: "a stall of the last hop's body", path: "/raw/to-stall/image.zbi", more: ["--timeout", "1"], to: () => url("/stall-2000/image.zbi"), why: "the server sent nothing for 1 s" },
  ])("$name: cannot download URL (redirected to TARGET): why", async ({ path, more, to, why }) => {
    const r = await zb(url(path), target(), { more: ["--retries", "0", ...more] });
    expect({ exit: r.exit, err: r.err.replace(/zb: hint: .*\n/, "") }).toEqual({ exit: 5, err: `zb: cannot download ${url(path)} (redirected to ${to()}): ${why}\n` });
  }, 30_000);

  test("a retry after a redirect: the warning's why names the target too", async () => {
    const path = "/raw/to-stall/image.zbi";
    const r = await zb(url(path), target(), { more: ["--retries", "1", "--timeout", "1"] });
    expect(r.exit).toBe(5);
    expect(r.err.split("\n")[0]).toBe(`zb: warning: the download of ${url(path)} broke off at byte 2000 (the server sent nothing for 1 s; redirected to ${url("/stall-2000/image.zbi")}); asking again in 1 s (retry 1 of 1)`);
  }, 30_000);
});

describe("a server that ignores If-Range", () => {
  const path = "/raw/splice/image.zbi";
  beforeAll(() => {
    // The first answer breaks off; the reconnection's 206 is of another image (ETag "v2"), served
    // although If-Range named "v1": spliced on, its chunks would fail their hashes (PAYLOAD_CORRUPT).
    routes.set(path, (req, bytes, first) => {
      if (first) return { status: 200, headers: { etag: '"v1"' }, body: bytes, breakAfter: payloadCut() };
      const from = Number(/^bytes=(\d+)-$/.exec(req.headers.get("range") ?? "")?.[1] ?? 0);
      const other = bytes.slice(from).map((b) => b ^ 0x5a);
      return { status: 206, headers: { etag: '"v2"', "content-range": `bytes ${from}-${bytes.length - 1}/${bytes.length}` }, body: other };
    });
  });

  test("a 206 with another ETag than the one sent: IO, the image changed (was: spliced, PAYLOAD_CORRUPT)", async () => {
    const t = target();
    const r = await zb(url(path), t);
    expect({ exit: r.exit, err: r.err.split("\n").at(-2) }).toEqual({
      exit: 5,
      err: `zb: cannot resume ${url(path)} at byte ${payloadCut()}: the image changed on the server since the download began (ETag "v1" then, "v2" now)`,
    });
  }, 30_000);
});

describe("answers a reconnection would get again are not retried; an encoded body is refused before it is read", () => {
  const noise = new Uint8Array(65536).map((_, i) => (i * 131 + 7) & 0xff);
  const encoded = (encoding: string, body: Uint8Array): RawAnswer => ({ status: 200, headers: { "content-encoding": encoding }, body });
  const refused = (encoding: string) => `the server sent a ${encoding}-encoded body (Content-Encoding: ${encoding}) though zb asked for identity`;
  beforeAll(() => {
    routes.set("/raw/gzip-valid/image.zbi", (_req, bytes) => encoded("gzip", Bun.gzipSync(new Uint8Array(bytes))));
    routes.set("/raw/gzip-corrupt/image.zbi", () => encoded("gzip", noise));
    routes.set("/raw/br-corrupt/image.zbi", () => encoded("br", noise));
    routes.set("/raw/zstd-corrupt/image.zbi", () => encoded("zstd", noise));
    // A reconnection's answer: the first request (the break) is retried, the bad length is not.
    routes.set("/raw/cut-badlength/image.zbi", (_req, bytes, first) => (first ? { status: 200, body: bytes, breakAfter: 3000 } : raw("HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n")));
    // A chunked body whose second chunk's size is not a number: the parse fails mid-body.
    routes.set("/raw/badchunk/image.zbi", (_req, bytes) => raw(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n${Buffer.from(bytes.subarray(0, 4096)).toString("latin1")}\r\nzz\r\n`));
  });

  test.each([
    // Before: installed (the runtime decoded it), though a Range would count the encoded bytes.
    { name: "a valid gzip body, sent though zb asked for identity", path: "/raw/gzip-valid/image.zbi", why: refused("gzip") },
    // Before: retried with back-off, and the runtime's "Decompression error: …" on stderr per attempt.
    { name: "a corrupt gzip body", path: "/raw/gzip-corrupt/image.zbi", why: refused("gzip") },
    { name: "a corrupt br body", path: "/raw/br-corrupt/image.zbi", why: refused("br") },
    { name: "a corrupt zstd body", path: "/raw/zstd-corrupt/image.zbi", why: refused("zstd") },
    // Before: retried with back-off.
    { name: "Content-Length: abc, a reconnection's answer", path: "/raw/cut-badlength/image.zbi", why: "the server's Content-Length is not a valid length", brokeAt: 3000 },
    { name: "a chunked body that stops being HTTP", path: "/raw/badchunk/image.zbi", why: "the server's answer is not valid HTTP" },
  ])("$name: IO at once, not asked again", async ({ path, why, brokeAt }) => {
    const mark = requests.length;
    const r = await zb(url(path), target(), { more: ["--retries", "2"] });
    const retried = brokeAt === undefined ? "" : `zb: warning: the download of ${url(path)} broke off at byte ${brokeAt} (the connection was reset); asking again in 1 s (retry 1 of 2)\n`;
    expect({ exit: r.exit, err: r.err, requests: requests.slice(mark).length }).toEqual({ exit: 5, err: `${retried}zb: cannot download ${url(path)}: ${why}\n`, requests: brokeAt === undefined ? 1 : 2 });
  }, 30_000);
});

describe("a seeking --resume over HTTP reads what follows the last payload", () => {
  const path = "/raw/junk/image.zbi";
  beforeAll(() => {
    // The image with text appended, served with byte ranges: a fresh install refuses it (exit 13).
    routes.set(path, (req, bytes) => {
      const all = new Uint8Array(Buffer.concat([bytes, Buffer.from("junk after the image\n")]));
      const from = Number(/^bytes=(\d+)-$/.exec(req.headers.get("range") ?? "")?.[1] ?? 0);
      return from > 0 ? { status: 206, headers: { "content-range": `bytes ${from}-${all.length - 1}/${all.length}` }, body: all.subarray(from) } : { status: 200, body: all };
    });
  });

  test("data after the archive, resumed: IMG_FORMAT (exit 13) as a fresh install (was: installed, exit 0)", async () => {
    const { t } = await http.cutMidPayload(31);
    const resumed = await zb(url(path), t, { resume: true });
    const fresh = await zb(url(path), target());
    const FOLLOWS = "zb: cannot read the image: data follows the last payload\n";
    expect({ resumed: [resumed.exit, resumed.err], fresh: [fresh.exit, fresh.err] }).toEqual({ resumed: [13, FOLLOWS], fresh: [13, FOLLOWS] });
    expect(http.journalOf(t)).toMatchObject({ state: "failed" });
  }, 30_000);
});
