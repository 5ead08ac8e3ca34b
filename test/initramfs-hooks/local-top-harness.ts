/**
 * The harness of the initramfs boot-script tests (local-top.test.ts,
 * local-top-real.test.ts): initramfs-hooks/scripts/local-top/zb and
 * init-top/prestart-zb run under a given shell with a fake zbunlock and
 * reboot on PATH, their fixed paths (/scripts/functions,
 * /scripts/zb-functions, /proc/cmdline, /run/zb/prestart) rewritten to files
 * in a temp dir; and the lines the fakes log.
 */
import { expect } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const HOOKS = resolve(import.meta.dir, "../../initramfs-hooks/scripts");
export const SCRIPT = join(HOOKS, "local-top/zb");
const PRESTART = join(HOOKS, "init-top/prestart-zb");
const ZB_FUNCTIONS = join(HOOKS, "zb-functions");
export const FAKE_FUNCTIONS = resolve(import.meta.dir, "fake-functions.sh");
export const REAL_FUNCTIONS = "/usr/share/initramfs-tools/scripts/functions";
export const EXIT_CODES = resolve(import.meta.dir, "../../docs/exit-codes.md");
/** The initramfs runs boot scripts with busybox sh, or klibc's sh without busybox (BUSYBOX=n); Debian's /bin/sh is dash. */
const KLIBC_SH = "/usr/lib/klibc/bin/sh";
export const SHELLS = ["dash", "busybox sh", KLIBC_SH];
export const CMDLINE = "console=ttyAMA0 root=/dev/mapper/zb-root zb.boot=/dev/mmcblk0p1 rootwait";

const roots: string[] = [];
/** Remove every temp dir run() made (a test file's afterAll). */
export function removeRoots(): void {
  for (const r of roots.splice(0)) rmSync(r, { recursive: true, force: true });
}

export interface Setup {
  functions: string;
  cmdline: string;
  /** zbunlock's exit status; null: no zbunlock on PATH. */
  status: number | null;
  /** "kill": reboot never returns (it kills the script, as reboot(2) would); "fail": it returns 1. */
  reboot: "kill" | "fail" | "return";
  /**
   * Run init-top/prestart-zb first: "run" with a zbunlock that waits for
   * the go; "gave-up": one that exits 24 at once (NOT_STARTED); "old": one
   * that exits 2 at once (a binary without --go-file); "wrapper-killed":
   * the wrapper shell is killed, zbunlock goes on alone; "vanished": a
   * wrapper PID that dies a second after the go, no zbunlock, no status;
   * "wrapper-killed-mute": as "wrapper-killed", and zbunlock dies without
   * writing its status; "slow-exit": zbunlock writes its status to
   * --status-fd, then takes 3 s to end (the runtime's teardown); "reused":
   * the wrapper's PID now belongs to another, long-lived process (its start
   * time differs from the one recorded).
   */
  prestart?: "run" | "gave-up" | "old" | "wrapper-killed" | "wrapper-killed-mute" | "vanished" | "slow-exit" | "reused" | undefined;
  env?: Record<string, string>;
  /**
   * The exit status of `zbunlock --lock-only` (default 0); set, the fake
   * `sleep` logs its call and kills the script (the endless stop after a
   * failed reboot -f would otherwise never end).
   */
  lockStatus?: number;
  /**
   * Set: zbunlock leaves this line in /run/zb/reboot-param before it exits
   * (the argument of a reboot it could not make), and a fake `zb` is on
   * PATH whose `zb reboot --raw` acts as `reboot` does by `zbReboot`.
   */
  rebootParam?: string | undefined;
  zbReboot?: "kill" | "fail" | undefined;
}

/** Replace each `from` (which must occur) by `to`. */
function rewrite(text: string, pairs: [string, string][]): string {
  for (const [from, to] of pairs) {
    expect(text.includes(from)).toBe(true);
    text = text.split(from).join(to);
  }
  return text;
}

/** A boot script with its fixed paths pointing into t. */
function rewritten(t: string, script: string, functions: string, more: [string, string][] = []): string {
  return rewrite(readFileSync(script, "utf8"), [[". /scripts/functions\n", `. ${functions}\n`], [". /scripts/zb-functions\n", `. ${t}/zb-functions\n`], ...more]);
}

