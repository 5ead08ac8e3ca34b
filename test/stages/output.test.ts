/**
 * stdout as a full NON-BLOCKING pipe (a Node child_process or supervisor
 * pipe; O_NONBLOCK is shared with the parent): the compiled binary waits for
 * its reader asleep instead of retrying write(2) at 100 % CPU, with the JIT
 * (poll(2) through libc) and without it (a 1 ms sleep per retry, how
 * zbunlock runs), and its output arrives whole once the reader drains it.
 *
 * test/fixtures/nbpipe.py shrinks the pipe to one page and starts sampling
 * the process once the pipe is full (the event that puts zb into EAGAIN);
 * the checks compare the process's state letters and CPU time with the
 * span of those same samples: a spinning process is running ('R') and
 * burns about as much CPU as time passes, a waiting one sleeps ('S').
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { withTempVarLock } from "../fakes/envlock.ts";
import { tempDirs } from "../tempdirs.ts";

const BIN = resolve(import.meta.dir, "../../dist/zb-x64");
const NBPIPE = resolve(import.meta.dir, "../fixtures/nbpipe.py");
const tempDir = tempDirs("zb-nbpipe-");
const SAMPLES = 12;
const INTERVAL_MS = 40;

let boot = "";
let expected = "";

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  boot = join(tempDir(), "boot");
  // ~10 KiB of `zb env print` output: more than the one-page pipe holds.
  const script = Array.from({ length: 96 }, (_, i) => `v${String(i).padStart(3, "0")} ${String(i % 10).repeat(96)}\n`).join("");
  const init = Bun.spawnSync(withTempVarLock([BIN, "env", "init", "--boot", boot, "--script", "-"]), { stdin: Buffer.from(script) });
  expect(init.exitCode).toBe(0);
  const print = Bun.spawnSync(withTempVarLock([BIN, "env", "print", "--boot", boot]));
  expect(print.exitCode).toBe(0);
  expected = print.stdout.toString();
  expect(expected.length).toBeGreaterThan(8192);
});

interface Report {
  cap: number;
  filled: boolean;
  states: string[];
  cpuTicks: number;
  spanTicks: number;
  exit: number;
  out: string;
  err: string;
}

/** `zb env print` with stdout on the fixture's full non-blocking pipe. */
function runOnFullPipe(mode: "drain" | "close", env: Record<string, string>): Report {
  const p = Bun.spawnSync(["python3", NBPIPE, mode, String(SAMPLES), String(INTERVAL_MS), "--", ...withTempVarLock([BIN, "env", "print", "--boot", boot])], {
    env: { ...process.env, ...env },
  });
  if (p.exitCode !== 0) throw new Error(`nbpipe.py failed: ${p.stderr}`);
  const r = JSON.parse(p.stdout.toString()) as Report;
  expect(r.cap).toBe(4096);
  if (!r.filled) throw new Error(`zb never filled the pipe (exit ${r.exit}): ${r.err}`);
  return r;
}

describe("stdout is a full non-blocking pipe", () => {
  test.each([
    { name: "with the JIT (poll)", env: {} },
    { name: "without the JIT (BUN_JSC_useJIT=0, a sleep per retry)", env: { BUN_JSC_useJIT: "0" } },
  ])("$name: zb sleeps until the reader drains it, then the whole output arrives, exit 0", ({ env }) => {
    const r = runOnFullPipe("drain", env);
    expect(r.err).toBe("");
    const sleeping = r.states.filter((s) => s === "S").length;
    // Mostly asleep: a spinning writer is 'R' in nearly every sample.
    expect(sleeping).toBeGreaterThan(r.states.length / 2);
    // CPU used while blocked, against the samples' own span (both in clock ticks): a spin uses ~all of it.
    expect(r.spanTicks).toBeGreaterThan(10);
    expect(r.cpuTicks).toBeLessThan(r.spanTicks / 4);
    expect(Buffer.from(r.out, "hex").toString()).toBe(expected);
    expect(r.exit).toBe(0);
  }, 30_000);

  test("the reader goes away while zb waits: zb ends (quietly, as on EPIPE: env print need not arrive)", () => {
    const r = runOnFullPipe("close", {});
    expect(r.exit).toBe(0);
    expect(r.err).toBe("");
  }, 30_000);
});
