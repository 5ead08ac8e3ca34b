/**
 * stages/interrupt.ts in a process of its own: the first SIGINT, SIGTERM or
 * SIGHUP aborts the work's signal with the typed error (INTERRUPTED 130,
 * TERMINATED 143, HANGUP 129) and leaves the process running for the work
 * to clean up; a second signal has its default action and kills it, for
 * work that never reaches its next check. A signal the parent made the
 * process ignore (nohup, a script's background job) stays ignored.
 * image-signals.test.ts runs the commands.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const dir = mkdtempSync(join(tmpdir(), "zb-interrupt-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const script = join(dir, "work.ts");
// Work that never reaches a check: it reports the abort and goes on running.
// "ready" comes with the signals the process ignores once its handlers are in place (SigIgn, bit N-1 for signal N).
writeFileSync(script, `
import { readFileSync } from "node:fs";
import { stopOnSignals } from ${JSON.stringify(resolve(import.meta.dir, "../../stages/interrupt.ts"))};
const stop = stopOnSignals(() => "install rootfs", "run it again with --resume");
stop.signal.addEventListener("abort", () => {
  const e = stop.signal.reason;
  console.log(JSON.stringify({ code: e.code, exit: e.exit, message: e.message, hint: e.hint }));
});
setInterval(() => {}, 1000);
const mask = BigInt("0x" + /^SigIgn:\\s*(\\w+)$/m.exec(readFileSync("/proc/self/status", "latin1"))[1]);
console.log(JSON.stringify({ ignores: [["SIGHUP", 1], ["SIGINT", 2], ["SIGTERM", 15]].filter(([, n]) => (mask >> BigInt(n - 1)) & 1n).map(([name]) => name) }));
`);

/** The script, started by bash with `ignore` set to SIG_IGN first (as nohup or a script's `&` do), and its stdout line by line. */
function start(ignore: string[] = []) {
  const p = Bun.spawn(["bash", "-c", `${ignore.length ? `trap '' ${ignore.join(" ")}; ` : ""}exec "$0" "$1"`, process.execPath, script], { stdout: "pipe", stderr: "ignore" });
  const reader = p.stdout.getReader();
  let text = "";
  const line = async (n: number) => {
    while (text.split("\n").length <= n) {
      const r = await reader.read();
      if (r.done) break;
      text += new TextDecoder().decode(r.value);
    }
    return JSON.parse(text.split("\n")[n - 1] || "null") as unknown;
  };
  return { p, line };
}

const hint = "run it again with --resume";
test.each([
  { signal: "SIGINT", error: { code: "INTERRUPTED", exit: 130, message: "cannot install rootfs: interrupted (SIGINT)", hint } },
  { signal: "SIGTERM", error: { code: "TERMINATED", exit: 143, message: "cannot install rootfs: terminated (SIGTERM)", hint } },
  // Before: SIGHUP was not caught and killed the process at once.
  { signal: "SIGHUP", error: { code: "HANGUP", exit: 129, message: "cannot install rootfs: hung up (SIGHUP)", hint } },
] as const)("$signal: the first aborts with $error.code and the process lives on; the second kills it", async ({ signal, error }) => {
  const { p, line } = start();
  await line(1);
  p.kill(signal);
  const first = await line(2);
  const aliveAfterFirst = p.exitCode === null && p.signalCode === null;
  p.kill(signal);
  await p.exited;
  expect({ first, aliveAfterFirst, end: p.signalCode }).toEqual({ first: error, aliveAfterFirst: true, end: signal });
});

// A guard for the SIGHUP handler itself: Bun installs a handler over an inherited SIG_IGN, so
// catching SIGHUP unconditionally would stop a `nohup zb image install …` when its terminal closes.
test.each([
  { ignored: "SIGHUP", as: "nohup does" },
  { ignored: "SIGINT", as: "a non-interactive shell does for `zb … &`" },
] as const)("$ignored ignored by the parent ($as): it stays ignored, and SIGTERM still stops the work", async ({ ignored }) => {
  const { p, line } = start([ignored.slice(3)]);
  const ready = await line(1);
  p.kill(ignored); // discarded by the kernel when ignored; caught, it would abort first and print its error
  p.kill("SIGTERM");
  const first = await line(2);
  p.kill("SIGKILL");
  await p.exited;
  expect({ ready, first }).toEqual({ ready: { ignores: [ignored] }, first: expect.objectContaining({ code: "TERMINATED" }) });
});
