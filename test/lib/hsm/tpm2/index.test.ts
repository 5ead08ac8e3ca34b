/**
 * The tpm2 backend against a real swtpm (TCP on 127.0.0.1, and behind a
 * character device): round trips, the storage key, every failure class,
 * the retry, handle hygiene, and that the secret never crosses the
 * transport in clear. tpm2-tools (TPM2TOOLS_TCTI set for those children
 * only) inspect the TPM from outside.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
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

/** A bare error response: tag, size 10, response code. */
function errorResponse(rc: number, tag = 0x8001): Uint8Array {
  const b = new Uint8Array(10);
  const d = new DataView(b.buffer);
  d.setUint16(0, tag);
  d.setUint32(2, 10);
  d.setUint32(6, rc);
  return b;
}

/** The same response with one byte appended (and its size field to match): a parse failure after the handle. */
function trailingByte(r: Uint8Array): Uint8Array {
  const o = new Uint8Array(r.length + 1);
  o.set(r);
  new DataView(o.buffer).setUint32(2, o.length);
  return o;
}

/** Replace the persistent key at 0x81000001 with one tpm2_createprimary makes from `args`. */
function replaceSrk(t: Swtpm, args: string[]): void {
  t.tools(["tpm2_evictcontrol", "-C", "o", "-c", "0x81000001"]);
  t.toolsOk(["tpm2_createprimary", "-Q", "-C", "o", ...args, "-c", "p.ctx"]);
  t.toolsOk(["tpm2_evictcontrol", "-Q", "-C", "o", "-c", "p.ctx", "0x81000001"]);
  t.toolsOk(["tpm2_flushcontext", "-t"]);
}

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

  // After the seal above: the storage key is there, so a full report says "present".
  const READY = { present: true, info: { manufacturer: "IBM", srk: "present" } };
  const STILL_BUSY = (cmd: string, rc: string) => ({
    present: true,
    detail: expect.stringMatching(new RegExp(`is there but busy: ${cmd} still returned ${rc}[^)]*\\) after 5 retries over 0\\.75 s`)),
    info: { busy: true },
  });
  test.each([
    { name: "TPM_RC_TESTING ×2 to GetCapability (self-test after power-on) → retried → full report (control: retried before)", cc: 0x17a, times: 2, rc: 0x90a, after: READY },
    { name: "TPM_RC_RETRY ×1 to ReadPublic → retried → storage key present, not 'unusable'", cc: 0x173, times: 1, rc: 0x922, after: READY },
    { name: "TPM_RC_YIELDED ×5 to ReadPublic → ok on the last retry", cc: 0x173, times: 5, rc: 0x908, after: READY },
    { name: "TPM_RC_TESTING ×6 to ReadPublic → there but busy, after 5 retries", cc: 0x173, times: 6, rc: 0x90a, after: STILL_BUSY("TPM2_ReadPublic", "0x90a \\(TPM_RC_TESTING") },
    { name: "TPM_RC_RETRY ×6 to GetCapability → there but busy, not absent", cc: 0x17a, times: 6, rc: 0x922, after: STILL_BUSY("TPM2_GetCapability", "0x922 \\(TPM_RC_RETRY") },
  ])("probe: $name", async ({ cc, times, rc, after }) => {
    let left = times;
    const inject = wrapped({ before: (cmd) => (ccOf(cmd) === cc && left-- > 0 ? errorResponse(rc) : undefined) });
    const waits: number[] = [];
    const p = await new Tpm2Hsm({ device: tpm.address, connect: inject, sleep: async (ms) => void waits.push(ms) }).probe();
    expect(p).toMatchObject(after);
    expect(waits).toEqual([50, 100, 200, 200, 200].slice(0, Math.min(times, 5)));
    noHandlesLeft(tpm);
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
    { name: "TPM_RC_TESTING 3 times → retried after short waits → ok", times: 3, rc: 0x90a, after: "ok", unseals: 4 },
    { name: "TPM_RC_YIELDED once → retried → ok", times: 1, rc: 0x908, after: "ok", unseals: 2 },
    { name: "TPM_RC_RETRY 5 times → ok on the last retry", times: 5, rc: 0x922, after: "ok", unseals: 6 },
    { name: "TPM_RC_RETRY 6 times → failed after 5 retries", times: 6, rc: 0x922, after: "failed", unseals: 6 },
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
    const waits: number[] = [];
    const r = await new Tpm2Hsm({ device: tpm.address, connect: inject, sleep: async (ms) => void waits.push(ms) }).unseal(data);
    expect(r.kind).toBe(after as never);
    expect(seen).toBe(unseals);
    // Busy codes wait before each retry (50 ms first, then longer); PCR_CHANGED does not wait.
    expect(waits).toEqual(rc === 0x128 ? [] : [50, 100, 200, 200, 200].slice(0, unseals - 1));
    noHandlesLeft(tpm);
  });

  test.each([
    { name: "TPM_RC_POLICY_FAIL under a garbled tag (0x1234) on Unseal → failed, not denied", cc: 0x15e, rsp: errorResponse(0x99d, 0x1234), kind: "failed", why: "unexpected response tag 0x1234" },
    { name: "TPM_RC_AUTH_FAIL under TPM_ST_SESSIONS on Unseal → failed, not denied", cc: 0x15e, rsp: errorResponse(0x98e, 0x8002), kind: "failed", why: "unexpected response tag 0x8002" },
    { name: "TPM_RC_POLICY_FAIL with the right tag on Unseal → denied (control)", cc: 0x15e, rsp: errorResponse(0x99d), kind: "denied", why: "TPM_RC_POLICY_FAIL" },
    { name: "TPM_RC_LOCKOUT on Load → failed (heals), not denied", cc: 0x157, rsp: errorResponse(0x921), kind: "failed", why: "dictionary-attack lockout, which heals by itself" },
    { name: "TPM_RC_LOCKOUT on Unseal → failed (heals), not denied", cc: 0x15e, rsp: errorResponse(0x921), kind: "failed", why: "dictionary-attack lockout, which heals by itself" },
    { name: "TPM_RC_AUTH_FAIL on Load (a storage key with a password, no noDA) → failed, not denied (the slot is not given up)", cc: 0x157, rsp: errorResponse(0x98e), kind: "failed", why: "the storage key at 0x81000001 has a password" },
    { name: "TPM_RC_BAD_AUTH on Load (the same, with noDA) → failed", cc: 0x157, rsp: errorResponse(0x9a2), kind: "failed", why: "the storage key at 0x81000001 has a password" },
    { name: "TPM_RC_AUTH_FAIL on Unseal → still denied (control)", cc: 0x15e, rsp: errorResponse(0x98e), kind: "denied", why: "TPM_RC_AUTH_FAIL" },
  ])("$name", async ({ cc, rsp, kind, why }) => {
    const data = await hsm.seal(random(32), { pcrs: [0] });
    const inject = wrapped({ before: (cmd) => (ccOf(cmd) === cc ? rsp : undefined) });
    const r = await new Tpm2Hsm({ device: tpm.address, connect: inject }).unseal(data);
    expect(r).toMatchObject({ kind, why: expect.stringContaining(why) });
    noHandlesLeft(tpm);
  });

  test.each([
    { name: "StartAuthSession (unseal)", cc: 0x176, fresh: false },
    { name: "Load (unseal)", cc: 0x157, fresh: false },
    { name: "CreatePrimary (the first seal)", cc: 0x131, fresh: true },
  ])("a $name response that created a handle but does not parse → failed, the handle flushed", async ({ cc, fresh }) => {
    // Each run leaks one handle on a TPM without a resource manager unless zb flushes it; five would be noticed too.
    const t = fresh ? await startSwtpm() : tpm;
    try {
      const data = fresh ? undefined : await hsm.seal(random(32));
      const broken = new Tpm2Hsm({ device: t.address, connect: wrapped({ after: (c, r) => (ccOf(c) === cc ? trailingByte(r) : r) }) });
      if (data) expect(await broken.unseal(data)).toMatchObject({ kind: "failed", why: expect.stringContaining("1 trailing bytes") });
      else await expect(broken.seal(random(32))).rejects.toMatchObject({ code: "HSM_FAILED", message: expect.stringContaining("1 trailing bytes") });
      noHandlesLeft(t);
    } finally {
      if (fresh) await t.stop();
    }
  });
});

