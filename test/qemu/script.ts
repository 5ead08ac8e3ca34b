/**
 * Running a qemu/ harness script from a test: in its own process group, so
 * that at the deadline the script, its emulator, swtpm and QEMU all die
 * together (killing only bash would leave a guest booting on).
 */
import { spawn } from "node:child_process";
import { resolve } from "node:path";

export const ROOT = resolve(import.meta.dir, "../..");

export interface ScriptRun {
  code: number | null;
  signal: string | null;
  out: string;
  err: string;
}

/** The last `lines` lines of a console or transcript. */
export function tail(text: string, lines: number): string {
  return text.replace(/\r/g, "").trimEnd().split("\n").slice(-lines).join("\n");
}

/** Run `bash qemu/<script> ...args` from the repo root, killed as a group after `limitMs`. */
export function runScript(script: string, args: string[], env: Record<string, string>, limitMs: number): Promise<ScriptRun> {
  return new Promise((done, fail) => {
    const p = spawn("bash", [resolve(ROOT, "qemu", script), ...args], {
      cwd: ROOT,
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...env },
    });
    let out = "", err = "";
    p.stdout?.on("data", (d: Buffer) => (out += d.toString()));
    p.stderr?.on("data", (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => p.pid !== undefined && process.kill(-p.pid, "SIGKILL"), limitMs);
    p.on("error", fail);
    p.on("close", (code, signal) => {
      clearTimeout(timer);
      done({ code, signal, out, err });
    });
  });
}
