/**
 * The tpm2 backend's sealed data (the `data` object of a zb-sealed/1 blob,
 * lib/hsm/blob.ts) and its conversion to and from tpm2-tools' files. Pure.
 *
 *   srkHandle     integer   persistent handle of the parent storage key (0x81000001)
 *   srkName       hex       the storage key's name, pinned at enrolment
 *   policy        string    "pcr" | "command-code" (lib/hsm/tpm2/policy.ts)
 *   pcrBank       string    "sha256"
 *   pcrs          int[]     PCR indices of a "pcr" policy, sorted; [] otherwise
 *   policyDigest  hex       the object's authPolicy
 *   lockPcr       integer   optional: a PCR of `pcrs` sealed at its boot value (zeros), extended by lock()
 *   public        base64    TPM2B_PUBLIC of the sealed object (= tpm2_create -u FILE)
 *   private       base64    TPM2B_PRIVATE of the sealed object (= tpm2_create -r FILE)
 *
 * docs/hsm/tpm2.md documents the format.
 */
import { ZbError } from "../../errors.ts";
import { b64, b64field } from "../blob.ts";
import type { SealedData } from "../types.ts";
import { ATTR, parsePublic, publicContent } from "./objects.ts";
import { LOCKABLE_PCRS, normalizePcrs, PCR_BANK, POLICY_KINDS, unsealOnlyPolicy, type PolicyKind } from "./policy.ts";
import { ALG, equalBytes, hex, Reader, unhex } from "./wire.ts";

/** Decoded sealed data. */
export interface Tpm2Sealed {
  srkHandle: number;
  srkName: Uint8Array;
  policy: PolicyKind;
  pcrs: number[];
  policyDigest: Uint8Array;
  /** TPM2B_PUBLIC, verbatim. */
  public: Uint8Array;
  /** TPM2B_PRIVATE, verbatim. */
  private: Uint8Array;
  /** A PCR of `pcrs` sealed at its boot value (zeros); lock() extends it. */
  lockPcr?: number;
}

const FIELDS = ["srkHandle", "srkName", "policy", "pcrBank", "pcrs", "policyDigest", "public", "private", "lockPcr"];

/** Persistent handles of the owner hierarchy (Part 2 §7.6, TCG handle registry). */
const PERSISTENT_MIN = 0x81000000;
const PERSISTENT_MAX = 0x817fffff;

function invalid(why: string): ZbError {
  return new ZbError("CRED_INVALID", `cannot read tpm2 sealed data: ${why}`);
}

/** Sealed data for a blob. */
export function encodeSealed(s: Tpm2Sealed): SealedData {
  return {
    srkHandle: s.srkHandle,
    srkName: hex(s.srkName),
    policy: s.policy,
    pcrBank: PCR_BANK,
    pcrs: [...s.pcrs],
    policyDigest: hex(s.policyDigest),
    public: b64(s.public),
    private: b64(s.private),
    ...(s.lockPcr !== undefined ? { lockPcr: s.lockPcr } : {}),
  };
}

function hexField(d: SealedData, name: string, bytes: number): Uint8Array {
  const v = d[name];
  const b = typeof v === "string" ? unhex(v) : undefined;
  if (!b || b.length !== bytes) throw invalid(`field ${JSON.stringify(name)} is not ${bytes} bytes of hex`);
  return b;
}

/** Check that a TPM2B's size field covers exactly the bytes given. */
function wholeTpm2b(b: Uint8Array, what: string): void {
  try {
    const r = new Reader(b);
    r.tpm2b(what);
    r.end(what);
  } catch {
    throw invalid(`${what} is not a well-formed TPM2B`);
  }
}

/** The sealed object's public area, checked to be policy-only sealed data. */
function checkPublic(pub: Uint8Array): { authPolicy: Uint8Array } {
  wholeTpm2b(pub, "public");
  let area;
  try {
    area = parsePublic(publicContent(pub));
  } catch (e) {
    throw invalid(`public: ${(e as Error).message}`);
  }
  if (area.type !== ALG.KEYEDHASH || area.attributes & (ATTR.sign | ATTR.decrypt)) throw invalid("public is not a sealed data object");
  if (area.nameAlg !== ALG.SHA256) throw invalid("public's nameAlg is not SHA-256");
  if (area.attributes & ATTR.userWithAuth) throw invalid("the sealed object allows password authorization (userwithauth); zb only accepts policy-only objects");
  return { authPolicy: area.authPolicy };
}

