/**
 * The low-speed limit of URL sources: a server that trickles (a byte every
 * 20 ms, ~50 bytes/s, Bun.serve on 127.0.0.1) never leaves the idle timer a
 * second without a byte, so only the limit ends the download — fewer than
 * `minSpeed` bytes a second over the `--timeout` span is a stall, retried as
 * one, then IO. The limit's window spans the requests of one download: a
 * server that answers every Range with a few bytes (a short 206) does not
 * start it over with each answer. The limit is made small here through the
 * option; nothing asserts how long anything took.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { httpSource, type RetryEvent } from "../../../lib/image/source.ts";
import { buildImage, KEYS, requireBinary, trustDir, variedBytes, type Built } from "./fixture.ts";

let root = "";
let img: Built;
let server: ReturnType<typeof Bun.serve>;
let base = "";
const requests: (string | null)[] = [];

/** `bytes` one at a time, 20 ms apart. */
function trickle(bytes: Uint8Array): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream({
    async pull(c) {
      if (at === bytes.length) return c.close();
      await Bun.sleep(20);
      c.enqueue(bytes.slice(at, ++at));
    },
  });
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "zb-speed-"));
  img = await buildImage(root, { rootfs: variedBytes(256 << 10, 5), boot: false, signers: [KEYS.k1] });
  const small = variedBytes(150, 9);
  server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 0,
    fetch(req) {
      const path = new URL(req.url).pathname;
      const range = req.headers.get("range");
      requests.push(range);
      const bytes = path === "/image.zbi" ? img.bytes : small;
      const from = Number(/^bytes=(\d+)-$/.exec(range ?? "")?.[1] ?? 0);
      if (path === "/slices" && from > 0) {
        // A valid 206 for 5 bytes at most: the client asks for the next range at once.
        const last = Math.min(bytes.length, from + 5) - 1;
        const h = { "content-range": `bytes ${from}-${last}/${bytes.length}`, "content-length": String(last + 1 - from) };
        return new Response(trickle(bytes.slice(from, last + 1)), { status: 206, headers: h });
      }
      if (path === "/breaks" && from > 0) {
        // A 206 for the whole rest whose body ends after 5 bytes: a connection that broke, retried.
        return new Response(trickle(bytes.slice(from, from + 5)), { status: 206, headers: { "content-range": `bytes ${from}-${bytes.length - 1}/${bytes.length}` } });
      }
      const headers: Record<string, string> = { "content-length": String(bytes.length - from) };
      if (from > 0) headers["content-range"] = `bytes ${from}-${bytes.length - 1}/${bytes.length}`;
      return new Response(trickle(bytes.subarray(from)), { status: from > 0 ? 206 : 200, headers });
    },
  });
  base = `http://127.0.0.1:${server.port}`;
});
afterAll(() => {
  server.stop(true);
  rmSync(root, { recursive: true, force: true });
});

async function readAll(body: AsyncIterable<Uint8Array>): Promise<number> {
  let n = 0;
  for await (const p of body) n += p.length;
  return n;
}

describe("a server that trickles (~50 bytes/s) under a limit of 100 bytes/s over 1 s", () => {
  test("the body fails as too slow, retried once from the byte reached, then IO", async () => {
    requests.length = 0;
    const retries: RetryEvent[] = [];
    const got = await httpSource(`${base}/small`, { idleSeconds: 1, minSpeed: 100, retries: 1, delayMs: () => 0, onRetry: (r) => retries.push(r) }).open(0).then(readAll).then(
      (n) => `ok: ${n} bytes`,
      (e: { code?: string; message?: string }) => `${e.code}: ${e.message?.replace(base, "URL").replace(/sent \d+ bytes/, "sent N bytes")}`,
    );
    expect({ got, retries: retries.map((r) => r.why.replace(/sent \d+ bytes/, "sent N bytes")), second: requests[1] === `bytes=${retries[0]?.at}-` && (retries[0]?.at ?? 0) > 0 }).toEqual({
      got: "IO: cannot download URL/small: the server sent N bytes in 1 s, slower than 100 bytes/s",
      retries: ["the server sent N bytes in 1 s, slower than 100 bytes/s"],
      second: true,
    });
  });

  test("every Range answered with 5 bytes (a short 206): the window spans the answers, so the trickle fails as too slow", async () => {
    requests.length = 0;
    const got = await httpSource(`${base}/slices`, { idleSeconds: 1, minSpeed: 100, retries: 0 }).open(1).then(readAll).then(
      (n) => `ok: ${n} bytes`,
      (e: { code?: string; message?: string }) => `${e.code}: ${e.message?.replace(base, "URL").replace(/sent \d+ bytes/, "sent N bytes")}`,
    );
    expect({ got, slices: requests.length > 1 }).toEqual({ got: "IO: cannot download URL/slices: the server sent N bytes in 1 s, slower than 100 bytes/s", slices: true });
  });

  test("every answer breaks off after 5 bytes: the window spans the reconnections, so a retry is for the trickle", async () => {
    const retries: RetryEvent[] = [];
    await httpSource(`${base}/breaks`, { idleSeconds: 1, minSpeed: 100, retries: 30, delayMs: () => 0, onRetry: (r) => retries.push(r) }).open(1).then(readAll).catch(() => undefined);
    const why = new Set(retries.map((r) => r.why.replace(/\d+/g, "N")));
    expect(why).toEqual(new Set(["the connection closed at byte N of N", "the server sent N bytes in N s, slower than N bytes/s"]));
  });

  test("minSpeed 0 turns the limit off: the whole body arrives", async () => {
    const got = await httpSource(`${base}/small`, { idleSeconds: 1, minSpeed: 0 }).open(0).then(readAll);
    expect(got).toBe(150);
  });
});

describe("zb image install --min-speed", () => {
  test("--timeout 1 --min-speed 100 --retries 0 from a trickle: the stall error, exit 5, no journal (the header never arrived)", async () => {
    const bin = requireBinary();
    const trust = trustDir(root, "trust", [KEYS.k1]);
    const target = join(root, "slot.img");
    // Not spawnSync: the server runs in this process, and would send nothing while it blocked.
    const p = Bun.spawn([bin, "image", "install", `${base}/image.zbi`, "--trust", trust, "--payload", "rootfs", "--to", target, "--timeout", "1", "--min-speed", "100", "--retries", "0"], { stdout: "pipe", stderr: "pipe" });
    const [stderr, exit] = await Promise.all([new Response(p.stderr).text(), p.exited]);
    expect({ exit, stderr: stderr.replace(/sent \d+ bytes/, "sent N bytes"), journal: existsSync(`${target}.zb-journal`) }).toEqual({
      exit: 5,
      stderr: `zb: cannot download ${base}/image.zbi: the server sent N bytes in 1 s, slower than 100 bytes/s\n`,
      journal: false,
    });
  });

  test.each([["x"], ["-1"]])("--min-speed %s is USAGE", (v) => {
    const r = Bun.spawnSync([requireBinary(), "image", "info", `${base}/image.zbi`, "--min-speed", v]);
    expect({ exit: r.exitCode, stderr: r.stderr.toString() }).toEqual({ exit: 2, stderr: expect.stringContaining(`cannot use --min-speed ${JSON.stringify(v)}: expected a whole number`) });
  });
});
