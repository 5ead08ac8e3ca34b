/**
 * lib/image/sign.ts: known-answer vectors (RFC 8032, RFC 6979), openssl golden
 * vectors (test/vectors/keys), the signatures codec as rows, the policy as rows,
 * the trust directory, and live openssl interop both ways for both algorithms
 * (openssl missing makes those fail, not skip).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ed25519 } from "@noble/curves/ed25519.js";
import { p256 } from "@noble/curves/nist.js";
import { sha512 } from "@noble/hashes/sha2.js";
import { ZbError } from "../../../lib/errors.ts";
import {
  decodePrivatePem,
  decodePublicPem,
  encodePrivatePem,
  encodePublicPem,
  generateKey,
  privateKeyFromSecret,
  type Alg,
  type PrivateKey,
  type PublicKey,
} from "../../../lib/image/keys.ts";
import {
  checkSignatures,
  decodeSignatures,
  encodeSignatures,
  keySigner,
  loadTrustDir,
  verifySignature,
  type Signature,
  type TrustStore,
} from "../../../lib/image/sign.ts";
import { HostSys } from "../../../lib/sys/sys.ts";

const VEC = join(import.meta.dir, "../../vectors/keys");
const vecText = (n: string) => readFileSync(join(VEC, n), "utf8");
const vecBytes = (n: string) => new Uint8Array(readFileSync(join(VEC, n)));
const hex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));
const toHex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const utf8 = (s: string) => new TextEncoder().encode(s);
const ALGS: Alg[] = ["ed25519", "p256"];

function flipBit(b: Uint8Array, at = b.length >> 1): Uint8Array {
  const c = b.slice();
  c[at]! ^= 0x01;
  return c;
}
function thrown(f: () => unknown): ZbError {
  try {
    f();
  } catch (e) {
    if (e instanceof ZbError) return e;
    throw e;
  }
  throw new Error("expected a ZbError, nothing was thrown");
}

/** Re-encode (r, s) as strict DER with noble (the encoding itself is tested against openssl). */
function der(r: bigint, s: bigint): Uint8Array {
  return new p256.Signature(r, s).toBytes("der");
}
const N = p256.Point.CURVE().n;

