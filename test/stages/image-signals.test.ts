/**
 * SIGINT, SIGTERM and SIGHUP during `zb image install|verify|create|sign`
 * and `info`, through dist/zb-x64: the command stops cleanly with a typed
 * error (exit 130, 143 or 129), ends stdout with the JSON failure line
 * (--progress=json, --json), ends a progress bar's line, leaves no temp
 * files, and an install's journal lets `--resume` finish byte-identical to a
 * clean install.
 *
 * Synchronisation is by events: the signal goes out once the first progress
 * event (or bar) has been read. The command cannot have finished by then:
 * it writes its events synchronously into a pipe (64 KiB) that this test
 * stops reading until the signal is sent, so it gets at most two pipe-fulls
 * of events past that first one (~700 install, ~2100 verify, ~1700 create
 * events), then reaches the point where it takes the signal within 32 MiB
 * (512 chunks); the image has 3072 chunks. Stdin and URL sources get only
 * the image's first 8 MiB and wait for more when the signal comes.
 *
 * `sign` has no progress events, and copies the 192 MiB image in about a
 * second: too fast to catch reliably while it reads a file. It reads a
 * stdin or a URL that gives the first 8 MiB and then nothing, and the
 * signal goes out once its temp file `.OUT.zb-new` exists (an fs.watch
 * event): it is then mid-copy and cannot finish. `info` reads only the
 * header and writes nothing until it is done: it gets the first 1 KiB (the
 * marker entry) and the signal goes out once it is idle, waiting for more
 * (fixture.ts untilIdle).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, watch, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { requireBinary, untilIdle, variedBytes } from "../lib/image/fixture.ts";

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

type Signal = "SIGINT" | "SIGTERM" | "SIGHUP";

/**
 * Run zb with `args`; once `ready` matches what it wrote to stdout (or, with
 * `watch: "stderr"`, to stderr), or once `ready(pid)` resolves, send
 * `signal`; read everything to the end.
 * @param stdin the first bytes of stdin, which then stays open and idle
 */
async function stopWhen(args: string[], signal: Signal, ready: RegExp | ((pid: number) => Promise<unknown>), opts: { stdin?: Uint8Array; watch?: "stdout" | "stderr" } = {}): Promise<Stopped> {
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
  const readAll = async (w: "stdout" | "stderr") => {
    while (await readMore(w));
  };
  if (ready instanceof RegExp) {
    while (!ready.test(text[watched])) if (!(await readMore(watched))) break;
    p.kill(signal);
    await Promise.all([readAll("stdout"), readAll("stderr")]);
  } else {
    // Nothing to wait for in the output: it is read on meanwhile, so zb never waits for the test to take it.
    const reading = Promise.all([readAll("stdout"), readAll("stderr")]);
    await Promise.race([ready(p.pid), p.exited]);
    p.kill(signal);
    await reading;
  }
  await p.exited;
  if (opts.stdin) quietly(() => p.stdin!.end());
  return { exit: p.exitCode ?? p.signalCode ?? "?", stdout: text.stdout, stderr: text.stderr };
}

const temps = () => readdirSync(dir).filter((f) => f.endsWith(".zb-spool") || f.endsWith(".zb-new")).sort();
/** Resolves once `name` exists in the test's folder (inotify through fs.watch, and a look after the watch is set). */
const untilExists = (name: string) => new Promise<void>((resolve) => {
  const w = watch(dir, () => {
    if (existsSync(join(dir, name))) {
      w.close();
      resolve();
    }
  });
  if (existsSync(join(dir, name))) {
    w.close();
    resolve();
  }
});
const lastLine = (out: string) => JSON.parse(out.trim().split("\n").at(-1)!) as Record<string, unknown>;
const PROGRESS = /"type":"progress"/;
const firstMiB = (n: number) => readFileSync(join(dir, "big.zbi")).subarray(0, n << 20);
/** A server on 127.0.0.1 that sends big.zbi's `start`, then nothing: the connection stays open until the test stops it. */
const stalledServer = (start: Uint8Array) => Bun.serve({
  hostname: "127.0.0.1", port: 0, idleTimeout: 0,
  fetch: () => new Response(new ReadableStream({ start: (c) => c.enqueue(start) }), { headers: { "content-length": String(readFileSync(join(dir, "big.zbi")).length) } }),
});

const SIGNALS = { SIGINT: ["INTERRUPTED", 130, "interrupted"], SIGTERM: ["TERMINATED", 143, "terminated"], SIGHUP: ["HANGUP", 129, "hung up"] } as const;
/** The failure a signal makes of `action`: code, exit status and message. */
const outcome = (signal: Signal, action: string) => {
  const [code, exit, word] = SIGNALS[signal];
  return { code, exit, message: `cannot ${action}: ${word} (${signal})` };
};

