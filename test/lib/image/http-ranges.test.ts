/**
 * A server that answers a `Range: bytes=N-` with a valid 206 for less than
 * the rest (RFC 9110 §14.2 lets it: `Content-Range: bytes N-M/total`, M
 * before the end), as some object stores and CDNs do for large objects: the
 * client asks for the next range at once, without counting a retry or
 * waiting, until it has the rest. A Content-Range that names an impossible
 * range is IO. Bun.serve on 127.0.0.1.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { install } from "../../../lib/image/install.ts";
import { loadTrustDir } from "../../../lib/image/sign.ts";
import { httpSource, type RetryEvent } from "../../../lib/image/source.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { buildImage, KEYS, MIN_CHUNK, readAll, sha256, trustDir, variedBytes, type Built } from "./fixture.ts";

let root = "";
let img: Built;
let server: ReturnType<typeof Bun.serve>;
let base = "";
const requests: { path: string; range: string | null }[] = [];

/**
 * /slices-N/…  a Range gets at most N bytes: 206 with `bytes from-(from+N-1)/total`
 * /backwards/… a Range gets a 206 whose range ends before it starts
 * /beyond/…    a Range gets a 206 whose range ends at or past the image's length
 * /over/…      a Range gets a 206 naming 100 bytes, with the whole rest as its body
 * /unknown-N/… as /slices-N/, without the length: `bytes from-(from+N-1)/*`
 * /stops/…     the first Range gets a 206 for 100 bytes; the next ones get 200 and the whole image
 */
function answer(path: string, range: string | null, bytes: Uint8Array): Response {
  const from = Number(/^bytes=(\d+)-$/.exec(range ?? "")?.[1] ?? 0);
  if (from === 0) return new Response(bytes);
  const partial = (first: number, last: number, body = bytes.slice(first, last + 1)) => new Response(body, { status: 206, headers: { "content-range": `bytes ${first}-${last}/${bytes.length}` } });
  const slices = /^\/slices-(\d+)\//.exec(path);
  if (slices) return partial(from, Math.min(bytes.length, from + Number(slices[1])) - 1);
  const unknown = /^\/unknown-(\d+)\//.exec(path);
  if (unknown) {
    const last = Math.min(bytes.length, from + Number(unknown[1])) - 1;
    return new Response(bytes.slice(from, last + 1), { status: 206, headers: { "content-range": `bytes ${from}-${last}/*` } });
  }
  if (path.startsWith("/stops/")) return from === 1000 ? partial(from, from + 99) : new Response(bytes);
  if (path.startsWith("/backwards/")) return partial(from, from - 1, new Uint8Array(0));
  if (path.startsWith("/beyond/")) return partial(from, bytes.length, bytes.slice(from));
  return partial(from, from + 99, bytes.slice(from));
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "zb-ranges-"));
  img = await buildImage(root, { rootfs: variedBytes(24 * MIN_CHUNK + 5, 17), boot: false, chunkSize: MIN_CHUNK, signers: [KEYS.k1] });
  server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const path = new URL(req.url).pathname;
      const range = req.headers.get("range");
      requests.push({ path, range });
      return answer(path, range, img.bytes);
    },
  });
  base = `http://127.0.0.1:${server.port}`;
});
afterAll(() => {
  server.stop(true);
  rmSync(root, { recursive: true, force: true });
});

