/**
 * Installing from a URL and from stdin with the compiled binary. Servers on
 * 127.0.0.1 (free ports, stopped in afterAll) serve one image of 48 MiB raw
 * (1 MiB chunks, so the journal advances at chunk 32) in modes. Bun.serve:
 *
 *   /range/…    honours Range (206 + Content-Range)
 *   /norange/…  ignores Range (always 200 and the whole file)
 *   /stall-N/…  sends N bytes, then nothing, with the connection left open
 *   /shift-N/…  answers a Range with 206 from N bytes further on (and says so in Content-Range)
 *   /watch/…    honours Range; holds each response's last piece until the client is idle
 *               (it has taken the rest), and records how many connections it holds then
 *
 * and a server on plain sockets (fixture.ts rawHttpServer) for the modes
 * that reset a connection (RST) after exactly N body bytes, once the client
 * has taken them (the zb process idle, or the test's own reader's event):
 *
 *   /cut-N/…    sends N bytes, then resets the connection — the first request only;
 *               later requests are served as /range/ (a flaky link)
 *   /cutall-N/… honours Range, and every response resets after N bytes of its own
 *   /etag-N/…   like /cut-N/, with an ETag ("v1") that later requests' If-Range match
 *   /changed-N/… like /etag-N/, but the image "changed" after the first request (ETag "v2"):
 *               an If-Range "v1" gets 200 and the whole file, as RFC 9110 §13.1.5 says
 *   /busy-N/…   the first request resets after N bytes, the second gets 503, later ones as /range/
 *   /cutnr-N/…  the first request resets after N bytes, later ones as /norange/ (no byte ranges)
 *   /etagnr-N/… as /cutnr-N/, every response with the same ETag ("v1"): Range and If-Range ignored
 *
 * and records every request with its Range, If-Range and Accept-Encoding headers. A
 * second server speaks HTTPS (a certificate made by openssl for 127.0.0.1,
 * trusted by the client through NODE_EXTRA_CA_CERTS) and redirects to the
 * plain one.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Journal } from "../../../lib/image/journal.ts";
import { httpSource, type RetryEvent } from "../../../lib/image/source.ts";
import { buildImage, connectionsTo, KEYS, listTar, rawHttpServer, requireBinary, sha256, trustDir, untilIdle, variedBytes, type Built, type RawAnswer, type RawRequest } from "./fixture.ts";

const CHUNK = 1 << 20;
let root = "";
let bin = "";
let img: Built;
let trust = "";
let dataOffset = 0;
let server: ReturnType<typeof Bun.serve>;
const requests: { path: string; range: string | null; status: number; encoding: string | null; ifRange: string | null }[] = [];
const cutDone = new Set<string>();
const busyCount = new Map<string, number>();

/** The modes served by the resetting server; N is where the (first) answer breaks off. */
const BREAKING = /^\/(cut|cutall|etag|changed|busy|cutnr|etagnr)-(\d+)\//;
let resets: { port: number; stop(): void };
/** The process whose reading a reset waits for: the zb the test runs. */
let clientPid = 0;
/** A test's own "the reader has taken the bytes", per path, for a reader in this process (not idle while the test runs). */
const takenBy = new Map<string, () => Promise<void>>();

