/**
 * Pkcs11Hsm against a real SoftHSM2 2.6 in a temp token directory, with
 * pkcs11-tool and openssl as the independent peers.
 *
 * Tokens: zb-a holds key pair "luks"/01 (generated on the token) and "imp"/02
 * (imported from an openssl key, so openssl can decrypt too); zb-b holds a
 * different "luks"/01; zb-cert holds "luks"/01 as private key + X.509
 * certificate only (the systemd-cryptenroll layout). Two tokens share the
 * label zb-twin (labels are not unique): the first in slot order has no
 * "luks" key, the second has; both have a "both"/03 (different keys) and the
 * same imported key "bak"/04 (a backup token).
 *
 * SoftHSM 2.6 implements CKM_RSA_PKCS_OAEP with SHA-1/MGF1-SHA-1 only (it
 * answers CKR_ARGUMENTS_BAD to SHA-256 parameters, to pkcs11-tool as to zb),
 * so on-token decryption is exercised here with SHA-1; the SHA-256 ciphertext
 * format is checked against openssl.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { isZbError } from "../../../../lib/errors.ts";
import { pinRetryable, Pkcs11Hsm, readPinFile, type Pkcs11Options } from "../../../../lib/hsm/pkcs11/index.ts";
import { CKR } from "../../../../lib/hsm/pkcs11/layout.ts";
import type { SealedData, UnsealResult } from "../../../../lib/hsm/types.ts";
import { randomSecret } from "../../../../lib/secret.ts";
import { runTool, setNativeEnv, SOFTHSM_MODULE, startSoftHsm, USER_PIN, type MadeToken, type SoftHsm } from "../../../peers/softhsm.ts";

let hsm: SoftHsm;
/** The two zb-twin tokens, in slot order. */
let twin: { first: MadeToken; second: MadeToken };
let pinCalls = 0;
const handedOut: Uint8Array[] = [];

beforeAll(() => {
  hsm = startSoftHsm();
  for (const t of ["zb-a", "zb-b", "zb-cert"]) hsm.initToken(t);
  hsm.keypair("zb-a", { id: "01", label: "luks" });
  hsm.keypair("zb-b", { id: "01", label: "luks" });
  hsm.keypair("zb-cert", { id: "01", label: "luks" });
  const f = (n: string) => join(hsm.dir, n);
  ok(runTool(["openssl", "genrsa", "-out", f("imp.pem"), "2048"]));
  ok(runTool(["openssl", "pkey", "-in", f("imp.pem"), "-outform", "DER", "-out", f("imp.der")]));
  ok(runTool(["openssl", "pkey", "-in", f("imp.pem"), "-pubout", "-outform", "DER", "-out", f("imp.pub.der")]));
  hsm.importKey("zb-a", { id: "02", label: "imp", privateDer: f("imp.der"), publicDer: f("imp.pub.der") });
  makeCertificateOnly(f);
  const [t1, t2] = [hsm.initToken("zb-twin"), hsm.initToken("zb-twin")];
  const order = hsm.slotOrder();
  twin = order.indexOf(t1.slot) < order.indexOf(t2.slot) ? { first: t1, second: t2 } : { first: t2, second: t1 };
  hsm.keypair({ slot: twin.second.slot }, { id: "01", label: "luks" });
  for (const t of [twin.first, twin.second]) {
    hsm.keypair({ slot: t.slot }, { id: "03", label: "both" });
    hsm.importKey({ slot: t.slot }, { id: "04", label: "bak", privateDer: f("imp.der"), publicDer: f("imp.pub.der") });
  }
});

afterAll(() => hsm?.close());

function ok(r: { code: number; err: string }): void {
  if (r.code !== 0) throw new Error(r.err);
}

