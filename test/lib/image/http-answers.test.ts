/**
 * Answers a server should not send, with the compiled binary against the
 * resetting server of http-fixture.ts (its own routes, under /raw/): what zb
 * says of them, and that the URL's secrets stay out of what it says.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import type { RawAnswer } from "./fixture.ts";
import { httpFixture } from "./http-fixture.ts";

const http = httpFixture();
const { routes, url, target, zb, payloadCut } = http;
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
    { name: "the first answer", path: "/raw/badlength/image.zbi", retries: "0", journal: false },
    { name: "the answer after a redirect", path: "/raw/to-badlength/image.zbi", retries: "0", journal: false },
    { name: "a reconnection's answer, after a redirect, mid-payload", path: "/raw/cut-to-badlength/image.zbi", retries: "1", journal: true },
  ])("Content-Length: abc in $name: said in words, SECRET in none of stderr, --json, the journal", async ({ path, retries, journal }) => {
    const t = target();
    const r = await zb(`${url(path)}?X-Amz-Signature=SECRET1`, t, { more: ["--retries", retries] });
    expect(r.exit).toBe(5);
    expect(r.err).toContain(`zb: cannot download http://127.0.0.1:${resetsPort}${path}?…: the server's Content-Length is not a valid length`);
    const journalText = journal ? readFileSync(`${t}.zb-journal`, "utf8") : "";
    if (journal) expect(JSON.parse(journalText)).toMatchObject({ state: "failed", error: expect.stringContaining("Content-Length is not a valid length") });
    expect(JSON.parse(r.out.trim().split("\n").at(-1)!)).toMatchObject({ ok: false, code: "IO" });
    for (const text of [r.err, r.out, journalText]) expect(text).not.toContain("SECRET");
  }, 30_000);
});
