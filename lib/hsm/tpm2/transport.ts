/**
 * Where TPM commands go: a character device (`/dev/tpmrm0`, the kernel's
 * resource manager) or swtpm's TCP data socket. This is the only module of
 * the tpm2 backend that touches the host.
 *
 * Both carry raw TPM 2.0 commands and responses (Part 1 §18): the kernel
 * driver takes one command per write(2) and returns one response per read(2)
 * (Documentation/security/tpm/tpm-dev in the kernel docs); swtpm's data
 * socket accepts the same raw bytes. swtpm also understands the Microsoft
 * simulator's framing (TPM_SEND_COMMAND = 8, locality, size, command; the
 * response then comes as size, response, 4-byte zero ack): verified with
 * swtpm 0.7.1, which answered both forms of TPM2_GetRandom. zb sends raw
 * commands, as tpm2-tss's "swtpm" TCTI does; swtpm's control port (data
 * port + 1) is not needed when swtpm runs with `--flags startup-clear`.
 */
import * as fs from "node:fs";
import type * as net from "node:net";
import { nodeNet } from "../../sys/lazy.ts";
import { describeErrno, ZbError } from "../../errors.ts";
import { MAX_RESPONSE } from "./wire.ts";

/** One TPM connection: send a command, get its response. Not re-entrant. */
export interface Transport {
  /** The address, for messages. */
  readonly address: string;
  /** Send one command and return the whole response. @throws {ZbError} HSM_FAILED on I/O errors */
  send(command: Uint8Array): Promise<Uint8Array>;
  /** Release the fd or socket. Idempotent. */
  close(): void;
}

/** A parsed TPM address. */
export type Tpm2Address = { kind: "device"; path: string } | { kind: "swtpm"; host: string; port: number };

/** Opens a transport; tests wrap the default to record or corrupt traffic. */
export type TransportFactory = (address: Tpm2Address) => Promise<Transport>;

export const DEFAULT_DEVICE = "/dev/tpmrm0";
/** tpm2-tss's swtpm TCTI defaults (tss2-tcti-swtpm(7)). */
const SWTPM_DEFAULT_HOST = "localhost";
const SWTPM_DEFAULT_PORT = 2321;
/** How long a TCP peer may take for one response. */
const TCP_TIMEOUT_MS = 30_000;
/**
 * How long the TCP handshake may take. A closed port refuses at once; a
 * listener whose accept queue is full (a swtpm that stopped accepting) drops
 * the SYN, and the kernel would retry for ~130 s (tcp_syn_retries=6) before
 * ETIMEDOUT. A swtpm that is there accepts in well under a millisecond on
 * loopback; 5 s leaves room for a slow network.
 */
const TCP_CONNECT_TIMEOUT_MS = 5_000;

/**
 * Parse a TPM address in tpm2-tools' TCTI spelling: a path, `device:PATH`,
 * or `swtpm:host=H,port=N` (both keys optional).
 * @throws {ZbError} USAGE for anything else
 * @example parseAddress("swtpm:host=127.0.0.1,port=2321") // {kind: "swtpm", host: "127.0.0.1", port: 2321}
 */
export function parseAddress(spec: string): Tpm2Address {
  const bad = (why: string) =>
    new ZbError("USAGE", `cannot use TPM address ${JSON.stringify(spec)}: ${why}`, {
      hint: "use a device path (/dev/tpmrm0), device:PATH or swtpm:host=HOST,port=PORT",
    });
  if (spec.startsWith("/")) return { kind: "device", path: spec };
  const colon = spec.indexOf(":");
  const tcti = colon < 0 ? spec : spec.slice(0, colon);
  const conf = colon < 0 ? "" : spec.slice(colon + 1);
  if (tcti === "device") return { kind: "device", path: conf || DEFAULT_DEVICE };
  if (tcti !== "swtpm") throw bad(`unsupported TCTI ${JSON.stringify(tcti)}`);
  let host = SWTPM_DEFAULT_HOST;
  let port = SWTPM_DEFAULT_PORT;
  for (const kv of conf ? conf.split(",") : []) {
    const [k, v = ""] = kv.split("=", 2);
    if (k === "host" && v) host = v;
    else if (k === "port" && /^\d{1,5}$/.test(v) && Number(v) > 0 && Number(v) < 65535) port = Number(v);
    else throw bad(`bad swtpm option ${JSON.stringify(kv)}`);
  }
  return { kind: "swtpm", host, port };
}

/** The address in the same spelling, for messages. */
export function formatAddress(a: Tpm2Address): string {
  return a.kind === "device" ? a.path : `swtpm:host=${a.host},port=${a.port}`;
}