/** zb-cert: replace the public-key object by a certificate carrying the same key (systemd needs one). */
function makeCertificateOnly(f: (n: string) => string): void {
  writeFileSync(f("cert-pub.der"), hsm.publicKeyDer("zb-cert", "01"));
  ok(runTool(["openssl", "pkey", "-pubin", "-inform", "DER", "-in", f("cert-pub.der"), "-out", f("cert-pub.pem")]));
  ok(runTool(["openssl", "genrsa", "-out", f("signer.pem"), "2048"]));
  ok(runTool(["openssl", "x509", "-new", "-subj", "/CN=zb", "-key", f("signer.pem"), "-force_pubkey", f("cert-pub.pem"),
    "-days", "3650", "-outform", "DER", "-out", f("cert.der")]));
  const login = ["--token-label", "zb-cert", "--login", "--pin", "env:ZB_TEST_PIN"];
  ok(hsm.tool([...login, "--write-object", f("cert.der"), "--type", "cert", "--id", "01", "--label", "luks"]));
  ok(hsm.tool([...login, "--delete-object", "--type", "pubkey", "--id", "01"]));
}

/** Option overrides; `undefined` removes a default. */
type Over = { [K in keyof Pkcs11Options]?: Pkcs11Options[K] | undefined };

/** A backend on the test SoftHSM; the PIN callback counts calls and keeps the buffers it hands out. */
function backend(over: Over = {}, pin = USER_PIN): Pkcs11Hsm {
  const opts: Record<string, unknown> = {
    module: hsm.module, token: "zb-a", keyLabel: "luks", keyId: "01",
    pin: async () => {
      pinCalls++;
      const b = new TextEncoder().encode(pin);
      handedOut.push(b);
      return b;
    },
    ...over,
  };
  for (const k of Object.keys(opts)) if (opts[k] === undefined) delete opts[k];
  return new Pkcs11Hsm(opts as unknown as Pkcs11Options);
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const secretOf = (r: UnsealResult) => (r.kind === "ok" ? hex(r.secret) : `${r.kind}: ${r.why}`);

describe("seal and unseal", () => {
  test("round trip; seal never asks for the PIN; the PIN buffer is wiped after C_Login", async () => {
    const secret = randomSecret(32);
    pinCalls = 0;
    const data = await backend().seal(secret);
    expect(pinCalls).toBe(0);
    const r = await backend().unseal(data);
    expect(secretOf(r)).toBe(hex(secret));
    expect(pinCalls).toBe(1);
    expect(handedOut.at(-1)!.every((b) => b === 0)).toBe(true);
  });

  test("sealed data: token, key, fingerprint = sha256 of pkcs11-tool's exported key, OAEP hash the token accepts", async () => {
    const data = await backend().seal(randomSecret(32));
    const spki = hsm.publicKeyDer("zb-a", "01");
    expect<Record<string, unknown>>({ ...data, ciphertext: Buffer.from(data.ciphertext as string, "base64").byteLength }).toEqual({
      mechanism: "rsa-oaep-sha1", // auto: SoftHSM 2.6's C_EncryptInit refuses SHA-256 OAEP parameters
      token: "zb-a", keyId: "01", keyLabel: "luks",
      pubkeySha256: createHash("sha256").update(spki).digest("base64"),
      ciphertext: 256,
    });
  });

  test.each<{ name: string; over: Over; token: string }>([
    { name: "no token label: the one token holding key imp", over: { token: undefined, keyLabel: "imp", keyId: undefined }, token: "zb-a" },
    { name: "by id only", over: { keyLabel: undefined, keyId: "02" }, token: "zb-a" },
    { name: "certificate instead of a public-key object", over: { token: "zb-cert", oaep: "sha1" }, token: "zb-cert" },
  ])("seal finds the key: $name", async ({ over, token }) => {
    const secret = randomSecret(32);
    const data = await backend(over).seal(secret);
    expect(data.token).toBe(token);
    expect(secretOf(await backend(over).unseal(data))).toBe(hex(secret));
  });

  test("a certificate-only key has no object to ask about OAEP: auto seals with SHA-256", async () => {
    const data = await backend({ token: "zb-cert" }).seal(randomSecret(32));
    expect(data.mechanism).toBe("rsa-oaep-sha256");
  });

  test.each<{ name: string; over: Over; code: string; why: string }>([
    { name: "module missing", over: { module: "/nonexistent/libp11.so" }, code: "HSM_ABSENT", why: "no such file" },
    { name: "token missing", over: { token: "zb-none" }, code: "HSM_ABSENT", why: 'no token labelled "zb-none"' },
    { name: "key missing", over: { keyLabel: "nokey" }, code: "HSM_NO_MATCH", why: 'no RSA public key or certificate with label "nokey", id 01 on token "zb-a"' },
    { name: "same key name on two tokens", over: { token: undefined }, code: "HSM_NO_MATCH", why: "name the token (pkcs11.token=)" },
    { name: "no key named", over: { keyLabel: undefined, keyId: undefined }, code: "CONFIG", why: "name the key" },
  ])("seal refuses: $name", async ({ over, code, why }) => {
    const err = await backend(over).seal(randomSecret(32)).catch((e: unknown) => e);
    expect(isZbError(err, code as "HSM_ABSENT")).toBe(true);
    expect((err as Error).message).toContain(why);
  });

  test("seal refuses a secret longer than OAEP-SHA1 carries under a 2048-bit key (214 bytes)", async () => {
    expect((await backend().seal(randomSecret(214))).token).toBe("zb-a");
    const err = await backend().seal(randomSecret(215)).catch((e: unknown) => e);
    expect(isZbError(err, "HSM_FAILED")).toBe(true);
    expect((err as Error).message).toContain("secret is 215 bytes, OAEP under this key takes at most 214");
  });
});

describe("unseal failure classes", () => {
  let sealed: SealedData;
  beforeAll(async () => {
    sealed = await backend().seal(randomSecret(32));
  });
  const flip = (b64: string) => {
    const b = Buffer.from(b64, "base64");
    b[100]! ^= 0x01;
    return b.toString("base64");
  };

  test.each([
    { name: "wrong PIN", over: {}, pin: "9999", edit: {}, kind: "denied", why: "C_Login returned CKR_PIN_INCORRECT", pins: 1 },
    { name: "module missing", over: { module: "/nonexistent/libp11.so" }, edit: {}, kind: "absent", why: "no such file", pins: 0 },
    { name: "not a PKCS#11 module", over: { module: SOFTHSM_MODULE.replace("softhsm/libsofthsm2.so", "libc.so.6") }, edit: {}, kind: "absent", why: "cannot load PKCS#11 module", pins: 0 },
    { name: "token label not present", over: {}, edit: { token: "zb-later" }, kind: "absent", why: 'no token labelled "zb-later"', pins: 0 },
    { name: "key label not on the token: no key to check, so no login", over: {}, edit: { keyLabel: "gone" }, kind: "no-match", why: 'token "zb-a": no RSA public key or certificate with label "gone", id 01 to check before login', pins: 0 },
    { name: "another token's key of the same name", over: {}, edit: { token: "zb-b" }, kind: "no-match", why: "is not the key the secret was sealed to", pins: 0 },
    { name: "corrupted ciphertext", over: {}, edit: "flip", kind: "failed", why: "C_Decrypt returned CKR_", pins: 1 },
    { name: "truncated ciphertext", over: {}, edit: "truncate", kind: "failed", why: "ciphertext is 255 bytes, the key's modulus 256", pins: 0 },
    { name: "malformed sealed data", over: {}, edit: { pcrs: "7" }, kind: "failed", why: 'unknown field "pcrs"', pins: 0 },
  ])("$name → $kind", async ({ over, pin, edit, kind, why, pins }) => {
    const data: SealedData = { ...sealed };
    if (edit === "flip") data.ciphertext = flip(sealed.ciphertext as string);
    else if (edit === "truncate") data.ciphertext = Buffer.from(sealed.ciphertext as string, "base64").subarray(1).toString("base64");
    else Object.assign(data, edit);
    pinCalls = 0;
    const r = await backend(over, pin).unseal(data);
    expect(r.kind).toBe(kind as UnsealResult["kind"]);
    expect(r.kind === "ok" ? "" : r.why).toContain(why);
    expect(pinCalls).toBe(pins);
  });

  test.each([
    { typed: ["12", "9999", USER_PIN], attempts: 3, kind: "ok", calls: 3 },
    { typed: ["9999", "9998", "9997", USER_PIN], attempts: 3, kind: "denied", calls: 3 },
    { typed: ["9999", USER_PIN], attempts: undefined, kind: "denied", calls: 1 },
  ])("PINs $typed with pinAttempts $attempts → $kind after $calls", async ({ typed, attempts, kind, calls }) => {
    pinCalls = 0;
    const given: Uint8Array[] = [];
    const b = backend({
      pinAttempts: attempts,
      pin: async () => {
        pinCalls++;
        const p = new TextEncoder().encode(typed[Math.min(pinCalls, typed.length) - 1]!);
        given.push(p);
        return p;
      },
    });
    const r = await b.unseal(sealed);
    expect(r.kind).toBe(kind as UnsealResult["kind"]);
    expect(pinCalls).toBe(calls);
    for (const p of given) expect(p.every((x) => x === 0)).toBe(true); // every PIN wiped, the wrong ones too
  });

  test("C_Initialize failing (SOFTHSM2_CONF names a missing file) → absent, and the module recovers", async () => {
    setNativeEnv("SOFTHSM2_CONF", join(hsm.dir, "missing.conf"));
    let r: UnsealResult;
    try {
      r = await backend().unseal(sealed);
    } finally {
      setNativeEnv("SOFTHSM2_CONF", hsm.conf);
    }
    expect(r.kind === "ok" ? "ok" : `${r.kind}: ${r.why}`).toMatch(/^absent: .*C_Initialize returned CKR_GENERAL_ERROR/);
    expect((await backend().unseal(sealed)).kind).toBe("ok");
  });

  test("a PIN callback that throws → failed, with its message", async () => {
    const b = new Pkcs11Hsm({ module: hsm.module, keyLabel: "luks", pin: () => Promise.reject(new Error("no tty")) });
    expect(await b.unseal(sealed)).toEqual({ kind: "failed", why: "cannot get the token PIN: no tty" });
  });

  test("a PIN file with a loose mode: unseal throws readPinFile's CONFIG error (exit 8), not HSM_FAILED", async () => {
    const file = join(hsm.dir, "pin-0644");
    writeFileSync(file, `${USER_PIN}\n`, { mode: 0o644 });
    chmodSync(file, 0o644);
    const b = new Pkcs11Hsm({ module: hsm.module, keyLabel: "luks", pin: async () => readPinFile(file) });
    const e = await b.unseal(sealed).then((r) => r, (x: unknown) => x);
    expect(isZbError(e, "CONFIG")).toBe(true);
    expect([(e as Error).message, (e as { hint?: string }).hint]).toEqual([`cannot use PIN file ${file}: it is readable by group or others (mode 0644)`, `run: chmod 600 ${file}`]);
  });
});

describe("tokens sharing a label (a backup token, a stranger's USB token)", () => {
  const sealWith = async (over: Over) => {
    const secret = randomSecret(32);
    return { secret, data: await backend(over).seal(secret) };
  };
  type Row = { name: string; before: () => Promise<{ secret: Uint8Array | null; data: SealedData }>; serial?: () => string; after: { result: string; pins: number; warned: RegExp | null } };
  const rows: Row[] = [
    {
      name: "the first token has no key under the label: the PIN goes to the second, which holds it",
      before: () => sealWith({ token: "zb-twin" }),
      after: { result: "ok", pins: 1, warned: null },
    },
    {
      name: "both have a key of that name, different ones; sealed to the second (by serial): the fingerprint picks it",
      before: () => sealWith({ token: "zb-twin", keyLabel: "both", keyId: "03", tokenSerial: twin.second.serial }),
      after: { result: "ok", pins: 1, warned: null },
    },
    {
      name: "both hold the same key (a backup): either decrypts; the first is used, with a warning",
      before: () => sealWith({ token: "zb-twin", keyLabel: "bak", keyId: "04", tokenSerial: twin.second.serial }),
      after: { result: "ok", pins: 1, warned: /^zb: 2 tokens labelled "zb-twin" \(serials .*\) show the key the secret was sealed to; using serial "/ },
    },
    {
      name: "both hold the same key, pkcs11.token-serial= names the second: only it is looked at, no warning",
      before: () => sealWith({ token: "zb-twin", keyLabel: "bak", keyId: "04", tokenSerial: twin.second.serial }),
      serial: () => twin.second.serial,
      after: { result: "ok", pins: 1, warned: null },
    },
    {
      name: "pkcs11.token-serial= names a token that is not there: absent, and no PIN asked for (not even of the twin holding the key)",
      before: () => sealWith({ token: "zb-twin", keyLabel: "bak", keyId: "04", tokenSerial: twin.second.serial }),
      serial: () => "0000000000000000",
      after: { result: 'absent: no token labelled "zb-twin" with serial "0000000000000000"', pins: 0, warned: null },
    },
    {
      name: "neither holds the key sealed to: no-match, and no PIN asked for",
      before: async () => ({ secret: null, data: { ...(await sealWith({})).data, token: "zb-twin" } }),
      after: { result: 'no-match: none of the 2 tokens labelled "zb-twin" holds the key the secret was sealed to', pins: 0, warned: null },
    },
    {
      name: "no fingerprint in the sealed data (imported): the tokens cannot be told apart, no PIN asked for",
      before: async () => {
        const { pubkeySha256: _, ...data } = (await sealWith({ token: "zb-twin" })).data;
        return { secret: null, data };
      },
      after: { result: 'no-match: 2 tokens are labelled "zb-twin" and the sealed data has no key fingerprint (pubkeySha256) to tell them apart', pins: 0, warned: null },
    },
  ];
  test.each(rows)("$name", async ({ before, serial, after }) => {
    const { secret, data } = await before();
    const warnings: string[] = [];
    pinCalls = 0;
    const r = await backend({ token: undefined, tokenSerial: serial?.(), warn: (l) => void warnings.push(l) }).unseal(data);
    expect(r.kind === "ok" ? (secret && hex(r.secret) === hex(secret) ? "ok" : "wrong secret") : `${r.kind}: ${r.why}`).toStartWith(after.result);
    expect(pinCalls).toBe(after.pins);
    if (after.warned) expect(warnings).toEqual([expect.stringMatching(after.warned)]);
    else expect(warnings).toEqual([]);
  });

  test.each<{ name: string; over: () => Over; code: string; why: () => string }>([
    {
      name: "a key of that name on both, no serial given: refused, naming both serials",
      over: () => ({ token: "zb-twin", keyLabel: "both", keyId: "03" }),
      code: "HSM_NO_MATCH",
      why: () => `is on tokens "zb-twin" (serial "${twin.first.serial}"), "zb-twin" (serial "${twin.second.serial}"); name the token (pkcs11.token-serial=)`,
    },
    { name: "a serial no token has", over: () => ({ token: "zb-twin", tokenSerial: "0000000000000000" }), code: "HSM_ABSENT", why: () => 'no token labelled "zb-twin" with serial "0000000000000000"' },
  ])("seal refuses: $name", async ({ over, code, why }) => {
    const err = await backend(over()).seal(randomSecret(32)).catch((e: unknown) => e);
    expect(isZbError(err, code as "HSM_ABSENT")).toBe(true);
    expect((err as Error).message).toContain(why());
  });

  test("seal by serial alone (no label) picks that token; probe shows it and counts the other", async () => {
    const data = await backend({ token: undefined, tokenSerial: twin.first.serial, keyLabel: "both", keyId: "03" }).seal(randomSecret(32));
    expect(data.token).toBe("zb-twin");
    const p = await backend({ token: "zb-twin", tokenSerial: undefined }).probe();
    expect(p.detail).toContain(`token "zb-twin" (SoftHSM v2, serial ${twin.first.serial}) and 1 more with this label (pkcs11.token-serial= chooses one)`);
    expect((await backend({ token: "zb-twin", tokenSerial: twin.second.serial }).probe()).info?.serial).toBe(twin.second.serial);
  });
});

describe("probe (no login)", () => {
  test("module and token facts agree with pkcs11-tool -I / -L", async () => {
    const p = await backend().probe();
    const listing = hsm.tool(["-L"]).out.toString();
    const serial = /token label\s+: zb-a\n(?:.*\n)*?\s+serial num\s+: (\S+)/.exec(listing)?.[1];
    const about = hsm.tool(["-I"]).out.toString();
    expect(p.present).toBe(true);
    expect(p.info).toMatchObject({ token: "zb-a", model: "SoftHSM v2", serial: serial!, key: true, cryptokiVersion: "2.40" });
    expect(about).toContain(`Manufacturer     ${p.info!.manufacturer}`);
    expect(about).toContain(`Library          ${p.info!.library} (ver ${p.info!.libraryVersion})`);
    expect(p.detail).toBe(`Implementation of PKCS11 2.6 (SoftHSM): token "zb-a" (SoftHSM v2, serial ${serial}), key label "luks", id 01`);
  });

  test.each([
    { name: "module missing", over: { module: "/nonexistent/libp11.so" }, present: false, detail: "cannot load PKCS#11 module /nonexistent/libp11.so: no such file" },
    { name: "token missing", over: { token: "zb-later" }, present: false, detail: 'Implementation of PKCS11 2.6 (SoftHSM): no token labelled "zb-later"' },
    { name: "key missing", over: { keyLabel: "nokey" }, present: true, detail: 'no public key label "nokey", id 01' },
  ])("$name → present $present", async ({ over, present, detail }) => {
    const p = await backend(over).probe();
    expect(p.present).toBe(present);
    expect(p.detail).toContain(detail);
  });
});

describe("interop with openssl and pkcs11-tool", () => {
  const f = (n: string) => join(hsm.dir, n);
  const encrypt = (pub: string, opts: readonly string[], secret: Uint8Array) => {
    const r = runTool(["openssl", "pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey", pub, ...opts], secret);
    ok(r);
    return r.out.toString("base64");
  };
  const OAEP1 = ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha1", "-pkeyopt", "rsa_mgf1_md:sha1"];
  const OAEP256 = ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256"];
  const fp = () => createHash("sha256").update(hsm.publicKeyDer("zb-a", "01")).digest("base64");
  const imported = (mechanism: string, ciphertext: string): SealedData => ({ mechanism, token: "zb-a", keyId: "01", keyLabel: "luks", pubkeySha256: fp(), ciphertext });

  test.each([
    { name: "OAEP SHA-1", opts: OAEP1, mechanism: "rsa-oaep-sha1" },
    { name: "PKCS#1 v1.5 (systemd-cryptenroll's pkcs11-key)", opts: ["-pkeyopt", "rsa_padding_mode:pkcs1"], mechanism: "rsa-pkcs1" },
  ])("openssl pkeyutl $name to pkcs11-tool's exported key → zb unseals", async ({ opts, mechanism }) => {
    writeFileSync(f("a01.der"), hsm.publicKeyDer("zb-a", "01"));
    const secret = randomSecret(32);
    const r = await backend().unseal(imported(mechanism, encrypt(f("a01.der"), opts, secret)));
    expect(secretOf(r)).toBe(hex(secret));
  });

  test("zb's ciphertext → pkcs11-tool --decrypt -m RSA-PKCS-OAEP --hash-algorithm SHA-1 --mgf MGF1-SHA1", async () => {
    const secret = randomSecret(32);
    const data = await backend().seal(secret);
    expect(data.mechanism).toBe("rsa-oaep-sha1");
    writeFileSync(f("zb.ct"), Buffer.from(data.ciphertext as string, "base64"));
    const r = hsm.tool(["--token-label", "zb-a", "--login", "--pin", "env:ZB_TEST_PIN", "--decrypt", "-m", "RSA-PKCS-OAEP",
      "--hash-algorithm", "SHA-1", "--mgf", "MGF1-SHA1", "--id", "01", "-i", f("zb.ct"), "-o", f("zb.pt")]);
    ok(r);
    expect(hex(readFileSync(f("zb.pt")))).toBe(hex(secret));
  });

  test("zb's OAEP-SHA256 ciphertext (imported key) → openssl pkeyutl -decrypt with the same key", async () => {
    const secret = randomSecret(32);
    const data = await backend({ keyLabel: "imp", keyId: "02", oaep: "sha256" }).seal(secret);
    expect(data.mechanism).toBe("rsa-oaep-sha256");
    const r = runTool(["openssl", "pkeyutl", "-decrypt", "-inkey", f("imp.pem"), ...OAEP256], Buffer.from(data.ciphertext as string, "base64"));
    ok(r);
    expect(hex(r.out)).toBe(hex(secret));
  });

  test("OAEP-SHA256 on SoftHSM 2.6: zb and pkcs11-tool both get CKR_ARGUMENTS_BAD from C_DecryptInit", async () => {
    writeFileSync(f("a01.der"), hsm.publicKeyDer("zb-a", "01"));
    const ct = encrypt(f("a01.der"), OAEP256, randomSecret(32));
    const r = await backend().unseal(imported("rsa-oaep-sha256", ct));
    expect(secretOf(r)).toBe("failed: cannot start decryption on the token: C_DecryptInit returned CKR_ARGUMENTS_BAD (0x7)");
    writeFileSync(f("o256.ct"), Buffer.from(ct, "base64"));
    const t = hsm.tool(["--token-label", "zb-a", "--login", "--pin", "env:ZB_TEST_PIN", "--decrypt", "-m", "RSA-PKCS-OAEP",
      "--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256", "--id", "01", "-i", f("o256.ct"), "-o", f("o256.pt")]);
    expect(t.code).not.toBe(0);
    expect(t.err).toContain("C_DecryptInit failed: rv = CKR_ARGUMENTS_BAD (0x7)");
  });
});

describe("one backend, many unseals", () => {
  test("20 unseals in a row with the same backend object: every one returns the secret (no session or login left behind)", async () => {
    const secret = randomSecret(32);
    const data = await backend().seal(secret);
    const b = backend();
    const got: string[] = [];
    for (let i = 0; i < 20; i++) got.push(secretOf(await b.unseal(data)));
    expect(got).toEqual(Array(20).fill(hex(secret)));
  });
});

test.each([
  { rv: "PIN_INCORRECT", flags: 0, again: true },
  { rv: "PIN_LEN_RANGE", flags: 0, again: true },
  { rv: "PIN_INVALID", flags: null, again: true },
  { rv: "PIN_INCORRECT", flags: 0x20000, again: false }, // CKF_USER_PIN_FINAL_TRY: the next wrong one locks the token
  { rv: "PIN_LOCKED", flags: 0, again: false },
  { rv: "PIN_EXPIRED", flags: 0, again: false },
  { rv: "DEVICE_ERROR", flags: 0, again: false },
])("pinRetryable($rv, flags $flags) → $again", ({ rv, flags, again }) => {
  expect(pinRetryable(CKR[rv]!, flags)).toBe(again);
});
