/**
 * Policies of zb's sealed objects, computed offline (pure).
 *
 * A sealed object has no userWithAuth, so a policy session is the only way to
 * unseal it, and its authPolicy must be one of:
 * - `pcr`: TPM2_PolicyPCR over a sha256-bank selection (Part 3 §23.7),
 *   the same digest as `tpm2_policypcr -l sha256:LIST -L FILE`;
 * - `command-code`: TPM2_PolicyCommandCode(TPM_CC_Unseal) (Part 3 §23.11),
 *   `tpm2_policycommandcode TPM2_CC_Unseal`, for seals without PCRs: a
 *   policy that always holds but only for Unseal (an empty authPolicy would
 *   make the object unusable, and userWithAuth would open a password path).
 */
import { ZbError } from "../../errors.ts";
import { DIGEST_SIZE, sha256 } from "./crypto.ts";
import { ALG, CC, marshal } from "./wire.ts";

export const POLICY_KINDS = ["pcr", "command-code"] as const;
export type PolicyKind = (typeof POLICY_KINDS)[number];

/** The only PCR bank zb binds to. */
export const PCR_BANK = "sha256";
/** PC-client TPMs have 24 PCRs (TCG PC Client Platform TPM Profile §4.6); 3 select bytes. */
export const PCR_COUNT = 24;

/**
 * Check and normalise a PCR list: integers 0..23, sorted, no duplicates.
 * @throws {ZbError} USAGE for an index out of range or a duplicate
 * @example normalizePcrs([7, 0]) // [0, 7]
 */
export function normalizePcrs(pcrs: readonly number[]): number[] {
  const out = [...pcrs].sort((a, b) => a - b);
  for (const [i, p] of out.entries()) {
    if (!Number.isInteger(p) || p < 0 || p >= PCR_COUNT) {
      throw new ZbError("USAGE", `cannot bind to PCR ${p}: PCR indices are 0 to ${PCR_COUNT - 1}`);
    }
    if (i > 0 && out[i - 1] === p) throw new ZbError("USAGE", `cannot bind to PCR ${p}: listed twice`);
  }
  return out;
}

/** The select bitmap: PCR n is bit n&7 of byte n>>3 (Part 2 §10.6.1 TPMS_PCR_SELECT). */
export function pcrBitmap(pcrs: readonly number[]): Uint8Array {
  const map = new Uint8Array(PCR_COUNT / 8);
  for (const p of pcrs) map[p >> 3]! |= 1 << (p & 7);
  return map;
}

/** The PCR indices of a select bitmap. */
export function pcrsOfBitmap(map: Uint8Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < map.length * 8; i++) if (map[i >> 3]! & (1 << (i & 7))) out.push(i);
  return out;
}

/**
 * TPML_PCR_SELECTION of the sha256 bank (Part 2 §10.9.7): count 1, hash,
 * sizeofSelect 3, bitmap. An empty list gives count 0.
 * @example hexOf(pcrSelection([0, 7])) // "00000001000b03810000"
 */
export function pcrSelection(pcrs: readonly number[]): Uint8Array {
  if (pcrs.length === 0) return marshal((w) => w.u32(0));
  return marshal((w) => w.u32(1).u16(ALG.SHA256).u8(PCR_COUNT / 8).bytes(pcrBitmap(pcrs)));
}

/**
 * The policy digest after TPM2_PolicyPCR with the given PCR values (Part 3 §23.7):
 * H(old ‖ TPM_CC_PolicyPCR ‖ TPML_PCR_SELECTION ‖ H(values in index order)).
 * @param values the sha256 PCR values, in the order of the sorted `pcrs`
 * @throws {ZbError} INTERNAL when the counts differ
 */
export function policyPcrDigest(pcrs: readonly number[], values: readonly Uint8Array[], old = new Uint8Array(DIGEST_SIZE)): Uint8Array {
  if (pcrs.length !== values.length || pcrs.length === 0) {
    throw new ZbError("INTERNAL", `internal error: ${pcrs.length} PCRs but ${values.length} values`);
  }
  const pcrDigest = sha256(...values);
  return sha256(old, marshal((w) => w.u32(CC.PolicyPCR)), pcrSelection(pcrs), pcrDigest);
}

/** The policy digest after TPM2_PolicyCommandCode(code) (Part 3 §23.11): H(old ‖ TPM_CC_PolicyCommandCode ‖ code). */
export function policyCommandCodeDigest(code: number, old = new Uint8Array(DIGEST_SIZE)): Uint8Array {
  return sha256(old, marshal((w) => w.u32(CC.PolicyCommandCode).u32(code)));
}

/** zb's policy for seals without PCRs. */
export function unsealOnlyPolicy(): Uint8Array {
  return policyCommandCodeDigest(CC.Unseal);
}

/**
 * PCRs that can hold a lock: reset to zeros by TPM2_Startup(CLEAR) (Part 1
 * §17.5) and by nothing else. Not 16 (debug) and 23 (application support):
 * the TCG PC Client platform profile lets TPM2_PCR_Reset clear them at
 * locality 0, so a root shell could undo the lock and unseal again (checked
 * with swtpm: tpm2_pcrreset 23 succeeds, 15 fails with TPM_RC_LOCALITY).
 * 17–22 reset to ones (DRTM).
 */
export const LOCKABLE_PCRS = [...Array(16).keys()];
