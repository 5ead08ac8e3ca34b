/**
 * Interoperability with tpm2-tools 5.4, both ways, on a real swtpm whose
 * storage key tpm2-tools created (the recipe of docs/hsm/tpm2.md):
 * - sealed by `tpm2_create -C 0x81000001 -L POLICY -i key.bin` → imported
 *   from seal.pub/seal.priv → unsealed by zb;
 * - sealed by zb → exported to seal.pub/seal.priv → unsealed by tpm2_load +
 *   tpm2_startauthsession --policy-session (salted with the SRK, name pinned)
 *   + tpm2_policypcr / tpm2_policycommandcode + tpm2_unseal.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Tpm2Hsm } from "../../../../lib/hsm/tpm2/index.ts";
import { fromToolsFiles, toToolsFiles } from "../../../../lib/hsm/tpm2/sealed.ts";
import { hex } from "../../../../lib/hsm/tpm2/wire.ts";
import { noHandlesLeft, startSwtpm, type Swtpm } from "../../../peers/swtpm.ts";

let tpm: Swtpm;
let hsm: Tpm2Hsm;
const file = (name: string) => join(tpm.stateDir, name);

beforeAll(async () => {
  tpm = await startSwtpm();
  hsm = new Tpm2Hsm({ device: tpm.address });
  tpm.toolsOk(["tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", "ecc256:aes128cfb",
    "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt", "-c", "prim.ctx"]);
  tpm.toolsOk(["tpm2_evictcontrol", "-C", "o", "-c", "prim.ctx", "0x81000001"]);
  tpm.toolsOk(["tpm2_flushcontext", "-t"]);
  tpm.toolsOk(["tpm2_pcrextend", `7:sha256=${"07".repeat(32)}`]); // a non-zero PCR in the policies
});
afterAll(async () => {
  await hsm?.close();
  await tpm?.stop();
});

/** The tpm2-tools policy command for a row, without -S/-L. */
function policyArgs(pcrs: number[]): string[] {
  return pcrs.length ? ["tpm2_policypcr", "-l", `sha256:${pcrs.join(",")}`] : ["tpm2_policycommandcode", "TPM2_CC_Unseal"];
}

const rows = [
  { name: "PCR policy sha256:0,7", pcrs: [0, 7] },
  { name: "PolicyCommandCode(TPM2_CC_Unseal), no PCRs", pcrs: [] as number[] },
];

describe("tpm2-tools seals → zb unseals", () => {
  test.each(rows)("$name", async ({ pcrs }) => {
    const key = crypto.getRandomValues(new Uint8Array(32));
    writeFileSync(file("key.bin"), key);
    tpm.toolsOk(["tpm2_startauthsession", "-S", "trial.ctx"]);
    tpm.toolsOk([...policyArgs(pcrs), "-S", "trial.ctx", "-L", "seal.policy"]);
    tpm.toolsOk(["tpm2_flushcontext", "trial.ctx"]);
    tpm.toolsOk(["tpm2_create", "-Q", "-C", "0x81000001", "-g", "sha256", "-a", "fixedtpm|fixedparent|noda",
      "-L", "seal.policy", "-i", "key.bin", "-u", "seal.pub", "-r", "seal.priv"]);
    tpm.toolsOk(["tpm2_readpublic", "-Q", "-c", "0x81000001", "-n", "srk.name"]);

    const data = fromToolsFiles(
      { pub: readFileSync(file("seal.pub")), priv: readFileSync(file("seal.priv")) },
      { srkName: readFileSync(file("srk.name")), pcrs },
    );
    expect(data.policyDigest).toBe(hex(readFileSync(file("seal.policy"))));
    expect(await hsm.unseal(data)).toEqual({ kind: "ok", secret: key });
    noHandlesLeft(tpm);
  });
});

