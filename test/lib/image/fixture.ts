/**
 * Shared fixtures of the image tests (not a test file itself): deterministic
 * keys and payload bytes, a `.zbi` built with the real `createImage`, trust
 * directories, a small ustar reader/writer to craft hostile archives, a Sys
 * that records every journal version written, the target checks "only
 * verified bytes reached the target", and an HTTP server that resets a
 * connection after exactly N bytes.
 */
import { afterAll } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { ZbError } from "../../../lib/errors.ts";
import { createImage } from "../../../lib/image/create.ts";
import type { Journal } from "../../../lib/image/journal.ts";
import { encodePublicPem, privateKeyFromSecret, type PrivateKey } from "../../../lib/image/keys.ts";
import type { Encoding, Manifest } from "../../../lib/image/manifest.ts";
import { keySigner } from "../../../lib/image/sign.ts";
import { HostSys, type WriteOptions } from "../../../lib/sys/sys.ts";

export const BIN = resolve(import.meta.dir, "../../../dist/zb-x64");
export const MIN_CHUNK = 64 << 10;

/** The compiled binary must exist: a missing build fails the test, it never skips it. */
export function requireBinary(): string {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`node_modules/.bin/bun build.ts --target x64\` first`);
  return BIN;
}

// ---- deterministic keys ----

const seed = (n: number) => new Uint8Array(32).map((_, i) => (i * 7 + n * 31 + 1) & 0xff);
/** k1 (Ed25519) and k2 (P-256) sign the images; `other` is a key nobody signed with. */
export const KEYS: Record<"k1" | "k2" | "other", PrivateKey> = {
  k1: privateKeyFromSecret("ed25519", seed(1)),
  k2: privateKeyFromSecret("p256", seed(2)),
  other: privateKeyFromSecret("ed25519", seed(3)),
};

/** A trust directory holding the public halves of `keys`. */
export function trustDir(root: string, name: string, keys: PrivateKey[]): string {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  keys.forEach((k, i) => writeFileSync(join(dir, `key${i}.pem`), encodePublicPem(k.publicKey)));
  return dir;
}

/** A private key file for the CLI (PKCS#8 PEM). */
export async function keyFile(root: string, name: string, key: PrivateKey): Promise<string> {
  const { encodePrivatePem } = await import("../../../lib/image/keys.ts");
  const path = join(root, name);
  writeFileSync(path, encodePrivatePem(key), { mode: 0o600 });
  return path;
}

// ---- deterministic payload bytes ----