export function run(shell: string[], s: Setup): { code: number | null; signal: string | null; out: string; err: string; calls: string[] } {
  const t = mkdtempSync(join(tmpdir(), "zb-localtop-"));
  roots.push(t);
  const log = join(t, "log");
  mkdirSync(join(t, "bin"));
  writeFileSync(join(t, "cmdline"), s.cmdline + "\n");
  writeFileSync(join(t, "zb-functions"), rewrite(readFileSync(ZB_FUNCTIONS, "utf8"), [["/proc/cmdline", `${t}/cmdline`], ["/run/zb/prestart", `${t}/prestart`]]));
  writeFileSync(join(t, "local-top-zb"), rewritten(t, SCRIPT, s.functions, [["/run/zb/reboot-param", `${t}/reboot-param`]]));
  writeFileSync(join(t, "prestart-zb"), rewritten(t, PRESTART, s.functions));
  if (s.status !== null) {
    // With --go-file: wait for it (at most 10 s) and take it, as
    // stages/zbunlock/prestart.ts does; "gave-up"/"old" end at once. With
    // --status-fd N it writes "exited STATUS" there as it exits, as the real
    // one's exit handler does. Either way it reports a descriptor of the
    // boot scripts' FIFO leaking into it (other than the one named).
    const mute = s.prestart === "wrapper-killed-mute";
    const early = { "gave-up": "exit 24", old: "exit 2" }[s.prestart as string] ??
      `i=0; while [ ! -e "$2" ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done; [ -e "$2" ] || exit 24; mv "$2" "$2.taken"; echo "${"zbunlock went on"}" >>"${log}"` +
        (s.prestart === "wrapper-killed" || mute ? "; sleep 1" : "");
    const report = mute ? "" : `[ -n "$sfd" ] && echo "exited ${s.status}" >&"$sfd"; `;
    const linger = s.prestart === "slow-exit" ? `sleep 3; echo "zbunlock ended" >>"${log}"; ` : "";
    writeFileSync(
      join(t, "bin/zbunlock"),
      `#!/bin/sh\necho "zbunlock args=$#\${1:+ $1}\${3:+ $3 $4} BUN_JSC_useJIT=\${BUN_JSC_useJIT-unset} BUN_GC_TIMER_DISABLE=\${BUN_GC_TIMER_DISABLE-unset}" >>"${log}"\n` +
        `sfd=; [ "\${3:-}" = --status-fd ] && sfd=$4\n` +
        `for fd in 3 4; do [ "$fd" != "$sfd" ] && [ -e /proc/$$/fd/$fd ] && echo "fd $fd leaked" >>"${log}"; done\n` +
        `if [ "\${1:-}" = --go-file ]; then ${early}; ${report}${linger}fi\n` +
        `[ "\${1:-}" = --lock-only ] && exit ${s.lockStatus ?? 0}\n` +
        (s.rebootParam === undefined ? "" : `printf '%s\\n' '${s.rebootParam}' >"${t}/reboot-param"\n`) +
        `exit ${s.status}\n`,
      { mode: 0o755 },
    );
  }
  const reboot = { kill: 'kill -KILL "$PPID"', fail: "exit 1", return: "exit 0" }[s.reboot];
  if (s.lockStatus !== undefined) writeFileSync(join(t, "bin/sleep"), `#!/bin/sh\necho "sleep $*" >>"${log}"\nkill -KILL "$PPID"\n`, { mode: 0o755 });
  writeFileSync(join(t, "bin/reboot"), `#!/bin/sh\necho "reboot $*" >>"${log}"\n${reboot}\n`, { mode: 0o755 });
  if (s.zbReboot !== undefined) {
    // Its arguments counted (the parameter must stay one word) and whether it runs without the JIT (it must not: bun:ffi).
    const zbExit = { kill: 'kill -KILL "$PPID"', fail: "exit 5" }[s.zbReboot];
    writeFileSync(join(t, "bin/zb"), `#!/bin/sh\necho "zb args=$# $* BUN_JSC_useJIT=\${BUN_JSC_useJIT-unset}" >>"${log}"\n${zbExit}\n`, { mode: 0o755 });
  }
  const env = { PATH: `${join(t, "bin")}:/usr/bin:/bin`, ZB_FAKE_LOG: log, ...s.env };
  let other: ReturnType<typeof Bun.spawn> | null = null;
  if (s.prestart !== undefined && s.prestart !== "vanished" && s.prestart !== "reused") {
    // Output to files: the background zbunlock keeps them open after the script exits.
    const p = Bun.spawnSync([...shell, join(t, "prestart-zb")], { env, stdin: "ignore", stdout: Bun.file(join(t, "prestart.out")), stderr: Bun.file(join(t, "prestart.err")) });
    expect(p.exitCode).toBe(0);
    if (s.cmdline.split(" ").includes("zb.skip=1")) expect(existsSync(join(t, "prestart"))).toBe(false);
    // The background zbunlock has started (run) or exited (gave-up) before local-top runs.
    const exitsAtOnce = s.prestart === "gave-up" || s.prestart === "old";
    const ready = () => (exitsAtOnce ? existsSync(join(t, "prestart/status")) : existsSync(join(t, "prestart/zpid")) && existsSync(log) && readFileSync(log, "utf8").includes("--go-file"));
    if (!s.cmdline.split(" ").includes("zb.skip=1")) for (let i = 0; i < 500 && !ready(); i++) Bun.sleepSync(10);
    if (s.prestart === "wrapper-killed" || s.prestart === "wrapper-killed-mute") process.kill(Number(readFileSync(join(t, "prestart/pid"), "utf8").split(" ")[0]), "SIGKILL");
  } else if (s.prestart === "vanished") {
    // A "wrapper" that lives on after the go and then dies without a status:
    // zb_unlock's watchdog must wake it (about a second later).
    mkdirSync(join(t, "prestart"));
    expect(Bun.spawnSync(["mkfifo", join(t, "prestart/done")]).exitCode).toBe(0);
    const doomed = Bun.spawn(["sleep", "1"]);
    writeFileSync(join(t, "prestart/pid"), `${doomed.pid}\n`);
  } else if (s.prestart === "reused") {
    // The wrapper is long gone; its PID was given to a process that lives
    // on: only the recorded start time (1 tick after boot) tells them apart.
    mkdirSync(join(t, "prestart"));
    expect(Bun.spawnSync(["mkfifo", join(t, "prestart/done")]).exitCode).toBe(0);
    other = Bun.spawn(["sleep", "60"]);
    writeFileSync(join(t, "prestart/pid"), `${other.pid} 1\n`);
  }
  // Bounded: a zb_unlock that never wakes fails this test instead of hanging the run.
  const p = Bun.spawnSync([...shell, join(t, "local-top-zb")], { env, stdin: "ignore", timeout: 20_000 });
  other?.kill();
  let calls: string[] = [];
  try {
    calls = readFileSync(log, "utf8").split("\n").filter(Boolean);
  } catch {
    // no call logged at all
  }
  return { code: p.exitCode, signal: p.signalCode == null ? null : String(p.signalCode), out: p.stdout.toString(), err: p.stderr.toString(), calls };
}

