/**
 * The `soft` backend: AES-256-GCM with a key kept in a plain file. For
 * development and CI only (docs/hsm/soft.md): whoever can read the key file
 * can unseal everything sealed with it, so the backend refuses to run unless
 * explicitly enabled (`soft.enable=yes`) and warns on every use.
 *
 * Refusal is ZbError CONFIG (exit 8), not USAGE: enabling it is a decision
 * recorded in /etc/zb/hsm.conf, zbunlock has no command line to get wrong,
 * and a script must be able to tell "this device is configured not to allow
 * the soft backend" from a mistyped flag (exit 2).
 *
 * Sealed data (flat, binary as base64):
 *   version 1; keyId = SHA-256(key)[0..8]; nonce (12 bytes, random);
 *   ciphertext; tag (16 bytes). AAD = "zb-soft/1".
 * GCM with a random 96-bit nonce per seal (NIST SP 800-38D §8.2.2): a key file
 * seals a handful of LUKS keys, far below the 2^32 invocations §8.3 allows.
 *
 * Host access: the key file (read; created 0600 on first seal).
 */
import { nodeCrypto } from "../sys/lazy.ts";
import * as fs from "node:fs";
import { dirname } from "node:path";
import { ioError, ZbError } from "../errors.ts";
import { randomSecret, wipe } from "../secret.ts";
import { b64, b64field } from "./blob.ts";
import type { BackendOptions, Hsm, ProbeResult, SealedData, SealOptions, UnsealResult } from "./types.ts";

export const SOFT_DATA_VERSION = 1;
export const SOFT_KEY_BYTES = 32;
const NONCE_BYTES = 12; // SP 800-38D §5.2.1.1: 96-bit IVs are the efficient, recommended length
const TAG_BYTES = 16;
const KEY_ID_BYTES = 8;
const MAX_SECRET = 4096;
const AAD = new TextEncoder().encode("zb-soft/1");
const FIELDS = ["ciphertext", "keyId", "nonce", "tag", "version"];

export interface SoftOptions extends BackendOptions {
  /** Must be true (config `soft.enable=yes`), or every method refuses. */
  enabled: boolean;
  /** The 32-byte key file (config `soft.key-file=`); created on first seal. */
  keyFile: string;
}

/** The warning printed on every use. */
export function softWarning(keyFile: string): string {
  return `zb: WARNING: the soft HSM backend is for development only; secrets sealed with it are as safe as the key file ${keyFile} (anyone who can read it can unseal them)`;
}

/** The first 8 bytes of SHA-256(key): tells key files apart without revealing them. */
export function softKeyId(key: Uint8Array): Uint8Array {
  return new Uint8Array(nodeCrypto().createHash("sha256").update(key).digest().subarray(0, KEY_ID_BYTES));
}

/**
 * Development-only HSM: a key file and AES-256-GCM.
 * @example const hsm = new SoftHsm({ enabled: true, keyFile: "/tmp/soft.key" });
 */
export class SoftHsm implements Hsm {
  readonly name = "soft" as const;
  readonly #enabled: boolean;
  readonly #keyFile: string;
  readonly #warn: (line: string) => void;

  constructor(opts: SoftOptions) {
    this.#enabled = opts.enabled === true;
    this.#keyFile = opts.keyFile;
    this.#warn = opts.warn ?? ((line) => process.stderr.write(`${line}\n`));
  }

