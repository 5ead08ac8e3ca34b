/**
 * A download that breaks off is asked for again (--retries, default 5), with
 * the compiled binary against the resetting server of http-fixture.ts (its
 * header lists the modes): Range from the byte reached, the retry event, a
 * link that breaks on every response, If-Range with the first ETag, a changed
 * image, a 503, a server without byte ranges, a reader that stops while a
 * reconnection waits (lib/image/source.ts in this process), no credentials
 * in the warning, and the --retries values refused.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { httpSource, type RetryEvent } from "../../../lib/image/source.ts";
import { sha256, type Built } from "./fixture.ts";
import { httpFixture } from "./http-fixture.ts";

const http = httpFixture();
const { requests, takenBy, url, target, journalOf, zb, since, rawSha, payloadCut } = http;
let img: Built;
let resets: typeof http.resets;
beforeAll(() => ({ img, resets } = http));

describe("a download that breaks off is asked for again (--retries, default 5)", () => {
  /** The byte the client had when the first response reset, as its second request asks. */
  const rangeOf = (n: number) => `bytes=${n}-`;
  const warning = (path: string, at: number, why: string, wait: number, attempt: number) =>
    `zb: warning: the download of ${url(path)} broke off at byte ${at} (${why}); asking again in ${wait} s (retry ${attempt} of 5)\n`;

  test.each([
    { where: "inside the manifest", at: () => 2000 },
    { where: "mid-payload", at: payloadCut },
  ])("a reset $where: one run, the rest asked for with Range from the byte reached, identical result", async ({ at }) => {
    const n = at() + 7; // a URL of its own: /cut-N/ resets only the first request to it
    const path = `/cut-${n}/image.zbi`;
    const t = target();
    const mark = requests.length;
    const r = await zb(url(path), t);
    expect(r.exit).toBe(0);
    expect(r.err).toMatch(new RegExp(`^zb: warning: the download of ${url(path).replace(/[.]/g, "\\.")} broke off at byte ${n} \\(.+\\); asking again in 1 s \\(retry 1 of 5\\)\\n$`));
    expect(r.result).toMatchObject({ ok: true, resumedFrom: 0, rawSha256: rawSha() });
    expect(sha256(readFileSync(t))).toBe(rawSha());
    expect(journalOf(t)).toMatchObject({ state: "complete" });
    expect(since(mark)).toEqual([
      { path, range: null, status: 200 },
      { path, range: rangeOf(n), status: 206 },
    ]);
  }, 30_000);

  test("--progress=json reports the reconnection as a retry event", async () => {
    const n = payloadCut() + 8;
    const path = `/cut-${n}/image.zbi`;
    const r = await zb(url(path), target(), { more: ["--progress=json"] });
    expect(r.exit).toBe(0);
    const events = r.out.trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    const retries = events.filter((e) => e.type === "retry");
    expect(retries).toEqual([{ type: "retry", url: url(path), at: n, attempt: 1, of: 5, waitS: 1, why: expect.any(String) }]);
    expect(r.err).toBe("");
  }, 30_000);

  test("a link that breaks on every response: --retries 2 makes three requests, then IO (exit 5), journal failed; --resume finishes", async () => {
    const each = 512 << 10; // less than the 1 MiB after which the attempts start over
    const path = `/cutall-${each}/image.zbi`;
    const t = target();
    const mark = requests.length;
    const r = await zb(url(path), t, { more: ["--retries", "2"] });
    expect(r.exit).toBe(5);
    expect(since(mark)).toEqual([
      { path, range: null, status: 200 },
      { path, range: rangeOf(each), status: 206 },
      { path, range: rangeOf(2 * each), status: 206 },
    ]);
    const lines = r.err.trim().split("\n");
    expect(lines.slice(0, 2).map((l) => l.replace(/ \(.*\); /, " (…); "))).toEqual([
      warning(path, each, "…", 1, 1).trim().replace("of 5", "of 2"),
      warning(path, 2 * each, "…", 2, 2).trim().replace("of 5", "of 2"),
    ]);
    expect(lines[2]).toMatch(new RegExp(`^zb: cannot download ${url(path).replace(/[.]/g, "\\.")}: `));
    expect(journalOf(t)?.state ?? "none").not.toBe("complete");
    const again = await zb(url("/range/image.zbi"), t, { resume: true });
    expect(again.exit).toBe(0);
    expect(sha256(readFileSync(t))).toBe(rawSha());
  }, 30_000);

  test("the attempts start over after 1 MiB: a link that breaks every 3 MiB still completes with --retries 1", async () => {
    const each = 3 << 20;
    const path = `/cutall-${each}/image.zbi`;
    const t = target();
    const mark = requests.length;
    const r = await zb(url(path), t, { more: ["--retries", "1"] });
    expect(r.exit).toBe(0);
    // One request per 3 MiB, each from where the last one broke off.
    const starts = since(mark).map((q) => (q.range === null ? 0 : Number(/^bytes=(\d+)-$/.exec(q.range)![1])));
    expect(starts).toEqual(Array.from({ length: Math.ceil(img.bytes.length / each) }, (_, i) => i * each));
    expect(sha256(readFileSync(t))).toBe(rawSha());
  }, 60_000);

  test("a reconnection asks If-Range with the first response's ETag; the image unchanged, the install completes", async () => {
    const n = payloadCut() + 9;
    const path = `/etag-${n}/image.zbi`;
    const t = target();
    const mark = requests.length;
    const r = await zb(url(path), t);
    expect(r.exit).toBe(0);
    expect(requests.slice(mark).map(({ range, ifRange, status }) => ({ range, ifRange, status }))).toEqual([
      { range: null, ifRange: null, status: 200 },
      { range: rangeOf(n), ifRange: '"v1"', status: 206 },
    ]);
    expect(sha256(readFileSync(t))).toBe(rawSha());
  }, 30_000);

  test("the image replaced on the server between the two requests: IO (exit 5) naming it, nothing spliced, not complete", async () => {
    const n = payloadCut() + 10;
    const path = `/changed-${n}/image.zbi`;
    const t = target();
    const mark = requests.length;
    const r = await zb(url(path), t);
    expect(r.exit).toBe(5);
    expect(r.err).toContain(`zb: cannot resume ${url(path)} at byte ${n}: the image changed on the server since the download began (it no longer matches "v1")`);
    expect(since(mark).map((q) => q.status)).toEqual([200, 200]); // not retried: another try would get the same answer
    expect(journalOf(t)).toMatchObject({ state: "failed" });
  }, 30_000);

  test("a 503 while reconnecting counts as the next attempt, with a longer wait; the third request gets the rest", async () => {
    const n = payloadCut() + 11;
    const path = `/busy-${n}/image.zbi`;
    const t = target();
    const mark = requests.length;
    const r = await zb(url(path), t);
    expect(r.exit).toBe(0);
    expect(since(mark)).toEqual([
      { path, range: null, status: 200 },
      { path, range: rangeOf(n), status: 503 },
      { path, range: rangeOf(n), status: 206 },
    ]);
    expect(r.err.split("\n")[1]).toBe(warning(path, n, "HTTP 503", 2, 2).trim());
    expect(sha256(readFileSync(t))).toBe(rawSha());
  }, 30_000);

  test.each([
    { kind: "cutnr", validator: "no validator", extra: 13 },
    { kind: "etagnr", validator: "the same ETag on the whole image (not a changed one)", extra: 15 },
  ])("a server without byte ranges after the break ($validator): IO naming that, one request more, no --resume hint", async ({ kind, extra }) => {
    const n = payloadCut() + extra;
    const path = `/${kind}-${n}/image.zbi`;
    const t = target();
    const mark = requests.length;
    const r = await zb(url(path), t);
    expect(r.exit).toBe(5);
    expect(r.err).toContain(`zb: cannot download ${url(path)}: the connection broke at byte ${n}, and the server sends the whole image again instead of the rest (it does not serve byte ranges)`);
    expect(r.err).not.toContain("--resume");
    expect(since(mark).map((q) => q.status)).toEqual([200, 200]);
    expect(journalOf(t)).toMatchObject({ state: "failed" });
  }, 30_000);

  test("a reader that stops while a reconnection waits: the body ends, no request goes out after", async () => {
    const n = 1 << 20;
    const path = `/cut-${n + 14}/image.zbi`;
    const retries: RetryEvent[] = [];
    // The reader is this test: the reset waits for it to have taken the n + 14 bytes, and the test for the retry.
    let taken!: () => void;
    const tookAll = new Promise<void>((resolve) => (taken = resolve));
    takenBy.set(path, () => tookAll);
    let retried!: () => void;
    const retrying = new Promise<void>((resolve) => (retried = resolve));
    const mark = requests.length;
    // A wait no test outlasts: the body can end only because the cancel cut the wait short, and the
    // reconnection that follows the wait could only go out before the body ends, not after.
    const HOUR_MS = 3_600_000;
    const body = (await httpSource(url(path), { retries: 3, delayMs: () => HOUR_MS, onRetry: (e) => (retries.push(e), retried()) }).open(0)) as AsyncGenerator<Uint8Array> & { cancel(): void };
    let got = 0;
    const next = async () => {
      for (;;) {
        const r = await body.next();
        if (r.done) return "done";
        got += r.value.length;
        if (got === n + 14) taken();
      }
    };
    const ended = next();
    await retrying;
    expect(retries.map((e) => ({ at: e.at, waitS: e.waitS }))).toEqual([{ at: n + 14, waitS: 3600 }]); // the break was seen; the reconnection now waits
    body.cancel();
    expect(await ended).toBe("done");
    // Finished: nothing left in the body that could ask again.
    expect(await body.next()).toEqual({ done: true, value: undefined });
    expect(got).toBe(n + 14);
    expect(since(mark).map((q) => q.range)).toEqual([null]); // the first request only
  }, 10_000); // it takes milliseconds: a cancel that does not end the wait fails here, not after an hour

  test("the warning leaves out user:password@ and the query", async () => {
    const n = payloadCut() + 12;
    const r = await zb(`http://alice:s3cret@127.0.0.1:${resets.port}/cut-${n}/image.zbi?X-Token=t0ken`, target());
    expect(r.exit).toBe(0);
    expect(r.err).toContain(`the download of http://127.0.0.1:${resets.port}/cut-${n}/image.zbi?… broke off`);
    expect(r.err).not.toContain("s3cret");
    expect(r.err).not.toContain("t0ken");
  }, 30_000);

  test.each([
    { value: "x", why: 'cannot use --retries "x": expected a whole number' },
    { value: "101", why: "cannot use --retries 101: at most 100" },
  ])("--retries $value is USAGE (exit 2)", async ({ value, why }) => {
    const r = await zb(url("/range/image.zbi"), target(), { more: ["--retries", value] });
    expect(r.exit).toBe(2);
    expect(r.err).toContain(why);
  });
});
