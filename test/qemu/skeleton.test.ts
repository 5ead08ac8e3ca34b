/**
 * The QEMU aarch64 walking skeleton (qemu/skeleton.sh): dist/zb-arm64 boots in
 * a Debian arm64 guest under TCG, runs `zb env print/set` and `fw_printenv` on
 * a redundant env pair on a virtio FAT disk, and the host re-reads the disk
 * with the real fw_printenv. Never skipped: a missing binary or a missing host
 * tool is a failure with a message that says what to do.
 */
import { expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { ROOT, runScript, tail } from "./script.ts";

const ARM = resolve(ROOT, "dist/zb-arm64");
const CONSOLE = resolve(ROOT, "qemu/.work/console.log");
/** The script bounds the guest itself (ZB_QEMU_TIMEOUT, 300 s); this bounds the whole script. */
const SCRIPT_MS = 380_000;

test(
  "qemu aarch64 skeleton: zb env print/set and fw_printenv in the guest, cross-checked on the host",
  async () => {
    if (!existsSync(ARM)) throw new Error(`${ARM} is missing: run \`bun build.ts\` (or \`bun build.ts --target arm64\`) first`);
    // In its own process group: at the deadline the script and its QEMU die together (script.ts).
    const { code, signal, out, err } = await runScript("skeleton.sh", [], { ZB_QEMU_TIMEOUT: process.env.ZB_QEMU_TIMEOUT ?? "300" }, SCRIPT_MS);
    const ok = code === 0 && out.split("\n").includes("ZB-SKELETON-OK");
    if (!ok) {
      const how = code === null ? `was killed (${signal ?? "timeout"} after ${SCRIPT_MS / 1000} s)` : `exited ${code}`;
      // skeleton.sh prints the console tail on failure; if it was killed
      // before it could, read the console log directly.
      const consoleTail = existsSync(CONSOLE) ? tail(readFileSync(CONSOLE, "utf8"), 40) : "(no console log)";
      throw new Error(
        `qemu/skeleton.sh ${how} without ZB-SKELETON-OK\n` +
          `---- script stdout (tail) ----\n${tail(out, 40)}\n` +
          `---- script stderr (tail) ----\n${tail(err, 60)}\n` +
          `---- guest console (tail of ${CONSOLE}) ----\n${consoleTail}`,
      );
    }
    expect(code).toBe(0);
    expect(out).toContain("ZB-SKELETON-OK");
  },
  400_000,
);
