/**
 * A loopback TCP listener that never completes a handshake: python3 listens
 * with a backlog of 0 and never accepts, and its own queued clients fill the
 * accept queue, so the kernel drops every further SYN (what a swtpm that
 * stopped accepting looks like). A client's connect(2) then neither
 * succeeds nor fails until its SYN retries run out (~130 s).
 *
 *   const l = await startFullBacklog();
 *   try { ... l.port ... } finally { l.stop(); }
 */

const LISTENER = `
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(0)
port = s.getsockname()[1]
queued = []
for _ in range(3):
    c = socket.socket()
    c.setblocking(False)
    try:
        c.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    queued.append(c)
time.sleep(0.3)
print(port, flush=True)
sys.stdin.read()
`;

export interface FullBacklog {
  port: number;
  /** Kill the listener. Idempotent. */
  stop(): void;
}

/** Start the listener; resolves once its accept queue is full. */
export async function startFullBacklog(): Promise<FullBacklog> {
  // stdin is a pipe held by this process: the listener also ends when the test process does.
  const py = Bun.spawn(["python3", "-c", LISTENER], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  const first = await py.stdout.getReader().read();
  const port = Number(new TextDecoder().decode(first.value ?? new Uint8Array()).trim());
  if (!Number.isInteger(port) || port <= 0) {
    py.kill();
    throw new Error("the full-backlog listener did not start (python3 missing?)");
  }
  return { port, stop: () => py.kill() };
}