/**
 * Open the default transport for an address.
 * @throws {ZbError} HSM_ABSENT when the device node is missing, or the socket refuses or does not
 *   connect within 5 s; CONFIG when a device path is not a character device (nothing is written
 *   to it); HSM_FAILED otherwise
 */
export const connect: TransportFactory = async (address) =>
  address.kind === "device" ? openDevice(address.path) : await connectTcp(address.host, address.port);

/** errno codes that mean "no TPM here (yet)". */
const ABSENT_ERRNO = new Set(["ENOENT", "ENODEV", "ENXIO", "EBUSY", "ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "ETIMEDOUT"]);

/** What an errno means for a TPM, where the general words (lib/errors.ts) say less. */
const TPM_ERRNO_TEXT: Record<string, string> = {
  ENOENT: "no such device (no TPM driver loaded, or no TPM)",
  ENODEV: "no such device",
  ENXIO: "no such device",
  EBUSY: "the device is busy (another program holds it)",
  ECONNREFUSED: "the connection was refused (is swtpm running?)",
};

/**
 * The error of a failed open or connect: HSM_ABSENT for {@link ABSENT_ERRNO}
 * (EBUSY among them: for an unseal or a probe a TPM another process holds is
 * not there for zb now), else HSM_FAILED; the errno error is the cause.
 * @example connectError("/dev/tpm0", err) // ZbError HSM_ABSENT "cannot open TPM /dev/tpm0: …"
 */
export function connectError(address: string, e: unknown): ZbError {
  const code = (e as { code?: string }).code ?? "";
  const reason = describeErrno(e, TPM_ERRNO_TEXT);
  return new ZbError(ABSENT_ERRNO.has(code) ? "HSM_ABSENT" : "HSM_FAILED", `cannot open TPM ${address}: ${reason}`, { cause: e });
}

/**
 * True for the {@link connectError} of a device another process holds open
 * (EBUSY: /dev/tpm0 allows one user). The TPM is there; whoever waits until
 * it is free can use it, which is what the lock must reckon with.
 */
export function heldByAnother(e: unknown): boolean {
  return e instanceof ZbError && e.code === "HSM_ABSENT" && (e.cause as { code?: string } | undefined)?.code === "EBUSY";
}

function ioFailed(address: string, what: string, e?: unknown): ZbError {
  const reason = e === undefined ? "" : `: ${(e as Error).message ?? String(e)}`;
  return new ZbError("HSM_FAILED", `cannot talk to TPM ${address}: ${what}${reason}`, e === undefined ? {} : { cause: e });
}

/** The size field of a (partial) response, once its first 6 bytes are there. */
function sizeField(b: Uint8Array, have: number): number | undefined {
  return have >= 6 ? new DataView(b.buffer, b.byteOffset).getUint32(2) : undefined;
}

function notADevice(path: string, what: string): ZbError {
  return new ZbError("CONFIG", `cannot use ${path} as a TPM: it is not a character device (${what})`, {
    hint: "set tpm2.device or --tpm to the TPM's device node (/dev/tpmrm0) or to swtpm:host=HOST,port=PORT",
  });
}

/** A name for a file type, for {@link notADevice}. */
function fileType(st: fs.Stats): string {
  if (st.isFile()) return "a regular file";
  if (st.isDirectory()) return "a directory";
  if (st.isFIFO()) return "a FIFO";
  if (st.isSocket()) return "a socket";
  if (st.isBlockDevice()) return "a block device";
  return "not a device";
}

/**
 * Open a TPM character device. Commands are written into whatever is opened,
 * so the type is checked on the opened fd before the first write (a stat of
 * the path first would race with a rename): a mistyped `--tpm /etc/passwd`
 * must never overwrite the file's first bytes. No O_CREAT or O_TRUNC, so
 * nothing is created or truncated either; O_NOCTTY, so a terminal named by
 * mistake does not become zb's controlling terminal.
 * @throws {ZbError} CONFIG when the path is not a character device; HSM_ABSENT / HSM_FAILED as {@link connect}
 */
function openDevice(path: string): Transport {
  let fd: number;
  try {
    fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_NOCTTY);
  } catch (e) {
    if ((e as { code?: string }).code === "EISDIR") throw notADevice(path, "a directory");
    throw connectError(path, e);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isCharacterDevice()) throw notADevice(path, fileType(st));
  } catch (e) {
    fs.closeSync(fd);
    throw e instanceof ZbError ? e : connectError(path, e);
  }
  let open = true;
  return {
    address: path,
    send(command) {
      if (!open) return Promise.reject(ioFailed(path, "transport closed"));
      try {
        // One write(2) per command, one read(2) per response; unpositioned
        // calls (a char device has no offset, and positioned calls are slow in Bun).
        // Synchronous, with no timeout of zb's own: the kernel driver bounds
        // every command (drivers/char/tpm: a duration per command code, up to
        // minutes for key creation) and then fails the call with ETIME, which
        // lands in the catch below as HSM_FAILED. An asynchronous read with a
        // timer would cost a thread-pool round trip per command on the boot path.
        const n = fs.writeSync(fd, command);
        if (n !== command.length) throw ioFailed(path, `short write (${n} of ${command.length} bytes)`);
        const buf = new Uint8Array(MAX_RESPONSE);
        let have = 0;
        for (;;) {
          const got = fs.readSync(fd, buf.subarray(have));
          if (got === 0) throw ioFailed(path, "end of file before the whole response");
          have += got;
          const size = sizeField(buf, have);
          if (size !== undefined && (size < 10 || size > MAX_RESPONSE)) throw ioFailed(path, `bad response size ${size}`);
          if (size !== undefined && have >= size) return Promise.resolve(buf.slice(0, size));
        }
      } catch (e) {
        return Promise.reject(e instanceof ZbError ? e : ioFailed(path, "I/O error", e));
      }
    },
    close() {
      if (!open) return;
      open = false;
      fs.closeSync(fd);
    },
  };
}