/** The resetting server's answer to `req`, as the table in the header says. */
function breaking(req: RawRequest, bytes: Uint8Array): RawAnswer {
  const [, kind, count] = BREAKING.exec(req.path)!;
  const n = Number(count);
  const from = Number(/^bytes=(\d+)-$/.exec(req.headers.get("range") ?? "")?.[1] ?? 0);
  const rest = (headers: Record<string, string> = {}): RawAnswer =>
    from > 0 ? { status: 206, headers: { ...headers, "content-range": `bytes ${from}-${bytes.length - 1}/${bytes.length}` }, body: bytes.subarray(from) } : { status: 200, headers, body: bytes };
  const first = !cutDone.has(req.path);
  cutDone.add(req.path);
  switch (kind) {
    case "cut":
      return first ? { status: 200, body: bytes, breakAfter: n } : rest();
    case "cutall":
      return { ...rest(), breakAfter: n };
    case "etag":
    case "changed": {
      const etag = kind === "changed" && !first ? '"v2"' : '"v1"';
      if (first) return { status: 200, headers: { etag }, body: bytes, breakAfter: n };
      const ifRange = req.headers.get("if-range");
      return ifRange === undefined || ifRange === etag ? rest({ etag }) : { status: 200, headers: { etag }, body: bytes };
    }
    case "cutnr":
    case "etagnr": {
      const headers: Record<string, string> = kind === "etagnr" ? { etag: '"v1"' } : {};
      return { status: 200, headers, body: bytes, ...(first ? { breakAfter: n } : {}) };
    }
    default: {
      const seen = (busyCount.get(req.path) ?? 0) + 1;
      busyCount.set(req.path, seen);
      if (seen === 1) return { status: 200, body: bytes, breakAfter: n };
      if (seen === 2) return { status: 503, body: new TextEncoder().encode("busy\n") };
      return rest();
    }
  }
}
/** /watch/ responses in order: how many connections to the server the client held when each one's last piece was due (null: never due). */
const watched: { range: string | null; connectionsAtEnd: number | null }[] = [];
let tls: ReturnType<typeof Bun.serve>;
let caFile = "";

beforeAll(async () => {
  bin = requireBinary();
  root = mkdtempSync(join(tmpdir(), "zb-http-"));
  img = await buildImage(root, { rootfs: variedBytes(48 << 20, 21, 0.3), boot: false, chunkSize: CHUNK, signers: [KEYS.k1] });
  trust = trustDir(root, "trust", [KEYS.k1]);
  dataOffset = listTar(img.bytes).find((e) => e.name === "rootfs")!.dataAt;
  const bytes = img.bytes;
  server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const path = new URL(req.url).pathname;
      const range = req.headers.get("range");
      const log = (r: Response) => (requests.push({ path, range, status: r.status, encoding: req.headers.get("accept-encoding"), ifRange: req.headers.get("if-range") }), r);
      const from = Number(/^bytes=(\d+)-$/.exec(range ?? "")?.[1] ?? 0);
      const rest = (headers: Record<string, string> = {}) =>
        from > 0 ? new Response(bytes.slice(from), { status: 206, headers: { ...headers, "content-range": `bytes ${from}-${bytes.length - 1}/${bytes.length}` } }) : new Response(bytes, { status: 200, headers });
      const stall = /^\/stall-(\d+)\//.exec(path);
      if (stall) {
        // N bytes, then nothing: the connection stays open until the client gives up.
        const n = Number(stall[1]);
        let sent = false;
        const body = new ReadableStream({
          type: "bytes",
          async pull(c) {
            if (!sent) {
              sent = true;
              c.enqueue(bytes.slice(0, n));
              return;
            }
            await new Promise(() => {});
          },
        });
        return log(new Response(body, { status: 200 }));
      }
      if (path === "/rel/image.zbi") return log(new Response(null, { status: 302, headers: { location: "/range/image.zbi" } }));
      if (path === "/watch/image.zbi") {
        const rec = { range, connectionsAtEnd: null as number | null };
        watched.push(rec);
        const client = clientPid;
        let at = from;
        const body = new ReadableStream({
          type: "bytes",
          async pull(c) {
            if (at >= bytes.length) {
              c.close();
              return;
            }
            const piece = bytes.slice(at, at + (256 << 10));
            at += piece.length; // before the enqueue, which takes the piece's buffer over (length 0 after)
            if (at >= bytes.length) {
              // The last piece waits until the client has taken all the others and waits for it:
              // the connections it holds to this server then are this one and any it kept open behind it.
              await untilIdle(client);
              rec.connectionsAtEnd = connectionsTo(client, server.port!);
            }
            c.enqueue(piece);
          },
        });
        return log(new Response(body, from > 0 ? { status: 206, headers: { "content-range": `bytes ${from}-${bytes.length - 1}/${bytes.length}` } } : { status: 200 }));
      }
      const shift = /^\/shift-(\d+)\//.exec(path);
      if (shift && range) {
        const at = from + Number(shift[1]);
        return log(new Response(bytes.slice(at), { status: 206, headers: { "content-range": `bytes ${at}-${bytes.length - 1}/${bytes.length}` } }));
      }
      if (!/^\/(range|norange|shift-\d+)\/image\.zbi$/.test(path)) return log(new Response("not found\n", { status: 404 }));
      return log(path.startsWith("/norange/") ? new Response(bytes, { status: 200 }) : rest());
    },
  });
  resets = await rawHttpServer(
    (req) => {
      const a = breaking(req, bytes);
      const h = (name: string) => req.headers.get(name) ?? null;
      requests.push({ path: req.path, range: h("range"), status: a.status, encoding: h("accept-encoding"), ifRange: h("if-range") });
      return a;
    },
    (req) => (takenBy.get(req.path) ?? (() => untilIdle(clientPid)))(),
  );
  // HTTPS on 127.0.0.1 with a certificate of our own, trusted by the client through NODE_EXTRA_CA_CERTS.
  const key = join(root, "tls.key");
  caFile = join(root, "tls.crt");
  const mk = Bun.spawnSync(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", caFile]);
  if (mk.exitCode !== 0) throw new Error(`openssl req failed: ${mk.stderr}`);
  tls = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    tls: { key: Bun.file(key), cert: Bun.file(caFile) },
    fetch(req) {
      const path = new URL(req.url).pathname;
      if (path === "/range/image.zbi") return new Response(bytes, { status: 200 });
      if (path === "/to-http/image.zbi") return Response.redirect(`http://127.0.0.1:${server.port}/range/image.zbi`, 302);
      if (path === "/via-https/image.zbi") return Response.redirect(`https://127.0.0.1:${tls.port}/to-http/image.zbi`, 307);
      return new Response("not found\n", { status: 404 });
    },
  });
}, 60_000);
afterAll(() => {
  server?.stop(true);
  resets?.stop();
  tls?.stop(true);
  if (root) rmSync(root, { recursive: true, force: true });
});