/**
 * Decode and check sealed data.
 * @throws {ZbError} CRED_INVALID for unknown or missing fields and inconsistent policies
 */
export function decodeSealed(d: SealedData): Tpm2Sealed {
  for (const k of Object.keys(d)) if (!FIELDS.includes(k)) throw invalid(`unknown field ${JSON.stringify(k)}`);
  const srkHandle = d.srkHandle;
  if (typeof srkHandle !== "number" || srkHandle < PERSISTENT_MIN || srkHandle > PERSISTENT_MAX) {
    throw invalid("srkHandle is not a persistent owner handle (0x81000000–0x817fffff)");
  }
  const policy = d.policy as PolicyKind;
  if (!POLICY_KINDS.includes(policy)) throw invalid(`policy ${JSON.stringify(d.policy)} is not one of ${POLICY_KINDS.join(", ")}`);
  if (d.pcrBank !== PCR_BANK) throw invalid(`pcrBank ${JSON.stringify(d.pcrBank)} is not ${PCR_BANK}`);
  if (!Array.isArray(d.pcrs)) throw invalid("pcrs is not a list");
  let pcrs: number[];
  try {
    pcrs = normalizePcrs(d.pcrs);
  } catch (e) {
    throw invalid(`pcrs: ${(e as Error).message}`);
  }
  if ((policy === "pcr") !== pcrs.length > 0) throw invalid(`a ${policy} policy with ${pcrs.length} PCRs`);
  const srkName = hexField(d, "srkName", 34);
  const policyDigest = hexField(d, "policyDigest", 32);
  const pub = b64field(d, "public");
  const priv = b64field(d, "private");
  wholeTpm2b(priv, "private");
  const { authPolicy } = checkPublic(pub);
  if (!equalBytes(authPolicy, policyDigest)) throw invalid("policyDigest differs from the sealed object's authPolicy");
  if (policy === "command-code" && !equalBytes(policyDigest, unsealOnlyPolicy())) throw invalid("policyDigest is not PolicyCommandCode(TPM2_Unseal)");
  const lockPcr = d.lockPcr;
  if (lockPcr !== undefined && (typeof lockPcr !== "number" || !pcrs.includes(lockPcr))) throw invalid("lockPcr is not one of the policy's PCRs");
  // 16 and 23 can be reset without a reboot (policy.ts LOCKABLE_PCRS): such a lock would not hold.
  if (lockPcr !== undefined && !LOCKABLE_PCRS.includes(lockPcr)) throw invalid(`lockPcr ${lockPcr} can be reset without a reboot; seal again with a lock PCR from 0 to 15`);
  return { srkHandle, srkName, policy, pcrs, policyDigest, public: pub, private: priv, ...(lockPcr !== undefined ? { lockPcr } : {}) };
}

/**
 * The sealed object as tpm2-tools files: `seal.pub` (TPM2B_PUBLIC) and
 * `seal.priv` (TPM2B_PRIVATE), for `tpm2_load -u seal.pub -r seal.priv`.
 * @throws {ZbError} CRED_INVALID when the data is not valid
 */
export function toToolsFiles(d: SealedData): { pub: Uint8Array; priv: Uint8Array } {
  const s = decodeSealed(d);
  return { pub: s.public, priv: s.private };
}

/**
 * Sealed data for an object made by `tpm2_create -C 0x81000001 -L POLICY -u seal.pub -r seal.priv`.
 * The policy kind follows from `pcrs` (PolicyPCR over the sha256 bank) or,
 * without PCRs, must be PolicyCommandCode(TPM2_Unseal).
 * @param opts.srkName the storage key's name (`tpm2_readpublic -c 0x81000001 -n FILE`)
 * @throws {ZbError} CRED_INVALID when the files or the policy do not fit
 * @example fromToolsFiles({pub, priv}, {srkName, pcrs: [0, 7]})
 */
export function fromToolsFiles(
  files: { pub: Uint8Array; priv: Uint8Array },
  opts: { srkName: Uint8Array; pcrs?: number[]; srkHandle?: number },
): SealedData {
  const { authPolicy } = checkPublic(files.pub);
  const pcrs = normalizePcrs(opts.pcrs ?? []);
  const s: Tpm2Sealed = {
    srkHandle: opts.srkHandle ?? 0x81000001,
    srkName: opts.srkName,
    policy: pcrs.length ? "pcr" : "command-code",
    pcrs,
    policyDigest: authPolicy,
    public: files.pub,
    private: files.priv,
  };
  const data = encodeSealed(s);
  decodeSealed(data); // the same checks as on unseal
  return data;
}