/** xorshift32: reproducible "random" bytes without crypto. */
function xorshift(seedValue: number): () => number {
  let x = seedValue >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/**
 * `size` bytes of varied content in 4 KiB blocks: incompressible noise,
 * zeros, text, a byte ramp, and near-copies of earlier blocks, so zstd
 * frames differ in size from chunk to chunk and every chunk is distinct.
 * `noise` is the share of noise blocks (0..1).
 */
export function variedBytes(size: number, seedValue: number, noise = 0.3): Uint8Array {
  const out = new Uint8Array(size);
  const words = new Uint32Array(out.buffer, 0, size >> 2);
  const next = xorshift(seedValue);
  const text = new TextEncoder().encode("root:x:0:0:root:/root:/bin/sh\nPRETTY_NAME=\"zb test rootfs\"\n");
  for (let block = 0; block * 4096 < size; block++) {
    const at = block * 4096;
    const end = Math.min(size, at + 4096);
    const kind = next() % 100;
    if (kind < noise * 100) {
      for (let w = at >> 2; w < end >> 2; w++) words[w] = next();
    } else if (kind < noise * 100 + 15) {
      // zeros: leave as is, but stamp the block number so no two chunks are equal
    } else if (kind < noise * 100 + 40) {
      for (let i = at; i < end; i++) out[i] = text[(i + block) % text.length]!;
    } else if (kind < noise * 100 + 55 || block < 2) {
      for (let i = at; i < end; i++) out[i] = (i * 7 + block) & 0xff;
    } else {
      const from = (next() % block) * 4096;
      out.copyWithin(at, from, Math.min(from + (end - at), at));
      out[at + (next() % (end - at))]! ^= 0x5a;
    }
    out[at] = block & 0xff;
    if (at + 1 < end) out[at + 1] = (block >> 8) & 0xff;
  }
  for (let i = size & ~3; i < size; i++) out[i] = next() & 0xff;
  return out;
}

/** A target's pre-filled content: a pattern no payload chunk equals. */
export function sentinel(size: number): Uint8Array {
  const s = new Uint8Array(size);
  const tag = new TextEncoder().encode("SENTINEL-not-written-by-zb-");
  for (let i = 0; i < size; i++) s[i] = tag[i % tag.length]! ^ ((i >> 12) & 0x0f);
  return s;
}

// ---- images ----

export interface Built {
  path: string;
  bytes: Uint8Array;
  manifest: Manifest;
  /** Raw payload bytes by name (boot is the deterministic tar createImage made). */
  raw: Record<string, Uint8Array>;
}

export const CREATED = new Date("2025-01-02T03:04:05Z");

/**
 * Build a `.zbi` with the real publisher code: a boot folder (config.txt,
 * cmdline.txt, an overlay of noise spanning two chunks) and a rootfs file.
 */
export async function buildImage(dir: string, o: {
  name?: string; rootfs: Uint8Array; boot?: boolean; encoding?: Encoding; chunkSize?: number;
  signers?: PrivateKey[]; compatible?: string; serial?: number; version?: string;
}): Promise<Built> {
  mkdirSync(dir, { recursive: true });
  const name = o.name ?? "image";
  const rootfsPath = join(dir, `${name}.rootfs.img`);
  writeFileSync(rootfsPath, o.rootfs);
  const payloads = [];
  if (o.boot ?? true) {
    const boot = join(dir, `${name}.boot`);
    mkdirSync(join(boot, "overlays"), { recursive: true });
    writeFileSync(join(boot, "config.txt"), "arm_64bit=1\nkernel=kernel8.img\n");
    writeFileSync(join(boot, "cmdline.txt"), "console=serial0,115200 root=PARTUUID=abcd-02 rootwait\n");
    writeFileSync(join(boot, "overlays", "zb.dtbo"), variedBytes(70_000, 99, 0.9));
    payloads.push({ name: "boot", kind: "boot" as const, encoding: o.encoding ?? "zstd", from: { dir: boot } });
  }
  payloads.push({ name: "rootfs", kind: "rootfs" as const, encoding: o.encoding ?? "zstd", from: { file: rootfsPath } });
  const path = join(dir, `${name}.zbi`);
  const manifest = await createImage({
    compatible: o.compatible ?? "pi4", version: o.version ?? "1.0.0", serial: o.serial ?? 5, created: CREATED,
    chunkSize: o.chunkSize ?? MIN_CHUNK, payloads, signers: (o.signers ?? [KEYS.k1, KEYS.k2]).map(keySigner), output: path,
  });
  const bytes = new Uint8Array(readFileSync(path));
  const raw: Record<string, Uint8Array> = { rootfs: o.rootfs };
  if (o.boot ?? true) raw.boot = bootRaw(bytes, manifest);
  return { path, bytes, manifest, raw };
}

/** The boot payload's raw bytes: its zstd frames decompressed (checked against the signed SHA-256). */
function bootRaw(image: Uint8Array, m: Manifest): Uint8Array {
  const entry = listTar(image).find((e) => e.name === "boot")!;
  const p = m.payloads.find((x) => x.name === "boot")!;
  const parts: Uint8Array[] = [];
  let at = entry.dataAt;
  for (const c of p.chunks) {
    parts.push(p.encoding === "zstd" ? Bun.zstdDecompressSync(image.subarray(at, at + c.size)) : image.slice(at, at + c.size));
    at += c.size;
  }
  const raw = new Uint8Array(Buffer.concat(parts));
  if (sha256(raw) !== p.raw.sha256) throw new Error("fixture: boot payload does not decompress to its raw SHA-256");
  return raw;
}

export function sha256(b: Uint8Array): string {
  return new Bun.CryptoHasher("sha256").update(b).digest("hex");
}

// ---- ustar ----

export const BLOCK = 512;
export const pad512 = (n: number) => Math.ceil(n / BLOCK) * BLOCK;

export interface TarEntry {
  name: string;
  typeflag: string;
  headerAt: number;
  dataAt: number;
  size: number;
}

/** The entries of a well-formed archive up to the end-of-archive block. */
export function listTar(bytes: Uint8Array): TarEntry[] {
  const out: TarEntry[] = [];
  for (let at = 0; at + BLOCK <= bytes.length; ) {
    const h = bytes.subarray(at, at + BLOCK);
    if (h.every((b) => b === 0)) break;
    const name = Buffer.from(h.subarray(0, 100)).toString("latin1").replace(/\0.*$/s, "");
    const size = parseInt(Buffer.from(h.subarray(124, 136)).toString("latin1").replace(/[\0 ]+$/, ""), 8);
    out.push({ name, typeflag: String.fromCharCode(h[156]!), headerAt: at, dataAt: at + BLOCK, size });
    at += BLOCK + pad512(size);
  }
  return out;
}

/**
 * A copy of an image whose manifest is edited in place, serial `from` → `to`
 * (the same number of digits, so the tar stays well-formed): its signatures
 * no longer match, which verify and `sign --trust` refuse.
 */
export function withEditedSerial(image: Uint8Array, from: number, to: number): Uint8Array {
  const bytes = new Uint8Array(image);
  const m = listTar(bytes).find((e) => e.name === "manifest.json")!;
  const [was, now] = [`"serial":${from},`, `"serial":${to},`];
  const text = Buffer.from(bytes.subarray(m.dataAt, m.dataAt + m.size)).toString("latin1");
  if (!text.includes(was) || was.length !== now.length) throw new Error(`fixture: the manifest has no serial ${from}, or ${to} has other digits`);
  bytes.set(Buffer.from(text.replace(was, now), "latin1"), m.dataAt);
  return bytes;
}

/** Recompute a header block's checksum in place (so the tar layer accepts it). */
export function fixChecksum(header: Uint8Array): Uint8Array {
  header.fill(0x20, 148, 156);
  const sum = header.reduce((a, b) => a + b, 0);
  header.set(Buffer.from(sum.toString(8).padStart(6, "0") + "\0 ", "latin1"), 148);
  return header;
}

export interface RawEntry {
  name: string;
  data: Uint8Array;
  /** ustar typeflag, "0" by default. */
  typeflag?: string;
  linkname?: string;
  /** ustar prefix field (joined to the name with "/" by readers). */
  prefix?: string;
  /** Size to write in the header when it should lie about the data. */
  headerSize?: number;
  devmajor?: number;
}

/** One ustar header as zb writes it (mtime 0, root, 0644), checksum included. */
export function tarHeader(e: Omit<RawEntry, "data"> & { size: number }): Uint8Array {
  const h = new Uint8Array(BLOCK);
  const put = (s: string, at: number) => h.set(Buffer.from(s, "latin1"), at);
  const oct = (n: number, width: number) => n.toString(8).padStart(width - 1, "0") + "\0";
  put(e.name, 0);
  put(oct(0o644, 8), 100);
  put(oct(0, 8), 108);
  put(oct(0, 8), 116);
  put(oct(e.headerSize ?? e.size, 12), 124);
  put(oct(0, 12), 136);
  put(e.typeflag ?? "0", 156);
  if (e.linkname) put(e.linkname, 157);
  put("ustar\x0000", 257);
  put(oct(e.devmajor ?? 0, 8), 329);
  put(oct(0, 8), 337);
  if (e.prefix) put(e.prefix, 345);
  return fixChecksum(h);
}

/** A whole archive of `entries` and the two zero blocks that end it. */
export function tarArchive(entries: RawEntry[]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const e of entries) {
    parts.push(tarHeader({ ...e, size: e.data.length }));
    parts.push(e.data, new Uint8Array(pad512(e.data.length) - e.data.length));
  }
  parts.push(new Uint8Array(2 * BLOCK));
  return new Uint8Array(Buffer.concat(parts));
}

