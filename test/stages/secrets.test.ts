/**
 * promptPin (stages/secrets.ts) in a process without a controlling terminal,
 * as /init and its scripts run in an initramfs: /dev/tty exists but cannot be
 * opened (ENXIO), so the PIN is asked for on the next terminal in the list,
 * the console (here the slave of a pseudo-terminal that a small python3
 * driver types the PIN into, after it has seen the prompt).
 */
import { expect, test } from "bun:test";
import { resolve } from "node:path";

const SECRETS = resolve(import.meta.dir, "../../stages/secrets.ts");
const BUN = process.execPath;

/**
 * Run promptPin(prompt, ttys) under setsid (a new session: no controlling
 * terminal), with "CONSOLE" in `ttys` replaced by a pty slave; type 4321 on
 * the pty once "PIN: " shows there. @returns the PIN as hex, or "ERR code message"; and what the pty showed
 */
function promptDetached(ttys: readonly string[]): { out: string; screen: string } {
  const code = `const { promptPin } = await import(${JSON.stringify(SECRETS)});
const ttys = JSON.parse(process.argv.at(-1));
try { const pin = promptPin("PIN: ", ttys); process.stdout.write(Buffer.from(pin).toString("hex")); }
catch (e) { process.stdout.write("ERR " + e.code + " " + e.message); }`;
  const driver = `
import json, os, pty, select, subprocess, sys, time
master, slave = pty.openpty()
ttys = [os.ttyname(slave) if t == "CONSOLE" else t for t in json.loads(sys.argv[1])]
p = subprocess.Popen(["setsid", "-w", sys.argv[2], "-e", sys.argv[3], json.dumps(ttys)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
screen, typed, end = b"", False, time.time() + 10
while p.poll() is None and time.time() < end:
    r, _, _ = select.select([master], [], [], 0.05)
    if r:
        screen += os.read(master, 1024)
    if not typed and b"PIN: " in screen:
        os.write(master, b"4321\\n")
        typed = True
out = p.communicate(timeout=10)[0].decode()
print(json.dumps({"out": out, "screen": screen.decode(errors="replace")}))
`;
  const p = Bun.spawnSync(["/usr/bin/python3", "-c", driver, JSON.stringify(ttys), BUN, code], { stdin: "ignore" });
  if (p.exitCode !== 0) throw new Error(`the pty driver failed: ${p.stderr}`);
  return JSON.parse(p.stdout.toString()) as { out: string; screen: string };
}

test.each([
  { ttys: ["/dev/tty", "CONSOLE"], want: Buffer.from("4321").toString("hex"), prompted: true },
  { ttys: ["/dev/tty"], want: "ERR USAGE cannot ask for the PIN: no terminal (/dev/tty)", prompted: false },
])("no controlling terminal, terminals $ttys → $want", ({ ttys, want, prompted }) => {
  const r = promptDetached(ttys);
  expect(r.out).toBe(want);
  expect(r.screen.includes("PIN: ")).toBe(prompted);
  expect(r.screen).not.toContain("4321"); // typed with echo off
});

/**
 * readSecretFd on a non-blocking pipe whose writer has not finished: every
 * EAGAIN goes to the wait (poll(2) for POLLIN by default), then the read is
 * tried again; the secret is whole once the writer closes. Run in a child
 * with a time limit: a read loop that retries EAGAIN without waiting never
 * calls the wait, so the rest is never written and the child spins until killed.
 */
test("a non-blocking stdin that is not ready yet: waited on, not spun on, and read whole", () => {
  const code = `const { readSecretFd } = await import(${JSON.stringify(SECRETS)});
const { libc } = await import(${JSON.stringify(resolve(import.meta.dir, "../../lib/sys/libc.ts"))});
const { ptr } = await import("bun:ffi");
const { closeSync, writeSync } = await import("node:fs");
const fds = new Int32Array(2);
if (libc().pipe2(ptr(fds), 0o4000 | 0o2000000) !== 0) throw new Error("pipe2");
const [r, w] = [fds[0], fds[1]];
writeSync(w, "first-half-");
let waits = 0;
const secret = readSecretFd(r, "the key", (fd) => {
  if (fd !== r) throw new Error("waited on fd " + fd);
  if (++waits === 1) writeSync(w, "second-half");
  else if (waits === 2) closeSync(w);
});
process.stdout.write(JSON.stringify({ secret: new TextDecoder().decode(secret), waits }));`;
  const p = Bun.spawnSync([BUN, "-e", code], { stdin: "ignore", timeout: 10_000 });
  expect(p.exitCode).toBe(0); // killed at the time limit: null
  expect(p.stderr.toString()).toBe("");
  expect(JSON.parse(p.stdout.toString())).toEqual({ secret: "first-half-second-half", waits: 2 });
});
