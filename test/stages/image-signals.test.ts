/**
 * SIGINT and SIGTERM during `zb image install|verify|create`, through
 * dist/zb-x64: the command stops cleanly with a typed error (exit 130 or
 * 143), ends stdout with the JSON failure line (--progress=json), ends a
 * progress bar's line, leaves no temp files, and an install's journal lets
 * `--resume` finish byte-identical to a clean install.
 *
 * Synchronisation is by events: the signal goes out once the first progress
 * event (or bar) has been read. The command cannot have finished by then:
 * it writes its events synchronously into a pipe (64 KiB) that this test
 * stops reading until the signal is sent, so it gets at most two pipe-fulls
 * of events past that first one (~700 install, ~2100 verify, ~1700 create
 * events), then reaches the point where it takes the signal within 32 MiB
 * (512 chunks); the image has 3072 chunks. Stdin and URL sources get only
 * the image's first 8 MiB and wait for more when the signal comes.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { requireBinary, variedBytes } from "../lib/image/fixture.ts";

let BIN = "";
let dir = "";
const sha256 = (path: string) => new Bun.CryptoHasher("sha256").update(readFileSync(path)).digest("hex");
const run = (...args: string[]) => Bun.spawnSync([BIN, ...args], { cwd: dir });

beforeAll(() => {
  BIN = requireBinary();
  dir = mkdtempSync(join(tmpdir(), "zb-imgsig-"));
  // 192 MiB that zstd cannot shrink: 3072 chunks of 64 KiB, stored as large as raw.
  writeFileSync(join(dir, "rootfs.img"), variedBytes(192 << 20, 41, 1));
  expect(run("key", "gen", "--alg", "ed25519", "-o", "ed").exitCode).toBe(0);
  mkdirSync(join(dir, "trust"));
  copyFileSync(join(dir, "ed.pub"), join(dir, "trust/ed.pub"));
  expect(run("image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "rootfs.img", "--key", "ed", "--chunk-size", "65536", "-o", "big.zbi").exitCode).toBe(0);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Stopped {
  /** The exit status, or the signal that killed the process. */
  exit: number | string;
  stdout: string;
  stderr: string;
}

/**
 * Run zb with `args`; once `ready` matches what it wrote to stdout (or, with
 * `watch: "stderr"`, to stderr), send `signal`; read everything to the end.
 * @param stdin the first bytes of stdin, which then stays open and idle
 */
async function stopWhen(args: string[], signal: "SIGINT" | "SIGTERM", ready: RegExp, opts: { stdin?: Uint8Array; watch?: "stdout" | "stderr" } = {}): Promise<Stopped> {
  const p = Bun.spawn([BIN, ...args], { cwd: dir, stdin: opts.stdin ? "pipe" : "ignore", stdout: "pipe", stderr: "pipe" });
  // What zb has not read when it stops can no longer be written (EPIPE): that is expected.
  const quietly = (f: () => unknown) => {
    try {
      void Promise.resolve(f()).catch(() => undefined);
    } catch {
      // the pipe is closed
    }
  };
  if (opts.stdin) {
    quietly(() => p.stdin!.write(opts.stdin!));
    quietly(() => p.stdin!.flush());
  }
  const streams = { stdout: p.stdout.getReader(), stderr: p.stderr.getReader() };
  const text = { stdout: "", stderr: "" };
  const watched = opts.watch ?? "stdout";
  const decoder = new TextDecoder();
  const readMore = async (which: "stdout" | "stderr") => {
    const r = await streams[which].read();
    if (!r.done) text[which] += decoder.decode(r.value);
    return !r.done;
  };
  while (!ready.test(text[watched])) if (!(await readMore(watched))) break;
  p.kill(signal);
  await Promise.all((["stdout", "stderr"] as const).map(async (w) => {
    while (await readMore(w));
  }));
  await p.exited;
  if (opts.stdin) quietly(() => p.stdin!.end());
  return { exit: p.exitCode ?? p.signalCode ?? "?", stdout: text.stdout, stderr: text.stderr };
}

const temps = () => readdirSync(dir).filter((f) => f.endsWith(".zb-spool") || f.endsWith(".zb-new")).sort();
const lastLine = (out: string) => JSON.parse(out.trim().split("\n").at(-1)!) as Record<string, unknown>;
const PROGRESS = /"type":"progress"/;
const firstMiB = (n: number) => readFileSync(join(dir, "big.zbi")).subarray(0, n << 20);

