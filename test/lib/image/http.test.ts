/**
 * Installing from a URL and from stdin with the compiled binary. A Bun.serve
 * server on 127.0.0.1 (a free port, stopped in afterAll) serves one image of
 * 48 MiB raw (1 MiB chunks, so the journal advances at chunk 32) in modes:
 *
 *   /range/…    honours Range (206 + Content-Range)
 *   /norange/…  ignores Range (always 200 and the whole file)
 *   /cut-N/…    sends N bytes, then resets the connection — the first request only;
 *               later requests are served as /range/ (a flaky link)
 *   /stall-N/…  sends N bytes, then nothing, with the connection left open
 *
 * and records every request with its Range header.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Journal } from "../../../lib/image/journal.ts";
import { buildImage, KEYS, listTar, requireBinary, sha256, trustDir, variedBytes, type Built } from "./fixture.ts";

const CHUNK = 1 << 20;
let root = "";
let bin = "";
let img: Built;
let trust = "";
let dataOffset = 0;
let server: ReturnType<typeof Bun.serve>;
const requests: { path: string; range: string | null; status: number }[] = [];
const cutDone = new Set<string>();

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
      const log = (r: Response) => (requests.push({ path, range, status: r.status }), r);
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
      const cut = /^\/cut-(\d+)\//.exec(path);
      if (cut && !cutDone.has(path)) {
        cutDone.add(path);
        const n = Number(cut[1]);
        let sent = 0;
        const body = new ReadableStream({
          type: "bytes",
          async pull(c) {
            if (sent >= n) {
              await Bun.sleep(200); // let the bytes sent so far reach the client, then reset the connection
              c.error();
              return;
            }
            const k = Math.min(n - sent, 256 << 10);
            c.enqueue(bytes.slice(sent, sent + k));
            sent += k;
          },
        });
        return log(new Response(body, { status: 200 }));
      }
      if (!/^\/(range|norange|cut-\d+)\/image\.zbi$/.test(path)) return log(new Response("not found\n", { status: 404 }));
      const m = /^bytes=(\d+)-$/.exec(range ?? "");
      if (m && !path.startsWith("/norange/")) {
        const from = Number(m[1]);
        return log(new Response(bytes.slice(from), { status: 206, headers: { "content-range": `bytes ${from}-${bytes.length - 1}/${bytes.length}` } }));
      }
      return log(new Response(bytes, { status: 200 }));
    },
  });
}, 60_000);
afterAll(() => {
  server?.stop(true);
  if (root) rmSync(root, { recursive: true, force: true });
});

const url = (path: string) => `http://127.0.0.1:${server.port}${path}`;
let seq = 0;
const target = () => join(root, `t${seq++}.img`);
const journalOf = (t: string): Journal | null => (existsSync(`${t}.zb-journal`) ? (JSON.parse(readFileSync(`${t}.zb-journal`, "utf8")) as Journal) : null);

/** `zb image install SOURCE --to T …` (async: the server runs in this process). */
async function zb(source: string, to: string, o: { resume?: boolean; stdin?: string; more?: string[] } = {}) {
  const args = [bin, "image", "install", source, "--payload", "rootfs", "--to", to, "--trust", trust, "--json", ...(o.resume ? ["--resume"] : []), ...(o.more ?? [])];
  const p = Bun.spawn(args, { stdin: o.stdin ? Bun.file(o.stdin) : "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, ZB_NO_REBOOT: "1" } });
  const [out, err, exit] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { exit, err, result: exit === 0 ? (JSON.parse(out) as Record<string, unknown>) : null };
}
/** The requests made since `mark`. */
const since = (mark: number) => requests.slice(mark).map(({ path, range, status }) => ({ path, range, status }));
const rawSha = () => sha256(img.raw.rootfs!);
/** Cut the payload well past chunk 32 (the first journal update), at 85 % of the image. */
const payloadCut = () => Math.floor(img.bytes.length * 0.85);

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
  ])("a connection reset $where fails with IO or IMG_FORMAT, and the target is not marked complete", async ({ at, journal }) => {
    const t = target();
    const r = await zb(url(`/cut-${at()}/image.zbi`), t);
    expect(r.exit).not.toBe(0);
    if (journal) expect(journalOf(t)).toMatchObject({ state: "failed" });
    else expect(journalOf(t)).toBeNull();
    expect(r.err).toMatch(/^zb: cannot /); // a ZbError, not "zb: internal error: …" (exit 70)
    expect([5, 13]).toContain(r.exit);
  }, 30_000);

  test("--resume after a reset asks for the rest with Range and ends identical", async () => {
    const t = target();
    const cutUrl = url(`/cut-${payloadCut() + 1}/image.zbi`);
    const cut = await zb(cutUrl, t);
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
    const t = target();
    await zb(url(`/cut-${payloadCut() + 2}/image.zbi`), t);
    const j = journalOf(t)!;
    expect(j.chunksDone).toBeGreaterThanOrEqual(32);
    const r = await zb(url("/norange/image.zbi"), t, { resume: true });
    expect(r.exit).toBe(5);
    expect(r.err).toMatch(/cannot resume http:\/\/127\.0\.0\.1:\d+\/norange\/image\.zbi at byte \d+: the server answered 200 instead of 206 Partial Content/);
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
    const r = await zb(url(`/stall-${at()}/image.zbi`), t, { more: ["--timeout", "1"] });
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
    const t = target();
    await zb(url(`/cut-${payloadCut() + 3}/image.zbi`), t);
    const j = journalOf(t)!;
    expect(j.chunksDone).toBeGreaterThanOrEqual(32);
    const r = await zb("-", t, { resume: true, stdin: img.path });
    expect({ exit: r.exit, err: r.err }).toEqual({ exit: 0, err: "" });
    expect(r.result).toMatchObject({ ok: true, resumedFrom: j.chunksDone });
    expect(sha256(readFileSync(t))).toBe(rawSha());
  }, 30_000);
});
