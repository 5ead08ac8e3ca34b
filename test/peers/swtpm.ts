/**
 * A real swtpm for tests: TPM 2.0 over TCP on 127.0.0.1, a state directory
 * in a temp dir, a free port pair (data N, control N+1), started with
 * `--flags not-need-init,startup-clear` so it answers commands at once.
 * Also runs tpm2-tools against it (TPM2TOOLS_TCTI is set for those child
 * processes only), checks for leaked handles, and taps zb's transport
 * (record, inject or corrupt TPM traffic).
 *
 *   const tpm = await startSwtpm();
 *   try { tpm.tools(["tpm2_getrandom", "8"]); } finally { await tpm.stop(); }
 */
import { closeSync, cpSync, mkdtempSync, openSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, type TransportFactory } from "../../lib/hsm/tpm2/transport.ts";

export interface Swtpm {
  /** tpm2-tools TCTI spelling, also zb's `--tpm` address. */
  address: string;
  port: number;
  stateDir: string;
  /** Run a tpm2-tools command against this TPM; stdin bytes optional. */
  tools(argv: string[], opts?: { cwd?: string; stdin?: Uint8Array }): { code: number; stdout: Uint8Array; stderr: string };
  /** Same, but throws with stderr unless it exits 0; returns stdout as text. */
  toolsOk(argv: string[], opts?: { cwd?: string; stdin?: Uint8Array }): string;
  /** Kill swtpm; removes the state dir unless it was given. Idempotent. */
  stop(): Promise<void>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}

/** A port N with N+1 also free (swtpm's control channel). */
async function freePortPair(): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const p = await freePort();
    if (p < 65534 && (await portFree(p + 1))) return p;
  }
  throw new Error("no free loopback port pair");
}

/**
 * Does swtpm answer a command? A TCP accept alone is not enough: the socket
 * listens before the TPM is manufactured and its state file written.
 */
function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 1000);
    s.once("connect", () => s.write(Buffer.from("80010000000c0000017b0008", "hex"))); // TPM2_GetRandom(8)
    s.once("data", (d: Buffer) => {
      clearTimeout(timer);
      done(d.length >= 10 && d[0] === 0x80);
    });
    s.once("error", () => {
      clearTimeout(timer);
      done(false);
    });
  });
}

/**
 * Start swtpm. With `stateDir` it reuses (and keeps) that state; with
 * `copyFrom` it starts on a copy of another instance's state (same seeds).
 */
export async function startSwtpm(opts: { stateDir?: string; copyFrom?: string } = {}): Promise<Swtpm> {
  const own = opts.stateDir === undefined;
  const stateDir = opts.stateDir ?? mkdtempSync(join(tmpdir(), "zb-swtpm-"));
  if (opts.copyFrom) cpSync(opts.copyFrom, stateDir, { recursive: true });
  for (let attempt = 0; ; attempt++) {
    const port = await freePortPair();
    const proc = Bun.spawn([
      "swtpm", "socket", "--tpm2", "--tpmstate", `dir=${stateDir}`,
      "--server", `type=tcp,port=${port},bindaddr=127.0.0.1`,
      "--ctrl", `type=tcp,port=${port + 1},bindaddr=127.0.0.1`,
      "--flags", "not-need-init,startup-clear", "--log", `file=${join(stateDir, "swtpm.log")},level=1`,
    ], { stdout: "ignore", stderr: "pipe" });
    const deadline = Date.now() + 5000;
    let up = false;
    while (!up && Date.now() < deadline && proc.exitCode === null) {
      up = await answers(port);
      if (!up) await Bun.sleep(20);
    }
    if (!up) {
      proc.kill();
      await proc.exited;
      if (attempt < 3) continue; // lost a port race
      if (own) rmSync(stateDir, { recursive: true, force: true });
      throw new Error(`swtpm did not start: ${await new Response(proc.stderr).text()}`);
    }
    return handle(proc, port, stateDir, own);
  }
}

