/**
 * ToolRun.result (lib/luks/tool.ts) when its `feed` (the key handover) fails:
 * the child waits for a key that is not coming, so it goes through the same
 * killer and bounded wait as a timeout or a cancel, and one that does not end
 * is reported as still running (it may have part of a key already). A kill
 * that does nothing stands in for a process stuck in the kernel. The other
 * ToolRun paths are in dmsetup.test.ts and cryptsetup-fake.test.ts; no wall
 * time is asserted.
 */
import { expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ZbError } from "../../../lib/errors.ts";
import { stillRunning, ToolRun, type ToolProcess } from "../../../lib/luks/tool.ts";
import { tempDirs } from "../../tempdirs.ts";

const tempDir = tempDirs("zb-tool-");

const HANDOVER = "cannot open /dev/vdz as zb-root: cannot hand the key to cryptsetup: EIO";

test.each([
  {
    name: "the kill ends it: the handover's own error, the child ended",
    before: { kills: true, killWaitMs: 10_000 }, // a long bound: it ends at once, and the wait stops then
    after: { message: HANDOVER, stillRunning: false, ended: true, killerCalls: 1 },
  },
  {
    name: "the kill does not end it: the handover's error, marked still running",
    before: { kills: false, killWaitMs: 300 },
    after: { message: `${HANDOVER}; cryptsetup did not end within 0.3 s of SIGKILL, it may still be changing the device`, stillRunning: true, ended: false, killerCalls: 1 },
  },
])("a failed key handover: $name", async ({ before, after }) => {
  const dir = tempDir();
  const bin = join(dir, "cryptsetup");
  // It holds its stdin open and waits, as cryptsetup waits for the rest of its key.
  writeFileSync(bin, "#!/bin/sh\nexec sleep 30\n", { mode: 0o755 });
  const calls: number[] = [];
  const killer = (proc: ToolProcess) => {
    calls.push(proc.pid);
    if (before.kills) proc.kill("SIGKILL");
  };
  const run = new ToolRun({ program: "cryptsetup", exe: bin, args: [], what: "open /dev/vdz as zb-root", stdin: true, killWaitMs: before.killWaitMs, killer });
  try {
    const e = await run
      .result(60_000, async () => {
        throw new ZbError("LUKS_FAILED", HANDOVER);
      })
      .then(() => null, (x: unknown) => x);
    expect(e).toBeInstanceOf(ZbError);
    expect({
      code: (e as ZbError).code,
      message: (e as ZbError).message,
      stillRunning: stillRunning(e),
      // Bun sets one of them once it reaped the child: both null means it is still running.
      ended: run.proc.exitCode !== null || run.proc.signalCode !== null,
      killerCalls: calls.length,
    }).toEqual({ code: "LUKS_FAILED", ...after });
    expect(calls).toEqual(Array(after.killerCalls).fill(run.proc.pid));
  } finally {
    run.proc.kill("SIGKILL"); // the row whose kill does nothing; Bun signals no child it already reaped
  }
}, 15_000);
