/**
 * The low-speed limit of URL sources: a server that trickles (a byte every
 * 20 ms, ~50 bytes/s, Bun.serve on 127.0.0.1) never leaves the idle timer a
 * second without a byte, so only the limit ends the download — fewer than
 * `minSpeed` bytes a second over the `--timeout` span is a stall, retried as
 * one, then IO. The limit is made small here through the option; nothing
 * asserts how long anything took.
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
      const bytes = path === "/small" ? small : img.bytes;
      const from = Number(/^bytes=(\d+)-$/.exec(range ?? "")?.[1] ?? 0);
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