/** The entries of a zb-made archive as data, to edit and re-pack with {@link tarArchive}. */
export function entriesOf(bytes: Uint8Array): RawEntry[] {
  return listTar(bytes).map((e) => ({ name: e.name, data: bytes.slice(e.dataAt, e.dataAt + e.size) }));
}

/** A pax extended header record list ("%d key=value\n"). */
export function paxRecords(kv: Record<string, string>): Uint8Array {
  let s = "";
  for (const [k, v] of Object.entries(kv)) {
    const body = ` ${k}=${v}\n`;
    let len = body.length + 1;
    while (String(len).length + body.length !== len) len = String(len).length + body.length;
    s += len + body;
  }
  return new TextEncoder().encode(s);
}

// ---- outcomes ----

/** "ok", the ZbError code, or "plain Error: …" for anything that is not a ZbError. */
export async function outcome(p: Promise<unknown> | (() => Promise<unknown>)): Promise<string> {
  try {
    await (typeof p === "function" ? p() : p);
    return "ok";
  } catch (e) {
    if (e instanceof ZbError) return e.code;
    return `plain ${(e as Error)?.name ?? "value"}: ${(e as Error)?.message ?? String(e)}`;
  }
}

/** A HostSys that keeps every version of the journal it writes (through writeFileAtomic's temp file). */
export class RecordingSys extends HostSys {
  readonly journals: Journal[] = [];
  /** For each journal version: the target's bytes at that moment (when `snapshotTarget` is set). */
  readonly targetAt: (Uint8Array | null)[] = [];
  constructor(private readonly journalPath: string, private readonly snapshotTarget?: string) {
    super();
  }
  override writeAt(path: string, offset: number, data: Uint8Array, opts?: WriteOptions): void {
    if (basename(path) === `.${basename(this.journalPath)}.zb-new`) {
      this.journals.push(JSON.parse(Buffer.from(data).toString("utf8")) as Journal);
      if (this.snapshotTarget) this.targetAt.push(existsSync(this.snapshotTarget) ? new Uint8Array(readFileSync(this.snapshotTarget)) : null);
    }
    super.writeAt(path, offset, data, opts);
  }
}

