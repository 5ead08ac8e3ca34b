/**
 * Waiting for a process to reach a point, seen from /proc instead of
 * guessed with a sleep: a test that must act while zb polls for something
 * (a device node, a go file) waits until zb's main thread is asleep in
 * clock_nanosleep(2), which it enters only in such a poll loop (Bun.sleepSync),
 * never while the runtime starts.
 *
 * /proc/PID/syscall names the system call a blocked thread is in (proc(5));
 * the numbers are x86_64's (the tests run the x64 binary).
 */
import { readFileSync, readlinkSync } from "node:fs";
import { basename } from "node:path";

/** x86_64: nanosleep 35, clock_nanosleep 230 (arch/x86/entry/syscalls/syscall_64.tbl). */
const SLEEPS = new Set(["35", "230"]);

/** The executable's file name and the syscall its main thread is blocked in, or null once the process is gone. */
function look(pid: number): { exe: string; syscall: string } | null {
  try {
    return { exe: basename(readlinkSync(`/proc/${pid}/exe`)), syscall: readFileSync(`/proc/${pid}/syscall`, "utf8").split(" ")[0]!.trim() };
  } catch {
    return null;
  }
}

/**
 * Resolves once process `pid`, running the executable named `exe` (after any
 * exec chain such as unshare → sh → zb), sleeps in a poll loop.
 * @throws {Error} when the process ends first, or after `limitMs` (a bound, not a synchronisation)
 */
export async function untilPolling(pid: number, exe: string, limitMs = 30_000): Promise<void> {
  const start = performance.now();
  for (;;) {
    const now = look(pid);
    if (now === null) throw new Error(`process ${pid} ended before it was seen polling`);
    if (now.exe === exe && SLEEPS.has(now.syscall)) return;
    if (performance.now() - start > limitMs) throw new Error(`process ${pid} (${now.exe}, syscall ${now.syscall}) was not seen polling within ${limitMs} ms`);
    await Bun.sleep(5);
  }
}