describe("a 206 for less than the rest", () => {
  test("the next range is asked for at once: every byte, one request per slice, no retry", async () => {
    requests.length = 0;
    const retries: RetryEvent[] = [];
    const from = 1000;
    const slice = 100_000;
    // No retry allowed: a slice taken for a broken connection would fail the download.
    const got = await readAll(await httpSource(`${base}/slices-${slice}/image.zbi`, { retries: 0, onRetry: (r) => retries.push(r) }).open(from));
    const asked = Array.from({ length: Math.ceil((img.bytes.length - from) / slice) }, (_, i) => `bytes=${from + i * slice}-`);
    expect({ same: Buffer.from(got).equals(Buffer.from(img.bytes.subarray(from))), retries, asked: requests.map((r) => r.range) }).toEqual({ same: true, retries: [], asked });
  });

  test("install --resume over such a server completes, byte-identical", async () => {
    const host = new HostSys();
    const trust = loadTrustDir(host, trustDir(root, "trust", [KEYS.k1]));
    const target = join(root, "slot.img");
    const journal = `${target}.j`;
    const url = `${base}/slices-70000/image.zbi`;
    await install(host, httpSource(url), { trust }, { payload: "rootfs", target, journal });
    const j = JSON.parse(readFileSync(journal, "utf8")) as Record<string, unknown>;
    // As a run cut after chunk 4 leaves it: the rest of the target not written yet.
    const t = new Uint8Array(readFileSync(target));
    t.fill(0, 4 * MIN_CHUNK);
    writeFileSync(target, t);
    writeFileSync(journal, JSON.stringify({ ...j, state: "failed", chunksDone: 4, error: "cut" }));
    requests.length = 0;
    const r = await install(host, httpSource(url, { retries: 0 }), { trust }, { payload: "rootfs", target, journal, resume: true });
    expect({ from: r.resumedFrom, target: sha256(new Uint8Array(readFileSync(target))), state: JSON.parse(readFileSync(journal, "utf8")).state, slices: requests.length > 3 }).toEqual({ from: 4, target: sha256(img.raw.rootfs!), state: "complete", slices: true });
  });

  test("of unknown length (bytes N-M/*) after an answer that said the length: the next range follows at once, as for a known length", async () => {
    requests.length = 0;
    const src = httpSource(`${base}/unknown-100000/image.zbi`, { retries: 0 });
    // A resume's first open reads the header from byte 0 (a 200 with Content-Length), then opens at an offset.
    const head = await src.open(0);
    for await (const _ of head) break;
    const from = 1000;
    const got = await readAll(await src.open(from));
    const asked = Array.from({ length: Math.ceil((img.bytes.length - from) / 100_000) }, (_, i) => `bytes=${from + i * 100_000}-`);
    expect({ same: Buffer.from(got).equals(Buffer.from(img.bytes.subarray(from))), asked: requests.slice(1).map((r) => r.range) }).toEqual({ same: true, asked });
  });

  test("the next range answered with 200 and the whole image: IO saying the server stopped serving ranges", async () => {
    const url = `${base}/stops/image.zbi`;
    const got = await httpSource(url, { retries: 3, delayMs: () => 0 }).open(1000).then(readAll).then(
      () => "ok",
      (e: { code?: string; message?: string }) => `${e.code}: ${e.message?.replace(url, "URL")}`,
    );
    expect(got).toBe("IO: cannot download URL: the server answered the request for the next range (from byte 1100) with the whole image: it stopped serving byte ranges");
  });

  test.each([
    { name: "a range that ends before it starts", path: "backwards", says: `the server's partial answer names an impossible range ("bytes 1000-999/LEN")` },
    { name: "a range that ends at the image's length or past it", path: "beyond", says: `the server's partial answer names an impossible range ("bytes 1000-LEN/LEN")` },
    { name: "a body longer than the range named", path: "over", says: "the server sent more than the range it named (bytes up to 1099)" },
  ])("$name: IO", async ({ path, says }) => {
    const url = `${base}/${path}/image.zbi`;
    const got = await httpSource(url, { retries: 3, delayMs: () => 0 }).open(1000).then(readAll).then(
      () => "ok",
      (e: { code?: string; message?: string }) => `${e.code}: ${e.message?.replace(url, "URL").replaceAll(String(img.bytes.length), "LEN")}`,
    );
    expect(got).toMatch(new RegExp(`^IO: cannot (resume|download) URL(?: at byte 1000)?: ${says.replace(/[()[\]^$.*+?{}|\\]/g, "\\$&")}$`));
  });
});
