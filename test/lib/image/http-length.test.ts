/**
 * The image's length learned after the first answer: a first `200` that does
 * not say it (chunked, no Content-Length) breaks off, and the `206` of the
 * reconnection says it (`Content-Range: bytes N-M/LENGTH`). From then on the
 * length is known as if the first answer had said it: a body that ends short
 * of it is a break (asked for again), a later `bytes N-M/*` that ends short of
 * it is a short range (the next one follows), and a later answer naming
 * another length is IO "the image changed on the server", in this open and
 * in the source's later ones. The plain-socket server of fixture.ts on
 * 127.0.0.1, which breaks a connection once the test's reader has taken the
 * bytes sent (the runtime drops the ones it has not).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { httpSource, type RetryEvent } from "../../../lib/image/source.ts";
import { rawHttpServer, variedBytes, type RawAnswer, type RawRequest } from "./fixture.ts";

/** The image, the first answer's break, a short range's size, and the longer image that replaces it. */
const IMAGE = variedBytes(300_000, 5);
const L = IMAGE.length;
const B = 50_000;
const S = 60_000;
const GROWN = variedBytes(L + 1000, 6);
const L2 = GROWN.length;

const requests: { path: string; range: string | null }[] = [];
let server: { port: number; stop(): void };
const url = (path: string) => `http://127.0.0.1:${server.port}${path}`;

/**
 * The first request of every path: `200`, chunked (no length), reset after B bytes once
 * the reader has them (/cl/: with its Content-Length). The ranges after it, by path:
 *
 *   /short/    from B: 206 `bytes B-(L-1)/L` whose chunked body ends cleanly after S bytes; later: the rest
 *   /unknown/  from B: 206 `bytes B-(B+S-1)/L`; later: S bytes at most, `bytes N-M/*`
 *   /grown/    from B: 206 `bytes B-(B+S-1)/L`; later: the rest of an image of L2 bytes, `/L2`
 *   /cl/       from B: the rest of an image of L2 bytes, `/L2`
 *   /again/    byte 1000: the rest of an image of L2 bytes, `/L2`; else the rest
 */
function answer(req: RawRequest): RawAnswer {
  const path = req.path;
  const range = req.headers.get("range") ?? null;
  requests.push({ path, range });
  const from = Number(/^bytes=(\d+)-$/.exec(range ?? "")?.[1] ?? 0);
  if (from === 0) return { status: 200, body: IMAGE, breakAfter: B, sized: path === "/cl/image.zbi" };
  const partial = (bytes: Uint8Array, last: number, total = String(bytes.length)): RawAnswer => ({ status: 206, headers: { "content-range": `bytes ${from}-${last}/${total}` }, body: bytes.slice(from, last + 1) });
  const slice = (total?: string) => partial(IMAGE, Math.min(from + S, L) - 1, total);
  switch (path) {
    case "/short/image.zbi":
      return from === B ? { ...partial(IMAGE, L - 1), body: IMAGE.slice(B, B + S), chunked: true } : partial(IMAGE, L - 1);
    case "/unknown/image.zbi":
      return from === B ? slice() : slice("*");
    case "/grown/image.zbi":
      return from === B ? slice() : partial(GROWN, L2 - 1);
    default:
      return from === B && path === "/again/image.zbi" ? partial(IMAGE, L - 1) : partial(GROWN, L2 - 1);
  }
}

/** Bytes the test's reader has taken (each test starts it at 0), and who waits for a count. */
let taken = 0;
let waiters: { until: number; done(): void }[] = [];
/** Every byte of a source's stream, in one buffer, each part counted in `taken` as it is taken. */
async function readAll(body: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const p of body) {
    parts.push(p);
    taken += p.length;
    waiters = waiters.filter((w) => (taken >= w.until ? (w.done(), false) : true));
  }
  return new Uint8Array(Buffer.concat(parts));
}

beforeAll(async () => {
  // The break comes once the reader has the bytes before it (the first answer's: B).
  server = await rawHttpServer(answer, () => new Promise<void>((done) => (taken >= B ? done() : waiters.push({ until: B, done }))));
});
afterAll(() => server.stop());

describe("the image's length said first by a reconnection's 206 (the first 200 was chunked)", () => {
  const ranges = (...from: number[]) => [null, ...from.map((n) => `bytes=${n}-`)];
  const changed = (at: number) => `IO: cannot resume URL at byte ${at}: the image changed on the server since the download began (${L} bytes then, ${L2} now)`;
  test.each<{ name: string; path: string; outcome: string; asked: (string | null)[]; retries: number[] }>([
    { name: "a body that ends short of it: a break, asked for again from there", path: "short", outcome: "the image", asked: ranges(B, B + S), retries: [B, B + S] },
    {
      name: "a later range of unknown length (bytes N-M/*) that ends short of it: the next range follows at once",
      path: "unknown",
      outcome: "the image",
      asked: ranges(...Array.from({ length: Math.ceil((L - B) / S) }, (_, i) => B + i * S)),
      retries: [B],
    },
    { name: "a later range naming another length: IO, the image changed", path: "grown", outcome: changed(B + S), asked: ranges(B, B + S), retries: [B] },
    { name: "(said by the first 200's Content-Length) a reconnection naming another: IO, the image changed", path: "cl", outcome: changed(B), asked: ranges(B), retries: [B] },
  ])("$name", async ({ path, outcome, asked, retries }) => {
    requests.length = 0;
    taken = 0;
    const events: RetryEvent[] = [];
    const u = url(`/${path}/image.zbi`);
    const got = await httpSource(u, { retries: 3, delayMs: () => 0, onRetry: (r) => events.push(r) }).open(0).then(readAll).then(
      (b) => (Buffer.from(b).equals(Buffer.from(IMAGE)) ? "the image" : `${b.length} bytes, not the image`),
      (e: { code?: string; message?: string }) => `${e.code}: ${e.message?.replace(u, "URL")}`,
    );
    expect({ got, asked: requests.map((r) => r.range), retries: events.map((r) => r.at) }).toEqual({ got: outcome, asked, retries });
  });

  test("the source's next open (a resume's) compares with it: another length is IO, the image changed", async () => {
    requests.length = 0;
    taken = 0;
    const u = url("/again/image.zbi");
    const source = httpSource(u, { retries: 3, delayMs: () => 0 });
    const first = await readAll(await source.open(0));
    const got = await source.open(1000).then(readAll).then(
      (b) => `${b.length} bytes`,
      (e: { code?: string; message?: string }) => `${e.code}: ${e.message?.replace(u, "URL")}`,
    );
    expect({ first: Buffer.from(first).equals(Buffer.from(IMAGE)), got, asked: requests.map((r) => r.range) }).toEqual({ first: true, got: changed(1000), asked: ranges(B, 1000) });
  });
});
