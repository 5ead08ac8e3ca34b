/**
 * The first request of a download is retried as a broken body is (--retries,
 * the same waits, a warning or a `retry` event with `at` the offset asked):
 * a 503, no answer within --timeout, a refused connection; a 404 or a
 * refused certificate fail at once. With the compiled binary against the
 * resetting server of http-fixture.ts (its own routes, under /raw/), and a
 * stop during the wait in this process (stoppable).
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { httpSource, stoppable, type RetryEvent } from "../../../lib/image/source.ts";
import { sha256, type RawAnswer } from "./fixture.ts";
import { httpFixture, closedPort } from "./http-fixture.ts";

const http = httpFixture();
const { routes, requests, url, target, zb, rawSha } = http;
let tlsPort = 0;
beforeAll(() => (tlsPort = http.tls.port!));

const busy: RawAnswer = { status: 503, body: new TextEncoder().encode("busy\n") };
/** The retry events and the result of a --progress=json run's stdout. */
const events = (out: string) => out.trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);

describe("the first request is retried as a broken link is", () => {
  let dead = 0;
  beforeAll(() => {
    dead = closedPort();
    routes.set("/raw/busy-once/image.zbi", (_req, bytes, first) => (first ? busy : { status: 200, body: bytes }));
    routes.set("/raw/hang-once/image.zbi", (_req, bytes, first) => (first ? { status: 0, body: new Uint8Array(), hang: true } : { status: 200, body: bytes }));
    routes.set("/raw/busy/image.zbi", () => busy);
    routes.set("/raw/gone/image.zbi", () => ({ status: 404, body: new TextEncoder().encode("not found\n") }));
  });

  // Before: IO at once (exit 5), though --help says a stall is retried as a broken link is.
  test.each([
    { name: "a 503 (a server restarting)", path: "/raw/busy-once/image.zbi", more: [], why: "HTTP 503" },
    { name: "no answer within --timeout", path: "/raw/hang-once/image.zbi", more: ["--timeout", "1"], why: "the server sent nothing for 1 s" },
  ])("$name, then the image: one retry event at 0, installed", async ({ path, more, why }) => {
    const t = target();
    const mark = requests.length;
    const r = await zb(url(path), t, { more: ["--retries", "1", "--progress=json", ...more] });
    expect({ exit: r.exit, err: r.err }).toEqual({ exit: 0, err: "" });
    const all = events(r.out);
    expect(all.filter((e) => e.type === "retry")).toEqual([{ type: "retry", url: url(path), at: 0, attempt: 1, of: 1, waitS: 1, why }]);
    expect(all.at(-1)).toMatchObject({ ok: true, rawSha256: rawSha() });
    expect(sha256(readFileSync(t))).toBe(rawSha());
    expect(requests.slice(mark).map((q) => q.range)).toEqual([null, null]);
  }, 30_000);

  test("a refused connection: the warning, then IO once the retries are used up", async () => {
    const shown = `http://127.0.0.1:${dead}/image.zbi`;
    const r = await zb(shown, target(), { more: ["--retries", "1"] });
    expect({ exit: r.exit, err: r.err.replace(/zb: hint: .*\n/, "") }).toEqual({
      exit: 5,
      err: `zb: warning: the download of ${shown} broke off at byte 0 (the connection was refused); asking again in 1 s (retry 1 of 1)\nzb: cannot download ${shown}: the connection was refused\n`,
    });
  }, 30_000);

  test.each([
    { name: "a 404", source: () => url("/raw/gone/image.zbi"), why: "HTTP 404", requests: 1 },
    { name: "a certificate no one trusts", source: () => `https://127.0.0.1:${tlsPort}/range/image.zbi`, why: "self signed certificate", requests: 0 },
  ])("$name fails at once, not retried", async ({ source, why, requests: n }) => {
    const mark = requests.length;
    const r = await zb(source(), target(), { more: ["--retries", "1"] });
    expect({ exit: r.exit, err: r.err, requests: requests.slice(mark).length }).toEqual({ exit: 5, err: `zb: cannot download ${source()}: ${why}\n`, requests: n });
  }, 30_000);

  test("a stop during the wait ends it: open() fails with the stop's reason, and no request follows", async () => {
    const path = "/raw/busy/image.zbi";
    const stop = new AbortController();
    const retries: RetryEvent[] = [];
    const mark = requests.length;
    // 300 ms: a wait the stop did not end would send the next request well before the check below.
    const source = stoppable(httpSource(url(path), { retries: 3, delayMs: () => 300, onRetry: (e) => (retries.push(e), stop.abort(new Error("stopped"))) }), stop.signal);
    const failed = await source.open(0).then(() => "opened", (e: Error) => e.message);
    await Bun.sleep(700);
    expect({ failed, retries: retries.map((e) => [e.at, e.why]), requests: requests.slice(mark).length }).toEqual({ failed: "stopped", retries: [[0, "HTTP 503"]], requests: 1 });
  });
});
