/**
 * The session cryptography of TPM 2.0, SHA-256 and AES-128-CFB only: KDFa,
 * KDFe, salt encryption to the storage key, session HMACs and parameter
 * encryption. Pure (no host access).
 *
 * Native code only, and no node:crypto: hashes and HMACs go through
 * Bun.CryptoHasher (synchronous), ECDH, RSA-OAEP and AES through WebCrypto
 * (`crypto.subtle`, asynchronous). Loading Bun's node:crypto module is
 * JavaScript work that zbunlock pays on every boot: under QEMU TCG without
 * the JIT, `require("node:crypto")` alone added 0.08 s to a warm start and
 * 0.19 s to a cold one, while a WebCrypto P-256 key pair added 0.02 s
 * (qemu/README.md, Timings). WebCrypto has no AES-CFB, so CFB is built from
 * single AES blocks (AES-CTR of a zero block with the block as counter).
 *
 * References: TCG TPM 2.0 Library Part 1 §11.4.10 (KDFa/KDFe), §19.6
 * (session key, HMAC), §21 (parameter encryption), Annex B.10.3 (RSA salt,
 * OAEP label "SECRET"), Annex C.6.1 (ECC salt: one-pass Diffie-Hellman);
 * NIST SP 800-38A §6.3 (CFB), §6.5 (CTR).
 */
import { ZbError } from "../../errors.ts";
import { randomSecret, wipe } from "../../secret.ts";
import { marshal } from "./wire.ts";

const subtle = (): SubtleCrypto => globalThis.crypto.subtle;
/** WebCrypto's types want an ArrayBuffer-backed view; zb never uses shared memory. */
const bs = (b: Uint8Array): Uint8Array<ArrayBuffer> => b as Uint8Array<ArrayBuffer>;

/** Copy a native digest into a fresh array and wipe the native one (it may hold key material). */
function take(hasher: Bun.CryptoHasher): Uint8Array {
  const d = hasher.digest();
  const out = new Uint8Array(d);
  d.fill(0);
  return out;
}

/** SHA-256 digest size in bytes. */
export const DIGEST_SIZE = 32;

/** SHA-256 over the concatenation of `parts`. */
export function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = new Bun.CryptoHasher("sha256");
  for (const p of parts) h.update(p);
  return take(h);
}

/** HMAC-SHA-256 over the concatenation of `parts`. */
export function hmacSha256(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const h = new Bun.CryptoHasher("sha256", key);
  for (const p of parts) h.update(p);
  return take(h);
}

function u32be(n: number): Uint8Array {
  return marshal((w) => w.u32(n));
}

/** A KDF label as used on the wire: ASCII plus a terminating zero octet (Part 1 §11.4.10.1). */
function label(s: string): Uint8Array {
  return new TextEncoder().encode(`${s}\0`);
}

/**
 * KDFa with SHA-256 (Part 1 §11.4.10.2; SP 800-108 counter mode with HMAC):
 * K(i) = HMAC(key, [i]32 ‖ label ‖ 00 ‖ contextU ‖ contextV ‖ [bits]32).
 * @param bits output length in bits, a multiple of 8
 * @example kdfa(salt, "ATH", nonceTPM, nonceCaller, 256) // the session key
 */
export function kdfa(key: Uint8Array, use: string, contextU: Uint8Array, contextV: Uint8Array, bits: number): Uint8Array {
  const out = new Uint8Array(bits / 8);
  const fixed = [label(use), contextU, contextV, u32be(bits)];
  for (let i = 1, done = 0; done < out.length; i++) {
    const k = hmacSha256(key, u32be(i), ...fixed);
    out.set(k.subarray(0, out.length - done), done);
    done += k.length;
    wipe(k);
  }
  return out;
}

/**
 * KDFe with SHA-256 (Part 1 §11.4.10.3; SP 800-56A concatenation KDF):
 * K(i) = SHA-256([i]32 ‖ Z ‖ label ‖ 00 ‖ partyU ‖ partyV).
 * @example kdfe(z, "SECRET", ephemeral.x, srk.x, 256) // the session salt
 */
