/**
 * The tpm2 backend against a real swtpm (TCP on 127.0.0.1, and behind a
 * character device): round trips, the storage key, every failure class,
 * the retry, handle hygiene, and that the secret never crosses the
 * transport in clear. tpm2-tools (TPM2TOOLS_TCTI set for those children
 * only) inspect the TPM from outside.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Tpm2Hsm } from "../../../../lib/hsm/tpm2/index.ts";
import type { SealedData } from "../../../../lib/hsm/types.ts";
import { Tpm } from "../../../../lib/hsm/tpm2/commands.ts";
import { decodeSealed } from "../../../../lib/hsm/tpm2/sealed.ts";
import { SE_POLICY } from "../../../../lib/hsm/tpm2/session.ts";
import { readSrk } from "../../../../lib/hsm/tpm2/srk.ts";
import { parseAddress } from "../../../../lib/hsm/tpm2/transport.ts";
import { CC } from "../../../../lib/hsm/tpm2/wire.ts";
import { ccOf, hasSecret, noHandlesLeft, startSwtpm, startSwtpmDevice, wrapped, type Exchange, type Swtpm } from "../../../peers/swtpm.ts";

const random = (n: number) => crypto.getRandomValues(new Uint8Array(n));

/** The backend's unseal steps with a salted session but attrs 0 (no response encryption), recorded. */
async function unsealWithoutEncryption(address: string, data: SealedData, log: Exchange[]): Promise<Uint8Array> {
  const s = decodeSealed(data);
  const t = await wrapped({ log })(parseAddress(address));
  const tpm = new Tpm(t);
  let item: number | undefined;
  try {
    const srk = (await readSrk(tpm))!;
    const loaded = await tpm.load(srk.handle, s.private, s.public);
    item = loaded.handle;
    const session = await tpm.startSession(SE_POLICY, srk);
    await tpm.policyCommandCode(session, CC.Unseal);
    return await tpm.unseal({ handle: item, name: loaded.name }, { kind: "session", session, attrs: 0 });
  } finally {
    await tpm.flush(item);
    t.close();
  }
}

let tpm: Swtpm;
let hsm: Tpm2Hsm;
beforeAll(async () => {
  tpm = await startSwtpm();
  hsm = new Tpm2Hsm({ device: tpm.address });
});
afterAll(async () => {
  await hsm?.close();
  await tpm?.stop();
});

describe("storage key and probe", () => {
  test("probe before any seal: present, IBM's swtpm, no storage key yet", async () => {
    const p = await hsm.probe();
    expect(p).toMatchObject({ backend: "tpm2", present: true, info: { manufacturer: "IBM", family: "2.0", srk: expect.stringMatching(/^absent/) } });
    expect(tpm.toolsOk(["tpm2_getcap", "handles-persistent"]).trim()).toBe("");
  });

  test("the first seal creates 0x81000001 (ECC P-256, 0x30472); later seals reuse it", async () => {
    const a = await hsm.seal(random(32));
    expect(tpm.toolsOk(["tpm2_getcap", "handles-persistent"]).trim()).toBe("- 0x81000001");
    const yaml = tpm.toolsOk(["tpm2_readpublic", "-c", "0x81000001"]);
    expect(yaml).toMatch(/value: ecc/);
    expect(yaml).toMatch(/value: NIST p256/);
    expect(yaml).toMatch(/raw: 0x30472/);
    const b = await hsm.seal(random(32), { pcrs: [7] });
    expect(b.srkName).toBe(a.srkName);
    expect(tpm.toolsOk(["tpm2_getcap", "handles-persistent"]).trim()).toBe("- 0x81000001");
    expect((await hsm.probe()).info).toMatchObject({ srk: "present", srkName: a.srkName });
  });
});

