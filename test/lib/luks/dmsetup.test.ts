/**
 * dmsetupRemover (lib/luks/dmsetup.ts) and the shared child handling of
 * lib/luks/tool.ts with fake dmsetup scripts: the argv, a failure's message,
 * no program, and the ways a removal can hang: a dmsetup that does not end
 * (killed at the time limit), one that does not end after its kill either
 * (a kill that does nothing stands in for a process stuck in the kernel):
 * the call must return, saying it may still be working; and one that ended
 * while a child it forked holds its output: its own status counts. The
 * limits are made short; no wall time is asserted.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ZbError } from "../../../lib/errors.ts";
import { dmsetupRemover } from "../../../lib/luks/dmsetup.ts";
import { stillRunning, ToolRun } from "../../../lib/luks/tool.ts";
import { tempDirs } from "../../tempdirs.ts";

const tempDir = tempDirs("zb-dmsetup-");

/** A fake dmsetup with `body` after the shebang. */
function fake(body: string): { bin: string; dir: string } {
  const dir = tempDir();
  const bin = join(dir, "dmsetup");
  writeFileSync(bin, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return { bin, dir };
}

async function failure(p: Promise<unknown>): Promise<ZbError> {
  const e = await p.then(() => null, (x: unknown) => x);
  expect(e).toBeInstanceOf(ZbError);
  return e as ZbError;
}

describe("dmsetupRemover", () => {
  test("argv `remove --retry NAME`, a failure is LUKS_FAILED with its stderr; null without the program", async () => {
    const { bin, dir } = fake(`echo "$@" >>"$(dirname "$0")/argv"\n[ "$3" = ok ] && exit 0\necho "device-mapper: remove ioctl on $3 failed: Device or resource busy" >&2\nexit 1`);
    const rm = dmsetupRemover(bin)!;
    await rm("ok");
    const e = await failure(rm("zb-root"));
    expect([e.code, e.message]).toEqual(["LUKS_FAILED", "cannot remove the device-mapper device zb-root: dmsetup exit 1: device-mapper: remove ioctl on zb-root failed: Device or resource busy"]);
    expect(stillRunning(e)).toBe(false);
    expect(readFileSync(join(dir, "argv"), "utf8")).toBe("remove --retry ok\nremove --retry zb-root\n");
    expect(dmsetupRemover(join(dir, "missing"))).toBeNull();
  });

  test("a name device-mapper cannot hold is refused before dmsetup runs", async () => {
    const { bin, dir } = fake(`touch "$(dirname "$0")/ran"`);
    const e = await failure(dmsetupRemover(bin)!("--force"));
    expect(e.code).toBe("USAGE");
    expect(existsSync(join(dir, "ran"))).toBe(false); // the fake only creates the file: its size would be 0 either way
  });

  test("a dmsetup that does not end is killed at its time limit", async () => {
    const { bin } = fake("exec sleep 30");
    // Without the limit the call would wait the 30 s, past this test's own timeout.
    const e = await failure(dmsetupRemover(bin, { timeoutMs: 200, killWaitMs: 5000 })!("zb-root"));
    expect([e.code, e.message]).toEqual(["LUKS_FAILED", "cannot remove the device-mapper device zb-root: dmsetup was killed by SIGKILL (timeout 0.2 s)"]);
    expect(stillRunning(e)).toBe(false);
  }, 15_000);

  test("a dmsetup that does not end after its kill: the call returns after the kill bound, saying it may still be working", async () => {
    // A process stuck in a device-mapper ioctl cannot be made here; a kill that does nothing leaves
    // the fake running just as well, and the call must still return.
    const { bin, dir } = fake(`echo $$ >"$(dirname "$0")/pid"\nexec sleep 30`);
    try {
      const e = await failure(dmsetupRemover(bin, { timeoutMs: 200, killWaitMs: 200, killer: () => undefined })!("zb-data"));
      expect(e.message).toBe("cannot remove the device-mapper device zb-data: dmsetup did not end within 0.2 s of SIGKILL (timeout 0.2 s); it may still be changing the device");
      expect(stillRunning(e)).toBe(true);
    } finally {
      process.kill(Number(readFileSync(join(dir, "pid"), "utf8")), "SIGKILL");
    }
  }, 15_000);

  // A child the program forked (`sleep 30 &`) holds its stdout and stderr after it ended: the
  // program's own end and status count, not the end of its output.
  test.each([
    { name: "it exits 0 → removed", body: "exit 0", after: null },
    { name: "it fails → its own status and message", body: "echo busy >&2\nexit 1", after: "cannot remove the device-mapper device zb-root: dmsetup exit 1: busy" },
    { name: "it hangs and is killed at the limit → killed, not still running", body: "exec sleep 30", after: "cannot remove the device-mapper device zb-root: dmsetup was killed by SIGKILL (timeout 0.3 s)" },
  ])("a child holds the output of a dmsetup that ended: $name", async ({ body, after }) => {
    const { bin, dir } = fake(`sleep 30 &\necho $! >"$(dirname "$0")/holder"\n${body}`);
    try {
      // The kill bound is long: an answer that waited for the held output would come only after it (and be "still running").
      const r = await dmsetupRemover(bin, { timeoutMs: 300, killWaitMs: 10_000 })!("zb-root").then(() => null, (x: unknown) => x);
      if (after === null) expect(r).toBeNull();
      else {
        expect((r as ZbError).message).toBe(after);
        expect(stillRunning(r)).toBe(false);
      }
    } finally {
      process.kill(Number(readFileSync(join(dir, "holder"), "utf8")), "SIGKILL");
    }
  }, 15_000);
});

describe("ToolRun.kill (a cancel): whether the process ended, not its output", () => {
  test.each([
    { name: "a process killed while a child holds its output: ended", killer: undefined, ended: true },
    { name: "a process the kill does not end: not ended after the bound", killer: () => undefined, ended: false },
  ])("$name", async ({ killer, ended }) => {
    const { bin, dir } = fake(`sleep 30 &\necho $! >"$(dirname "$0")/holder"\necho $$ >"$(dirname "$0")/pid"\nexec sleep 30`);
    const run = new ToolRun({ program: "fake", exe: bin, args: [], what: "run a fake", stdin: false, killWaitMs: 300, ...(killer ? { killer } : {}) });
    try {
      for (let i = 0; i < 500 && !existsSync(join(dir, "pid")); i++) await Bun.sleep(10);
      expect(await run.kill()).toBe(ended);
    } finally {
      for (const f of ["holder", "pid"]) {
        try {
          process.kill(Number(readFileSync(join(dir, f), "utf8")), "SIGKILL");
        } catch {
          // ended already (the one killed by the test)
        }
      }
    }
  }, 15_000);
});