export function kdfe(z: Uint8Array, use: string, partyU: Uint8Array, partyV: Uint8Array, bits: number): Uint8Array {
  const out = new Uint8Array(bits / 8);
  for (let i = 1, done = 0; done < out.length; i++) {
    const k = sha256(u32be(i), z, label(use), partyU, partyV);
    out.set(k.subarray(0, out.length - done), done);
    done += k.length;
    wipe(k);
  }
  return out;
}

/** The public key a session salt is encrypted to (the storage key). */
export type SaltKey =
  | { kind: "ecc"; x: Uint8Array; y: Uint8Array }
  | { kind: "rsa"; n: Uint8Array; exponent: number };

/** A fresh salt and its encryption for StartAuthSession's `encryptedSalt` (a TPM2B's content). */
export interface Salt {
  salt: Uint8Array;
  encrypted: Uint8Array;
}

function pad32(b: Uint8Array): Uint8Array {
  if (b.length > 32) throw new ZbError("HSM_FAILED", "cannot salt the session: ECC coordinate longer than 32 bytes");
  const out = new Uint8Array(32);
  out.set(b, 32 - b.length);
  return out;
}

/**
 * Make a salt for a session whose tpmKey is `key` (Part 1 Annex C.6.1 for
 * ECC: an ephemeral P-256 key; Annex B.10.3 for RSA: OAEP-SHA-256 with label
 * "SECRET\0"). The caller wipes `salt`.
 * @throws {ZbError} HSM_FAILED when the key's point is not on P-256 or the RSA key is unusable
 */
export function makeSalt(key: SaltKey): Promise<Salt> {
  return key.kind === "ecc" ? eccSalt(key.x, key.y) : rsaSalt(key.n, key.exponent);
}

const P256 = { name: "ECDH", namedCurve: "P-256" } as const;

async function eccSalt(x: Uint8Array, y: Uint8Array): Promise<Salt> {
  const qs = new Uint8Array(65);
  qs[0] = 4;
  qs.set(pad32(x), 1);
  qs.set(pad32(y), 33);
  let peer: CryptoKey;
  try {
    // The import checks that the point is on the curve.
    peer = await subtle().importKey("raw", qs, P256, false, []);
  } catch (e) {
    throw new ZbError("HSM_FAILED", "cannot salt the session: the storage key's point is not on P-256", { cause: e });
  }
  const mine = (await subtle().generateKey(P256, false, ["deriveBits"])) as CryptoKeyPair;
  const z = new Uint8Array(await subtle().deriveBits({ name: "ECDH", public: peer }, mine.privateKey, 256));
  const qe = new Uint8Array(await subtle().exportKey("raw", mine.publicKey));
  const ex = qe.subarray(1, 33);
  const ey = qe.subarray(33, 65);
  try {
    const salt = kdfe(z, "SECRET", ex, pad32(x), 256);
    // encryptedSalt is a marshalled TPMS_ECC_POINT (Part 2 §11.2.5.2).
    return { salt, encrypted: marshal((w) => w.tpm2b(ex).tpm2b(ey)) };
  } finally {
    wipe(z);
  }
}

function b64url(b: Uint8Array): string {
  return Buffer.from(b).toString("base64url");
}

async function rsaSalt(n: Uint8Array, exponent: number): Promise<Salt> {
  // Part 2 §12.2.3.5: an exponent of 0 means the default 2^16 + 1.
  const e = exponent === 0 ? 65537 : exponent;
  let eBytes = marshal((w) => w.u32(e));
  while (eBytes.length > 1 && eBytes[0] === 0) eBytes = eBytes.subarray(1);
  let key: CryptoKey;
  try {
    key = await subtle().importKey("jwk", { kty: "RSA", n: b64url(n), e: b64url(eBytes) }, { name: "RSA-OAEP", hash: "SHA-256" }, false, ["encrypt"]);
  } catch (err) {
    throw new ZbError("HSM_FAILED", "cannot salt the session: the storage key is not a usable RSA key", { cause: err });
  }
  const salt = randomSecret(DIGEST_SIZE);
  const encrypted = new Uint8Array(await subtle().encrypt({ name: "RSA-OAEP", label: bs(label("SECRET")) }, key, bs(salt)));
  return { salt, encrypted };
}