describe("round trip: secret and PCRs before → the same secret after", () => {
  test.each([
    { name: "32 bytes, no PCRs (unseal-only policy)", size: 32, pcrs: [] as number[], policy: "command-code" },
    { name: "32 bytes, PCRs 0,7", size: 32, pcrs: [7, 0], policy: "pcr" },
    { name: "1 byte, PCR 16", size: 1, pcrs: [16], policy: "pcr" },
    { name: "128 bytes (the maximum), 10 PCRs", size: 128, pcrs: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], policy: "pcr" },
  ])("$name", async ({ size, pcrs, policy }) => {
    const secret = random(size);
    const copy = secret.slice();
    const data = await hsm.seal(secret, { pcrs: [...pcrs] });
    expect(secret).toEqual(copy); // seal does not modify the caller's buffer
    expect(data).toMatchObject({ policy, pcrs: [...pcrs].sort((x, y) => x - y), pcrBank: "sha256", srkHandle: 0x81000001 });
    const r = await hsm.unseal(data);
    expect(r).toEqual({ kind: "ok", secret: copy });
    noHandlesLeft(tpm);
  });

  test("three unseals at once are queued on one backend", async () => {
    const secret = random(32);
    const data = await hsm.seal(secret, { pcrs: [0] });
    const rs = await Promise.all([hsm.unseal(data), hsm.unseal(data), hsm.unseal(data)]);
    expect(rs.map((r) => r.kind)).toEqual(["ok", "ok", "ok"]);
  });

  test.each([
    { name: "an empty secret", secret: new Uint8Array(0), pcrs: [], code: "USAGE", why: /0 bytes; a TPM seals 1 to 128/ },
    { name: "129 bytes", secret: new Uint8Array(129), pcrs: [], code: "USAGE", why: /129 bytes/ },
    { name: "PCR 24", secret: new Uint8Array(32), pcrs: [24], code: "USAGE", why: /PCR 24/ },
  ])("seal refuses $name", async ({ secret, pcrs, code, why }) => {
    await expect(hsm.seal(secret, { pcrs: [...pcrs] })).rejects.toMatchObject({ code, message: expect.stringMatching(why) });
  });
});

describe("failure classes: situation before → result after", () => {
  test("PCR policy refusing after tpm2_pcrextend → denied (0x99d); ok again after tpm2_pcrreset", async () => {
    const secret = random(32);
    const data = await hsm.seal(secret, { pcrs: [16] });
    tpm.toolsOk(["tpm2_pcrextend", `16:sha256=${"01".repeat(32)}`]);
    const denied = await hsm.unseal(data);
    expect(denied).toMatchObject({ kind: "denied", why: expect.stringContaining("0x99d (TPM_RC_POLICY_FAIL, session 1") });
    noHandlesLeft(tpm);
    tpm.toolsOk(["tpm2_pcrreset", "16"]);
    expect(await hsm.unseal(data)).toEqual({ kind: "ok", secret });
  });

  test("another TPM: no storage key → no-match; its own storage key → no-match (name differs)", async () => {
    const data = await hsm.seal(random(32));
    const other = await startSwtpm();
    const there = new Tpm2Hsm({ device: other.address });
    try {
      expect(await there.unseal(data)).toMatchObject({ kind: "no-match", why: expect.stringContaining("no storage key at 0x81000001") });
      await there.seal(random(16)); // creates that TPM's storage key
      expect(await there.unseal(data)).toMatchObject({ kind: "no-match", why: expect.stringContaining("is not the one sealed to") });
      noHandlesLeft(other);
    } finally {
      await other.stop();
    }
  });

  test("a private area that fails the TPM's integrity check (Load) → no-match", async () => {
    const data = await hsm.seal(random(32));
    const priv = Buffer.from(data.private as string, "base64");
    priv[priv.length - 5]! ^= 0x01;
    const r = await hsm.unseal({ ...data, private: priv.toString("base64") });
    expect(r).toMatchObject({ kind: "no-match", why: expect.stringContaining("TPM_RC_INTEGRITY") });
    noHandlesLeft(tpm);
  });

  test("swtpm stopped or device node missing → absent; probe says not present", async () => {
    const data = await hsm.seal(random(32));
    const gone = await startSwtpm();
    await gone.stop();
    for (const device of [gone.address, "/nonexistent/tpmrm0"]) {
      const h = new Tpm2Hsm({ device });
      expect(await h.unseal(data)).toMatchObject({ kind: "absent", why: expect.stringContaining("cannot open TPM") });
      expect(await h.probe()).toMatchObject({ present: false, detail: expect.stringContaining("cannot open TPM") });
      await expect(h.seal(random(32))).rejects.toMatchObject({ code: "HSM_ABSENT" });
    }
  });

  test("one flipped bit in the encrypted outData of the Unseal response → failed (response HMAC), nothing leaked", async () => {
    const secret = random(32);
    const data = await hsm.seal(secret);
    const flip = wrapped({ after: (cmd, rsp) => (ccOf(cmd) === 0x15e ? rsp.map((b, i) => (i === 20 ? b ^ 0x01 : b)) : rsp) });
    const r = await new Tpm2Hsm({ device: tpm.address, connect: flip }).unseal(data);
    expect(r).toMatchObject({ kind: "failed", why: expect.stringContaining("HMAC does not verify") });
    noHandlesLeft(tpm);
  });

  test("malformed sealed data → failed, without touching the TPM", async () => {
    const log: Exchange[] = [];
    const r = await new Tpm2Hsm({ device: tpm.address, connect: wrapped({ log }) }).unseal({ srkHandle: 1 } as SealedData);
    expect(r).toMatchObject({ kind: "failed", why: expect.stringContaining("cannot read tpm2 sealed data") });
    expect(log).toEqual([]);
  });

  test.each([
    { name: "TPM_RC_PCR_CHANGED once → retried → ok", times: 1, rc: 0x128, after: "ok", unseals: 2 },
    { name: "TPM_RC_RETRY once → retried → ok", times: 1, rc: 0x922, after: "ok", unseals: 2 },
    { name: "TPM_RC_PCR_CHANGED twice → failed (one retry only)", times: 2, rc: 0x128, after: "failed", unseals: 2 },
  ])("$name", async ({ times, rc, after, unseals }) => {
    const data = await hsm.seal(random(32), { pcrs: [0] });
    let left = times;
    let seen = 0;
    const header = new Uint8Array([0x80, 0x01, 0, 0, 0, 10, rc >>> 24, (rc >>> 16) & 0xff, (rc >>> 8) & 0xff, rc & 0xff]);
    const inject = wrapped({
      before: (cmd) => {
        if (ccOf(cmd) !== 0x15e) return undefined;
        seen++;
        return left-- > 0 ? header : undefined;
      },
    });
    const r = await new Tpm2Hsm({ device: tpm.address, connect: inject }).unseal(data);
    expect(r.kind).toBe(after as never);
    expect(seen).toBe(unseals);
    noHandlesLeft(tpm);
  });
});