function handle(proc: ReturnType<typeof Bun.spawn>, port: number, stateDir: string, own: boolean): Swtpm {
  const address = `swtpm:host=127.0.0.1,port=${port}`;
  let stopped = false;
  const tools: Swtpm["tools"] = (argv, o = {}) => {
    const r = Bun.spawnSync(argv, {
      cwd: o.cwd ?? stateDir,
      env: { ...process.env, TPM2TOOLS_TCTI: address },
      stdin: o.stdin ?? "ignore",
    });
    return { code: r.exitCode ?? -1, stdout: new Uint8Array(r.stdout), stderr: r.stderr.toString() };
  };
  return {
    address,
    port,
    stateDir,
    tools,
    toolsOk(argv, o) {
      const r = tools(argv, o);
      if (r.code !== 0) throw new Error(`${argv.join(" ")} exited ${r.code}: ${r.stderr}`);
      return new TextDecoder().decode(r.stdout);
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      proc.kill();
      await proc.exited;
      if (own) rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

/** libc's pseudo-terminal calls, for {@link startSwtpmDevice}. */
function libc() {
  const { dlopen, FFIType } = require("bun:ffi") as typeof import("bun:ffi");
  return dlopen("libc.so.6", {
    posix_openpt: { args: [FFIType.i32], returns: FFIType.i32 },
    grantpt: { args: [FFIType.i32], returns: FFIType.i32 },
    unlockpt: { args: [FFIType.i32], returns: FFIType.i32 },
    ptsname: { args: [FFIType.i32], returns: FFIType.cstring },
    tcgetattr: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    cfmakeraw: { args: [FFIType.ptr], returns: FFIType.void },
    tcsetattr: { args: [FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  });
}

/** A swtpm behind a character device node, like /dev/tpm0. */
export interface SwtpmDevice {
  /** The device node to open (/dev/pts/N). */
  path: string;
  stop(): Promise<void>;
}

/**
 * swtpm in `chardev` mode on the master side of a raw pseudo-terminal: the
 * slave node then behaves like /dev/tpm0 (one command per write, the
 * response to read), so zb's device transport runs against a real TPM.
 */
export async function startSwtpmDevice(): Promise<SwtpmDevice> {
  const c = libc();
  const stateDir = mkdtempSync(join(tmpdir(), "zb-swtpm-dev-"));
  const master = c.symbols.posix_openpt(2 /* O_RDWR */ | 0o400 /* O_NOCTTY */);
  const termios = new Uint8Array(128); // struct termios is 60 bytes on glibc
  try {
    if (master < 0 || c.symbols.grantpt(master) || c.symbols.unlockpt(master)) throw new Error("cannot allocate a pseudo-terminal");
    // Raw mode: no echo, no line editing, no CR/LF translation of TPM bytes.
    if (c.symbols.tcgetattr(master, termios)) throw new Error("tcgetattr failed");
    c.symbols.cfmakeraw(termios);
    if (c.symbols.tcsetattr(master, 0 /* TCSANOW */, termios)) throw new Error("tcsetattr failed");
  } catch (e) {
    rmSync(stateDir, { recursive: true, force: true });
    c.close();
    throw e;
  }
  const path = String(c.symbols.ptsname(master));
  c.close();
  const proc = Bun.spawn([
    "swtpm", "chardev", "--tpm2", "--fd", "3", "--tpmstate", `dir=${stateDir}`, "--flags", "not-need-init,startup-clear",
  ], { stdio: ["ignore", "ignore", "pipe", master] });
  closeSync(master);
  // Hold the slave open: when its last fd closes the pty hangs up and swtpm exits.
  const holder = openSync(path, "r+");
  await Bun.sleep(100);
  let stopped = false;
  return {
    path,
    async stop() {
      if (stopped) return;
      stopped = true;
      proc.kill();
      await proc.exited;
      closeSync(holder);
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

/** Fail the test if transient objects or sessions were left in the TPM (swtpm has no resource manager). */
export function noHandlesLeft(tpm: Swtpm): void {
  for (const what of ["handles-transient", "handles-loaded-session", "handles-saved-session"]) {
    const left = tpm.toolsOk(["tpm2_getcap", what]).trim();
    if (left !== "") throw new Error(`${what} left in the TPM: ${left}`);
  }
}

/** One command and its response, as they crossed the transport. */
export interface Exchange {
  cmd: Uint8Array;
  rsp: Uint8Array;
}

/** The command code of a command (bytes 6..10). */
export function ccOf(cmd: Uint8Array): number {
  return new DataView(cmd.buffer, cmd.byteOffset).getUint32(6);
}

/** Does `bytes` contain `secret`, or any 8-byte window of it? */
export function hasSecret(bytes: Uint8Array, secret: Uint8Array): boolean {
  const hay = Buffer.from(bytes);
  const w = Math.min(8, secret.length);
  for (let i = 0; i + w <= secret.length; i++) if (hay.indexOf(Buffer.from(secret.subarray(i, i + w))) >= 0) return true;
  return false;
}

/**
 * A transport factory around zb's default that records traffic (copies, made
 * before zb wipes its buffers), answers a command itself (`before` returns a
 * response) or edits a response (`after`).
 */
export function wrapped(hooks: {
  log?: Exchange[];
  before?: (cmd: Uint8Array) => Uint8Array | undefined;
  after?: (cmd: Uint8Array, rsp: Uint8Array) => Uint8Array;
}): TransportFactory {
  return async (address) => {
    const t = await connect(address);
    return {
      address: t.address,
      async send(command) {
        const cmd = command.slice();
        const rsp = hooks.before?.(cmd) ?? (await t.send(command));
        const out = hooks.after ? hooks.after(cmd, rsp) : rsp;
        hooks.log?.push({ cmd, rsp: out.slice() });
        return out;
      },
      close: () => t.close(),
    };
  };
}
