/**
 * TPM objects zb creates or reads: the public-area templates of the storage
 * key and of sealed data objects, a TPMT_PUBLIC parser, and object names.
 * Pure.
 *
 * References: Part 2 §8.3 (TPMA_OBJECT), §12.2.4 (TPMT_PUBLIC), §12.2.3
 * (parameters per type), Part 1 §16 (names), TCG TPM v2.0 Provisioning
 * Guidance §7.5 (SRK at 0x81000001).
 */
import { ZbError } from "../../errors.ts";
import { sha256 } from "./crypto.ts";
import { ALG, ECC_NIST_P256, marshal, Reader, type Writer } from "./wire.ts";

/** TPMA_OBJECT bits (Part 2 §8.3.2). */
export const ATTR = {
  fixedTPM: 0x2,
  fixedParent: 0x10,
  sensitiveDataOrigin: 0x20,
  userWithAuth: 0x40,
  adminWithPolicy: 0x80,
  noDA: 0x400,
  restricted: 0x10000,
  decrypt: 0x20000,
  sign: 0x40000,
} as const;

/**
 * The storage key's attributes: fixedTPM|fixedParent|sensitiveDataOrigin|
 * userWithAuth|noDA|restricted|decrypt = 0x30472, as systemd's SRK and
 * `tpm2_createprimary -a` in docs/hsm/tpm2.md.
 */
export const SRK_ATTRS = 0x30472;

/** Sealed data objects: fixedTPM|fixedParent|noDA, no userWithAuth (policy only). */
export const SEALED_ATTRS = ATTR.fixedTPM | ATTR.fixedParent | ATTR.noDA;

/** TPM_SYMMETRIC object definition: AES-128-CFB, the only one zb uses. */
function aes128cfb(w: Writer): void {
  w.u16(ALG.AES).u16(128).u16(ALG.CFB);
}

/**
 * TPMT_PUBLIC of the storage key: ECC NIST P-256, nameAlg SHA-256,
 * AES-128-CFB, scheme and KDF NULL, empty unique (Part 2 §12.2.3.6, §12.2.4).
 */
export function srkTemplate(): Uint8Array {
  return marshal((w) => {
    w.u16(ALG.ECC).u16(ALG.SHA256).u32(SRK_ATTRS).tpm2b(new Uint8Array(0));
    aes128cfb(w);
    w.u16(ALG.NULL).u16(ECC_NIST_P256).u16(ALG.NULL);
    w.u16(0).u16(0); // unique: TPMS_ECC_POINT with empty x and y
  });
}

/** TPMT_PUBLIC of a sealed data object: KEYEDHASH, SHA-256, scheme NULL, authPolicy = the policy digest. */
export function sealedTemplate(authPolicy: Uint8Array): Uint8Array {
  return marshal((w) => {
    w.u16(ALG.KEYEDHASH).u16(ALG.SHA256).u32(SEALED_ATTRS).tpm2b(authPolicy);
    w.u16(ALG.NULL); // TPMT_KEYEDHASH_SCHEME: NULL = sealed data, not an HMAC key
    w.u16(0); // unique: empty, the TPM fills it in
  });
}

/** The parts of a TPMT_PUBLIC zb looks at. */
export interface PublicArea {
  type: number;
  nameAlg: number;
  attributes: number;
  authPolicy: Uint8Array;
  /** Storage keys: the symmetric definition {alg, keyBits, mode}, alg NULL for none. */
  symmetric?: { alg: number; keyBits: number; mode: number };
  /** ECC keys. */
  ecc?: { curve: number; x: Uint8Array; y: Uint8Array };
  /** RSA keys (exponent 0 means 65537). */
  rsa?: { keyBits: number; exponent: number; n: Uint8Array };
}

function symDef(r: Reader): NonNullable<PublicArea["symmetric"]> {
  const alg = r.u16("symmetric algorithm");
  if (alg === ALG.NULL) return { alg, keyBits: 0, mode: ALG.NULL };
  return { alg, keyBits: r.u16("keyBits"), mode: r.u16("mode") };
}

/** A TPMT_*_SCHEME: scheme id, then one hash algorithm unless NULL (ECDAA also has a count). */
function skipScheme(r: Reader): void {
  const scheme = r.u16("scheme");
  if (scheme === ALG.NULL) return;
  r.u16("scheme hash");
  if (scheme === 0x001a /* TPM_ALG_ECDAA */) r.u16("ECDAA count");
}

/**
 * Parse a TPMT_PUBLIC (the content of a TPM2B_PUBLIC).
 * @throws {ZbError} HSM_FAILED when it is malformed or of a type zb does not handle
 */
export function parsePublic(tpmt: Uint8Array): PublicArea {
  const r = new Reader(tpmt);
  const type = r.u16("type");
  const nameAlg = r.u16("nameAlg");
  const attributes = r.u32("objectAttributes");
  const authPolicy = r.tpm2b("authPolicy");
  const out: PublicArea = { type, nameAlg, attributes, authPolicy };
  if (type === ALG.KEYEDHASH) {
    const scheme = r.u16("keyedhash scheme");
    if (scheme === 0x0005 /* HMAC */) r.u16("hash");
    else if (scheme === 0x000a /* XOR */) {
      r.u16("hash");
      r.u16("kdf");
    }
    r.tpm2b("unique");
  } else if (type === ALG.ECC) {
    out.symmetric = symDef(r);
    skipScheme(r);
    const curve = r.u16("curveID");
    skipScheme(r); // kdf
    out.ecc = { curve, x: r.tpm2b("x"), y: r.tpm2b("y") };
  } else if (type === ALG.RSA) {
    out.symmetric = symDef(r);
    skipScheme(r);
    const keyBits = r.u16("keyBits");
    const exponent = r.u32("exponent");
    out.rsa = { keyBits, exponent, n: r.tpm2b("modulus") };
  } else {
    throw new ZbError("HSM_FAILED", `cannot parse TPM public area: object type 0x${type.toString(16)} is not handled`);
  }
  r.end("the public area");
  return out;
}

/**
 * Split a TPM2B_PUBLIC into its TPMT_PUBLIC.
 * @throws {ZbError} HSM_FAILED when the size field is wrong
 */
export function publicContent(tpm2b: Uint8Array): Uint8Array {
  const r = new Reader(tpm2b);
  const body = r.tpm2b("TPM2B_PUBLIC");
  r.end("TPM2B_PUBLIC");
  return body;
}

/**
 * An object's name: nameAlg ‖ H(TPMT_PUBLIC) (Part 1 §16).
 * @throws {ZbError} HSM_FAILED when its nameAlg is not SHA-256 (all of zb's objects are)
 */
export function objectName(tpmt: Uint8Array): Uint8Array {
  const nameAlg = tpmt.length >= 4 ? (tpmt[2]! << 8) | tpmt[3]! : -1;
  if (nameAlg !== ALG.SHA256) throw new ZbError("HSM_FAILED", `cannot name TPM object: nameAlg 0x${nameAlg.toString(16)} is not SHA-256`);
  const out = new Uint8Array(34);
  out[1] = ALG.SHA256;
  out.set(sha256(tpmt), 2);
  return out;
}