describe("the secret never crosses the transport in clear", () => {
  test("seal (Create with command parameter encryption) and unseal (response encryption)", async () => {
    const secret = random(32);
    const log: Exchange[] = [];
    const h = new Tpm2Hsm({ device: tpm.address, connect: wrapped({ log }) });
    const data = await h.seal(secret, { pcrs: [0, 7] });
    const r = await h.unseal(data);
    expect(r).toEqual({ kind: "ok", secret });
    const create = log.find((x) => ccOf(x.cmd) === 0x153);
    const unseal = log.find((x) => ccOf(x.cmd) === 0x15e);
    expect(create).toBeDefined();
    expect(unseal?.rsp.length).toBeGreaterThan(32); // outData (32 bytes, encrypted) is in it
    for (const x of log) {
      expect(hasSecret(x.cmd, secret)).toBe(false);
      expect(hasSecret(x.rsp, secret)).toBe(false);
    }
  });

  test("control: the same recorder sees the secret when parameter encryption is off", async () => {
    const secret = random(32);
    const log: Exchange[] = [];
    const data = await hsm.seal(secret);
    const out = await unsealWithoutEncryption(tpm.address, data, log);
    expect(out).toEqual(secret);
    expect(log.some((x) => hasSecret(x.rsp, secret))).toBe(true);
    noHandlesLeft(tpm);
  });
});

test("device transport: seal and unseal through a character device (swtpm chardev on a raw pty)", async () => {
  const dev = await startSwtpmDevice();
  try {
    const h = new Tpm2Hsm({ device: `device:${dev.path}` });
    const secret = random(32);
    const data = await h.seal(secret, { pcrs: [7] });
    expect(await h.unseal(data)).toEqual({ kind: "ok", secret });
    expect(await h.probe()).toMatchObject({ present: true, info: { address: dev.path, srk: "present" } });
  } finally {
    await dev.stop();
  }
});
