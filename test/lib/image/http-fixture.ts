/**
 * The servers of the HTTP install tests (http.test.ts, http-retry.test.ts),
 * one set per test file. Servers on 127.0.0.1 (free ports, stopped in
 * afterAll) serve one image of 48 MiB raw (1 MiB chunks, so the journal
 * advances at chunk 32) in modes. Bun.serve:
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
 * and answers a test file sets itself, by path (`routes`: a path under /raw/ → its answer,
 * given the request, the image and whether it is the first request to that path), also
 * on that server, for answers Bun.serve would not send (RawAnswer.raw: a malformed one),
 *
 * and records every request with its Range, If-Range and Accept-Encoding headers. A
 * second server speaks HTTPS (a certificate made by openssl for 127.0.0.1,
 * trusted by the client through NODE_EXTRA_CA_CERTS) and redirects to the
 * plain one.
 */
import { afterAll, beforeAll, expect } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Journal } from "../../../lib/image/journal.ts";
import { buildImage, connectionsTo, KEYS, listTar, rawHttpServer, requireBinary, sha256, trustDir, untilIdle, variedBytes, type Built, type RawAnswer, type RawRequest } from "./fixture.ts";

/**
 * Registers the calling test file's beforeAll (the image, the servers) and
 * afterAll (stop, remove); call it once at the file's top level. The image,
 * its data offset, the CA file and the servers are there once beforeAll ran.
 */
/** A loopback port nothing listens on (bound, then closed at once): a connection to it is refused. */
export function closedPort(): number {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return port;
}

export function httpFixture() {
  const CHUNK = 1 << 20;
  let root = "";
  let bin = "";
  let img: Built;
  let trust = "";
  let dataOffset = 0;
  let server: ReturnType<typeof Bun.serve>;
  const requests: { path: string; range: string | null; status: number; encoding: string | null; ifRange: string | null }[] = [];
  const cutDone = new Set<string>();
  /** A test file's own answers of the resetting server, by path (under /raw/). */
  const routes = new Map<string, (req: RawRequest, bytes: Uint8Array, first: boolean) => RawAnswer>();
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
        const route = routes.get(req.path);
        const first = !cutDone.has(req.path);
        if (route) cutDone.add(req.path);
        const a = route ? route(req, bytes, first) : breaking(req, bytes);
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

  const portOf = (path: string) => (BREAKING.test(path) || path.startsWith("/raw/") ? resets.port : server.port);
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
  /** A reset fails the run (the reconnections are tested on their own in http-retry.test.ts). */
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

  return {
    requests, watched, takenBy, routes, portOf, url, target, journalOf, zb, since, rawSha, NO_RETRY, payloadCut, cutMidPayload,
    get img() {
      return img;
    },
    get dataOffset() {
      return dataOffset;
    },
    get caFile() {
      return caFile;
    },
    get server() {
      return server;
    },
    get resets() {
      return resets;
    },
    get tls() {
      return tls;
    },
  };
}