export const BEGIN = "begin zb: running zbunlock";
// zbunlock starts without the JIT (lib/sys/jit.ts): a faster start for a
// one-second process; and without Bun's idle GC timer (a full collection
// about 1 s in, in the middle of the unlock).
export const ZB = "zbunlock args=0 BUN_JSC_useJIT=0 BUN_GC_TIMER_DISABLE=1";

// Started by init-top/prestart-zb: --go-file and --status-fd 3 (the FIFO), also without the JIT and the GC timer.
export const PRE = "zbunlock args=4 --go-file --status-fd 3 BUN_JSC_useJIT=0 BUN_GC_TIMER_DISABLE=1";
export const WENT = "zbunlock went on";
/** The script's lines after exit 0. */
export const OPEN = ["end", "success zb: the root is open at /dev/mapper/zb-root"];
/** zb_lock_keys: zbunlock --lock-only, without the JIT and the GC timer. */
export const LOCK = "zbunlock args=1 --lock-only BUN_JSC_useJIT=0 BUN_GC_TIMER_DISABLE=1";
/** The script's lines after exit CODE (NAME in docs/exit-codes.md). */
export const failed = (code: number, name: string) => [
  `failure zb: zbunlock failed (exit ${code})`,
  // The keys are locked before the shell (zbunlock --lock-only), whatever became of the zbunlock that ran.
  ...(code === 127 ? [] : [LOCK]),
  `panic zbunlock failed (exit ${code}, ${name}): the root is not open; the messages above say why`,
];

/** The line before the reboot that replaces the panic when --lock-only exits STATUS. */
export const stillOpen = (status: number) => {
  const why = status === 21 ? "the sealed keys could not be locked" : status === 22 ? "the root (or data) volume may still be open" : "nothing is known to be closed or locked";
  return `failure zb: ${why} (zbunlock --lock-only exit ${status}): no shell, rebooting`;
};
