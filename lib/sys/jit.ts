/**
 * Running without JavaScriptCore's JIT, and the way back to it.
 *
 * zbunlock lives for a second in the initramfs and runs little JavaScript:
 * starting the JIT (executable-memory reservation, thunks) costs more than
 * it can save. The initramfs script therefore starts it with
 * `BUN_JSC_useJIT=0`; JavaScriptCore reads its options from `BUN_JSC_*`
 * variables when the runtime starts (there is no way to switch later).
 * Measured (docs/boot-flow.md, "Process environment"): natively a small,
 * noisy gain (`zb version` 0.87× the time, median of six runs of
 * bench/zbunlock-start.ts); under QEMU TCG zbunlock's unlock phase took
 * 2.00 s instead of 2.68 s.
 *
 * Without the JIT, bun:ffi cannot load a library ("bun:ffi requires the
 * JIT"). The few steps that need a C library therefore run in a child of the
 * same binary with the variable removed: reboot(2) (lib/sys/reboot.ts), and
 * zbunlock as a whole when the slot's keys are sealed by a backend that is a
 * C library (pkcs11, zymkey).
 *
 * Host access: spawns the running executable (process.execPath).
 */
import { constants } from "node:os";

/** The JavaScriptCore option, as Bun reads it from the environment. */
export const JIT_VAR = "BUN_JSC_useJIT";

/**
 * True when this process runs without the JIT (BUN_JSC_useJIT set to a
 * false value as JavaScriptCore parses booleans: 0, false, no; any other
 * spelling but a true one makes Bun refuse to start).
 */
export function jitOff(env: Record<string, string | undefined> = process.env): boolean {
  const v = env[JIT_VAR];
  return v !== undefined && /^(0|false|no)$/i.test(v);
}

/** The environment for a child that needs the JIT: this one without BUN_JSC_useJIT. */
export function envWithJit(env: Record<string, string | undefined> = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && k !== JIT_VAR) out[k] = v;
  return out;
}

/** How to start the child: argv0 picks the role of the multi-call binary (stages/main.ts). */
export interface WithJitCommand {
  /** Role name for argv[0]: "zb" or "zbunlock". */
  argv0: string;
  args: string[];
}

/** Spawner seam for tests; the default runs the executable with stdio inherited and waits. */
export type JitSpawner = (cmd: string[], argv0: string, env: Record<string, string>) => number;

const spawnInherit: JitSpawner = (cmd, argv0, env) => {
  const p = Bun.spawnSync(cmd, { argv0, env, stdio: ["inherit", "inherit", "inherit"] });
  if (p.signalCode) return 128 + (constants.signals[p.signalCode as keyof typeof constants.signals] ?? 0);
  return p.exitCode ?? 1;
};

/**
 * Run this same binary again as `argv0 args…` with the JIT on, sharing stdin,
 * stdout and stderr, and wait for it. Meant for the compiled binary: under
 * `bun run` process.execPath is bun itself, which would not understand the
 * arguments. Synchronous: the callers have nothing else to do meanwhile,
 * and reboot hooks are synchronous.
 * @returns its exit status (128 + N when killed by signal N, as a shell reports it)
 * @throws {Error} when the executable cannot be started (the caller maps it)
 */
export function runWithJit(c: WithJitCommand, spawn: JitSpawner = spawnInherit): number {
  return spawn([process.execPath, ...c.args], c.argv0, envWithJit());
}