const portOf = (path: string) => (BREAKING.test(path) ? resets.port : server.port);
const url = (path: string) => `http://127.0.0.1:${portOf(path)}${path}`;
let seq = 0;
const target = () => join(root, `t${seq++}.img`);
const journalOf = (t: string): Journal | null => (existsSync(`${t}.zb-journal`) ? (JSON.parse(readFileSync(`${t}.zb-journal`, "utf8")) as Journal) : null);

/** `zb image install SOURCE --to T …` (async: the server runs in this process). */
async function zb(source: string, to: string, o: { resume?: boolean; stdin?: string; more?: string[]; env?: Record<string, string> } = {}) {
  const args = [bin, "image", "install", source, "--payload", "rootfs", "--to", to, "--trust", trust, "--json", ...(o.resume ? ["--resume"] : []), ...(o.more ?? [])];
  const p = Bun.spawn(args, { stdin: o.stdin ? Bun.file(o.stdin) : "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, ZB_NO_REBOOT: "1", ...o.env } });
  clientPid = p.pid;
  const [out, err, exit] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  // The result is the last line (with --progress=json, events come before it).
  return { exit, err, out, result: exit === 0 ? (JSON.parse(out.trim().split("\n").at(-1)!) as Record<string, unknown>) : null };
}
/** The requests made since `mark`. */
const since = (mark: number) => requests.slice(mark).map(({ path, range, status }) => ({ path, range, status }));
const rawSha = () => sha256(img.raw.rootfs!);
/** A reset fails the run (the reconnections are tested on their own below). */
const NO_RETRY = ["--retries", "0"];
/** Cut the payload well past chunk 32 (the first journal update), at 85 % of the image. */
const payloadCut = () => Math.floor(img.bytes.length * 0.85);
/**
 * A target left by a reset mid-payload, its journal past chunk 32 (so a
 * resume has something to skip); `n` keeps the URL its own (/cut-N/ resets
 * only the first request to it).
 */
async function cutMidPayload(n: number): Promise<{ t: string; j: Journal }> {
  const t = target();
  await zb(url(`/cut-${payloadCut() + n}/image.zbi`), t, { more: NO_RETRY });
  const j = journalOf(t)!;
  expect(j.chunksDone).toBeGreaterThanOrEqual(32);
  return { t, j };
}

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
