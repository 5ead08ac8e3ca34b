/**
 * Host-side RSA for the pkcs11 backend: build a public key from the token's
 * CKA_MODULUS / CKA_PUBLIC_EXPONENT, fingerprint it, and OAEP-encrypt to it.
 *
 * Sealing encrypts on the host rather than with C_Encrypt on the token:
 * encryption needs only the public key, so no session state or login is
 * involved; many tokens (smartcards, some HSM firmwares) implement only the
 * private-key half of RSA, or OAEP with SHA-1 only for C_Encrypt; and the
 * ciphertext is then produced by one well-tested implementation
 * (OpenSSL/BoringSSL under node:crypto) whatever the module. Only unseal
 * needs the token.
 */
import type { KeyObject } from "node:crypto";
import { nodeCrypto } from "../../sys/lazy.ts";
import type { OaepHash } from "./layout.ts";

/** An RSA public key as the token stores it: big-endian unsigned integers (v2.40 §2.1.2 of Current Mechanisms). */
export interface RsaPublic {
  n: Uint8Array;
  e: Uint8Array;
}

/** Big-endian integer without leading zero bytes (modules may or may not include a sign byte). */
function minimal(b: Uint8Array): Uint8Array {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  return b.subarray(i);
}

/** Modulus length in bytes: the RSA ciphertext length for this key (RFC 8017 §7.1). */
export function modulusBytes(k: RsaPublic): number {
  return minimal(k.n).length;
}

/** The key as a node:crypto KeyObject (through JWK, which wants base64url integers, RFC 7518 §6.3.1). */
export function publicKeyObject(k: RsaPublic): KeyObject {
  const u = (b: Uint8Array) => Buffer.from(minimal(b)).toString("base64url");
  return nodeCrypto().createPublicKey({ key: { kty: "RSA", n: u(k.n), e: u(k.e) }, format: "jwk" });
}

/**
 * SHA-256 of the DER SubjectPublicKeyInfo: the same bytes `pkcs11-tool
 * --read-object --type pubkey` exports, so `sha256sum` of that file matches.
 * @throws {Error} when n/e do not form an RSA key
 */
export function fingerprint(k: RsaPublic): Uint8Array {
  const spki = publicKeyObject(k).export({ type: "spki", format: "der" });
  return new Uint8Array(nodeCrypto().createHash("sha256").update(spki).digest());
}

/**
 * RSAES-OAEP (RFC 8017 §7.1.1) with `hash` for the label and MGF1 and an
 * empty label: node:crypto uses oaepHash for MGF1 too, which is what
 * CK_RSA_PKCS_OAEP_PARAMS {CKM_SHA256, CKG_MGF1_SHA256} (or the SHA-1 pair)
 * asks of the token on unseal.
 */
export function oaepEncrypt(k: RsaPublic, secret: Uint8Array, hash: OaepHash): Uint8Array {
  const ct = nodeCrypto().publicEncrypt({ key: publicKeyObject(k), padding: nodeCrypto().constants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash }, secret);
  return new Uint8Array(ct.buffer, ct.byteOffset, ct.byteLength);
}

/** Longest secret OAEP with `hash` can carry under this key: k - 2hLen - 2 (RFC 8017 §7.1.1). */
export function oaepCapacity(k: RsaPublic, hash: OaepHash): number {
  return modulusBytes(k) - 2 * (hash === "sha256" ? 32 : 20) - 2;
}

/**
 * The RSA key of a DER X.509 certificate, or null for other key types. Tokens
 * enrolled for systemd-cryptenroll carry a certificate (systemd requires one)
 * and often no public-key object.
 * @throws {Error} when the bytes are not a certificate
 */
export function rsaFromCertificate(der: Uint8Array): RsaPublic | null {
  const key = new (nodeCrypto().X509Certificate)(der).publicKey;
  if (key.asymmetricKeyType !== "rsa") return null;
  const jwk = key.export({ format: "jwk" });
  if (typeof jwk.n !== "string" || typeof jwk.e !== "string") return null;
  return { n: new Uint8Array(Buffer.from(jwk.n, "base64url")), e: new Uint8Array(Buffer.from(jwk.e, "base64url")) };
}

/** Constant-time-irrelevant byte equality (fingerprints are public). */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
