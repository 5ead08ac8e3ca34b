/**
 * Object templates and public areas. The storage-key template is checked
 * against tpm2-tools on two swtpms with the same seeds (one state copied
 * from the other): `tpm2_createprimary -G ecc256:aes128cfb -a …` on one and
 * zb's find-or-create on the other must give the same key, hence the same name.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Tpm } from "../../../../lib/hsm/tpm2/commands.ts";
import { ATTR, objectName, parsePublic, publicContent, SEALED_ATTRS, sealedTemplate, SRK_ATTRS, srkTemplate } from "../../../../lib/hsm/tpm2/objects.ts";
import { unsealOnlyPolicy } from "../../../../lib/hsm/tpm2/policy.ts";
import { ensureSrk, readSrk, SRK_HANDLE } from "../../../../lib/hsm/tpm2/srk.ts";
import { connect, parseAddress } from "../../../../lib/hsm/tpm2/transport.ts";
import { hex, sized } from "../../../../lib/hsm/tpm2/wire.ts";
import { startSwtpm, type Swtpm } from "../../../peers/swtpm.ts";

describe("templates: parameters before → bytes and fields after", () => {
  test("SRK attributes are fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt", () => {
    const a = ATTR;
    expect(SRK_ATTRS).toBe(a.fixedTPM | a.fixedParent | a.sensitiveDataOrigin | a.userWithAuth | a.noDA | a.restricted | a.decrypt);
    expect(SEALED_ATTRS & a.userWithAuth).toBe(0);
  });

  test("SRK template bytes (Part 2 §12.2.4)", () => {
    expect(hex(srkTemplate())).toBe("0023000b000304720000000600800043001000030010" + "00000000");
  });

  test.each([
    {
      name: "SRK template",
      before: () => srkTemplate(),
      after: { type: 0x23, nameAlg: 0xb, attributes: 0x30472, authPolicy: "", symmetric: { alg: 6, keyBits: 128, mode: 0x43 }, curve: 3 },
    },
    {
      name: "sealed template with the unseal-only policy",
      before: () => sealedTemplate(unsealOnlyPolicy()),
      after: { type: 8, nameAlg: 0xb, attributes: 0x412, authPolicy: hex(unsealOnlyPolicy()) },
    },
  ])("$name parses back", ({ before, after }) => {
    const p = parsePublic(before());
    expect({
      type: p.type, nameAlg: p.nameAlg, attributes: p.attributes, authPolicy: hex(p.authPolicy),
      ...(p.symmetric ? { symmetric: p.symmetric } : {}), ...(p.ecc ? { curve: p.ecc.curve } : {}),
    }).toEqual(after);
  });

  test.each([
    { name: "a symmetric cipher object (type 0x25)", before: "0025000b00000000" + "0000", why: /object type 0x25 is not handled/ },
    { name: "a truncated ECC area", before: "0023000b000304720000", why: /runs past the end/ },
    { name: "trailing bytes", before: hex(sealedTemplate(new Uint8Array(0))) + "00", why: /trailing bytes/ },
  ])("parsePublic refuses $name", ({ before, why }) => {
    expect(() => parsePublic(new Uint8Array(Buffer.from(before, "hex")))).toThrow(why);
  });

  test("objectName is 000b ‖ sha256(TPMT_PUBLIC); a TPM2B_PUBLIC unwraps", () => {
    const t = srkTemplate();
    expect(hex(objectName(t))).toBe("000b" + new Bun.CryptoHasher("sha256").update(t).digest("hex"));
    expect(hex(publicContent(sized((w) => w.bytes(t))))).toBe(hex(t));
    expect(() => publicContent(new Uint8Array([0, 9, 1]))).toThrow(/runs past the end/);
  });
});

describe("storage key: zb's template == tpm2-tools' (same seeds)", () => {
  let tools: Swtpm;
  let zb: Swtpm;
  let seedDir: string;
  beforeAll(async () => {
    // swtpm makes its seeds at first start; both peers start from a copy of that state.
    seedDir = mkdtempSync(join(tmpdir(), "zb-swtpm-seed-"));
    await (await startSwtpm({ stateDir: seedDir })).stop();
    tools = await startSwtpm({ copyFrom: seedDir });
    zb = await startSwtpm({ copyFrom: seedDir });
  });
  afterAll(async () => {
    await tools?.stop();
    await zb?.stop();
    if (seedDir) rmSync(seedDir, { recursive: true, force: true });
  });

  test("same name at 0x81000001; zb reuses the existing key; attributes per tpm2_readpublic", async () => {
    tools.toolsOk(["tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", "ecc256:aes128cfb",
      "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt", "-c", "prim.ctx"]);
    tools.toolsOk(["tpm2_evictcontrol", "-C", "o", "-c", "prim.ctx", "0x81000001"]);
    tools.toolsOk(["tpm2_flushcontext", "-t"]);
    tools.toolsOk(["tpm2_readpublic", "-c", "0x81000001", "-n", "tools.name"]);
    const toolsName = hex(readFileSync(join(tools.stateDir, "tools.name")));

    const t = await connect(parseAddress(zb.address));
    let made: Awaited<ReturnType<typeof ensureSrk>>, again: Awaited<ReturnType<typeof ensureSrk>>;
    try {
      const tpm = new Tpm(t);
      expect(await readSrk(tpm)).toBeUndefined();
      made = await ensureSrk(tpm);
      again = await ensureSrk(tpm);
    } finally {
      t.close();
    }
    expect(made.created).toBe(true);
    expect(again.created).toBe(false);
    expect(hex(again.name)).toBe(hex(made.name));
    expect(hex(made.name)).toBe(toolsName);

    const yaml = zb.toolsOk(["tpm2_readpublic", "-c", "0x81000001"]);
    expect(yaml).toMatch(/^type:\s*\n\s*value: ecc/m);
    expect(yaml).toMatch(/curve-id:\s*\n\s*value: NIST p256/m);
    expect(yaml).toMatch(/attributes:\s*\n\s*value: fixedtpm\|fixedparent\|sensitivedataorigin\|userwithauth\|noda\|restricted\|decrypt\s*\n\s*raw: 0x30472/m);
    expect(zb.toolsOk(["tpm2_getcap", "handles-transient"]).trim()).toBe("");
    expect(SRK_HANDLE).toBe(0x81000001);
  });
});
