/**
 * stages/interrupt.ts in a process of its own: the first SIGINT or SIGTERM
 * aborts the work's signal with the typed error (INTERRUPTED 130,
 * TERMINATED 143) and leaves the process running for the work to clean up;
 * a second signal has its default action and kills it, for work that never
 * reaches its next check. image-signals.test.ts runs the commands.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const dir = mkdtempSync(join(tmpdir(), "zb-interrupt-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const script = join(dir, "work.ts");
// Work that never reaches a check: it reports the abort and goes on running.
writeFileSync(script, `
import { stopOnSignals } from ${JSON.stringify(resolve(import.meta.dir, "../../stages/interrupt.ts"))};
const stop = stopOnSignals(() => "install rootfs", "run it again with --resume");
stop.signal.addEventListener("abort", () => {
  const e = stop.signal.reason;
  console.log(JSON.stringify({ code: e.code, exit: e.exit, message: e.message, hint: e.hint }));
});
setInterval(() => {}, 1000);
console.log("ready");
`);

test.each([
  { signal: "SIGINT", error: { code: "INTERRUPTED", exit: 130, message: "cannot install rootfs: interrupted (SIGINT)", hint: "run it again with --resume" } },
  { signal: "SIGTERM", error: { code: "TERMINATED", exit: 143, message: "cannot install rootfs: terminated (SIGTERM)", hint: "run it again with --resume" } },
] as const)("$signal: the first aborts with $error.code and the process lives on; the second kills it", async ({ signal, error }) => {
  const p = Bun.spawn([process.execPath, script], { stdout: "pipe", stderr: "ignore" });
  const reader = p.stdout.getReader();
  let text = "";
  const lines = async (n: number) => {
    while (text.split("\n").length <= n) {
      const r = await reader.read();
      if (r.done) break;
      text += new TextDecoder().decode(r.value);
    }
    return text.split("\n").slice(0, n);
  };
  await lines(1);
  p.kill(signal);
  const [, first] = await lines(2);
  const aliveAfterFirst = p.exitCode === null && p.signalCode === null;
  p.kill(signal);
  await p.exited;
  expect({ first: JSON.parse(first ?? "null"), aliveAfterFirst, end: p.signalCode }).toEqual({ first: error, aliveAfterFirst: true, end: signal });
});
