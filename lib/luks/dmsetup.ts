/**
 * `dmsetup remove`, for a mapping `cryptsetup close` does not remove: a
 * cryptsetup killed between creating the device and loading its crypt table
 * leaves a device without one, which cryptsetup does not take for its own.
 * Used by zbunlock's step before a panic shell (lib/unlock/leftover.ts).
 *
 * Host access: runs `dmsetup` (dmsetup(8)) through lib/luks/tool.ts, with
 * the same time limit and bounded wait after the kill as cryptsetup: a
 * dmsetup blocked in the kernel (or in its wait for udev) must not hold the
 * boot script forever.
 */
import { existsSync } from "node:fs";
import { ZbError } from "../errors.ts";
import { checkName } from "./checks.ts";
import { resolveBinary, stderrDetail, ToolRun, type ToolProcess } from "./tool.ts";

/** A removal that takes longer is stuck; the same limit as zbunlock's cryptsetup close. */
const DMSETUP_TIMEOUT_MS = 30_000;

/**
 * A function running `dmsetup remove --retry NAME` (--retry: udev may still
 * be probing a device it just saw).
 * @param binary program name or path; default `dmsetup` on PATH (plus /usr/sbin, /sbin)
 * @param opts.timeoutMs kill it after this long; default {@link DMSETUP_TIMEOUT_MS}
 * @param opts.killWaitMs how long the killed dmsetup gets to end; default 2 s (lib/luks/tool.ts)
 * @param opts.killer sends the kill at the time limit; default SIGKILL (tests: one that does nothing)
 * @returns the remover, whose promise rejects with ZbError LUKS_FAILED (USAGE
 *   for a name device-mapper cannot hold); or null when there is no such
 *   program (the initramfs has it when Debian's dmsetup package is installed:
 *   its initramfs-tools hook copies it)
 * @example await dmsetupRemover()?.("zb-root")
 */
export function dmsetupRemover(binary = "dmsetup", opts: { timeoutMs?: number; killWaitMs?: number; killer?: (proc: ToolProcess) => void } = {}): ((name: string) => Promise<void>) | null {
  let exe: string;
  try {
    exe = resolveBinary(binary, "find dmsetup", "install dmsetup");
  } catch {
    return null;
  }
  if (!existsSync(exe)) return null;
  return async (name) => {
    const what = `remove the device-mapper device ${name}`;
    const args = ["remove", "--retry", checkName(name)];
    const run = new ToolRun({ program: "dmsetup", exe, args, what, stdin: false, ...(opts.killWaitMs !== undefined ? { killWaitMs: opts.killWaitMs } : {}), ...(opts.killer ? { killer: opts.killer } : {}) });
    const { code, stderr } = await run.result(opts.timeoutMs ?? DMSETUP_TIMEOUT_MS);
    if (code !== 0) {
      const detail = stderrDetail(new TextDecoder().decode(stderr));
      throw new ZbError("LUKS_FAILED", `cannot ${what}: dmsetup exit ${code}${detail ? `: ${detail}` : ""}`);
    }
  };
}
