/**
 * `zb key gen|id`: signing keys for images. Private keys are PKCS#8 PEM files
 * created 0600 (openssl reads them); public keys SPKI PEM beside them.
 */
import { closeSync, fstatSync, fsyncSync, lstatSync, openSync, unlinkSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { onlyThese, parseArgs } from "../../lib/cli/args.ts";
import { decodePrivatePem, decodePublicPem, encodePrivatePem, encodePublicPem, generateKey, MAX_KEY_FILE, type Alg } from "../../lib/image/keys.ts";
import { ZbError, ioError } from "../../lib/errors.ts";
import { readFdBounded } from "../../lib/sys/bounded.ts";
import { HostSys } from "../../lib/sys/sys.ts";
import { err, out } from "../output.ts";
import { subcommand } from "../common.ts";

const USAGE = `usage: zb key gen --alg ed25519|p256 -o NAME [--json]
       zb key id KEYFILE [--json]

gen: a new signing key: NAME (private, PKCS#8 PEM, mode 0600) and NAME.pub
     (public, SPKI PEM: copy it into the devices' trust directory).
id:  the key id of a public or private key file: SHA-256 of the public key's
     SubjectPublicKeyInfo DER, in hex (the id signatures name).`;

export function keyMain(argv: string[]): number {
  const [first, ...rest] = argv;
  const sub = subcommand("key", first, ["gen", "id"], USAGE + "\n");
  if (sub === null) return 0;
  const args = parseArgs(rest, { alg: { value: true }, output: { short: "o", value: true }, json: {}, help: { short: "h" } }, `zb key ${sub}`, { repeats: "refuse" });
  if (args.flags.has("help")) {
    out(USAGE + "\n");
    return 0;
  }
  if (sub === "gen") {
    onlyThese(args, ["alg", "output", "json"], 0, "zb key gen");
    return gen(args.values.get("alg"), args.values.get("output"), args.flags.has("json"));
  }
  onlyThese(args, ["json"], 1, "zb key id");
  return id(args.positional[0], args.flags.has("json"));
}

function gen(alg: string | undefined, name: string | undefined, json: boolean): number {
  if (alg !== "ed25519" && alg !== "p256") throw new ZbError("USAGE", "cannot generate a key: --alg must be ed25519 or p256");
  if (!name) throw new ZbError("USAGE", "cannot generate a key: -o NAME is required");
  // lstat: a dangling link counts as there (writing through it would fail half-way, after the private key).
  for (const f of [name, `${name}.pub`]) if (lexists(f)) throw new ZbError("USAGE", `cannot generate a key: ${f} exists already (zb never overwrites a key)`);
  const key = generateKey(alg as Alg);
  // Both files or neither: a failed write (a full disk) must not leave an empty or half-written
  // private key that blocks the retry ("exists already"), nor a private key without its .pub.
  const created: string[] = [];
  try {
    for (const [path, text, mode] of [[name, encodePrivatePem(key), 0o600], [`${name}.pub`, encodePublicPem(key.publicKey), 0o644]] as const) {
      const fd = openSync(path, "wx", mode); // O_EXCL: created by this run, so ours to remove
      created.push(path);
      try {
        writeFileSync(fd, text);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    }
    // The names too: a power cut after `key gen` must not lose a key whose .pub went to devices already.
    new HostSys().fsync(dirname(name));
  } catch (e) {
    for (const path of created.reverse()) {
      try {
        unlinkSync(path);
      } catch {
        // gone already
      }
    }
    throw ioError(`write key ${name}`, e);
  } finally {
    key.secret.fill(0);
  }
  out(json ? JSON.stringify({ alg, id: key.publicKey.id, private: name, public: `${name}.pub` }) + "\n" : `${key.publicKey.id}  ${alg}  ${name}.pub\n`);
  return 0;
}

function id(file: string | undefined, json: boolean): number {
  if (!file) throw new ZbError("USAGE", "cannot print a key id: no key file given");
  const pub = readKeyFile(file);
  out(json ? JSON.stringify({ alg: pub.alg, id: pub.id }) + "\n" : `${pub.id}\n`);
  return 0;
}

/** A public key from a public or private key file. @throws {ZbError} IO, KEY_INVALID */
function readKeyFile(file: string) {
  const { text } = readKeyText(file);
  if (!text.includes("PRIVATE KEY")) return decodePublicPem(text, file);
  const key = decodePrivatePem(text, file);
  key.secret.fill(0);
  return key.publicKey;
}

/** A private key for signing; warns when others can read it. @throws {ZbError} IO, KEY_INVALID */
export function readPrivateKey(file: string) {
  const { text, mode } = readKeyText(file);
  const loose = (mode & 0o077) !== 0;
  // Decoded first: a public key given as --key is an error, and a warning about its mode would only mislead.
  const key = decodePrivatePem(text, file);
  if (loose) err(`zb: warning: private key ${file} is readable by other users (chmod 600 it)\n`);
  return key;
}

/**
 * A key file's text and mode, read in sequence (a FIFO such as `<(…)` works
 * too) and at most {@link MAX_KEY_FILE} bytes of it: a path that is no key
 * file (/dev/zero) would otherwise be read until memory runs out.
 * @throws {ZbError} IO; KEY_INVALID when there is more
 */
function readKeyText(file: string): { text: string; mode: number } {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (e) {
    throw ioError(`read key ${file}`, e);
  }
  try {
    let mode: number;
    try {
      mode = fstatSync(fd).mode;
    } catch (e) {
      throw ioError(`read key ${file}`, e);
    }
    // secret: it may hold a private key, so every buffer but the one returned is wiped.
    const bytes = readFdBounded(fd, { max: MAX_KEY_FILE, code: "KEY_INVALID", what: `key ${file}`, secret: true });
    const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("utf8");
    bytes.fill(0); // the string cannot be wiped (lib/image/keys.ts)
    return { text, mode };
  } finally {
    closeSync(fd);
  }
}

function lexists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}