function connectTcp(host: string, port: number): Promise<Transport> {
  const address = `swtpm:host=${host},port=${port}`;
  return new Promise((resolve, reject) => {
    const sock = nodeNet().connect({ host, port });
    const timer = setTimeout(() => {
      sock.off("error", onError);
      sock.on("error", () => undefined);
      sock.destroy();
      // HSM_ABSENT, as the kernel's own ETIMEDOUT and a refused connection are (ABSENT_ERRNO).
      reject(new ZbError("HSM_ABSENT", `cannot open TPM ${address}: no answer within ${TCP_CONNECT_TIMEOUT_MS / 1000} s`));
    }, TCP_CONNECT_TIMEOUT_MS);
    const onError = (e: Error) => {
      clearTimeout(timer);
      sock.destroy();
      reject(connectError(address, e));
    };
    sock.once("error", onError);
    sock.once("connect", () => {
      clearTimeout(timer);
      sock.off("error", onError);
      sock.setNoDelay(true);
      resolve(new TcpTransport(sock, address));
    });
  });
}

/** Raw command/response over a stream socket, one command in flight. */
class TcpTransport implements Transport {
  private buf = new Uint8Array(MAX_RESPONSE);
  private have = 0;
  private pending: { resolve: (r: Uint8Array) => void; reject: (e: ZbError) => void; timer: ReturnType<typeof setTimeout> } | undefined;
  private dead: ZbError | undefined;

  constructor(private readonly sock: net.Socket, readonly address: string) {
    sock.on("data", (d: Buffer) => this.onData(d));
    sock.on("error", (e) => this.fail(ioFailed(address, "socket error", e)));
    sock.on("close", () => this.fail(ioFailed(address, "connection closed by the TPM")));
  }

  send(command: Uint8Array): Promise<Uint8Array> {
    if (this.dead) return Promise.reject(this.dead);
    if (this.pending) return Promise.reject(new ZbError("INTERNAL", "internal error: two TPM commands in flight"));
    this.have = 0;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.fail(ioFailed(this.address, `no response within ${TCP_TIMEOUT_MS / 1000} s`)), TCP_TIMEOUT_MS);
      this.pending = { resolve, reject, timer };
      this.sock.write(command);
    });
  }

  private onData(d: Buffer): void {
    if (!this.pending || this.have + d.length > this.buf.length) {
      this.fail(ioFailed(this.address, "unexpected or oversized data from the TPM"));
      d.fill(0);
      return;
    }
    this.buf.set(d, this.have);
    this.have += d.length;
    d.fill(0);
    const size = sizeField(this.buf, this.have);
    if (size === undefined) return;
    // Judged as soon as the header's size field is in, as the device transport does:
    // a size no response can have (a garbled or hostile peer) fails now, not after the timeout.
    if (size < 10 || size > MAX_RESPONSE) return this.fail(ioFailed(this.address, `bad response size ${size}`));
    if (this.have < size) return;
    if (this.have > size) return this.fail(ioFailed(this.address, `response framing broken (size ${size}, ${this.have} bytes)`));
    const p = this.pending;
    this.pending = undefined;
    clearTimeout(p.timer);
    const out = this.buf.slice(0, size);
    this.buf.fill(0, 0, this.have);
    p.resolve(out);
  }

  private fail(e: ZbError): void {
    this.dead ??= e;
    const p = this.pending;
    this.pending = undefined;
    if (p) {
      clearTimeout(p.timer);
      p.reject(e);
    }
    this.sock.destroy();
  }

  close(): void {
    this.fail(ioFailed(this.address, "transport closed"));
    this.buf.fill(0);
  }
}
