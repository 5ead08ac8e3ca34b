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
import { ALG, BUSY_RCS, decodeRc, ECC_NIST_P256, equalBytes, hex, RH_OWNER } from "./wire.ts";

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

/** What is at a persistent handle, before zb decides whether it can use it. */
export interface KeyAt {
  handle: number;
  /** Its TPMT_PUBLIC, as the TPM returned it. */
  area: Uint8Array;
  /**
   * nameAlg ‖ SHA-256(TPMT_PUBLIC), recomputed by zb and equal to the TPM's
   * answer; undefined when the key's nameAlg is not SHA-256 (zb cannot
   * recompute such a name, and never pins one).
   */
  name: Uint8Array | undefined;
  /** The name the TPM reported, for messages. */
  tpmName: Uint8Array;
}

/**
 * Read the public area at `handle` and recompute its name. Nothing about the
 * key's kind is judged here, so a caller with a pinned name can compare names
 * first: any key whose name differs from the pinned one is simply not ours.
 * @returns undefined when the handle is empty
 * @throws {ZbError} HSM_FAILED when the TPM's name for the key is not the hash of the public area it returned
 */
export async function readKeyAt(tpm: Tpm, handle = SRK_HANDLE): Promise<KeyAt | undefined> {
  let pub: { area: Uint8Array; name: Uint8Array };
  try {
    pub = await tpm.readPublic(handle);
  } catch (e) {
    if (isNoHandle(e)) return undefined;
    throw e;
  }
  const nameAlg = pub.area.length >= 4 ? (pub.area[2]! << 8) | pub.area[3]! : -1;
  if (nameAlg !== ALG.SHA256) return { handle, area: pub.area, name: undefined, tpmName: pub.name };
  // Recomputed, so the public key used for salting is the one the name (pinned at enrolment) covers.
  const name = objectName(pub.area);
  if (!equalBytes(name, pub.name)) {
    throw new ZbError("HSM_FAILED", `cannot trust the key at 0x${handle.toString(16)}: the TPM says its name is ${hex(pub.name)}, its public area hashes to ${hex(name)}`);
  }
  return { handle, area: pub.area, name, tpmName: pub.name };
}

/**
 * The key read by {@link readKeyAt} as a storage key to salt sessions to and seal under.
 * @throws {ZbError} HSM_FAILED when it is not a restricted decryption key with nameAlg SHA-256 and AES-128-CFB on P-256 or RSA
 */
export function storageKey(k: KeyAt): Srk {
  const at = `0x${k.handle.toString(16)}`;
  const area = k.name ? parsePublic(k.area) : undefined;
  const key = area ? saltKeyOf(area) : "its nameAlg is not SHA-256";
  if (typeof key === "string") throw new ZbError("HSM_FAILED", `cannot use the key at ${at} as storage key: ${key}`);
  return { handle: k.handle, name: k.name!, area: area!, key };
}

/**
 * Read the storage key at `handle`.
 * @returns undefined when the handle is empty
 * @throws {ZbError} HSM_FAILED when the key there cannot be a storage key, or the TPM's name for it is inconsistent
 */
export async function readSrk(tpm: Tpm, handle = SRK_HANDLE): Promise<Srk | undefined> {
  const found = await readKeyAt(tpm, handle);
  return found && storageKey(found);
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
    // A busy TPM (CreatePrimary on a fresh one is slow work) goes up as it is: the seal retries it.
    if (!(e instanceof TpmRcError) || BUSY_RCS.has(e.rc)) throw e;
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