describe("known-answer vectors", () => {
  test("RFC 8032 §7.1 TEST 1 (empty message) and TEST 2 (one byte)", async () => {
    const rows = [
      {
        secret: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        msg: "",
        sig: "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
      },
      {
        secret: "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        msg: "72",
        sig: "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
      },
    ];
    for (const r of rows) {
      const key = privateKeyFromSecret("ed25519", hex(r.secret));
      const sig = await keySigner(key).sign(hex(r.msg));
      expect(toHex(sig.sig)).toBe(r.sig);
      expect(sig).toMatchObject({ alg: "ed25519", keyId: key.publicKey.id });
      expect(verifySignature(key.publicKey, hex(r.msg), sig)).toBe(true);
    }
  });

  test("RFC 6979 A.2.5 P-256/SHA-256 'sample': same r, and s normalized to low-S", async () => {
    const key = privateKeyFromSecret("p256", hex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721"));
    expect(toHex(key.publicKey.raw)).toBe(
      "04" + "60fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6" + "7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299",
    );
    const r = 0xefd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716n;
    const s = 0xf7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8n; // high: RFC 6979 does not normalize
    const sig = await keySigner(key).sign(utf8("sample"));
    expect(toHex(sig.sig)).toBe(toHex(der(r, N - s)));
    // The RFC's own high-S form verifies too (see the high-S decision in sign.ts).
    expect(verifySignature(key.publicKey, utf8("sample"), { ...sig, sig: der(r, s) })).toBe(true);
  });
});

describe("keySigner.close(): the private key is wiped once signing is done", () => {
  test.each(["ed25519", "p256"] as Alg[])("%s: signs before close, the secret is all zeros after", async (alg) => {
    const key = generateKey(alg);
    const signer = keySigner(key);
    const sig = await signer.sign(utf8("manifest"));
    expect(verifySignature(key.publicKey, utf8("manifest"), sig)).toBe(true);
    expect(key.secret.some((b) => b !== 0)).toBe(true);
    signer.close?.();
    expect(key.secret.length).toBe(32);
    expect(key.secret.every((b) => b === 0)).toBe(true);
  });
});

describe("golden vectors from openssl (no openssl at test time)", () => {
  const msg = vecBytes("msg.bin");
  const ed = decodePrivatePem(vecText("ed25519.key"), "ed25519.key");
  const ec = decodePublicPem(vecText("p256.pub"), "p256.pub");

  test("Ed25519 is deterministic: zb's signature is openssl's byte for byte", async () => {
    const sig = await keySigner(ed).sign(msg);
    expect(toHex(sig.sig)).toBe(toHex(vecBytes("ed25519.sig")));
  });

  const rows = [
    { name: "ed25519.sig", alg: "ed25519" as Alg },
    { name: "p256-low.sig", alg: "p256" as Alg },
    { name: "p256-high.sig", alg: "p256" as Alg },
  ];
  test.each(rows)("$name verifies, and not after a flipped bit in message or signature", ({ name, alg }) => {
    const pub = alg === "ed25519" ? ed.publicKey : ec;
    const sig: Signature = { alg, keyId: pub.id, sig: vecBytes(name) };
    expect(verifySignature(pub, msg, sig)).toBe(true);
    expect(verifySignature(pub, flipBit(msg), sig)).toBe(false);
    expect(verifySignature(pub, msg, { ...sig, sig: flipBit(sig.sig, sig.sig.length - 3) })).toBe(false);
  });

  test("the vectors really hold one low-S and one high-S signature", () => {
    expect(p256.Signature.fromBytes(vecBytes("p256-low.sig"), "der").hasHighS()).toBe(false);
    expect(p256.Signature.fromBytes(vecBytes("p256-high.sig"), "der").hasHighS()).toBe(true);
  });
});

const ED = generateKey("ed25519");
const EC = generateKey("p256");
const MSG = utf8('{"compatible":"pi4","version":"1"}');
const ED_SIG = await keySigner(ED).sign(MSG);
const EC_SIG = await keySigner(EC).sign(MSG);
const UNTRUSTED = generateKey("ed25519");
const UNTRUSTED_SIG = await keySigner(UNTRUSTED).sign(MSG);

describe("verifySignature never throws on bad bytes", () => {
  const [ed, ec, msg, edSig] = [ED, EC, MSG, ED_SIG.sig];
  const ecSig = p256.Signature.fromBytes(EC_SIG.sig, "der");
  const rows: { name: string; pub: PublicKey; sig: Signature; ok: boolean }[] = [
    { name: "ed25519 valid", pub: ed.publicKey, sig: { alg: "ed25519", keyId: "", sig: edSig }, ok: true },
    { name: "ed25519 63 bytes", pub: ed.publicKey, sig: { alg: "ed25519", keyId: "", sig: edSig.subarray(1) }, ok: false },
    { name: "ed25519 65 bytes", pub: ed.publicKey, sig: { alg: "ed25519", keyId: "", sig: Uint8Array.of(...edSig, 0) }, ok: false },
    { name: "ed25519 S ≥ L (non-canonical, RFC 8032 §5.1.7)", pub: ed.publicKey, sig: { alg: "ed25519", keyId: "", sig: Uint8Array.of(...edSig.subarray(0, 32), ...new Uint8Array(32).fill(0xff)) }, ok: false },
    { name: "ed25519 R not canonical (ZIP-215 would accept)", pub: ed.publicKey, sig: { alg: "ed25519", keyId: "", sig: nonCanonicalR(ed, msg) }, ok: false },
    { name: "ed25519 signature checked as p256", pub: ec.publicKey, sig: { alg: "ed25519", keyId: "", sig: edSig }, ok: false },
    { name: "p256 valid", pub: ec.publicKey, sig: { alg: "p256", keyId: "", sig: ecSig.toBytes("der") }, ok: true },
    { name: "p256 valid high-S", pub: ec.publicKey, sig: { alg: "p256", keyId: "", sig: der(ecSig.r, N - ecSig.s) }, ok: true },
    { name: "p256 compact (not DER)", pub: ec.publicKey, sig: { alg: "p256", keyId: "", sig: ecSig.toBytes("compact") }, ok: false },
    { name: "p256 DER with a trailing byte", pub: ec.publicKey, sig: { alg: "p256", keyId: "", sig: Uint8Array.of(...ecSig.toBytes("der"), 0) }, ok: false },
    { name: "p256 DER with a non-minimal integer", pub: ec.publicKey, sig: { alg: "p256", keyId: "", sig: nonMinimal(ecSig.r, ecSig.s) }, ok: false },
    { name: "p256 r = 0", pub: ec.publicKey, sig: { alg: "p256", keyId: "", sig: Uint8Array.of(0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01) }, ok: false },
    { name: "p256 s = n", pub: ec.publicKey, sig: { alg: "p256", keyId: "", sig: Uint8Array.of(0x30, 0x26, 0x02, 0x01, 0x01, 0x02, 0x21, 0x00, ...hex(N.toString(16))) }, ok: false },
    { name: "p256 empty", pub: ec.publicKey, sig: { alg: "p256", keyId: "", sig: new Uint8Array(0) }, ok: false },
    { name: "p256 73 bytes", pub: ec.publicKey, sig: { alg: "p256", keyId: "", sig: new Uint8Array(73).fill(0x30) }, ok: false },
    { name: "p256 signature checked as ed25519", pub: ed.publicKey, sig: { alg: "p256", keyId: "", sig: ecSig.toBytes("der") }, ok: false },
  ];
  test.each(rows)("$name → $ok", ({ pub, sig, ok }) => {
    expect(verifySignature(pub, msg, sig)).toBe(ok);
  });

  test("the non-canonical-R row is otherwise valid: noble with ZIP-215 accepts it", () => {
    expect(ed25519.verify(nonCanonicalR(ed, msg), msg, ed.publicKey.raw, { zip215: true })).toBe(true);
  });

  test("random bytes of every length up to 80 are false, never an exception", () => {
    for (const pub of [ed.publicKey, ec.publicKey]) {
      for (let n = 0; n <= 80; n++) {
        const sig = crypto.getRandomValues(new Uint8Array(n));
        if (n > 0) sig[0] = 0x30;
        expect(verifySignature(pub, msg, { alg: pub.alg, keyId: pub.id, sig })).toBe(false);
      }
    }
  });

  test("zb signs low-S, deterministically (RFC 6979)", async () => {
    for (let i = 0; i < 16; i++) {
      const m = utf8(`message ${i}`);
      const a = await keySigner(ec).sign(m);
      expect(p256.Signature.fromBytes(a.sig, "der").hasHighS()).toBe(false);
      expect(toHex((await keySigner(ec).sign(m)).sig)).toBe(toHex(a.sig));
    }
  });
});

/** The digit before "=" plus one: its unused low bits become non-zero (RFC 4648 §3.5). */
function bumpLastDigit(b64: string): string {
  const ABC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const at = b64.indexOf("=") - 1;
  if (at < 0) throw new Error("test setup: needs padding");
  return b64.slice(0, at) + ABC[ABC.indexOf(b64[at]!) + 1] + b64.slice(at + 1);
}
/**
 * An Ed25519 signature whose R is the identity encoded non-canonically as
 * y = p + 1 (RFC 8032 §5.1.3 requires y < p), with S = k·a so the equation
 * holds. ZIP-215 decoding accepts it; RFC 8032 strict decoding and openssl
 * (which re-encodes R and compares bytes) refuse it.
 */
function nonCanonicalR(key: PrivateKey, msg: Uint8Array): Uint8Array {
  const P = 2n ** 255n - 19n;
  const L = 2n ** 252n + 27742317777372353535851937790883648493n;
  const le = (v: bigint) => hex(v.toString(16).padStart(64, "0")).reverse();
  const R = le(P + 1n);
  const k = BigInt("0x" + toHex(sha512(Uint8Array.of(...R, ...key.publicKey.raw, ...msg)).reverse())) % L;
  const a = ed25519.utils.getExtendedPublicKey(key.secret).scalar;
  return Uint8Array.of(...R, ...le((k * a) % L));
}
function nonMinimal(r: bigint, s: bigint): Uint8Array {
  // Two leading zero octets are never minimal (X.690 §8.3.2), whatever the top bit.
  const int = (v: bigint) => Uint8Array.of(0x02, 34, 0x00, 0x00, ...hex(v.toString(16).padStart(64, "0")));
  const body = Uint8Array.of(...int(r), ...int(s));
  return Uint8Array.of(0x30, body.length, ...body);
}

describe("signatures codec", () => {
  const idA = "a".repeat(64);
  const idB = "0".repeat(63) + "1";
  const sig64 = new Uint8Array(64).fill(7);
  const sigs: Signature[] = [
    { alg: "ed25519", keyId: idA, sig: sig64 },
    { alg: "p256", keyId: idB, sig: Uint8Array.of(0x30, 6, 2, 1, 1, 2, 1, 1) },
  ];
  const canonical =
    `{"signatures":[{"alg":"p256","keyid":"${idB}","sig":"MAYCAQECAQE="},` + `{"alg":"ed25519","keyid":"${idA}","sig":"${Buffer.from(sig64).toString("base64")}"}]}`;

  test("encode: sorted by keyid, sorted keys, no whitespace, padded base64", () => {
    expect(new TextDecoder().decode(encodeSignatures(sigs))).toBe(canonical);
    expect(toHex(encodeSignatures([...sigs].reverse()))).toBe(toHex(encodeSignatures(sigs)));
  });

  test("decode(encode(x)) is x in keyid order; an empty list round-trips", () => {
    expect(decodeSignatures(encodeSignatures(sigs), { maxCount: 4 })).toEqual([sigs[1]!, sigs[0]!]);
    expect(decodeSignatures(utf8(`{"signatures":[]}`), { maxCount: 4 })).toEqual([]);
  });

  test.each([
    { name: "duplicate keyid", sigs: [sigs[0]!, { ...sigs[0]!, sig: new Uint8Array(64) }], why: /two signatures by key/ },
    { name: "uppercase keyid", sigs: [{ ...sigs[0]!, keyId: idA.toUpperCase() }], why: /bad key id/ },
  ])("encode refuses $name (INTERNAL)", ({ sigs, why }) => {
    const e = thrown(() => encodeSignatures(sigs));
    expect(e.code).toBe("INTERNAL");
    expect(e.message).toMatch(why);
  });

  const three: Signature[] = ["1", "2", "3"].map((d) => ({ alg: "p256", keyId: d.repeat(64), sig: sigs[1]!.sig }));
  const entry = (o: Record<string, unknown>) => JSON.stringify({ signatures: [{ alg: "ed25519", keyid: idA, sig: Buffer.from(sig64).toString("base64"), ...o }] });
  const rows: { name: string; text: string | Uint8Array; max?: number; why: RegExp }[] = [
    { name: "not JSON", text: "{signatures:[]}", why: /not UTF-8 JSON/ },
    { name: "not UTF-8", text: Uint8Array.of(0x7b, 0xff, 0x7d), why: /not UTF-8 JSON/ },
    { name: "a top-level array", text: "[]", why: /the document is not an object/ },
    { name: "an extra top-level key", text: `{"signatures":[],"x":1}`, why: /exactly the keys signatures; found signatures, x/ },
    { name: "signatures not an array", text: `{"signatures":{}}`, why: /"signatures" is not an array/ },
    { name: "an entry that is a string", text: `{"signatures":["x"]}`, why: /signature 0 is not an object/ },
    { name: "an extra entry key", text: entry({ comment: "x" }), why: /exactly the keys alg, keyid, sig; found alg, comment, keyid, sig/ },
    { name: "a missing entry key", text: `{"signatures":[{"alg":"ed25519","keyid":"${idA}"}]}`, why: /found alg, keyid$/ },
    { name: "unknown algorithm", text: entry({ alg: "rsa-pss" }), why: /unknown algorithm "rsa-pss"/ },
    { name: "algorithm in capitals", text: entry({ alg: "Ed25519" }), why: /unknown algorithm "Ed25519"/ },
    { name: "keyid uppercase", text: entry({ keyid: idA.toUpperCase() }), why: /keyid must be 64 lowercase hex/ },
    { name: "keyid short", text: entry({ keyid: "abc" }), why: /keyid must be 64 lowercase hex/ },
    { name: "keyid a number", text: entry({ keyid: 1 }), why: /keyid must be 64 lowercase hex/ },
    { name: "sig not base64", text: entry({ sig: "***" }), why: /sig is not base64/ },
    { name: "sig base64url", text: entry({ sig: "-_-_" }), why: /sig is not base64/ },
    { name: "sig unpadded", text: entry({ sig: Buffer.from(sig64).toString("base64").replace(/=+$/, "") }), why: /sig is not base64/ },
    { name: "sig with non-zero padding bits", text: entry({ sig: bumpLastDigit(Buffer.from(sig64).toString("base64")) }), why: /not canonical base64/ },
    { name: "ed25519 sig of 63 bytes", text: entry({ sig: Buffer.alloc(63).toString("base64") }), why: /Ed25519 signature is 64 bytes, got 63/ },
    { name: "p256 sig of 73 bytes", text: entry({ alg: "p256", sig: Buffer.alloc(73).toString("base64") }), why: /P-256 DER signature is 8\.\.72 bytes, got 73/ },
    { name: "p256 sig of 7 bytes", text: entry({ alg: "p256", sig: Buffer.alloc(7).toString("base64") }), why: /got 7/ },
    { name: "more entries than maxCount", text: encodeSignatures(three), max: 2, why: /3 signatures, more than the limit of 2/ },
    { name: "oversized input", text: `{"signatures":[]}` + " ".repeat(400), max: 1, why: /too large for 1 signatures/ },
    { name: "the same keyid twice", text: `{"signatures":[${entry({}).slice(15, -2)},${entry({}).slice(15, -2)}]}`, why: /signed twice/ },
    { name: "whitespace", text: canonical.replace(":[", ": ["), why: /not in canonical form/ },
    { name: "entries not sorted by keyid", text: new TextDecoder().decode(encodeSignatures(sigs)).replace(/\[(\{.*?\}),(\{.*\})\]/, "[$2,$1]"), why: /not in canonical form/ },
    { name: "entry keys not sorted", text: `{"signatures":[{"keyid":"${idA}","alg":"ed25519","sig":"${Buffer.from(sig64).toString("base64")}"}]}`, why: /not in canonical form/ },
    { name: "a JSON key twice", text: `{"signatures":[],"signatures":[]}`, why: /not in canonical form/ },
    { name: "a trailing newline", text: `{"signatures":[]}\n`, why: /not in canonical form/ },
  ];
  test.each(rows)("decode refuses $name (IMG_FORMAT)", ({ text, max, why }) => {
    const bytes = typeof text === "string" ? utf8(text) : text;
    const e = thrown(() => decodeSignatures(bytes, { maxCount: max ?? 8 }));
    expect(e.code).toBe("IMG_FORMAT");
    expect(e.message).toStartWith("cannot read image signatures: ");
    expect(e.message).toMatch(why);
  });
});

describe("policy: DISTINCT trusted keys with a valid signature", () => {
  const A = ED; // trusted ed25519
  const B = EC; // trusted p256
  const C = UNTRUSTED;
  const trust: TrustStore = {
    keys: new Map([A, B].map((k) => [k.publicKey.id, k.publicKey])),
    sources: new Map([[A.publicKey.id, "/trust/a.pem"], [B.publicKey.id, "/trust/b.pem"]]),
  };
  const sA = ED_SIG;
  const sB = EC_SIG;
  const sC = UNTRUSTED_SIG;
  const short = (k: PrivateKey) => `${k.publicKey.id.slice(0, 16)}…`;
  type Row = { name: string; sigs: Signature[]; required?: number; signers?: string[]; ignored?: [string, string][]; error?: RegExp };
  const rows: Row[] = [
    { name: "1 trusted valid → ok", sigs: [sA], signers: [A.publicKey.id], ignored: [] },
    { name: "no signatures → refused", sigs: [], error: /^cannot verify image signatures: found 0 of the 1 trusted signatures required \(the image has no signatures\)$/ },
    { name: "only an untrusted (valid) signature → refused", sigs: [sC], error: new RegExp(`found 0 of the 1 trusted signatures required \\(key ${short(C)} is not trusted\\)$`) },
    { name: "untrusted valid ignored next to a trusted one", sigs: [sC, sA], signers: [A.publicKey.id], ignored: [[C.publicKey.id, "untrusted"]] },
    { name: "2 required, one key signing twice → refused", sigs: [sA, sA], required: 2, error: new RegExp(`found 1 of the 2 trusted signatures required .*key ${short(A)} signed more than once`) },
    { name: "2 required, two keys → ok", sigs: [sB, sA], required: 2, signers: [B.publicKey.id, A.publicKey.id], ignored: [] },
    { name: "wrong alg for a trusted key id → invalid", sigs: [{ ...sB, keyId: A.publicKey.id }], error: new RegExp(`found 0 of the 1 .*signature by key ${short(A)} \\(/trust/a.pem\\) does not verify`) },
    { name: "right alg, other key's bytes → invalid", sigs: [{ ...sC, keyId: A.publicKey.id }], error: /found 0 of the 1 .*does not verify/ },
    { name: "flipped bit → invalid", sigs: [{ ...sB, sig: flipBit(sB.sig, sB.sig.length - 2) }], error: /found 0 of the 1 .*does not verify/ },
    { name: "an invalid one does not spoil a valid one", sigs: [{ ...sA, sig: flipBit(sA.sig) }, sA], signers: [A.publicKey.id], ignored: [[A.publicKey.id, "invalid"]] },
    { name: "valid + duplicate → ok, duplicate reported", sigs: [sA, sA], signers: [A.publicKey.id], ignored: [[A.publicKey.id, "duplicate"]] },
    { name: "3 required of 2 trusted keys → refused and says so", sigs: [sA, sB], required: 3, error: /found 2 of the 3 trusted signatures required \(only 2 key\(s\) are trusted\)/ },
  ];
  test.each(rows)("$name", ({ sigs, required, signers, ignored, error }) => {
    if (error) {
      const e = thrown(() => checkSignatures(MSG, sigs, trust, required));
      expect(e.code).toBe("SIG_INVALID");
      expect(e.message).toMatch(error);
      return;
    }
    const r = checkSignatures(MSG, sigs, trust, required);
    expect(r.trustedSigners).toEqual(signers!);
    expect(r.ignored.map((i) => [i.keyId, i.why])).toEqual(ignored!);
  });

  test("the signature covers the exact message bytes", () => {
    expect(thrown(() => checkSignatures(flipBit(MSG), [sA, sB], trust)).code).toBe("SIG_INVALID");
  });

  test.each([0, -1, 1.5, NaN])("required = %p is a bug (INTERNAL)", (required) => {
    expect(thrown(() => checkSignatures(MSG, [sA], trust, required)).code).toBe("INTERNAL");
  });
});

const work = mkdtempSync(join(tmpdir(), "zb-sign-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe("loadTrustDir", () => {
  const sys = new HostSys();
  let n = 0;
  function dir(files: Record<string, string>): string {
    const d = join(work, `trust${n++}`);
    mkdirSync(d);
    for (const [name, text] of Object.entries(files)) {
      if (text === "<dir>") mkdirSync(join(d, name));
      else if (text === "<dangling>") symlinkSync(join(d, "no-such-key.pem"), join(d, name));
      else if (text === "<fifo>") expect(Bun.spawnSync(["mkfifo", join(d, name)]).exitCode).toBe(0);
      else writeFileSync(join(d, name), text);
    }
    return d;
  }
  const pemA = encodePublicPem(ED.publicKey);
  const pemB = encodePublicPem(EC.publicKey);

  test("loads *.pem and *.pub; ignores other names, dot files and directories", () => {
    const d = dir({ "a.pem": pemA, "b.pub": pemB, "README": "not a key", ".c.pem.swp": "junk", ".hidden.pem": "junk", "sub.pem": "<dir>" });
    const t = loadTrustDir(sys, d);
    expect([...t.keys.keys()].sort()).toEqual([ED.publicKey.id, EC.publicKey.id].sort());
    expect(t.keys.get(EC.publicKey.id)).toEqual(EC.publicKey);
    expect(t.sources.get(ED.publicKey.id)).toBe(join(d, "a.pem"));
  });

  test("the same key in two files is one trusted key; the first file by name is its source", () => {
    const d = dir({ "2.pem": pemA, "1.pub": pemA });
    const t = loadTrustDir(sys, d);
    expect(t.keys.size).toBe(1);
    expect(t.sources.get(ED.publicKey.id)).toBe(join(d, "1.pub"));
  });

  const rows: { name: string; files?: Record<string, string>; path?: () => string; code: string; why: (d: string) => string | RegExp }[] = [
    { name: "a malformed file → KEY_INVALID naming it", files: { "a.pem": pemA, "bad.pem": pemA.replace("MCow", "MC*w") }, code: "KEY_INVALID", why: (d) => `cannot read key ${join(d, "bad.pem")}: PEM body is not valid base64` },
    { name: "a private key in the trust dir → KEY_INVALID with the fix", files: { "k.pem": encodePrivatePem(ED) }, code: "KEY_INVALID", why: () => /k\.pem: expected a public key.*-pubout/ },
    { name: "a dangling symlink named like a key → KEY_INVALID naming it (not skipped)", files: { "a.pem": pemA, "b.pub": "<dangling>" }, code: "KEY_INVALID", why: (d) => `cannot read key ${join(d, "b.pub")}: it does not exist (a symbolic link to nothing)` },
    { name: "a FIFO named like a key → KEY_INVALID naming it, without reading it (which would block)", files: { "a.pem": pemA, "b.pem": "<fifo>" }, code: "KEY_INVALID", why: (d) => `cannot read key ${join(d, "b.pem")}: it is not a regular file` },
    { name: "a device named like a key → KEY_INVALID", path: () => {
      const d = dir({ "a.pem": pemA });
      symlinkSync("/dev/zero", join(d, "z.pub"));
      return d;
    }, code: "KEY_INVALID", why: (d) => `cannot read key ${join(d, "z.pub")}: it is not a regular file` },
    { name: "an empty dir → SIG_INVALID", files: {}, code: "SIG_INVALID", why: (d) => `cannot load trusted keys: no trusted keys in ${d}` },
    { name: "only non-key files → SIG_INVALID", files: { "README": "x" }, code: "SIG_INVALID", why: () => /no trusted keys in/ },
    { name: "a missing dir → IO", path: () => join(work, "nope"), code: "IO", why: () => /no such directory/ },
    { name: "a file, not a dir → IO", path: () => join(VEC, "ed25519.pub"), code: "IO", why: () => /not a directory/ },
  ];
  test.each(rows)("$name", ({ files, path, code, why }) => {
    const d = path ? path() : dir(files!);
    const e = thrown(() => loadTrustDir(sys, d));
    expect(e.code).toBe(code as ZbError["code"]);
    const w = why(d);
    if (typeof w === "string") expect(e.message).toBe(w);
    else expect(e.message).toMatch(w);
  });

  test("one file that is not a public key fails the whole load (fail closed): KEY_INVALID naming the file and the reason, a hint naming the folder and the fix", () => {
    const x = EC.publicKey.raw.subarray(1, 33);
    const compressed = new Uint8Array([EC.publicKey.raw[64]! & 1 ? 3 : 2, ...x]);
    const spki = Buffer.concat([Buffer.from("3039301306072a8648ce3d020106082a8648ce3d030107032200", "hex"), compressed]);
    const pemOf = (label: string, der: Uint8Array) => `-----BEGIN ${label}-----\n${Buffer.from(der).toString("base64").replace(/.{64}/g, "$&\n")}\n-----END ${label}-----\n`;
    const bad = [
      { file: "b-compressed.pem", text: pemOf("PUBLIC KEY", spki), why: /compressed EC point/ },
      { file: "b-cert.pem", text: pemOf("CERTIFICATE", spki), why: /"CERTIFICATE"/ },
      { file: "b-private.pub", text: encodePrivatePem(EC), why: /expected a public key/ },
      { file: "b-junk.pub", text: "ssh-ed25519 AAAA… user@host\n", why: /not PEM/ },
    ];
    const got = bad.map((b) => {
      const d = dir({ "a.pem": pemA, [b.file]: b.text });
      const e = thrown(() => loadTrustDir(sys, d));
      return { file: b.file, code: e.code, names: e.message.startsWith(`cannot read key ${join(d, b.file)}: `), why: b.why.test(e.message), hint: e.hint?.includes(`every *.pem and *.pub file in ${d} must be one SPKI "PUBLIC KEY"`) && e.hint.includes(`fix or remove ${b.file}`) };
    });
    expect(got).toEqual(bad.map((b) => ({ file: b.file, code: "KEY_INVALID", names: true, why: true, hint: true })));
  });

  test("a Sys with listDir is used for the listing", () => {
    const d = dir({ "a.pem": pemA, "b.pem": pemB });
    const listed: string[] = [];
    const fake = Object.assign(new HostSys(), {
      listDir(p: string) {
        listed.push(p);
        return readdirSync(p).filter((f) => f !== "b.pem");
      },
    });
    expect([...loadTrustDir(fake, d).keys.keys()]).toEqual([ED.publicKey.id]);
    expect(listed).toEqual([d]);
  });
});

// ---- live openssl interop: both ways, both algorithms ----

/** Run openssl in the temp dir; returns the exit code (the caller asserts it). */
function openssl(...args: string[]): { code: number; out: Buffer; err: string } {
  const p = Bun.spawnSync(["openssl", ...args], { cwd: work, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode ?? -1, out: p.stdout, err: p.stderr.toString() };
}
function mustOpenssl(...args: string[]): Buffer {
  const r = openssl(...args);
  if (r.code !== 0) throw new Error(`openssl ${args.join(" ")}: exit ${r.code}: ${r.err}`);
  return r.out;
}
const put = (name: string, data: string | Uint8Array) => writeFileSync(join(work, name), data);
const get = (name: string) => new Uint8Array(readFileSync(join(work, name)));

/** openssl's verify command for a signature file: pkeyutl -rawin (RFC 8032) or dgst -sha256. */
function opensslVerify(alg: Alg, pub: string, msg: string, sig: string): number {
  return alg === "ed25519"
    ? openssl("pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", msg, "-sigfile", sig).code
    : openssl("dgst", "-sha256", "-verify", pub, "-signature", sig, msg).code;
}
function opensslSign(alg: Alg, key: string, msg: string, sig: string): void {
  if (alg === "ed25519") mustOpenssl("pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", msg, "-out", sig);
  else mustOpenssl("dgst", "-sha256", "-sign", key, "-out", sig, msg);
}
const GENPKEY: Record<Alg, string[]> = {
  ed25519: ["-algorithm", "ed25519"],
  p256: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
};

describe("openssl interop (live)", () => {
  const msg = utf8(`{"compatible":"pi4","payload":"${"ab".repeat(300)}"}`);

  test.each(ALGS)("%s: openssl key → zb signs → openssl verifies; a flipped message bit fails", async (alg) => {
    mustOpenssl("genpkey", ...GENPKEY[alg], "-out", `o-${alg}.key`);
    mustOpenssl("pkey", "-in", `o-${alg}.key`, "-pubout", "-out", `o-${alg}.pub`);
    const key = decodePrivatePem(readFileSync(join(work, `o-${alg}.key`), "utf8"), `o-${alg}.key`);
    const sig = await keySigner(key).sign(msg);
    put(`o-${alg}.msg`, msg);
    put(`o-${alg}.flip`, flipBit(msg));
    put(`o-${alg}.sig`, sig.sig);
    expect(opensslVerify(alg, `o-${alg}.pub`, `o-${alg}.msg`, `o-${alg}.sig`)).toBe(0);
    expect(opensslVerify(alg, `o-${alg}.pub`, `o-${alg}.flip`, `o-${alg}.sig`)).not.toBe(0);
    if (alg === "ed25519") {
      // RFC 8032 strictness agrees with openssl: a non-canonical R is refused by both.
      put("o-ed25519-ncr.sig", nonCanonicalR(key, msg));
      expect(opensslVerify(alg, "o-ed25519.pub", "o-ed25519.msg", "o-ed25519-ncr.sig")).not.toBe(0);
      expect(verifySignature(key.publicKey, msg, { ...sig, sig: get("o-ed25519-ncr.sig") })).toBe(false);
    }
    if (alg === "p256") {
      // And zb's signature made high-S by hand: openssl accepts that form as well.
      const s = p256.Signature.fromBytes(sig.sig, "der");
      put("o-p256-high.sig", der(s.r, N - s.s));
      expect(opensslVerify(alg, "o-p256.pub", "o-p256.msg", "o-p256-high.sig")).toBe(0);
    }
  });

  test.each(ALGS)("%s: zb key → openssl reads it and signs → zb verifies; a flipped bit fails", (alg) => {
    const key = generateKey(alg);
    put(`z-${alg}.key`, encodePrivatePem(key));
    put(`z-${alg}.msg`, msg);
    expect(mustOpenssl("pkey", "-in", `z-${alg}.key`, "-pubout").toString()).toBe(encodePublicPem(key.publicKey));
    const trust: TrustStore = { keys: new Map([[key.publicKey.id, key.publicKey]]), sources: new Map() };
    // openssl's ECDSA k is random: several signatures exercise both low-S and high-S.
    const rounds = alg === "p256" ? 8 : 1;
    for (let i = 0; i < rounds; i++) {
      opensslSign(alg, `z-${alg}.key`, `z-${alg}.msg`, `z-${alg}.sig`);
      const sig: Signature = { alg, keyId: key.publicKey.id, sig: get(`z-${alg}.sig`) };
      expect(verifySignature(key.publicKey, msg, sig)).toBe(true);
      expect(checkSignatures(msg, [sig], trust).trustedSigners).toEqual([key.publicKey.id]);
      expect(verifySignature(key.publicKey, flipBit(msg), sig)).toBe(false);
      expect(verifySignature(key.publicKey, msg, { ...sig, sig: flipBit(sig.sig, sig.sig.length - 1) })).toBe(false);
    }
  });

  test("a trust dir of openssl-written public keys verifies zb signatures by their key ids", async () => {
    const d = join(work, "trust-live");
    mkdirSync(d);
    const sigs: Signature[] = [];
    for (const alg of ALGS) {
      mustOpenssl("genpkey", ...GENPKEY[alg], "-out", `t-${alg}.key`);
      mustOpenssl("pkey", "-in", `t-${alg}.key`, "-pubout", "-out", join(d, `${alg}.pem`));
      sigs.push(await keySigner(decodePrivatePem(readFileSync(join(work, `t-${alg}.key`), "utf8"), alg)).sign(msg));
    }
    const trust = loadTrustDir(new HostSys(), d);
    const back = decodeSignatures(encodeSignatures(sigs), { maxCount: 4 });
    expect(checkSignatures(msg, back, trust, 2).trustedSigners.sort()).toEqual(sigs.map((s) => s.keyId).sort());
  });
});