/**
 * "Only verified bytes reached the target": the target is, chunk by chunk,
 * the raw payload for chunks 0..w-1 and the untouched sentinel after.
 * @returns w, the number of leading chunks that hold payload bytes
 * @throws Error naming the first chunk that is neither (or payload after sentinel)
 */
export function writtenChunks(target: Uint8Array, raw: Uint8Array, before: Uint8Array, chunkSize: number): number {
  if (target.length !== before.length) throw new Error(`the target is ${target.length} bytes, it was ${before.length}`);
  const chunks = Math.ceil(raw.length / chunkSize);
  let w = 0;
  for (let i = 0; i < chunks; i++) {
    const a = i * chunkSize;
    const b = Math.min(raw.length, a + chunkSize);
    const t = Buffer.from(target.subarray(a, b));
    const isRaw = t.equals(Buffer.from(raw.subarray(a, b)));
    const isSentinel = t.equals(Buffer.from(before.subarray(a, b)));
    if (isRaw && w === i) w++;
    else if (!isSentinel) throw new Error(`target chunk ${i} holds bytes that are neither the verified payload nor the sentinel (or payload after an unwritten chunk)`);
  }
  if (!Buffer.from(target.subarray(raw.length)).equals(Buffer.from(before.subarray(raw.length)))) throw new Error("bytes beyond the payload's end changed");
  return w;
}

