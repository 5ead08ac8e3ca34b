/**
 * Waiting for a process to reach a point, seen from /proc instead of
 * guessed with a sleep: a test that must act while zb polls for something
 * (a device node, a go file) waits until zb's main thread is asleep:
 * in clock_nanosleep(2) for a synchronous poll loop (Bun.sleepSync), or in
 * the event loop's epoll wait for an asynchronous one (Bun.sleep: zbunlock's
 * go file and boot device, so that its HSM warm-up goes on meanwhile).
 * Neither happens while the runtime starts and loads zb; an epoll wait may
 * also be zbunlock awaiting that warm-up, which is as "before the go" as
 * the poll itself (it touches nothing).
 *
 * /proc/PID/syscall names the system call a blocked thread is in (proc(5));
 * the numbers are x86_64's (the tests run the x64 binary).
 */
import { readFileSync, readlinkSync } from "node:fs";
import { basename } from "node:path";

/**
 * x86_64: nanosleep 35, clock_nanosleep 230, epoll_wait 232, epoll_pwait 281,
 * epoll_pwait2 441 (arch/x86/entry/syscalls/syscall_64.tbl; Bun 1.4 waits in 441).
 */
const SLEEPS = new Set(["35", "230", "232", "281", "441"]);

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
