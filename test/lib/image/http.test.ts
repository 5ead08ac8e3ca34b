/**
 * Installing from a URL and from stdin with the compiled binary, against the
 * servers of http-fixture.ts (its header lists the modes): a plain GET, a 404,
 * a reset with --retries 0, --resume with Range and from a server that ignores
 * it, a server that stops sending (--timeout), stdin, what the client asks
 * for (Accept-Encoding, no credentials shown, a shifted 206, the connections
 * it holds) and the https → http redirect refusal. The reconnections after a
 * break (--retries): http-retry.test.ts.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { sha256, type Built } from "./fixture.ts";
import { httpFixture, closedPort } from "./http-fixture.ts";

const http = httpFixture();
const { requests, watched, portOf, url, target, journalOf, zb, since, rawSha, NO_RETRY, payloadCut, cutMidPayload } = http;
let img: Built;
let dataOffset = 0;
let caFile = "";
let tls: typeof http.tls;
let server: typeof http.server;
beforeAll(() => ({ img, dataOffset, caFile, tls, server } = http));

describe("install over HTTP", () => {
  test("from a URL: one plain GET, the target is the raw rootfs", async () => {
    const t = target();
    const mark = requests.length;
    const r = await zb(url("/range/image.zbi"), t);
    expect({ exit: r.exit, err: r.err }).toEqual({ exit: 0, err: "" });
    expect(r.result).toMatchObject({ ok: true, resumedFrom: 0, rawSha256: rawSha() });
    expect(sha256(readFileSync(t))).toBe(rawSha());
    expect(since(mark)).toEqual([{ path: "/range/image.zbi", range: null, status: 200 }]);
  }, 30_000);

  test("a 404 is IO (exit 5) and creates nothing", async () => {
    const t = target();
    const r = await zb(url("/missing.zbi"), t);
    expect(r.exit).toBe(5);
    expect(r.err).toMatch(/cannot download .*HTTP 404/);
    expect([existsSync(t), journalOf(t)]).toEqual([false, null]);
  });

  test.each([
    { where: "inside the manifest", at: () => 2000, journal: false },
    { where: "mid-payload (85 % of the image)", at: payloadCut, journal: true },
  ])("with --retries 0, a connection reset $where fails with IO or IMG_FORMAT, and the target is not marked complete", async ({ at, journal }) => {
    const t = target();
    const r = await zb(url(`/cut-${at()}/image.zbi`), t, { more: NO_RETRY });
    expect(r.exit).not.toBe(0);
    if (journal) expect(journalOf(t)).toMatchObject({ state: "failed" });
    else expect(journalOf(t)).toBeNull();
    expect(r.err).toMatch(/^zb: cannot /); // a ZbError, not "zb: internal error: …" (exit 70)
    expect([5, 13]).toContain(r.exit);
  }, 30_000);

  test("--resume after a reset asks for the rest with Range and ends identical", async () => {
    const t = target();
    const cutUrl = url(`/cut-${payloadCut() + 1}/image.zbi`);
    const cut = await zb(cutUrl, t, { more: NO_RETRY });
    expect(cut.exit).not.toBe(0);
    const j = journalOf(t)!;
    expect(j).toMatchObject({ state: "failed", dataOffset });
    expect(j.chunksDone).toBeGreaterThanOrEqual(32); // the journal had advanced: resume has something to skip
    const skipped = img.manifest.payloads[0]!.chunks.slice(0, j.chunksDone).reduce((a, c) => a + c.size, 0);
    const mark = requests.length;
    const r = await zb(cutUrl, t, { resume: true });
    expect({ exit: r.exit, err: r.err }).toEqual({ exit: 0, err: "" });
    expect(r.result).toMatchObject({ ok: true, resumedFrom: j.chunksDone, rawSha256: rawSha() });
    expect(sha256(readFileSync(t))).toBe(rawSha());
    expect(journalOf(t)).toMatchObject({ state: "complete" });
    // The header is verified again from byte 0, then the entry header is checked, then only the missing chunks are fetched.
    const path = new URL(cutUrl).pathname;
    expect(since(mark)).toEqual([
      { path, range: null, status: 200 },
      { path, range: `bytes=${dataOffset - 512}-`, status: 206 },
      { path, range: `bytes=${dataOffset + skipped}-`, status: 206 },
    ]);
  }, 30_000);

  test("--resume from a server that ignores Range fails with a clear IO error (exit 5) and stays resumable", async () => {
    const { t, j } = await cutMidPayload(2);
    const r = await zb(url("/norange/image.zbi"), t, { resume: true });
    expect(r.exit).toBe(5);
    expect(r.err).toMatch(/cannot resume http:\/\/127\.0\.0\.1:\d+\/norange\/image\.zbi at byte \d+: the server answered 200 instead of 206 Partial Content/);
    expect(r.err).toContain("zb: hint: the server does not serve byte ranges: install without --resume (from the start), or from a server that does");
    expect(journalOf(t)).toMatchObject({ state: "failed", chunksDone: j.chunksDone });
    const again = await zb(url("/range/image.zbi"), t, { resume: true });
    expect(again.exit).toBe(0);
    expect(sha256(readFileSync(t))).toBe(rawSha());
  }, 30_000);
});

describe("a server that stops sending", () => {
  test.each([
    { where: "inside the manifest", at: () => 2000, journal: null },
    { where: "mid-payload", at: payloadCut, journal: "failed" },
  ])("$where: --timeout 1 gives up after ~1 s without a byte, IO (exit 5), not marked complete", async ({ at, journal }) => {
    const t = target();
    // Without zb's own limit the runtime waits minutes: the test's 30 s timeout fails it.
    const r = await zb(url(`/stall-${at()}/image.zbi`), t, { more: ["--timeout", "1", ...NO_RETRY] });
    expect(r.err).toMatch(/^zb: cannot download http:\/\/127\.0\.0\.1:\d+\/stall-\d+\/image\.zbi: the server sent nothing for 1 s\n/);
    expect(r.exit).toBe(5);
    expect(journalOf(t)?.state ?? null).toBe(journal);
  }, 30_000);
});

describe("install from stdin", () => {
  test("`-` reads the image from stdin; the target is the raw rootfs", async () => {
    const t = target();
    const r = await zb("-", t, { stdin: img.path });
    expect({ exit: r.exit, err: r.err }).toEqual({ exit: 0, err: "" });
    expect(r.result).toMatchObject({ ok: true, resumedFrom: 0, rawSha256: rawSha() });
    expect(sha256(readFileSync(t))).toBe(rawSha());
  }, 30_000);

  test("--resume from stdin reads past the chunks already written (no seeking) and ends identical", async () => {
    const { t, j } = await cutMidPayload(3);
    const r = await zb("-", t, { resume: true, stdin: img.path });
    expect({ exit: r.exit, err: r.err }).toEqual({ exit: 0, err: "" });
    expect(r.result).toMatchObject({ ok: true, resumedFrom: j.chunksDone });
    expect(sha256(readFileSync(t))).toBe(rawSha());
  }, 30_000);
});

describe("what the client asks for and what it shows", () => {
  test("every request says Accept-Encoding: identity (a Range counts the bytes zb counts)", async () => {
    const mark = requests.length;
    expect((await zb(url("/range/image.zbi"), target())).exit).toBe(0);
    expect(requests.slice(mark).map((r) => r.encoding)).toEqual(["identity"]);
  }, 30_000);

  test("user:password@ and the query never reach stderr, the JSON result or the journal", async () => {
    const secretUrl = (path: string) => `http://alice:s3cret@127.0.0.1:${portOf(path)}${path}?X-Token=t0ken`;
    const shown = (path: string) => `http://127.0.0.1:${portOf(path)}${path}?…`;
    const miss = await zb(secretUrl("/missing.zbi"), target());
    expect(miss.exit).toBe(5);
    expect(miss.err).toContain(`cannot download ${shown("/missing.zbi")}: HTTP 404`);
    const t = target();
    const cut = await zb(secretUrl(`/cut-${payloadCut() + 4}/image.zbi`), t, { more: NO_RETRY });
    expect(cut.exit).not.toBe(0);
    const journal = readFileSync(`${t}.zb-journal`, "utf8");
    expect(JSON.parse(journal)).toMatchObject({ state: "failed" });
    for (const text of [miss.err, miss.out, cut.err, cut.out, journal]) {
      expect(text).not.toContain("s3cret");
      expect(text).not.toContain("t0ken");
    }
  }, 30_000);

  test("a connection that fails with a proxy variable set: the hint names it, without its credentials; with none set, no hint", async () => {
    const dead = closedPort();
    const none = Object.fromEntries(["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"].map((v) => [v, ""]));
    const viaProxy = await zb(url("/range/image.zbi"), target(), { more: NO_RETRY, env: { ...none, http_proxy: `http://bob:pr0xypw@127.0.0.1:${dead}` } });
    const direct = await zb(`http://127.0.0.1:${dead}/image.zbi`, target(), { more: NO_RETRY, env: none });
    expect({ exit: viaProxy.exit, err: viaProxy.err.replace(/^.*\n(?=zb: hint)/s, "") }).toEqual({
      exit: 5,
      err: `zb: hint: http_proxy=http://127.0.0.1:${dead}/ is set: the connection may have gone to the proxy rather than the server (NO_PROXY lists hosts to reach directly)\n`,
    });
    expect(viaProxy.err).toContain(`cannot download ${url("/range/image.zbi")}: the connection was refused`);
    expect({ exit: direct.exit, hint: direct.err.includes("hint:") }).toEqual({ exit: 5, hint: false });
  }, 30_000);

  test("--timeout beyond the longest timer (2147483 s) is USAGE, not an instant failure", async () => {
    const r = await zb(url("/range/image.zbi"), target(), { more: ["--timeout", "99999999"] });
    expect(r.exit).toBe(2);
    expect(r.err).toContain("cannot use --timeout 99999999: the longest idle time is 2147483 s");
  });

  test("a 206 that starts elsewhere than asked: IO naming both offsets, still resumable", async () => {
    const { t, j } = await cutMidPayload(5);
    const r = await zb(url("/shift-4096/image.zbi"), t, { resume: true });
    expect(r.exit).toBe(5);
    expect(r.err).toMatch(/cannot resume http:\/\/127\.0\.0\.1:\d+\/shift-4096\/image\.zbi at byte (\d+): the server sent the bytes from (\d+) on/);
    const [, asked, got] = /at byte (\d+): the server sent the bytes from (\d+) on/.exec(r.err)!;
    expect(Number(got) - Number(asked)).toBe(4096);
    expect(journalOf(t)).toMatchObject({ state: "failed", chunksDone: j.chunksDone });
  }, 30_000);

  test("--resume ends the requests it reads only in part before the payload is fetched (no connection held open behind it)", async () => {
    const { t } = await cutMidPayload(6);
    watched.length = 0;
    const r = await zb(url("/watch/image.zbi"), t, { resume: true });
    expect({ exit: r.exit, err: r.err }).toEqual({ exit: 0, err: "" });
    // The header from byte 0, the entry header before the payload, then the payload to its end:
    // when the payload's last piece was due, zb held that one connection, none behind it.
    expect(watched).toEqual([
      { range: null, connectionsAtEnd: null }, // read in part, never to its end
      { range: expect.stringMatching(/^bytes=\d+-$/), connectionsAtEnd: null },
      { range: expect.stringMatching(/^bytes=\d+-$/), connectionsAtEnd: 1 },
    ]);
  }, 30_000);

  test("https redirected to plain http is refused (IO); https itself works with the trusted certificate", async () => {
    const env = { NODE_EXTRA_CA_CERTS: caFile };
    const ok = await zb(`https://127.0.0.1:${tls.port}/range/image.zbi`, target(), { env });
    expect({ exit: ok.exit, err: ok.err }).toEqual({ exit: 0, err: "" });
    for (const first of ["/to-http/image.zbi", "/via-https/image.zbi"]) {
      const t = target();
      const mark = requests.length;
      const r = await zb(`https://127.0.0.1:${tls.port}${first}`, t, { env });
      expect(r.exit).toBe(5);
      expect(r.err).toContain(`cannot download https://127.0.0.1:${tls.port}${first}: the server redirected it to plain http (http://127.0.0.1:${server.port}/range/image.zbi)`);
      expect([existsSync(t), journalOf(t)]).toEqual([false, null]);
      expect(since(mark)).toEqual([]); // refused before the plain request went out
    }
  }, 30_000);

  test("a relative redirect is followed (to the same server), and the install is the raw rootfs", async () => {
    const t = target();
    const mark = requests.length;
    const r = await zb(url("/rel/image.zbi"), t);
    expect({ exit: r.exit, err: r.err }).toEqual({ exit: 0, err: "" });
    expect(sha256(readFileSync(t))).toBe(rawSha());
    expect(since(mark)).toEqual([{ path: "/rel/image.zbi", range: null, status: 302 }, { path: "/range/image.zbi", range: null, status: 200 }]);
  }, 30_000);
});
