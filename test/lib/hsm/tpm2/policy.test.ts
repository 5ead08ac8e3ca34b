/**
 * Policies: PCR lists and selections (pure rows), and the offline policy
 * digests against tpm2-tools' trial sessions on a real swtpm
 * (`tpm2_policypcr -L`, `tpm2_policycommandcode -L`), before and after
 * `tpm2_pcrextend`. Also zb's PCR_Read against `tpm2_pcrread -o`.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Tpm } from "../../../../lib/hsm/tpm2/commands.ts";
import {
  normalizePcrs, pcrSelection, pcrsOfBitmap, policyCommandCodeDigest, policyPcrDigest, unsealOnlyPolicy,
} from "../../../../lib/hsm/tpm2/policy.ts";
import { connect, parseAddress } from "../../../../lib/hsm/tpm2/transport.ts";
import { CC, hex } from "../../../../lib/hsm/tpm2/wire.ts";
import { startSwtpm, type Swtpm } from "../../../peers/swtpm.ts";

describe("normalizePcrs: list before → list after", () => {
  test.each([
    { before: [7, 0], after: [0, 7] },
    { before: [], after: [] },
    { before: [23, 16, 1], after: [1, 16, 23] },
  ])("$before → $after", ({ before, after }) => {
    expect(normalizePcrs(before)).toEqual([...after]);
  });
  test.each([
    { before: [24], why: /PCR 24: PCR indices are 0 to 23/ },
    { before: [-1], why: /PCR -1/ },
    { before: [1.5], why: /PCR 1.5/ },
    { before: [7, 7], why: /PCR 7: listed twice/ },
  ])("$before is refused (USAGE)", ({ before, why }) => {
    expect(() => normalizePcrs(before)).toThrow(why);
  });
});

describe("pcrSelection: PCRs before → TPML_PCR_SELECTION after (Part 2 §10.9.7)", () => {
  test.each([
    { before: [0, 7], after: "00000001 000b 03 810000" },
    { before: [23], after: "00000001 000b 03 000080" },
    { before: [8, 16], after: "00000001 000b 03 000101" },
    { before: [], after: "00000000" },
  ])("$before", ({ before, after }) => {
    const sel = pcrSelection(before);
    expect(hex(sel)).toBe(after.replace(/ /g, ""));
    if (before.length) expect(pcrsOfBitmap(sel.subarray(7))).toEqual([...before]);
  });
});

describe("policy digests against tpm2-tools trial sessions (swtpm)", () => {
  let tpm: Swtpm;
  let dir: string;
  beforeAll(async () => {
    tpm = await startSwtpm();
    dir = mkdtempSync(join(tmpdir(), "zb-policy-"));
  });
  afterAll(async () => {
    await tpm?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** The trial digest of a tpm2-tools policy command. */
  function trial(policyArgs: string[]): string {
    const ctx = join(dir, "trial.ctx");
    const out = join(dir, "trial.policy");
    tpm.toolsOk(["tpm2_startauthsession", "-S", ctx]);
    try {
      tpm.toolsOk([...policyArgs, "-S", ctx, "-L", out]);
    } finally {
      tpm.toolsOk(["tpm2_flushcontext", ctx]);
    }
    return hex(readFileSync(out));
  }

  /** PCR values from tpm2_pcrread -o (concatenated digests, index order). */
  function toolValues(pcrs: number[]): Uint8Array[] {
    const file = join(dir, "pcrs.bin");
    tpm.toolsOk(["tpm2_pcrread", `sha256:${pcrs.join(",")}`, "-o", file]);
    const all = readFileSync(file);
    return pcrs.map((_, i) => new Uint8Array(all.subarray(32 * i, 32 * i + 32)));
  }

  const rows: { name: string; pcrs: number[]; extend?: number[] }[] = [
    { name: "PCRs 0,7 all zero", pcrs: [0, 7] },
    { name: "PCR 16 after an extend", pcrs: [16], extend: [16] },
    { name: "PCRs 0,7,16,23 with 16 and 23 extended", pcrs: [0, 7, 16, 23], extend: [23] },
  ];
  test.each(rows)("PolicyPCR: $name", ({ pcrs, extend }) => {
    for (const p of extend ?? []) tpm.toolsOk(["tpm2_pcrextend", `${p}:sha256=${"01".repeat(32)}`]);
    const want = trial(["tpm2_policypcr", "-l", `sha256:${pcrs.join(",")}`]);
    expect(hex(policyPcrDigest(pcrs, toolValues(pcrs)))).toBe(want);
  });

  test("PolicyPCR digest changes when a PCR changes (before/after extend)", () => {
    const before = hex(policyPcrDigest([7], toolValues([7])));
    tpm.toolsOk(["tpm2_pcrextend", `7:sha256=${"02".repeat(32)}`]);
    const after = hex(policyPcrDigest([7], toolValues([7])));
    expect(after).not.toBe(before);
    expect(after).toBe(trial(["tpm2_policypcr", "-l", "sha256:7"]));
  });

  test("PolicyCommandCode(TPM2_Unseal) == tpm2_policycommandcode trial", () => {
    const want = trial(["tpm2_policycommandcode", "TPM2_CC_Unseal"]);
    expect(hex(unsealOnlyPolicy())).toBe(want);
    expect(hex(policyCommandCodeDigest(CC.Unseal))).toBe(want);
    expect(hex(policyCommandCodeDigest(CC.Load))).not.toBe(want);
  });

  test("zb's PCR_Read of 12 PCRs (two responses of at most 8) == tpm2_pcrread", async () => {
    const pcrs = [0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 22, 23];
    tpm.toolsOk(["tpm2_pcrextend", `8:sha256=${"03".repeat(32)}`]);
    const want = toolValues(pcrs).map(hex); // before connecting: swtpm serves one connection at a time
    const t = await connect(parseAddress(tpm.address));
    try {
      const got = (await new Tpm(t).pcrRead(pcrs)).map(hex);
      expect(got).toEqual(want);
      expect(new Set(got).size).toBeGreaterThan(1);
    } finally {
      t.close();
    }
  });
});
