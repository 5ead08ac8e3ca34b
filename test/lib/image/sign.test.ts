/**
 * lib/image/sign.ts, the signatures themselves: known-answer vectors (RFC
 * 8032, RFC 6979), openssl golden vectors (test/vectors/keys), the wipe of
 * the key after signing, verifySignature on bad bytes as rows, and live
 * openssl interop both ways for both algorithms (openssl missing makes those
 * fail, not skip). The signatures codec, the policy and the trust directory:
 * sign-policy.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ed25519 } from "@noble/curves/ed25519.js";
import { p256 } from "@noble/curves/nist.js";
import { sha512 } from "@noble/hashes/sha2.js";
import { decodePrivatePem, decodePublicPem, encodePrivatePem, encodePublicPem, generateKey, privateKeyFromSecret, type Alg, type PrivateKey, type PublicKey } from "../../../lib/image/keys.ts";
import { checkSignatures, decodeSignatures, encodeSignatures, keySigner, loadTrustDir, verifySignature, type Signature, type TrustStore } from "../../../lib/image/sign.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { tempDirs } from "../../tempdirs.ts";
import { EC, EC_SIG, ED, ED_SIG, flipBit, hex, MSG, toHex, utf8, VEC } from "./sign-fixture.ts";

const vecText = (n: string) => readFileSync(join(VEC, n), "utf8");
const vecBytes = (n: string) => new Uint8Array(readFileSync(join(VEC, n)));
const ALGS: Alg[] = ["ed25519", "p256"];
const work = tempDirs("zb-sign-")();

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