describe("zb seals → tpm2-tools unseal (salted policy session, SRK name pinned)", () => {
  test.each(rows)("$name", async ({ pcrs }) => {
    const secret = crypto.getRandomValues(new Uint8Array(32));
    const data = await hsm.seal(secret, { pcrs });
    const { pub, priv } = toToolsFiles(data);
    writeFileSync(file("zb.pub"), pub);
    writeFileSync(file("zb.priv"), priv);

    tpm.toolsOk(["tpm2_readpublic", "-Q", "-c", "0x81000001", "-n", "srk.name"]);
    expect(hex(readFileSync(file("srk.name")))).toBe(data.srkName as string);
    tpm.toolsOk(["tpm2_load", "-Q", "-C", "0x81000001", "-u", "zb.pub", "-r", "zb.priv", "-c", "zb.ctx"]);
    tpm.toolsOk(["tpm2_startauthsession", "--policy-session", "-S", "s.ctx", "-c", "0x81000001", "-n", "srk.name"]);
    try {
      tpm.toolsOk([...policyArgs(pcrs), "-S", "s.ctx"]);
      tpm.toolsOk(["tpm2_unseal", "-c", "zb.ctx", "-p", "session:s.ctx", "-o", "out.bin"]);
    } finally {
      tpm.tools(["tpm2_flushcontext", "s.ctx"]);
      tpm.toolsOk(["tpm2_flushcontext", "-t"]);
    }
    expect(new Uint8Array(readFileSync(file("out.bin")))).toEqual(secret);
  });

  test("after tpm2_pcrextend both refuse: tpm2_unseal with 0x99d, zb with denied", async () => {
    const data = await hsm.seal(crypto.getRandomValues(new Uint8Array(32)), { pcrs: [16] });
    writeFileSync(file("zb.pub"), toToolsFiles(data).pub);
    writeFileSync(file("zb.priv"), toToolsFiles(data).priv);
    tpm.toolsOk(["tpm2_pcrextend", `16:sha256=${"16".repeat(32)}`]);
    tpm.toolsOk(["tpm2_load", "-Q", "-C", "0x81000001", "-u", "zb.pub", "-r", "zb.priv", "-c", "zb.ctx"]);
    tpm.toolsOk(["tpm2_startauthsession", "--policy-session", "-S", "s.ctx", "-c", "0x81000001"]);
    let r: ReturnType<Swtpm["tools"]>;
    try {
      tpm.toolsOk(["tpm2_policypcr", "-S", "s.ctx", "-l", "sha256:16"]);
      r = tpm.tools(["tpm2_unseal", "-c", "zb.ctx", "-p", "session:s.ctx"]);
    } finally {
      tpm.tools(["tpm2_flushcontext", "s.ctx"]);
      tpm.toolsOk(["tpm2_flushcontext", "-t"]);
    }
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/policy check failed/);
    expect(r.stderr).toMatch(/0x0*99d/i);
    expect(await hsm.unseal(data)).toMatchObject({ kind: "denied" });
    noHandlesLeft(tpm);
  });
});

describe("an RSA storage key made by tpm2-tools (salt: RSA-OAEP, label \"SECRET\\0\")", () => {
  test("zb seals to it and unseals; tpm2-tools unseals zb's blob", async () => {
    const rsa = await startSwtpm();
    try {
      rsa.toolsOk(["tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", "rsa2048:null:aes128cfb",
        "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt", "-c", "prim.ctx"]);
      rsa.toolsOk(["tpm2_evictcontrol", "-C", "o", "-c", "prim.ctx", "0x81000001"]);
      rsa.toolsOk(["tpm2_flushcontext", "-t"]);
      const h = new Tpm2Hsm({ device: rsa.address });
      const secret = crypto.getRandomValues(new Uint8Array(32));
      const data = await h.seal(secret, { pcrs: [7] });
      expect(await h.unseal(data)).toEqual({ kind: "ok", secret });
      writeFileSync(join(rsa.stateDir, "zb.pub"), toToolsFiles(data).pub);
      writeFileSync(join(rsa.stateDir, "zb.priv"), toToolsFiles(data).priv);
      rsa.toolsOk(["tpm2_load", "-Q", "-C", "0x81000001", "-u", "zb.pub", "-r", "zb.priv", "-c", "zb.ctx"]);
      rsa.toolsOk(["tpm2_startauthsession", "--policy-session", "-S", "s.ctx", "-c", "0x81000001"]);
      rsa.toolsOk(["tpm2_policypcr", "-S", "s.ctx", "-l", "sha256:7"]);
      rsa.toolsOk(["tpm2_unseal", "-c", "zb.ctx", "-p", "session:s.ctx", "-o", "out.bin"]);
      rsa.tools(["tpm2_flushcontext", "s.ctx"]);
      rsa.toolsOk(["tpm2_flushcontext", "-t"]);
      expect(new Uint8Array(readFileSync(join(rsa.stateDir, "out.bin")))).toEqual(secret);
      noHandlesLeft(rsa);
    } finally {
      await rsa.stop();
    }
  });
});