// ---- full disks ----

/**
 * Small tmpfs mounts for full-disk tests (the suite runs as root):
 * `const smallDisk = tmpfsMounts()` at the top of a test file, then
 * `smallDisk("size=1m")` mounts one on a new folder of the system's temp
 * folder (tmpfs options: `size=`, `nr_inodes=`) — not inside the test's own
 * temp folder, which its afterAll may remove before this one unmounts.
 * Every mount is unmounted and its folder removed after the file's tests.
 */
export function tmpfsMounts(): (options: string) => string {
  const mounts: string[] = [];
  afterAll(() => {
    for (const m of mounts.reverse()) {
      Bun.spawnSync(["umount", m]);
      rmSync(m, { recursive: true, force: true });
    }
  });
  return (options) => {
    const dir = mkdtempSync(join(tmpdir(), "zbtest-tmpfs-"));
    const r = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", options, "tmpfs", dir]);
    if (r.exitCode !== 0) throw new Error(`cannot mount a tmpfs (${options}) on ${dir}: ${r.stderr.toString()}`);
    mounts.push(dir);
    return dir;
  };
}

// ---- a server that breaks off after exactly N bytes ----

/** A request as {@link rawHttpServer} read it: the path and the headers (lower-case names). */
export interface RawRequest {
  path: string;
  headers: Map<string, string>;
}

/**
 * An answer of {@link rawHttpServer}: the whole body with a Content-Length,
 * or, with `breakAfter` less than its length, a chunked body (`sized`: with
 * the whole's Content-Length) whose connection is reset (RST) after exactly
 * that many bytes.
 */
export interface RawAnswer {
  status: number;
  headers?: Record<string, string>;
  body: Uint8Array;
  breakAfter?: number;
  /** The body chunked, without a Content-Length (the length unsaid), also when it does not break. */
  chunked?: boolean;
  /** A body that breaks (`breakAfter`) with the Content-Length of its whole, not chunked. */
  sized?: boolean;
  /** The whole answer, status line and headers too, sent as it is (a malformed one); the rest is ignored. */
  raw?: string;
  /** No answer at all: the connection stays open, silent, until the client closes it. */
  hang?: boolean;
}

/**
 * An HTTP/1.1 server on 127.0.0.1 (a free port) on plain TCP sockets, one
 * request per connection, for the answer Bun.serve cannot time: a reset
 * after exactly N body bytes. Written bytes are not yet read ones: the
 * runtime's fetch drops the bytes it has received but its reader has not
 * taken yet when the connection resets (all of them when the reset comes
 * with them). So the server resets only once the bytes are in the kernel
 * (the write's callback) and `consumed(request)` has resolved: the test says
 * when its client has taken them (see {@link untilIdle}).
 */
