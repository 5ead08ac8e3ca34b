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
 * Such a child must not outlive its parent (tieToParent below): the
 * initramfs script watches only the process it started, and once that one
 * is gone (killed by a person, a signal, the OOM killer) it locks the keys
 * and drops to a shell, or runs zbunlock again. A child left running could
 * still take the go, write the env or open /dev/mapper/zb-root meanwhile.
 *
 * Host access: spawns the running executable (process.execPath); in a tied
 * child, prctl(2) and getppid(2) through libc.
 */
import { constants } from "node:os";
import { ZbError } from "../errors.ts";
import { libc } from "./libc.ts";

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

/** In a child that must not outlive its parent: the parent's PID, as the parent gave it (runWithJit with `tied`). */
export const PARENT_VAR = "ZB_JIT_PARENT";

/**
 * The environment for a child that needs the JIT: this one without
 * BUN_JSC_useJIT, and without a ZB_JIT_PARENT that named this process's own
 * parent (only runWithJit sets one, for its direct child).
 */
export function envWithJit(env: Record<string, string | undefined> = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && k !== JIT_VAR && k !== PARENT_VAR) out[k] = v;
  return out;
}

/** How to start the child: argv0 picks the role of the multi-call binary (stages/main.ts). */
export interface WithJitCommand {
  /** Role name for argv[0]: "zb" or "zbunlock". */
  argv0: string;
  args: string[];
  /**
   * The child gets ZB_JIT_PARENT=<this PID> and must call tieToParent()
   * before it acts (zbunlock does). Not for `zb reboot --raw`: a reboot the
   * parent asked for may as well happen when the parent is gone.
   */
  tied?: boolean;
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
 * and reboot hooks are synchronous. With `tied`, the child dies with this
 * process (see tieToParent), so this one's signals and death reach it.
 * @returns its exit status (128 + N when killed by signal N, as a shell reports it)
 * @throws {Error} when the executable cannot be started (the caller maps it)
 */
export function runWithJit(c: WithJitCommand, spawn: JitSpawner = spawnInherit): number {
  const env = envWithJit();
  if (c.tied) env[PARENT_VAR] = String(process.pid);
  return spawn([process.execPath, ...c.args], c.argv0, env);
}

// include/uapi/linux/prctl.h, and the signal the kernel sends.
const PR_SET_PDEATHSIG = 1;
const SIGKILL = 9;

/** The two calls tieToParent makes; tests replace them (the real prctl would tie the test runner to its own parent). */
export interface TieSeams {
  /** prctl(PR_SET_PDEATHSIG, signal): 0, or -1 on failure. */
  setDeathSignal(signal: number): number;
  /** getppid(2): the parent now, after a reparenting if it died. */
  parentPid(): number;
}

/** The seams over zb's libc binding (lib/sys/libc.ts). @throws {ZbError} INTERNAL when libc cannot be loaded (bun:ffi needs the JIT) */
function libcSeams(): TieSeams {
  const c = libc();
  return { setDeathSignal: (sig) => c.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), parentPid: () => c.getppid() };
}

/**
 * In a child started by runWithJit with `tied` (ZB_JIT_PARENT set): from
 * here on the kernel kills this process with SIGKILL the moment its parent
 * exits, whatever it is doing; call it before the first step that acts.
 *
 * Why a death signal rather than the parent forwarding its signals: the
 * parent waits in Bun.spawnSync, which runs no JavaScript signal handler
 * until the child has exited, and nothing at all runs in a parent killed
 * with SIGKILL or by the OOM killer. The kernel acts in every case. A
 * SIGTERM, SIGHUP or SIGINT ends the parent (zbunlock handles none of them;
 * a shell's background job ignores SIGINT), and the child goes with it.
 * SIGKILL, not a signal the child could
 * handle: once the parent is gone, the boot script acts on its status, and
 * the child must not take another step.
 *
 * The death signal comes when the *thread* that started the child exits.
 * runWithJit is called from the main JavaScript thread and Bun.spawnSync
 * forks from the calling thread (test/stages/jit-child.test.ts checks that
 * the child is listed under the main thread), which lives as long as the
 * process.
 *
 * A parent that died before the prctl (between the spawn and this call)
 * sends nothing: the child was reparented already, so getppid() no longer
 * names it. Checked after the prctl, the two leave no gap.
 *
 * The variable is removed from process.env. Bun.spawn without an explicit
 * `env` still passes the environment the process started with (mount,
 * umount, stty get it; cryptsetup gets its own): harmless, as only a
 * zbunlock reads it, and zbunlock starts no zbunlock but through runWithJit,
 * which sets it afresh. A zbunlock without the JIT ignores it.
 * @returns false when ZB_JIT_PARENT is not set (not a tied child: nothing done, nothing loaded); true once tied
 * @throws {ZbError} NOT_STARTED when the parent is gone already (exit at once: nothing was done);
 *   USAGE when ZB_JIT_PARENT is not a PID; INTERNAL when the death signal cannot be set
 */
export function tieToParent(env: Record<string, string | undefined> = process.env, seams?: TieSeams): boolean {
  const given = env[PARENT_VAR];
  if (given === undefined) return false;
  delete env[PARENT_VAR];
  // runWithJit's child runs with the JIT (envWithJit drops BUN_JSC_useJIT): one without it is not that
  // child, and the variable is a stray (bun:ffi could not even load libc; the initramfs starts zbunlock so).
  if (jitOff(env)) return false;
  if (!/^[1-9]\d{0,9}$/.test(given)) throw new ZbError("USAGE", `cannot tie this process to its parent: ${PARENT_VAR}=${JSON.stringify(given)} is not a process ID`);
  const s = seams ?? libcSeams();
  if (s.setDeathSignal(SIGKILL) !== 0) throw new ZbError("INTERNAL", "internal error: cannot tie this process to its parent: prctl(PR_SET_PDEATHSIG) failed");
  const now = s.parentPid();
  if (now !== Number(given)) {
    throw new ZbError("NOT_STARTED", `cannot go on: the process that started this one (PID ${given}) is gone (the parent is now PID ${now}); did nothing`);
  }
  return true;
}
