/**
 * dmsetupRemover (lib/luks/dmsetup.ts) and the shared child handling of
 * lib/luks/tool.ts with fake dmsetup scripts: the argv, a failure's message,
 * no program, and the two ways a removal can hang: a dmsetup that does not
 * end (killed at the time limit) and one whose end is never seen after the
 * kill (a child holds its output open, as a process stuck in the kernel
 * would hold the wait): the call must return, saying it may still be
 * working. The limits are made short; no wall time is asserted.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ZbError } from "../../../lib/errors.ts";
import { dmsetupRemover } from "../../../lib/luks/dmsetup.ts";
import { stillRunning } from "../../../lib/luks/tool.ts";
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
    expect(Bun.file(join(dir, "ran")).size).toBe(0);
  });

  test("a dmsetup that does not end is killed at its time limit", async () => {
    const { bin } = fake("exec sleep 30");
    // Without the limit the call would wait the 30 s, past this test's own timeout.
    const e = await failure(dmsetupRemover(bin, { timeoutMs: 200, killWaitMs: 5000 })!("zb-root"));
    expect([e.code, e.message]).toEqual(["LUKS_FAILED", "cannot remove the device-mapper device zb-root: dmsetup was killed by SIGKILL (timeout 0.2 s)"]);
    expect(stillRunning(e)).toBe(false);
  }, 15_000);

  test("a dmsetup whose end is not seen after the kill: the call returns after the kill bound, saying it may still be working", async () => {
    // The background sleep keeps stdout and stderr open after dmsetup itself is killed: the wait
    // for its output does not end, like the wait for a process stuck in a device-mapper ioctl.
    const { bin, dir } = fake(`sleep 30 &\necho $! >"$(dirname "$0")/holder"\nexec sleep 30`);
    try {
      const e = await failure(dmsetupRemover(bin, { timeoutMs: 200, killWaitMs: 200 })!("zb-data"));
      expect(e.message).toBe("cannot remove the device-mapper device zb-data: dmsetup did not end within 0.2 s of SIGKILL (timeout 0.2 s); it may still be changing the device");
      expect(stillRunning(e)).toBe(true);
    } finally {
      const holder = Number(readFileSync(join(dir, "holder"), "utf8"));
      if (holder > 0) process.kill(holder, "SIGKILL");
    }
  }, 15_000);
});