const BLOCK = 16;

/** AES_k(block): one AES-CTR block over zeros with `block` as the whole counter. */
async function aesBlock(key: CryptoKey, block: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await subtle().encrypt({ name: "AES-CTR", counter: bs(block), length: 128 }, key, new Uint8Array(BLOCK)));
}

/** XOR `keystream` into `out` at `at` from `data`, as far as `data` goes; wipes the keystream. */
function xorInto(out: Uint8Array, data: Uint8Array, at: number, keystream: Uint8Array): void {
  const n = Math.min(BLOCK, data.length - at);
  for (let i = 0; i < n; i++) out[at + i] = data[at + i]! ^ keystream[i]!;
  wipe(keystream);
}

/**
 * CFB-128 (SP 800-38A §6.3): C(j) = P(j) ⊕ AES(C(j−1)), C(0) = IV; the last
 * block may be short (a stream mode). Encryption is block after block;
 * decryption knows every input block and runs them together.
 */
async function cfb(key: CryptoKey, iv: Uint8Array, data: Uint8Array, decrypt: boolean): Promise<Uint8Array> {
  const out = new Uint8Array(data.length);
  if (decrypt) {
    const inputs: Uint8Array[] = [];
    for (let at = 0; at < data.length; at += BLOCK) inputs.push(at === 0 ? iv : data.subarray(at - BLOCK, at));
    const streams = await Promise.all(inputs.map((b) => aesBlock(key, b)));
    streams.forEach((ks, j) => xorInto(out, data, j * BLOCK, ks));
    return out;
  }
  for (let at = 0; at < data.length; at += BLOCK) {
    xorInto(out, data, at, await aesBlock(key, at === 0 ? iv : out.subarray(at - BLOCK, at)));
  }
  return out;
}

/**
 * AES-128-CFB over `data` (a parameter's TPM2B content), key and IV from
 * KDFa(sessionValue, "CFB", nonceNewer, nonceOlder, 256) (Part 1 §21.3).
 * The data never enters WebCrypto, only the key and the CFB inputs do.
 * @param decrypt true to decrypt, false to encrypt
 */
export async function cfbParam(sessionValue: Uint8Array, nonceNewer: Uint8Array, nonceOlder: Uint8Array, data: Uint8Array, decrypt: boolean): Promise<Uint8Array> {
  const keyIv = kdfa(sessionValue, "CFB", nonceNewer, nonceOlder, 256);
  try {
    // importKey copies the key bytes before it returns.
    const key = await subtle().importKey("raw", bs(keyIv.subarray(0, 16)), "AES-CTR", false, ["encrypt"]);
    return await cfb(key, keyIv.subarray(16, 32), data, decrypt);
  } finally {
    wipe(keyIv);
  }
}

/**
 * Run every primitive of an unseal once on throwaway data: ECDH on P-256,
 * KDFe, KDFa, HMAC, SHA-256 and AES-128-CFB both ways. Their first use sets
 * up the native code behind them; a zbunlock started early calls this while
 * it waits for the go, so the boot does not pay for it. Touches no TPM;
 * every output is wiped.
 */
export async function warmUp(): Promise<void> {
  const peer = (await subtle().generateKey(P256, true, ["deriveBits"])) as CryptoKeyPair;
  const point = new Uint8Array(await subtle().exportKey("raw", peer.publicKey));
  const { salt, encrypted } = await makeSalt({ kind: "ecc", x: point.subarray(1, 33), y: point.subarray(33, 65) });
  const nonce = new Uint8Array(DIGEST_SIZE);
  const key = kdfa(salt, "ATH", nonce, nonce, 256);
  const mac = hmacSha256(key, sha256(encrypted));
  const sealed = await cfbParam(key, nonce, nonce, mac, false);
  const opened = await cfbParam(key, nonce, nonce, sealed, true);
  [point, salt, key, mac, sealed, opened].forEach((b) => wipe(b));
}