export function rawHttpServer(answer: (req: RawRequest) => RawAnswer, consumed: (req: RawRequest) => Promise<void>): Promise<{ port: number; stop(): void }> {
  const reasons: Record<number, string> = { 200: "OK", 206: "Partial Content", 302: "Found", 404: "Not Found", 503: "Service Unavailable" };
  const server = net.createServer((sock) => {
    sock.on("error", () => undefined); // a client that went away first
    let head = "";
    sock.on("data", function onData(d: Buffer) {
      head += d.toString("latin1");
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      sock.off("data", onData);
      const [line = "", ...fields] = head.slice(0, end).split("\r\n");
      const headers = new Map(fields.map((f) => [f.slice(0, f.indexOf(":")).trim().toLowerCase(), f.slice(f.indexOf(":") + 1).trim()] as const));
      const req = { path: (line.split(" ")[1] ?? "/").split("?")[0]!, headers };
      const a = answer(req);
      if (a.hang === true) return;
      if (a.raw !== undefined) {
        sock.end(a.raw, "latin1");
        return;
      }
      const cut = a.breakAfter !== undefined && a.breakAfter < a.body.length;
      const chunked = a.chunked === true || (cut && a.sized !== true);
      const sent = { ...a.headers, connection: "close", ...(chunked ? { "transfer-encoding": "chunked" } : { "content-length": String(a.body.length) }) };
      const top = `HTTP/1.1 ${a.status} ${reasons[a.status] ?? "Status"}\r\n${Object.entries(sent).map(([k, v]) => `${k}: ${v}\r\n`).join("")}\r\n`;
      const body = (b: Uint8Array) => (!chunked ? [b] : b.length > 0 ? [Buffer.from(`${b.length.toString(16)}\r\n`), b, Buffer.from("\r\n")] : []);
      if (!cut) {
        sock.write(top);
        sock.end(chunked ? Buffer.concat([...body(a.body), Buffer.from("0\r\n\r\n")]) : a.body);
        return;
      }
      sock.write(Buffer.concat([Buffer.from(top), ...body(a.body.subarray(0, a.breakAfter!))]), () => {
        void consumed(req).then(() => sock.resetAndDestroy());
      });
    });
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve({ port: (server.address() as net.AddressInfo).port, stop: () => server.close() }));
  });
}

/** Each thread of `pid` as "tid state run-ns"; null once the process has ended (or is a zombie). */
function threadsOf(pid: number): string | null {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return null;
  }
  const looks = tids.map((tid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const state = stat.charAt(stat.lastIndexOf(")") + 2);
      return `${tid} ${state} ${readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]}`;
    } catch {
      return `${tid} gone`; // it ended between the listing and the look: not idle
    }
  });
  return looks.some((l) => /^(\d+) [ZX] /.exec(l)?.[1] === String(pid)) ? null : looks.sort().join("\n");
}

/**
 * Until process `pid` is idle: every thread asleep (S) in two looks 20 ms
 * apart, none having run in between (run times unchanged), so nothing in it
 * was running or could run in that span. A process that only waits for input
 * (zb downloading, its reader waiting for the next bytes) is then waiting for
 * bytes it has not been sent: it has taken all it was sent. zb's image reader
 * awaits no timer while bytes are at hand, which this relies on. Returns at
 * once when the process has ended.
 */
export async function untilIdle(pid: number): Promise<void> {
  let before = threadsOf(pid);
  while (before !== null) {
    await Bun.sleep(20);
    const now = threadsOf(pid);
    if (now !== null && now === before && now.split("\n").every((l) => l.split(" ")[1] === "S")) return;
    before = now;
  }
}

/**
 * How many TCP connections to 127.0.0.1:`port` process `pid` holds open: its
 * socket descriptors (/proc/PID/fd) matched by inode against the IPv4 table
 * of its network namespace (/proc/PID/net/tcp), in any state (a connection
 * the server closed but zb did not is still held). 0 once the process is gone.
 */
export function connectionsTo(pid: number, port: number): number {
  let table: string;
  let fds: string[];
  try {
    table = readFileSync(`/proc/${pid}/net/tcp`, "utf8");
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return 0;
  }
  const remote = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  // Columns: sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode …
  const toPort = new Set(table.split("\n").slice(1).map((l) => l.trim().split(/\s+/)).filter((c) => c[2] === remote).map((c) => c[9]));
  const sockets = fds.map((fd) => {
    try {
      return /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))?.[1];
    } catch {
      return undefined; // closed meanwhile
    }
  });
  return sockets.filter((inode) => inode !== undefined && toPort.has(inode)).length;
}

/** Every byte of a source's stream, in one buffer. */
export async function readAll(body: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const p of body) parts.push(p);
  return new Uint8Array(Buffer.concat(parts));
}
