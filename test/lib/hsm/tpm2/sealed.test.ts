/**
 * The tpm2 sealed-data format (pure): a valid record before → the same
 * record after a round trip; a mutated record before → CRED_INVALID and the
 * reason after. Files made by real tpm2-tools are in interop.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { b64 } from "../../../../lib/hsm/blob.ts";
import type { SealedData } from "../../../../lib/hsm/types.ts";
import { ATTR, sealedTemplate } from "../../../../lib/hsm/tpm2/objects.ts";
import { policyPcrDigest, unsealOnlyPolicy } from "../../../../lib/hsm/tpm2/policy.ts";
import { decodeSealed, encodeSealed, fromToolsFiles, toToolsFiles } from "../../../../lib/hsm/tpm2/sealed.ts";
import { hex, marshal, sized } from "../../../../lib/hsm/tpm2/wire.ts";

const SRK_NAME = "000b" + "ab".repeat(32);
const PCR_POLICY = policyPcrDigest([0, 7], [new Uint8Array(32), new Uint8Array(32)]);
/** A TPM2B_PUBLIC as a TPM returns it (unique filled in). */
const pub = (policy: Uint8Array, attrs?: number) => sized((w) => {
  const t = sealedTemplate(policy);
  if (attrs !== undefined) new DataView(t.buffer).setUint32(4, attrs);
  w.bytes(t.subarray(0, t.length - 2)).tpm2b(new Uint8Array(32).fill(5));
});
const PRIV = marshal((w) => w.tpm2b(new Uint8Array(158).fill(9)));

function valid(over: Partial<Record<string, unknown>> = {}): SealedData {
  return {
    srkHandle: 0x81000001, srkName: SRK_NAME, policy: "pcr", pcrBank: "sha256", pcrs: [0, 7],
    policyDigest: hex(PCR_POLICY), public: b64(pub(PCR_POLICY)), private: b64(PRIV), ...over,
  } as SealedData;
}

describe("round trip: data before → the same data after", () => {
  test.each([
    { name: "PCR policy", before: valid() },
    {
      name: "unseal-only policy",
      before: valid({ policy: "command-code", pcrs: [], policyDigest: hex(unsealOnlyPolicy()), public: b64(pub(unsealOnlyPolicy())) }),
    },
  ])("$name", ({ before }) => {
    const s = decodeSealed(before);
    expect(encodeSealed(s)).toEqual(before);
    expect(b64(toToolsFiles(before).pub)).toBe(before.public as string);
    expect(b64(toToolsFiles(before).priv)).toBe(before.private as string);
  });
});

describe("decodeSealed refuses: mutation before → reason after (CRED_INVALID)", () => {
  const rows: { name: string; before: SealedData; why: RegExp }[] = [
    { name: "unknown field", before: valid({ extra: "x" }), why: /unknown field "extra"/ },
    { name: "transient SRK handle", before: valid({ srkHandle: 0x80000001 }), why: /srkHandle is not a persistent owner handle/ },
    { name: "unknown policy kind", before: valid({ policy: "pin" }), why: /policy "pin" is not one of pcr, command-code/ },
    { name: "sha1 bank", before: valid({ pcrBank: "sha1" }), why: /pcrBank "sha1" is not sha256/ },
    { name: "PCR out of range", before: valid({ pcrs: [0, 24] }), why: /pcrs: cannot bind to PCR 24/ },
    { name: "pcr policy without PCRs", before: valid({ pcrs: [] }), why: /a pcr policy with 0 PCRs/ },
    { name: "srkName too short", before: valid({ srkName: "000b00" }), why: /"srkName" is not 34 bytes of hex/ },
    { name: "policyDigest not hex", before: valid({ policyDigest: "zz" }), why: /"policyDigest" is not 32 bytes of hex/ },
    { name: "public not base64", before: valid({ public: "***" }), why: /field "public" is not base64/ },
    { name: "private with a wrong size field", before: valid({ private: b64(PRIV.subarray(0, 100)) }), why: /private is not a well-formed TPM2B/ },
    { name: "policyDigest differs from authPolicy", before: valid({ policyDigest: "00".repeat(32) }), why: /policyDigest differs from the sealed object's authPolicy/ },
    {
      name: "object with userwithauth (a password path)",
      before: valid({ public: b64(pub(PCR_POLICY, 0x412 | ATTR.userWithAuth)) }),
      why: /allows password authorization/,
    },
    {
      name: "a command-code policy that is not Unseal's",
      before: valid({ policy: "command-code", pcrs: [] }),
      why: /policyDigest is not PolicyCommandCode\(TPM2_Unseal\)/,
    },
  ];
  test.each(rows)("$name", ({ before, why }) => {
    let err: unknown;
    try {
      decodeSealed(before);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: "CRED_INVALID" });
    expect((err as Error).message).toMatch(/^cannot read (tpm2 )?sealed data: /);
    expect((err as Error).message).toMatch(why);
  });
});

describe("fromToolsFiles: seal.pub + seal.priv before → sealed data after", () => {
  test.each([
    { name: "with PCRs: a pcr policy", policy: PCR_POLICY, pcrs: [7, 0], after: { policy: "pcr", pcrs: [0, 7] } },
    { name: "without PCRs: the unseal-only policy", policy: unsealOnlyPolicy(), pcrs: undefined, after: { policy: "command-code", pcrs: [] } },
  ])("$name", ({ policy, pcrs, after }) => {
    const files = { pub: pub(policy), priv: PRIV };
    const d = fromToolsFiles(files, { srkName: Buffer.from(SRK_NAME, "hex"), ...(pcrs ? { pcrs: [...pcrs] } : {}) });
    expect(d).toMatchObject({ ...after, srkHandle: 0x81000001, srkName: SRK_NAME, policyDigest: hex(policy) });
    expect(toToolsFiles(d)).toEqual(files);
  });

  test("an object whose policy zb cannot replay is refused", () => {
    const files = { pub: pub(new Uint8Array(32).fill(3)), priv: PRIV };
    expect(() => fromToolsFiles(files, { srkName: Buffer.from(SRK_NAME, "hex") })).toThrow(/not PolicyCommandCode\(TPM2_Unseal\)/);
  });
});
