/**
 * The storage root key (SRK): the parent of every sealed object and the key
 * sessions are salted to. It lives at the conventional persistent handle
 * 0x81000001 (TCG TPM v2.0 Provisioning Guidance §7.5; systemd uses the same
 * handle and template), and is created there when missing.
 */
import { ZbError } from "../../errors.ts";
import { TpmRcError, type Tpm } from "./commands.ts";
import type { SaltKey } from "./crypto.ts";
import { ATTR, objectName, parsePublic, srkTemplate, type PublicArea } from "./objects.ts";
import { ALG, decodeRc, ECC_NIST_P256, equalBytes, hex, RH_OWNER } from "./wire.ts";

/** The conventional SRK handle. */
export const SRK_HANDLE = 0x81000001;

/** A storage key found in the TPM. */
export interface Srk {
  handle: number;
  /** nameAlg ‖ SHA-256(TPMT_PUBLIC), checked against the TPM's own answer. */
  name: Uint8Array;
  area: PublicArea;
  /** Its public key, to salt sessions to. */
  key: SaltKey;
}

/** TPM_RC_HANDLE: nothing at that handle (Part 2 §6.6.3). */
function isNoHandle(e: unknown): boolean {
  return e instanceof TpmRcError && decodeRc(e.rc).base === 0x8b;
}

/** The salt key of a storage key, or why it cannot be used. */
function saltKeyOf(area: PublicArea): SaltKey | string {
  const need = ATTR.restricted | ATTR.decrypt;
  if ((area.attributes & need) !== need || area.attributes & ATTR.sign) return "it is not a restricted decryption (storage) key";
  if (area.nameAlg !== ALG.SHA256) return "its nameAlg is not SHA-256";
  const sym = area.symmetric;
  if (!sym || sym.alg !== ALG.AES || sym.keyBits !== 128 || sym.mode !== ALG.CFB) return "its symmetric algorithm is not AES-128-CFB";
  if (area.ecc) {
    if (area.ecc.curve !== ECC_NIST_P256) return `its ECC curve 0x${area.ecc.curve.toString(16)} is not NIST P-256`;
    return { kind: "ecc", x: area.ecc.x, y: area.ecc.y };
  }
  if (area.rsa) return { kind: "rsa", n: area.rsa.n, exponent: area.rsa.exponent };
  return "it is neither an ECC nor an RSA key";
}

/**
 * Read the storage key at `handle`.
 * @returns undefined when the handle is empty
 * @throws {ZbError} HSM_FAILED when the key there cannot be a storage key, or the TPM's name for it is inconsistent
 */
export async function readSrk(tpm: Tpm, handle = SRK_HANDLE): Promise<Srk | undefined> {
  let pub: { area: Uint8Array; name: Uint8Array };
  try {
    pub = await tpm.readPublic(handle);
  } catch (e) {
    if (isNoHandle(e)) return undefined;
    throw e;
  }
  const at = `0x${handle.toString(16)}`;
  const area = parsePublic(pub.area);
  const key = saltKeyOf(area);
  if (typeof key === "string") throw new ZbError("HSM_FAILED", `cannot use the key at ${at} as storage key: ${key}`);
  // The name is recomputed so the public key used for salting is the one the name (pinned at enrolment) covers.
  const name = objectName(pub.area);
  if (!equalBytes(name, pub.name)) {
    throw new ZbError("HSM_FAILED", `cannot trust the key at ${at}: the TPM says its name is ${hex(pub.name)}, its public area hashes to ${hex(name)}`);
  }
  return { handle, name, area, key };
}

/**
 * Find the storage key, or create it (CreatePrimary under the owner
 * hierarchy, EvictControl to `handle`, flush the transient copy).
 * @throws {ZbError} HSM_FAILED when creating or persisting fails (e.g. an owner password is set)
 */
export async function ensureSrk(tpm: Tpm, handle = SRK_HANDLE): Promise<Srk & { created: boolean }> {
  const found = await readSrk(tpm, handle);
  if (found) return { ...found, created: false };
  const at = `0x${handle.toString(16)}`;
  try {
    const primary = await tpm.createPrimary(RH_OWNER, srkTemplate());
    try {
      await tpm.evictControl(RH_OWNER, primary.handle, handle);
    } finally {
      await tpm.flush(primary.handle);
    }
  } catch (e) {
    if (!(e instanceof TpmRcError)) throw e;
    throw new ZbError("HSM_FAILED", `cannot create the storage key at ${at}: ${e.message}`, {
      cause: e,
      hint: "zb creates it with an empty owner password; with an owner password set, create it once with " +
        "tpm2_createprimary -C o -P PASSWORD -G ecc256:aes128cfb … and tpm2_evictcontrol (docs/hsm/tpm2.md)",
    });
  }
  const made = await readSrk(tpm, handle);
  if (!made) throw new ZbError("HSM_FAILED", `cannot create the storage key: nothing at ${at} after EvictControl`);
  return { ...made, created: true };
}