describe("--progress=json: exit 130 (SIGINT), 143 (SIGTERM) or 129 (SIGHUP), and the failure as the last JSON line", () => {
  // Before: the process died of the signal (no exit status, no result line), its journal "writing".
  test.each([
    { signal: "SIGINT", from: "big.zbi" },
    { signal: "SIGTERM", from: "big.zbi" },
    { signal: "SIGHUP", from: "big.zbi" },
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
  test.each(["SIGINT", "SIGTERM", "SIGHUP"] as const)("create, %s: no spool file, no output, an older image there stays", async (signal) => {
    writeFileSync(join(dir, "new.zbi"), readFileSync(join(dir, "big.zbi")).subarray(0, 1 << 20)); // starts like an image: create may replace it
    const before = sha256(join(dir, "new.zbi"));
    const r = await stopWhen(["image", "create", "--compatible", "c", "--version", "2", "--serial", "2", "--rootfs", "rootfs.img", "--key", "ed", "--chunk-size", "65536", "-o", "new.zbi", "--progress=json"], signal, PROGRESS);
    const want = outcome(signal, "create new.zbi");
    expect({ exit: r.exit, last: lastLine(r.stdout), temps: temps(), older: sha256(join(dir, "new.zbi")) === before }).toEqual({ exit: want.exit, last: { type: "result", ok: false, ...want }, temps: [], older: true });
  });
});

describe("sign --json, its input idle after 8 MiB: the temp file is removed, an older OUT stays, the failure is the last JSON line", () => {
  // Before: the process died of the signal (no status of its own, no JSON line) and .old.zbi.zb-new stayed beside OUT.
  test.each([
    { signal: "SIGINT", from: "stdin" },
    { signal: "SIGTERM", from: "stdin" },
    { signal: "SIGHUP", from: "stdin" },
    { signal: "SIGINT", from: "a URL" },
  ] as const)("$signal, from $from", async ({ signal, from }) => {
    writeFileSync(join(dir, "old.zbi"), firstMiB(1)); // starts like an image: sign may replace it
    const before = sha256(join(dir, "old.zbi"));
    let tempMidRun: string[] = [];
    const midCopy = async () => {
      await untilExists(".old.zbi.zb-new");
      tempMidRun = temps();
    };
    const server = from === "a URL" ? stalledServer(firstMiB(8)) : null;
    let r: Stopped;
    try {
      const input = server ? `http://127.0.0.1:${server.port}/big.zbi` : "-";
      r = await stopWhen(["image", "sign", input, "--trust", "trust", "--key", "ed", "-o", "old.zbi", "--json"], signal, midCopy, server ? {} : { stdin: firstMiB(8) });
    } finally {
      void server?.stop(true);
    }
    const want = outcome(signal, "sign old.zbi");
    expect({ exit: r.exit, last: lastLine(r.stdout), stderr: r.stderr, tempMidRun, temps: temps(), older: sha256(join(dir, "old.zbi")) === before }).toEqual({
      exit: want.exit, last: { type: "result", ok: false, ...want }, stderr: `zb: ${want.message}\n`, tempMidRun: [".old.zbi.zb-new"], temps: [], older: true,
    });
  });
});

describe("info waiting for the header (the first 1 KiB, then nothing): the documented exit status, and the failure line with --json", () => {
  // Before: the process died of the signal: no exit status of its own, no JSON line.
  test.each([
    { signal: "SIGINT", from: "stdin" },
    { signal: "SIGHUP", from: "stdin" },
    { signal: "SIGTERM", from: "a URL" },
  ] as const)("$signal, from $from", async ({ signal, from }) => {
    const server = from === "a URL" ? stalledServer(firstMiB(1).subarray(0, 1024)) : null;
    try {
      const input = server ? `http://127.0.0.1:${server.port}/big.zbi` : "-";
      const r = await stopWhen(["image", "info", input, "--json"], signal, untilIdle, server ? {} : { stdin: firstMiB(1).subarray(0, 1024) });
      const want = outcome(signal, `read the image header from ${server ? input : "stdin"}`);
      expect({ exit: r.exit, last: lastLine(r.stdout), stderr: r.stderr, temps: temps() }).toEqual({ exit: want.exit, last: { type: "result", ok: false, ...want }, stderr: `zb: ${want.message}\n`, temps: [] });
    } finally {
      void server?.stop(true);
    }
  });
});

test("install from stdin stopped while it reads the header (the first 1 KiB, then nothing): no journal, so no --resume hint", async () => {
  // Before: "hint: run the same command with --resume", with nothing to resume.
  const r = await stopWhen(["image", "install", "-", "--trust", "trust", "--payload", "rootfs", "--to", "hdr.img", "--json"], "SIGINT", untilIdle, { stdin: firstMiB(1).subarray(0, 1024) });
  const want = outcome("SIGINT", "install rootfs");
  expect({ exit: r.exit, last: lastLine(r.stdout), stderr: r.stderr, journal: existsSync(join(dir, "hdr.img.zb-journal")) }).toEqual({
    exit: want.exit, last: { type: "result", ok: false, ...want }, stderr: `zb: ${want.message}\n`, journal: false,
  });
});

test("the same with an older run's journal of another image at the journal's path: no --resume hint (this run wrote nothing to continue), the journal untouched", async () => {
  // Before: the hint, since a journal existed; --resume then failed "the journal belongs to another image".
  const old = JSON.stringify({ version: 1, image: "0".repeat(64), payload: "rootfs", target: "hdr2.img", state: "complete", chunksDone: 1, dataOffset: 1536 });
  writeFileSync(join(dir, "hdr2.img.zb-journal"), old);
  const r = await stopWhen(["image", "install", "-", "--trust", "trust", "--payload", "rootfs", "--to", "hdr2.img", "--json"], "SIGINT", untilIdle, { stdin: firstMiB(1).subarray(0, 1024) });
  const want = outcome("SIGINT", "install rootfs");
  expect({ exit: r.exit, last: lastLine(r.stdout), stderr: r.stderr, journal: readFileSync(join(dir, "hdr2.img.zb-journal"), "utf8") }).toEqual({
    exit: want.exit, last: { type: "result", ok: false, ...want }, stderr: `zb: ${want.message}\n`, journal: old,
  });
});

test("info and verify from a server that accepts the connection and never answers, SIGINT: stopped at once, not after --timeout", async () => {
  // Before: the signal waited for the response headers, so zb exited 5 (IO, "server sent nothing") after --timeout.
  const sockets: import("node:net").Socket[] = [];
  const server = createServer((c) => void sockets.push(c));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const url = `http://127.0.0.1:${(server.address() as import("node:net").AddressInfo).port}/big.zbi`;
    for (const [args, action] of [
      [["image", "info", url, "--timeout", "600", "--json"], `read the image header from ${url}`],
      [["image", "verify", url, "--trust", "trust", "--timeout", "600", "--progress=json"], `verify ${url}`],
    ] as const) {
      const r = await stopWhen([...args], "SIGINT", untilIdle);
      const want = outcome("SIGINT", action);
      expect({ exit: r.exit, last: lastLine(r.stdout) }).toEqual({ exit: want.exit, last: { type: "result", ok: false, ...want } });
    }
  } finally {
    for (const c of sockets) c.destroy();
    server.close();
  }
});

describe("a FIFO given as the image path, its writer idle (or not there yet): the signal ends the pending read", () => {
  // Before: the abort destroyed the file stream, but the stream ends only once the read(2) pending in the
  // thread pool returns, which an idle writer never lets happen: zb hung until a second signal killed it.
  test.each([
    { command: "verify", bytes: 8 << 20, what: "8 MiB written, then nothing" },
    { command: "info", bytes: 1024, what: "1 KiB written, then nothing" },
    { command: "info", bytes: null, what: "no writer has opened it" },
  ] as const)("$command, $what", async ({ command, bytes }) => {
    const fifo = join(dir, `image-${command}-${bytes ?? "none"}.fifo`);
    expect(Bun.spawnSync(["mkfifo", fifo]).exitCode).toBe(0);
    // The writer holds the FIFO open after its bytes and sends nothing more until the test kills it.
    // The shell opens the FIFO itself: an open for writing blocks until zb opens it for reading.
    const writer = bytes === null ? null : Bun.spawn(["sh", "-c", `exec >"$1"; head -c ${bytes} big.zbi; exec sleep 600`, "sh", fifo], { cwd: dir, stderr: "ignore" });
    try {
      const args = command === "verify" ? ["image", "verify", fifo, "--trust", "trust", "--progress=json"] : ["image", "info", fifo, "--json"];
      // Idle: zb has read all there is and waits in read(2) on the FIFO.
      const r = await stopWhen(args, "SIGINT", untilIdle);
      const want = outcome("SIGINT", command === "verify" ? `verify ${fifo}` : `read the image header from ${fifo}`);
      expect({ exit: r.exit, last: lastLine(r.stdout) }).toEqual({ exit: want.exit, last: { type: "result", ok: false, ...want } });
    } finally {
      writer?.kill();
      rmSync(fifo, { force: true });
    }
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