test("TPM_RC_RETRY to the first CreatePrimary (a fresh TPM making the storage key) is retried like any busy answer: the seal succeeds", async () => {
  const t = await startSwtpm();
  try {
    let answered = 0;
    const inject = wrapped({ before: (cmd) => (ccOf(cmd) === 0x131 && answered++ === 0 ? errorResponse(0x922) : undefined) });
    const waits: number[] = [];
    const secret = random(32);
    const data = await new Tpm2Hsm({ device: t.address, connect: inject, sleep: async (ms) => void waits.push(ms) }).seal(secret);
    expect([answered, waits]).toEqual([2, [50]]);
    expect(await new Tpm2Hsm({ device: t.address }).unseal(data)).toEqual({ kind: "ok", secret });
    noHandlesLeft(t);
  } finally {
    await t.stop();
  }
});

describe("another kind of key at 0x81000001: no-match, whatever its kind (names are compared first)", () => {
  let other: Swtpm;
  let data: SealedData;
  beforeAll(async () => {
    other = await startSwtpm();
    data = await new Tpm2Hsm({ device: other.address }).seal(random(32), { pcrs: [7] });
  });
  afterAll(async () => {
    await other?.stop();
  });

  const STORAGE = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt";
  const rows: { name: string; args: string[]; sealWhy: string }[] = [
    { name: "an ECC P-384 storage key with AES-256-CFB", args: ["-g", "sha256", "-G", "ecc384:aes256cfb", "-a", STORAGE], sealWhy: "its symmetric algorithm is not AES-128-CFB" },
    { name: "a P-256 storage key with AES-256-CFB", args: ["-g", "sha256", "-G", "ecc256:aes256cfb", "-a", STORAGE], sealWhy: "its symmetric algorithm is not AES-128-CFB" },
    { name: "an RSA-2048 signing key", args: ["-g", "sha256", "-G", "rsa2048", "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"], sealWhy: "it is not a restricted decryption (storage) key" },
    { name: "a P-256 AES-128-CFB storage key with nameAlg SHA-384", args: ["-g", "sha384", "-G", "ecc256:aes128cfb", "-a", STORAGE], sealWhy: "its nameAlg is not SHA-256" },
    { name: "a usable storage key, not the one sealed to (control)", args: ["-g", "sha256", "-G", "ecc256:aes128cfb", "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt"], sealWhy: "" },
  ];
  test.each(rows)("$name → unseal no-match; seal says why it cannot use it", async ({ args, sealWhy }) => {
    replaceSrk(other, args);
    const h = new Tpm2Hsm({ device: other.address, warn: () => undefined });
    expect(await h.unseal(data)).toMatchObject({ kind: "no-match", why: expect.stringContaining("0x81000001 is not the one sealed to") });
    if (sealWhy) {
      await expect(h.seal(random(32))).rejects.toMatchObject({ code: "HSM_FAILED", message: `cannot use the key at 0x81000001 as storage key: ${sealWhy}` });
      expect(await h.probe()).toMatchObject({ present: true, info: { srk: expect.stringContaining(sealWhy) } });
    }
    noHandlesLeft(other);
  });
});

