/**
 * The session cryptography of TPM 2.0, SHA-256 and AES-128-CFB only: KDFa,
 * KDFe, salt encryption to the storage key, session HMACs and parameter
 * encryption. Pure (node:crypto, no host access).
 *
 * References: TCG TPM 2.0 Library Part 1 §11.4.10 (KDFa/KDFe), §19.6
 * (session key, HMAC), §21 (parameter encryption), Annex B.10.3 (RSA salt,
 * OAEP label "SECRET"), Annex C.6.1 (ECC salt: one-pass Diffie-Hellman).
 */
import { nodeCrypto } from "../../sys/lazy.ts";
import { ZbError } from "../../errors.ts";
import { randomSecret, wipe } from "../../secret.ts";
import { marshal } from "./wire.ts";

/** SHA-256 digest size in bytes. */
export const DIGEST_SIZE = 32;

/** SHA-256 over the concatenation of `parts`. */
export function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = nodeCrypto().createHash("sha256");
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

/** HMAC-SHA-256 over the concatenation of `parts`. */
export function hmacSha256(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const h = nodeCrypto().createHmac("sha256", key);
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
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
 * @throws {ZbError} HSM_FAILED when the key's point is not on P-256
 */
export function makeSalt(key: SaltKey): Salt {
  return key.kind === "ecc" ? eccSalt(key.x, key.y) : rsaSalt(key.n, key.exponent);
}

function eccSalt(x: Uint8Array, y: Uint8Array): Salt {
  const ecdh = nodeCrypto().createECDH("prime256v1");
  const qe = new Uint8Array(ecdh.generateKeys());
  const qs = new Uint8Array(65);
  qs[0] = 4;
  qs.set(pad32(x), 1);
  qs.set(pad32(y), 33);
  let z: Uint8Array;
  try {
    z = new Uint8Array(ecdh.computeSecret(qs));
  } catch (e) {
    throw new ZbError("HSM_FAILED", "cannot salt the session: the storage key's point is not on P-256", { cause: e });
  }
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

function rsaSalt(n: Uint8Array, exponent: number): Salt {
  // Part 2 §12.2.3.5: an exponent of 0 means the default 2^16 + 1.
  const e = exponent === 0 ? 65537 : exponent;
  let eBytes = marshal((w) => w.u32(e));
  while (eBytes.length > 1 && eBytes[0] === 0) eBytes = eBytes.subarray(1);
  const key = nodeCrypto().createPublicKey({ key: { kty: "RSA", n: b64url(n), e: b64url(eBytes) }, format: "jwk" });
  const salt = randomSecret(DIGEST_SIZE);
  const encrypted = nodeCrypto().publicEncrypt(
    { key, padding: nodeCrypto().constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256", oaepLabel: label("SECRET") },
    salt,
  );
  return { salt, encrypted: new Uint8Array(encrypted) };
}

/**
 * AES-128-CFB over `data` (a parameter's TPM2B content), key and IV from
 * KDFa(sessionValue, "CFB", nonceNewer, nonceOlder, 256) (Part 1 §21.3).
 * @param decrypt true to decrypt, false to encrypt
 */
export function cfbParam(sessionValue: Uint8Array, nonceNewer: Uint8Array, nonceOlder: Uint8Array, data: Uint8Array, decrypt: boolean): Uint8Array {
  const keyIv = kdfa(sessionValue, "CFB", nonceNewer, nonceOlder, 256);
  const key = keyIv.subarray(0, 16);
  const iv = keyIv.subarray(16, 32);
  try {
    const c = decrypt ? nodeCrypto().createDecipheriv("aes-128-cfb", key, iv) : nodeCrypto().createCipheriv("aes-128-cfb", key, iv);
    const head = c.update(data);
    const tail = c.final();
    const out = new Uint8Array(head.length + tail.length);
    out.set(head);
    out.set(tail, head.length);
    head.fill(0);
    return out;
  } finally {
    wipe(keyIv);
  }
}

/**
 * Run every primitive of an unseal once on throwaway data: ECDH on P-256,
 * KDFe, KDFa, HMAC, SHA-256 and AES-128-CFB both ways. Their first use loads
 * node:crypto and sets up the native code behind it; a zbunlock started early
 * calls this while it waits for the go, so the boot does not pay for it
 * (under QEMU TCG the first unseal took 0.21–0.27 s, after a warm-up 0.09–0.11 s).
 * Touches no TPM; every output is wiped.
 */
export function warmUp(): void {
  const peer = nodeCrypto().createECDH("prime256v1");
  const point = new Uint8Array(peer.generateKeys());
  const { salt, encrypted } = makeSalt({ kind: "ecc", x: point.subarray(1, 33), y: point.subarray(33, 65) });
  const nonce = new Uint8Array(DIGEST_SIZE);
  const key = kdfa(salt, "ATH", nonce, nonce, 256);
  const mac = hmacSha256(key, sha256(encrypted));
  const sealed = cfbParam(key, nonce, nonce, mac, false);
  const opened = cfbParam(key, nonce, nonce, sealed, true);
  [point, salt, key, mac, sealed, opened].forEach((b) => wipe(b));
}