describe("--progress=json: exit 130 (SIGINT) or 143 (SIGTERM), and the failure as the last JSON line", () => {
  const outcome = (signal: "SIGINT" | "SIGTERM", action: string) => ({
    code: signal === "SIGINT" ? "INTERRUPTED" : "TERMINATED", exit: signal === "SIGINT" ? 130 : 143,
    message: `cannot ${action}: ${signal === "SIGINT" ? "interrupted" : "terminated"} (${signal})`,
  });

  // Before: the process died of the signal (no exit status, no result line), its journal "writing".
  test.each([
    { signal: "SIGINT", from: "big.zbi" },
    { signal: "SIGTERM", from: "big.zbi" },
    { signal: "SIGINT", from: "stdin, idle after 8 MiB" },
  ] as const)("install from $from, $signal: journal failed, nothing installed; --resume then ends byte-identical", async ({ signal, from }) => {
    const target = `slot-${signal}-${from === "big.zbi" ? "file" : "stdin"}.img`;
    const stdin = from === "big.zbi" ? undefined : firstMiB(8);
    const r = await stopWhen(["image", "install", stdin ? "-" : "big.zbi", "--trust", "trust", "--payload", "rootfs", "--to", target, "--progress=json"], signal, PROGRESS, stdin ? { stdin } : {});
    const want = outcome(signal, "install rootfs");
    expect({ exit: r.exit, last: lastLine(r.stdout), stderr: r.stderr, journal: JSON.parse(readFileSync(join(dir, `${target}.zb-journal`), "utf8")) }).toEqual({
      exit: want.exit,
      last: { type: "result", ok: false, ...want, hint: "run the same command with --resume to continue where it stopped" },
      stderr: `zb: ${want.message}\nzb: hint: run the same command with --resume to continue where it stopped\n`,
      journal: expect.objectContaining({ state: "failed", error: want.message }),
    });
    const resumed = run("image", "install", "big.zbi", "--trust", "trust", "--payload", "rootfs", "--to", target, "--resume", "--json");
    expect({ exit: resumed.exitCode, ok: lastLine(resumed.stdout.toString()).ok, same: sha256(join(dir, target)) === sha256(join(dir, "rootfs.img")) }).toEqual({ exit: 0, ok: true, same: true });
  });

  test.each([
    { signal: "SIGINT", from: "big.zbi" },
    { signal: "SIGINT", from: "stdin, idle after 8 MiB" },
  ] as const)("verify from $from, $signal", async ({ signal, from }) => {
    const stdin = from === "big.zbi" ? undefined : firstMiB(8);
    const r = await stopWhen(["image", "verify", stdin ? "-" : "big.zbi", "--trust", "trust", "--progress=json"], signal, PROGRESS, stdin ? { stdin } : {});
    const want = outcome(signal, `verify ${stdin ? "stdin" : "big.zbi"}`);
    expect({ exit: r.exit, last: lastLine(r.stdout), stderr: r.stderr }).toEqual({ exit: want.exit, last: { type: "result", ok: false, ...want }, stderr: `zb: ${want.message}\n` });
  });

  test("verify from a URL whose server stalls after 8 MiB, SIGINT: stopped at once, not after the 600 s idle limit", async () => {
    // The body's first 8 MiB, then nothing: the connection stays open until the test stops the server.
    const server = Bun.serve({
      hostname: "127.0.0.1", port: 0, idleTimeout: 0,
      fetch: () => new Response(new ReadableStream({ start: (c) => c.enqueue(firstMiB(8)) }), { headers: { "content-length": String(readFileSync(join(dir, "big.zbi")).length) } }),
    });
    try {
      const url = `http://127.0.0.1:${server.port}/big.zbi`;
      const r = await stopWhen(["image", "verify", url, "--trust", "trust", "--timeout", "600", "--progress=json"], "SIGINT", PROGRESS);
      const want = outcome("SIGINT", `verify ${url}`);
      expect({ exit: r.exit, last: lastLine(r.stdout) }).toEqual({ exit: want.exit, last: { type: "result", ok: false, ...want } });
    } finally {
      void server.stop(true);
    }
  });

  // Before: the spool file .new.zbi.rootfs.zb-spool stayed beside the output.
  test.each(["SIGINT", "SIGTERM"] as const)("create, %s: no spool file, no output, an older image there stays", async (signal) => {
    writeFileSync(join(dir, "new.zbi"), readFileSync(join(dir, "big.zbi")).subarray(0, 1 << 20)); // starts like an image: create may replace it
    const before = sha256(join(dir, "new.zbi"));
    const r = await stopWhen(["image", "create", "--compatible", "c", "--version", "2", "--serial", "2", "--rootfs", "rootfs.img", "--key", "ed", "--chunk-size", "65536", "-o", "new.zbi", "--progress=json"], signal, PROGRESS);
    const want = outcome(signal, "create new.zbi");
    expect({ exit: r.exit, last: lastLine(r.stdout), temps: temps(), older: sha256(join(dir, "new.zbi")) === before }).toEqual({ exit: want.exit, last: { type: "result", ok: false, ...want }, temps: [], older: true });
  });
});

test("--progress=bar, SIGINT: the bar's line is ended before the message; exit 130", async () => {
  // Before: the bar was left mid-line and the process died of the signal with no message.
  const r = await stopWhen(["image", "install", "-", "--trust", "trust", "--payload", "rootfs", "--to", "slot-bar.img", "--progress=bar"], "SIGINT", /\] +\d+%/, { stdin: firstMiB(8), watch: "stderr" });
  expect({ exit: r.exit, stdout: r.stdout, tail: r.stderr.slice(r.stderr.lastIndexOf("\r")) }).toEqual({
    exit: 130, stdout: "",
    tail: expect.stringMatching(/^\rinstall rootfs \[[#.]+\] +\d+% [^\n]* \nzb: cannot install rootfs: interrupted \(SIGINT\)\nzb: hint: [^\n]+\n$/),
  });
});