describe("dictionary-attack lockout: failed (it heals), and seal warns about a storage key without noDA", () => {
  test("zb's own storage key has noDA: no warning", async () => {
    const warnings: string[] = [];
    await new Tpm2Hsm({ device: tpm.address, warn: (l) => warnings.push(l) }).seal(random(32));
    expect(warnings).toEqual([]);
  });

  test("a storage key without noDA: seal warns once; wrong passwords elsewhere lock the TPM out → unseal failed, ok again after the lockout is cleared", async () => {
    const t = await startSwtpm();
    try {
      replaceSrk(t, ["-g", "sha256", "-G", "ecc256:aes128cfb", "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt"]);
      const warnings: string[] = [];
      const h = new Tpm2Hsm({ device: t.address, warn: (l) => warnings.push(l) });
      const secret = random(32);
      const data = await h.seal(secret, { pcrs: [7] });
      expect(warnings).toEqual([expect.stringMatching(/^zb: warning: the storage key at 0x81000001 lacks the noDA attribute: .*dictionary-attack lockout/)]);
      expect(await h.unseal(data)).toEqual({ kind: "ok", secret });
      // Any process with TPM access: a DA-protected object under the same key, and wrong passwords for it.
      t.toolsOk(["tpm2_dictionarylockout", "-Q", "-s", "-n", "2", "-t", "600", "-l", "600"]);
      writeFileSync(join(t.stateDir, "k"), "x");
      t.toolsOk(["tpm2_create", "-Q", "-C", "0x81000001", "-p", "right", "-i", "k", "-u", "o.pub", "-r", "o.priv"]);
      t.toolsOk(["tpm2_load", "-Q", "-C", "0x81000001", "-u", "o.pub", "-r", "o.priv", "-c", "o.ctx"]);
      for (let i = 0; i < 3; i++) t.tools(["tpm2_unseal", "-c", "o.ctx", "-p", "wrong"]);
      t.tools(["tpm2_flushcontext", "-t"]);
      const locked = await h.unseal(data);
      expect(locked).toMatchObject({ kind: "failed", why: expect.stringMatching(/dictionary-attack lockout, which heals by itself: TPM2_Load returned 0x921 \(TPM_RC_LOCKOUT/) });
      await expect(h.seal(random(32))).rejects.toMatchObject({ code: "HSM_FAILED", message: expect.stringMatching(/^cannot seal with tpm2: the TPM is in dictionary-attack lockout/) });
      noHandlesLeft(t);
      t.toolsOk(["tpm2_dictionarylockout", "-Q", "-c"]);
      expect(await h.unseal(data)).toEqual({ kind: "ok", secret });
    } finally {
      await t.stop();
    }
  });
});

test("a TPM that is not started (TPM_RC_INITIALIZE): probe says present but not started; unseal failed, not absent", async () => {
  const data = await hsm.seal(random(32));
  const t = await startSwtpm();
  try {
    // swtpm's CMD_INIT on the control port: the TPM is reset and now waits for TPM2_Startup.
    const init = Bun.spawnSync(["swtpm_ioctl", "--tcp", `127.0.0.1:${t.port + 1}`, "-i"]);
    expect(init.exitCode).toBe(0);
    const h = new Tpm2Hsm({ device: t.address });
    expect(await h.probe()).toMatchObject({
      present: true,
      detail: expect.stringMatching(/is there but not started: it answers 0x100 \(TPM_RC_INITIALIZE.*until TPM2_Startup runs/),
      info: { address: t.address, started: false },
    });
    expect(await h.unseal(data)).toMatchObject({ kind: "failed", why: expect.stringContaining("TPM_RC_INITIALIZE") });
  } finally {
    await t.stop();
  }
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