  /** Is the key file there and safe? Never throws; disabled reports present: false. */
  async probe(): Promise<ProbeResult> {
    if (!this.#enabled) return { backend: this.name, present: false, detail: refusal("probe").message };
    this.#warn(softWarning(this.#keyFile));
    let key: Uint8Array | null;
    try {
      key = readKey(this.#keyFile);
    } catch (e) {
      return { backend: this.name, present: false, detail: (e as Error).message };
    }
    if (!key) return { backend: this.name, present: false, detail: `key file ${this.#keyFile} does not exist (seal creates it)` };
    const id = Buffer.from(softKeyId(key)).toString("hex");
    wipe(key);
    return { backend: this.name, present: true, detail: `key file ${this.#keyFile} (development only)`, info: { keyFile: this.#keyFile, keyId: id } };
  }

  /**
   * Encrypt `secret` with the key file's key, creating the key file if missing.
   * @throws {ZbError} CONFIG when not enabled or the key file is accessible by group/other;
   *   KEY_INVALID when it is not 32 bytes; USAGE for an empty or oversized secret; IO on file errors
   */
  async seal(secret: Uint8Array, _opts?: SealOptions): Promise<SealedData> {
    if (!this.#enabled) throw refusal("seal");
    this.#warn(softWarning(this.#keyFile));
    if (secret.length === 0 || secret.length > MAX_SECRET) {
      throw new ZbError("USAGE", `cannot seal with soft: the secret must be 1 to ${MAX_SECRET} bytes, not ${secret.length}`);
    }
    const key = readKey(this.#keyFile) ?? createKey(this.#keyFile);
    try {
      return encrypt(key, secret);
    } finally {
      wipe(key);
    }
  }

  /**
   * Decrypt data from seal(). Expected failures are returned, not thrown.
   * @throws {ZbError} CONFIG when the backend is not enabled
   */
  async unseal(data: SealedData): Promise<UnsealResult> {
    if (!this.#enabled) throw refusal("unseal");
    this.#warn(softWarning(this.#keyFile));
    let parsed: Parsed;
    let key: Uint8Array | null;
    try {
      parsed = parseSealed(data);
      key = readKey(this.#keyFile);
    } catch (e) {
      return { kind: "failed", why: (e as Error).message };
    }
    if (!key) return { kind: "absent", why: `key file ${this.#keyFile} does not exist` };
    try {
      return decrypt(key, parsed);
    } finally {
      wipe(key);
    }
  }

  async close(): Promise<void> {}
}

function refusal(op: string): ZbError {
  return new ZbError("CONFIG", `cannot ${op} with the soft HSM backend: it is disabled (development only)`, {
    hint: "set soft.enable=yes in /etc/zb/hsm.conf on development devices only",
  });
}

interface Parsed {
  keyId: Uint8Array;
  nonce: Uint8Array;
  ciphertext: Uint8Array;
  tag: Uint8Array;
}

/** @throws {ZbError} CRED_INVALID when a field is missing, extra, or of the wrong size */
function parseSealed(data: SealedData): Parsed {
  const bad = (why: string) => new ZbError("CRED_INVALID", `cannot read soft sealed data: ${why}`);
  for (const k of Object.keys(data)) if (!FIELDS.includes(k)) throw bad(`unknown field ${JSON.stringify(k)}`);
  if (data.version !== SOFT_DATA_VERSION) throw bad(`version is ${JSON.stringify(data.version)}, expected ${SOFT_DATA_VERSION}`);
  const p: Parsed = {
    keyId: b64field(data, "keyId"),
    nonce: b64field(data, "nonce"),
    ciphertext: b64field(data, "ciphertext"),
    tag: b64field(data, "tag"),
  };
  const sizes: [keyof Parsed, number, number][] = [["keyId", KEY_ID_BYTES, KEY_ID_BYTES], ["nonce", NONCE_BYTES, NONCE_BYTES], ["tag", TAG_BYTES, TAG_BYTES], ["ciphertext", 1, MAX_SECRET]];
  for (const [name, min, max] of sizes) {
    const n = p[name].length;
    if (n < min || n > max) throw bad(`${name} is ${n} bytes`);
  }
  return p;
}

function encrypt(key: Uint8Array, secret: Uint8Array): SealedData {
  const nonce = randomSecret(NONCE_BYTES);
  const c = nodeCrypto().createCipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG_BYTES });
  c.setAAD(AAD);
  const ciphertext = Buffer.concat([c.update(secret), c.final()]);
  return { version: SOFT_DATA_VERSION, keyId: b64(softKeyId(key)), nonce: b64(nonce), ciphertext: b64(ciphertext), tag: b64(c.getAuthTag()) };
}

function decrypt(key: Uint8Array, p: Parsed): UnsealResult {
  if (!Buffer.from(softKeyId(key)).equals(p.keyId)) {
    return { kind: "no-match", why: "the data was sealed with another soft key file (key id differs)" };
  }
  const d = nodeCrypto().createDecipheriv("aes-256-gcm", key, p.nonce, { authTagLength: TAG_BYTES });
  d.setAAD(AAD);
  d.setAuthTag(p.tag);
  const plain = d.update(p.ciphertext);
  try {
    d.final(); // throws when the tag does not verify
  } catch {
    wipe(plain);
    return { kind: "failed", why: "the sealed data does not authenticate (AES-GCM tag mismatch): it was altered" };
  }
  const secret = new Uint8Array(plain);
  wipe(plain);
  return { kind: "ok", secret };
}

/**
 * The key, or null when the file does not exist.
 * @throws {ZbError} CONFIG when not a regular file or accessible by group/other; KEY_INVALID when not 32 bytes; IO otherwise
 */
function readKey(path: string): Uint8Array | null {
  let fd: number;
  try {
    fd = fs.openSync(path, fs.constants.O_RDONLY);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw ioError(`open soft key file ${path}`, e);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new ZbError("CONFIG", `cannot use soft key file ${path}: not a regular file`);
    if ((st.mode & 0o077) !== 0) {
      throw new ZbError("CONFIG", `cannot use soft key file ${path}: mode ${(st.mode & 0o777).toString(8).padStart(4, "0")} gives group or other access`, {
        hint: `chmod 600 ${path}`,
      });
    }
    if (st.size !== SOFT_KEY_BYTES) throw new ZbError("KEY_INVALID", `cannot use soft key file ${path}: it is ${st.size} bytes, expected ${SOFT_KEY_BYTES}`);
    const key = new Uint8Array(SOFT_KEY_BYTES);
    if (fs.readSync(fd, key, 0, SOFT_KEY_BYTES, 0) !== SOFT_KEY_BYTES) throw new ZbError("IO", `cannot read soft key file ${path}: short read`);
    return key;
  } catch (e) {
    throw ioError(`read soft key file ${path}`, e);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A fresh random key in a new 0600 file (O_EXCL: never overwrites a key that
 * appeared meanwhile), made durable before anything is sealed with it.
 * @throws {ZbError} IO when the file cannot be created
 */
function createKey(path: string): Uint8Array {
  const key = randomSecret(SOFT_KEY_BYTES);
  try {
    fs.mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const fd = fs.openSync(path, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    try {
      fs.writeSync(fd, key);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    const dfd = fs.openSync(dirname(path), "r");
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
    return key;
  } catch (e) {
    wipe(key);
    throw ioError(`create soft key file ${path}`, e);
  }
}
