/**
 * lib/image/keys.ts (and der.ts, pem.ts under it): DER/PEM round trips,
 * every rejection as a row, fixed vectors (RFC 8032, RFC 8410, and
 * test/vectors/keys/ made by openssl with gen.sh), and live interop with the
 * real openssl in a temp dir, both ways.
 * openssl missing makes the live tests fail, not skip.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ZbError } from "../../../lib/errors.ts";
import {
  decodePrivatePem,
  decodePublicPem,
  encodePrivatePem,
  encodePublicPem,
  generateKey,
  keyId,
  privateKeyFromSecret,
  publicKeyFromRaw,
  spkiDer,
  type Alg,
} from "../../../lib/image/keys.ts";

const VEC = join(import.meta.dir, "../../vectors/keys");
const vec = (name: string) => readFileSync(join(VEC, name), "utf8");
const hex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));
const toHex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const ALGS: Alg[] = ["ed25519", "p256"];

/** A DER TLV, for hand-built rejection rows (lengths < 65536). */
function tlv(tag: number, ...parts: Uint8Array[]): Uint8Array {
  const body = Buffer.concat(parts);
  const n = body.length;
  const len = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return new Uint8Array(Buffer.concat([Uint8Array.of(tag, ...len), body]));
}
function pemOf(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString("base64").replace(/.{64}/g, "$&\n").replace(/\n$/, "");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}
function derOf(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text.replace(/-----[^-]+-----/g, "").replace(/\s/g, ""), "base64"));
}

/** Set an unused low bit of the last base64 digit before "=": same bytes, other text. */
function nonCanonical(pem: string): string {
  const ABC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const at = pem.indexOf("=") - 1;
  const v = ABC.indexOf(pem[at]!);
  if (at < 0 || v % 2 !== 0) throw new Error("test setup: expected one '=' and a canonical last digit");
  return pem.slice(0, at) + ABC[v + 1] + pem.slice(at + 1);
}

const ED_ALG = tlv(0x30, tlv(0x06, hex("2b6570")));
const EC_ALG = tlv(0x30, tlv(0x06, hex("2a8648ce3d0201")), tlv(0x06, hex("2a8648ce3d030107")));
const P256_OID = tlv(0x06, hex("2a8648ce3d030107"));
const P384_OID = tlv(0x06, hex("2b81040022"));
const N = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551"); // P-256 order (FIPS 186-4 D.1.2.3)
const bits = (b: Uint8Array) => tlv(0x03, Uint8Array.of(0), b);
const int = (v: number) => tlv(0x02, Uint8Array.of(v));

// RFC 8032 §7.1 TEST 1 and RFC 8410 §10.1/§10.3 (the same key pair as each other's example).
const RFC8032_T1 = {
  secret: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
  pub: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
};
const RFC8410_PRIV = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
const RFC8410_PUB = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
const RFC8410_V1_ATTRS =
  "-----BEGIN PRIVATE KEY-----\nMHICAQEwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n" +
  "oB8wHQYKKoZIhvcNAQkJFDEPDA1DdXJkbGUgQ2hhaXJzgSEAGb9ECWmEzf6FQbrB\nZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PRIVATE KEY-----\n";

describe("fixed encodings", () => {
  test("RFC 8032 TEST 1: the public key of the secret", () => {
    const k = privateKeyFromSecret("ed25519", hex(RFC8032_T1.secret));
    expect(toHex(k.publicKey.raw)).toBe(RFC8032_T1.pub);
    // RFC 8410 §4: the SPKI is a fixed 12-byte prefix and the key.
    expect(toHex(spkiDer(k.publicKey))).toBe("302a300506032b6570032100" + RFC8032_T1.pub);
  });

  test("RFC 8410 §10.1 / §10.3 examples decode, match, and re-encode byte for byte", () => {
    const priv = decodePrivatePem(RFC8410_PRIV, "rfc8410.key");
    const pub = decodePublicPem(RFC8410_PUB, "rfc8410.pub");
    expect(priv.publicKey).toEqual(pub);
    expect(encodePrivatePem(priv)).toBe(RFC8410_PRIV);
    expect(encodePublicPem(pub)).toBe(RFC8410_PUB);
  });

  test("P-256 SPKI is the RFC 5480 prefix and the uncompressed point", () => {
    const k = generateKey("p256");
    expect(toHex(spkiDer(k.publicKey))).toBe("3059301306072a8648ce3d020106082a8648ce3d030107034200" + toHex(k.publicKey.raw));
  });

  test.each(ALGS)("%s: keyId is SHA-256 of the SPKI DER, lowercase hex", (alg) => {
    const pub = generateKey(alg).publicKey;
    const want = new Bun.CryptoHasher("sha256").update(spkiDer(pub)).digest("hex");
    expect(keyId(pub)).toBe(want);
    expect(pub.id).toBe(want);
    expect(pub.id).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe("round trips", () => {
  test.each(ALGS)("%s: generate → PEM → decode gives the same key", (alg) => {
    const k = generateKey(alg);
    expect(k.secret.length).toBe(32);
    expect(k.publicKey.raw.length).toBe(alg === "ed25519" ? 32 : 65);
    const pub = decodePublicPem(encodePublicPem(k.publicKey), "x.pub");
    expect(pub).toEqual(k.publicKey);
    const priv = decodePrivatePem(encodePrivatePem(k), "x.key");
    expect(toHex(priv.secret)).toBe(toHex(k.secret));
    expect(priv.publicKey).toEqual(k.publicKey);
    expect(Buffer.isBuffer(priv.secret)).toBe(false); // a Buffer view would alias the wiped DER
  });

  test.each(ALGS)("%s: two generated keys differ", (alg) => {
    expect(generateKey(alg).publicKey.id).not.toBe(generateKey(alg).publicKey.id);
  });

  test("PEM lines are 64 characters and CRLF input is accepted", () => {
    const text = encodePrivatePem(generateKey("p256"));
    const lines = text.trimEnd().split("\n");
    expect(lines.slice(1, -2).every((l) => l.length === 64)).toBe(true);
    expect(decodePrivatePem(text.replace(/\n/g, "\r\n"), "crlf.key").alg).toBe("p256");
  });

  test("text around the block is ignored (RFC 7468 §2)", () => {
    const pub = generateKey("ed25519").publicKey;
    expect(decodePublicPem(`release key\n${encodePublicPem(pub)}\ntrailing words\n`, "t.pub")).toEqual(pub);
  });

  test("publicKeyFromRaw copies and validates", () => {
    const raw = generateKey("p256").publicKey.raw;
    const pub = publicKeyFromRaw("p256", raw);
    raw[1]! ^= 1;
    expect(pub.raw).not.toEqual(raw);
  });
});

describe("golden vectors from openssl (test/vectors/keys, no openssl at test time)", () => {
  const ids = new Map(vec("ids.txt").trim().split("\n").map((l) => l.split(" ") as [string, string]));
  const rows = [
    { key: "ed25519.key", pub: "ed25519.pub", alg: "ed25519", sameText: true },
    { key: "p256.key", pub: "p256.pub", alg: "p256", sameText: true },
    { key: "p256-sec1.key", pub: "p256.pub", alg: "p256", sameText: false },
    { key: "p256-ecparam.key", pub: "p256-ecparam.pub", alg: "p256", sameText: false },
  ];
  test.each(rows)("$key", ({ key, pub, alg, sameText }) => {
    const k = decodePrivatePem(vec(key), key);
    const p = decodePublicPem(vec(pub), pub);
    expect(k.alg).toBe(alg as Alg);
    expect(k.publicKey).toEqual(p);
    expect(p.id).toBe(ids.get(pub)!);
    expect(encodePublicPem(p)).toBe(vec(pub));
    // zb writes PKCS#8 exactly as openssl genpkey does; SEC1 inputs become PKCS#8.
    if (sameText) expect(encodePrivatePem(k)).toBe(vec(key));
    else expect(decodePrivatePem(encodePrivatePem(k), "re.key")).toEqual(k);
  });

  test("the SEC1 file holds the same key as the PKCS#8 one", () => {
    expect(toHex(decodePrivatePem(vec("p256-sec1.key"), "s").secret)).toBe(toHex(decodePrivatePem(vec("p256.key"), "p").secret));
  });
});

describe("rejections: KEY_INVALID with the source and a precise reason", () => {
  const ed = privateKeyFromSecret("ed25519", hex(RFC8032_T1.secret));
  const ec = privateKeyFromSecret("p256", hex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721"));
  const edSpki = spkiDer(ed.publicKey);
  const ecSpki = spkiDer(ec.publicKey);
  const offCurve = ec.publicKey.raw.slice();
  offCurve[64]! ^= 1;
  const ecPriv = (d: Uint8Array, ...rest: Uint8Array[]) => tlv(0x30, int(1), tlv(0x04, d), ...rest);
  const pkcs8 = (version: number, alg: Uint8Array, inner: Uint8Array, ...rest: Uint8Array[]) =>
    tlv(0x30, int(version), alg, tlv(0x04, inner), ...rest);
  const edInner = tlv(0x04, ed.secret);
  const other = generateKey("p256").publicKey.raw;
  /** SEC1 §2.3.3 compressed form of an uncompressed point: 02/03 (the parity of y) ‖ X. */
  const p256Compressed = (raw: Uint8Array) => Uint8Array.of(2 + (raw[64]! & 1), ...raw.subarray(1, 33));
  type Row = { name: string; kind: "public" | "private"; text: () => string; why: RegExp };
  const rows: Row[] = [
    // PEM level
    { name: "not PEM at all (DER bytes)", kind: "public", text: () => Buffer.from(edSpki).toString("latin1"), why: /not PEM text/ },
    { name: "private key given as public", kind: "public", text: () => encodePrivatePem(ed), why: /expected a public key.*openssl pkey -in KEY -pubout/ },
    { name: "public key given as private", kind: "private", text: () => encodePublicPem(ed.publicKey), why: /expected a private key/ },
    { name: "certificate label", kind: "public", text: () => pemOf("CERTIFICATE", edSpki), why: /PEM label "CERTIFICATE"/ },
    { name: "RSA PRIVATE KEY label", kind: "private", text: () => pemOf("RSA PRIVATE KEY", edSpki), why: /PEM label "RSA PRIVATE KEY"/ },
    { name: "no END line", kind: "public", text: () => encodePublicPem(ed.publicKey).replace(/-----END.*\n/, ""), why: /no END line/ },
    { name: "mismatched END", kind: "public", text: () => encodePublicPem(ed.publicKey).replace("END PUBLIC", "END PRIVATE"), why: /ends with "PRIVATE KEY"/ },
    { name: "two keys in one file", kind: "public", text: () => encodePublicPem(ed.publicKey) + encodePublicPem(ec.publicKey), why: /more than one PEM block/ },
    { name: "base64 with a bad character", kind: "public", text: () => encodePublicPem(ed.publicKey).replace("MCow", "MC*w"), why: /not valid base64/ },
    { name: "non-canonical base64 padding bits", kind: "public", text: () => nonCanonical(pemOf("PUBLIC KEY", edSpki)), why: /not canonical base64/ },
    { name: "unknown PEM header", kind: "public", text: () => encodePublicPem(ed.publicKey).replace("\n", "\nComment: hi\n"), why: /unexpected PEM header/ },
    { name: "empty body", kind: "public", text: () => "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n", why: /empty PEM body/ },
    // DER level
    { name: "truncated DER", kind: "public", text: () => pemOf("PUBLIC KEY", edSpki.subarray(0, 40)), why: /truncated/ },
    { name: "trailing bytes after the SPKI", kind: "public", text: () => pemOf("PUBLIC KEY", Buffer.concat([edSpki, Uint8Array.of(0)])), why: /1 unexpected trailing byte/ },
    { name: "trailing bytes inside the SPKI", kind: "public", text: () => pemOf("PUBLIC KEY", tlv(0x30, ED_ALG, bits(ed.publicKey.raw), tlv(0x05))), why: /trailing byte.*SubjectPublicKeyInfo/ },
    { name: "outer tag is not SEQUENCE", kind: "public", text: () => pemOf("PUBLIC KEY", Uint8Array.of(0x31, ...edSpki.subarray(1))), why: /expected tag 0x30, found 0x31/ },
    { name: "BER indefinite length", kind: "public", text: () => pemOf("PUBLIC KEY", Uint8Array.of(0x30, 0x80, ...edSpki.subarray(2), 0, 0)), why: /indefinite length/ },
    { name: "non-minimal length", kind: "public", text: () => pemOf("PUBLIC KEY", Uint8Array.of(0x30, 0x81, 0x2a, ...edSpki.subarray(2))), why: /not minimally encoded/ },
    { name: "BIT STRING with unused bits", kind: "public", text: () => pemOf("PUBLIC KEY", tlv(0x30, ED_ALG, tlv(0x03, Uint8Array.of(1), ed.publicKey.raw))), why: /unused bits/ },
    { name: "Ed25519 with NULL parameters", kind: "public", text: () => pemOf("PUBLIC KEY", tlv(0x30, tlv(0x30, tlv(0x06, hex("2b6570")), tlv(0x05)), bits(ed.publicKey.raw))), why: /no parameters \(RFC 8410/ },
    { name: "EC with implicit parameters", kind: "public", text: () => pemOf("PUBLIC KEY", tlv(0x30, tlv(0x30, tlv(0x06, hex("2a8648ce3d0201")), tlv(0x05)), bits(ec.publicKey.raw))), why: /namedCurve OID/ },
    // algorithms and points
    { name: "Ed448 key (openssl)", kind: "public", text: () => vec("ed448.pub"), why: /unsupported key algorithm Ed448 \(1\.3\.101\.113\)/ },
    { name: "X25519 key (openssl)", kind: "public", text: () => vec("x25519.pub"), why: /unsupported key algorithm X25519/ },
    { name: "RSA key (openssl)", kind: "public", text: () => vec("rsa.pub"), why: /unsupported key algorithm RSA/ },
    { name: "P-384 key (openssl)", kind: "public", text: () => vec("p384.pub"), why: /unsupported EC curve secp384r1/ },
    { name: "secp256k1 key (openssl)", kind: "public", text: () => vec("secp256k1.pub"), why: /unsupported EC curve secp256k1/ },
    { name: "compressed P-256 point (openssl)", kind: "public", text: () => vec("p256-compressed.pub"), why: /compressed EC point/ },
    { name: "P-256 point not on the curve", kind: "public", text: () => pemOf("PUBLIC KEY", tlv(0x30, EC_ALG, bits(offCurve))), why: /not on the curve/ },
    { name: "P-256 point of 64 bytes", kind: "public", text: () => pemOf("PUBLIC KEY", tlv(0x30, EC_ALG, bits(ec.publicKey.raw.subarray(1)))), why: /65-byte uncompressed/ },
    { name: "Ed25519 key of 31 bytes", kind: "public", text: () => pemOf("PUBLIC KEY", tlv(0x30, ED_ALG, bits(ed.publicKey.raw.subarray(1)))), why: /must be 32 bytes, got 31/ },
    { name: "Ed25519 y not on the curve", kind: "public", text: () => pemOf("PUBLIC KEY", tlv(0x30, ED_ALG, bits(Uint8Array.of(2, ...new Uint8Array(31))))), why: /not a valid curve point/ },
    { name: "Ed25519 identity (small order)", kind: "public", text: () => pemOf("PUBLIC KEY", tlv(0x30, ED_ALG, bits(Uint8Array.of(1, ...new Uint8Array(31))))), why: /small-order/ },
    // private keys
    { name: "encrypted PKCS#8 (openssl)", kind: "private", text: () => vec("ed25519-enc.key"), why: /encrypted; decrypt it first: openssl pkey/ },
    { name: "legacy encrypted SEC1 (openssl)", kind: "private", text: () => vec("p256-legacy-enc.key"), why: /encrypted \(Proc-Type.*decrypt it first/ },
    { name: "PKCS#8 attributes (RFC 8410 §10.3 example)", kind: "private", text: () => RFC8410_V1_ATTRS, why: /attributes are not supported/ },
    { name: "PKCS#8 version 2", kind: "private", text: () => pemOf("PRIVATE KEY", pkcs8(2, ED_ALG, edInner)), why: /version must be 0 or 1/ },
    { name: "PKCS#8 v0 with a public key", kind: "private", text: () => pemOf("PRIVATE KEY", pkcs8(0, ED_ALG, edInner, tlv(0x81, Uint8Array.of(0), ed.publicKey.raw))), why: /needs version 1/ },
    { name: "PKCS#8 v1 with a wrong public key", kind: "private", text: () => pemOf("PRIVATE KEY", pkcs8(1, ED_ALG, edInner, tlv(0x81, Uint8Array.of(0), generateKey("ed25519").publicKey.raw))), why: /does not match/ },
    { name: "Ed25519 seed of 31 bytes", kind: "private", text: () => pemOf("PRIVATE KEY", pkcs8(0, ED_ALG, tlv(0x04, ed.secret.subarray(1)))), why: /ed25519 secret must be 32 bytes, got 31/ },
    { name: "Ed25519 seed not wrapped in OCTET STRING", kind: "private", text: () => pemOf("PRIVATE KEY", pkcs8(0, ED_ALG, ed.secret)), why: /CurvePrivateKey: expected tag 0x04/ },
    { name: "P-256 scalar 0", kind: "private", text: () => pemOf("PRIVATE KEY", pkcs8(0, EC_ALG, ecPriv(new Uint8Array(32)))), why: /out of range/ },
    { name: "P-256 scalar n", kind: "private", text: () => pemOf("PRIVATE KEY", pkcs8(0, EC_ALG, ecPriv(N))), why: /out of range/ },
    { name: "P-256 scalar of 31 bytes", kind: "private", text: () => pemOf("PRIVATE KEY", pkcs8(0, EC_ALG, ecPriv(ec.secret.subarray(1)))), why: /must be 32 bytes, got 31/ },
    { name: "ECPrivateKey version 2", kind: "private", text: () => pemOf("PRIVATE KEY", pkcs8(0, EC_ALG, tlv(0x30, int(2), tlv(0x04, ec.secret)))), why: /ECPrivateKey version must be 1/ },
    { name: "ECPrivateKey with another public key", kind: "private", text: () => pemOf("PRIVATE KEY", pkcs8(0, EC_ALG, ecPriv(ec.secret, tlv(0xa1, bits(other))))), why: /does not match/ },
    { name: "ECPrivateKey with P-384 parameters", kind: "private", text: () => pemOf("PRIVATE KEY", pkcs8(0, EC_ALG, ecPriv(ec.secret, tlv(0xa0, P384_OID)))), why: /unsupported EC curve secp384r1/ },
    { name: "SEC1 without curve parameters", kind: "private", text: () => pemOf("EC PRIVATE KEY", ecPriv(ec.secret)), why: /without curve parameters/ },
    // Before: "P-256 private key must be 32 bytes, got 48", and "namedCurve: expected tag 0x06, found 0x30".
    { name: "SEC1 P-384 key (a 48-byte scalar): the curve is named, not the length", kind: "private", text: () => pemOf("EC PRIVATE KEY", ecPriv(new Uint8Array(48).fill(7), tlv(0xa0, P384_OID))), why: /unsupported EC curve secp384r1/ },
    { name: "SEC1 with explicit parameters", kind: "private", text: () => pemOf("EC PRIVATE KEY", ecPriv(ec.secret, tlv(0xa0, tlv(0x30, int(1))))), why: /explicit EC parameters are not supported: use a named curve \(`openssl ec -in KEY -param_enc named_curve/ },
    { name: "PKCS#8 with explicit parameters", kind: "private", text: () => pemOf("PRIVATE KEY", pkcs8(0, tlv(0x30, tlv(0x06, hex("2a8648ce3d0201")), tlv(0x30, int(1))), ecPriv(ec.secret))), why: /explicit EC parameters are not supported/ },
    { name: "SPKI with explicit parameters", kind: "public", text: () => pemOf("PUBLIC KEY", tlv(0x30, tlv(0x30, tlv(0x06, hex("2a8648ce3d0201")), tlv(0x30, int(1))), bits(ec.publicKey.raw))), why: /explicit EC parameters are not supported/ },
    { name: "ECPrivateKey with another public key, compressed", kind: "private", text: () => pemOf("EC PRIVATE KEY", ecPriv(ec.secret, tlv(0xa0, P256_OID), tlv(0xa1, bits(p256Compressed(other))))), why: /does not match/ },
    { name: "SEC1 trailing bytes", kind: "private", text: () => pemOf("EC PRIVATE KEY", ecPriv(ec.secret, tlv(0xa0, P256_OID), tlv(0x05))), why: /trailing byte.*ECPrivateKey/ },
    { name: "EC PRIVATE KEY label with an Ed25519 PKCS#8 body", kind: "private", text: () => pemOf("EC PRIVATE KEY", derOf(encodePrivatePem(ed))), why: /ECPrivateKey version/ },
  ];
  test.each(rows)("$name", ({ kind, text, why }) => {
    const source = `/trust/${kind}.pem`;
    let err: unknown;
    try {
      if (kind === "public") decodePublicPem(text(), source);
      else decodePrivatePem(text(), source);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ZbError);
    expect((err as ZbError).code).toBe("KEY_INVALID");
    expect((err as ZbError).message).toStartWith(`cannot read key ${source}: `);
    expect((err as ZbError).message).toMatch(why);
  });

  test("control rows: the valid variants of the structures above are accepted", () => {
    expect(decodePrivatePem(pemOf("PRIVATE KEY", pkcs8(1, ED_ALG, edInner, tlv(0x81, Uint8Array.of(0), ed.publicKey.raw))), "v1").publicKey).toEqual(ed.publicKey);
    expect(decodePrivatePem(pemOf("PRIVATE KEY", pkcs8(0, EC_ALG, ecPriv(ec.secret))), "nopub").publicKey).toEqual(ec.publicKey);
    expect(decodePrivatePem(pemOf("EC PRIVATE KEY", ecPriv(ec.secret, tlv(0xa0, P256_OID))), "sec1").publicKey).toEqual(ec.publicKey);
    // A UTF-8 byte order mark before the PEM text (openssl reads past it). Before: "not PEM text".
    expect(decodePublicPem("\uFEFF" + encodePublicPem(ed.publicKey), "bom.pub")).toEqual(ed.publicKey);
    expect(decodePrivatePem("\uFEFF" + encodePrivatePem(ec), "bom.key").publicKey).toEqual(ec.publicKey);
    // A compressed copy of the public point (openssl -conv_form compressed) is the same point. Before: "does not match".
    expect(decodePrivatePem(pemOf("EC PRIVATE KEY", ecPriv(ec.secret, tlv(0xa0, P256_OID), tlv(0xa1, bits(p256Compressed(ec.publicKey.raw))))), "sec1c").publicKey).toEqual(ec.publicKey);
    expect(decodePrivatePem(pemOf("PRIVATE KEY", pkcs8(0, EC_ALG, ecPriv(ec.secret, tlv(0xa1, bits(p256Compressed(ec.publicKey.raw)))))), "p8c").publicKey).toEqual(ec.publicKey);
    expect(decodePublicPem(pemOf("PUBLIC KEY", tlv(0x30, EC_ALG, bits(ec.publicKey.raw))), "ok").id).toBe(ec.publicKey.id);
  });

  const raws: { name: string; alg: Alg; raw: Uint8Array; why: RegExp }[] = [
    { name: "p256 off curve", alg: "p256", raw: offCurve, why: /not on the curve/ },
    { name: "p256 compressed", alg: "p256", raw: Uint8Array.of(2, ...ec.publicKey.raw.subarray(1, 33)), why: /compressed/ },
    { name: "ed25519 33 bytes", alg: "ed25519", raw: new Uint8Array(33), why: /32 bytes/ },
  ];
  test.each(raws)("publicKeyFromRaw: $name", ({ alg, raw, why }) => {
    expect(() => publicKeyFromRaw(alg, raw)).toThrow(why);
  });
});

// ---- live openssl interop ----

const work = mkdtempSync(join(tmpdir(), "zb-keys-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Run openssl in the temp dir; fails the test on a non-zero exit. */
function openssl(...args: string[]): Buffer {
  const p = Bun.spawnSync(["openssl", ...args], { cwd: work, stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`openssl ${args.join(" ")}: exit ${p.exitCode}: ${p.stderr.toString()}`);
  return p.stdout;
}
const GENPKEY: Record<Alg, string[]> = {
  ed25519: ["-algorithm", "ed25519"],
  p256: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
};
const file = (name: string) => readFileSync(join(work, name), "utf8");

describe("openssl interop (live)", () => {
  test.each(ALGS)("%s: openssl genpkey → zb reads it, writes it back byte for byte, same public key and id", (alg) => {
    openssl("genpkey", ...GENPKEY[alg], "-out", `os-${alg}.key`);
    openssl("pkey", "-in", `os-${alg}.key`, "-pubout", "-out", `os-${alg}.pub`);
    const k = decodePrivatePem(file(`os-${alg}.key`), `os-${alg}.key`);
    expect(k.alg).toBe(alg);
    expect(encodePrivatePem(k)).toBe(file(`os-${alg}.key`));
    expect(encodePublicPem(k.publicKey)).toBe(file(`os-${alg}.pub`));
    const der = openssl("pkey", "-pubin", "-in", `os-${alg}.pub`, "-outform", "DER");
    expect(toHex(spkiDer(k.publicKey))).toBe(der.toString("hex"));
    expect(k.publicKey.id).toBe(new Bun.CryptoHasher("sha256").update(der).digest("hex"));
  });

  test.each(ALGS)("%s: zb's PEM files → openssl reads them and derives the same public key", (alg) => {
    const k = generateKey(alg);
    writeFileSync(join(work, `zb-${alg}.key`), encodePrivatePem(k), { mode: 0o600 });
    writeFileSync(join(work, `zb-${alg}.pub`), encodePublicPem(k.publicKey));
    expect(openssl("pkey", "-in", `zb-${alg}.key`, "-pubout").toString()).toBe(encodePublicPem(k.publicKey));
    expect(openssl("pkey", "-in", `zb-${alg}.key`).toString()).toBe(encodePrivatePem(k));
    const der = openssl("pkey", "-pubin", "-in", `zb-${alg}.pub`, "-outform", "DER");
    expect(keyId(k.publicKey)).toBe(new Bun.CryptoHasher("sha256").update(der).digest("hex"));
    if (alg === "p256") openssl("ec", "-in", `zb-${alg}.key`, "-check", "-noout");
  });

  test("keyId equals `openssl pkey -pubin -outform DER | sha256sum`", () => {
    writeFileSync(join(work, "id.pub"), encodePublicPem(generateKey("p256").publicKey));
    const p = Bun.spawnSync(["sh", "-c", "openssl pkey -pubin -in id.pub -outform DER | sha256sum"], { cwd: work });
    expect(p.exitCode).toBe(0);
    expect(p.stdout.toString().split(" ")[0]).toBe(decodePublicPem(file("id.pub"), "id.pub").id);
  });

  // Before: the compressed ones were "the public key does not match the private key", the P-384/P-521 ones
  // "P-256 private key must be 32 bytes", the explicit ones "namedCurve: expected tag 0x06, found 0x30".
  test("openssl's P-256 keys with a compressed public point (SEC1 and PKCS#8) are read, as the key openssl derives", () => {
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "cmp.key");
    openssl("ec", "-in", "cmp.key", "-conv_form", "compressed", "-out", "cmp-sec1.key");
    openssl("pkey", "-in", "cmp.key", "-ec_conv_form", "compressed", "-out", "cmp-p8.key");
    openssl("ec", "-in", "cmp.key", "-pubout", "-out", "cmp.pub");
    const want = decodePublicPem(file("cmp.pub"), "cmp.pub");
    for (const f of ["cmp-sec1.key", "cmp-p8.key"]) {
      openssl("pkey", "-in", f, "-check", "-noout");
      expect({ f, pub: decodePrivatePem(file(f), f).publicKey }).toEqual({ f, pub: want });
    }
  });

  test.each([
    { name: "SEC1 P-384", make: [["ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", "x.key"]], why: "unsupported EC curve secp384r1 (P-384) (1.3.132.0.34) (supported: P-256 / prime256v1)" },
    { name: "SEC1 P-521", make: [["ecparam", "-name", "secp521r1", "-genkey", "-noout", "-out", "x.key"]], why: "unsupported EC curve secp521r1 (P-521) (1.3.132.0.35) (supported: P-256 / prime256v1)" },
    {
      name: "SEC1 P-256 with explicit parameters",
      make: [["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "n.key"], ["ec", "-in", "n.key", "-param_enc", "explicit", "-out", "x.key"]],
      why: "explicit EC parameters are not supported: use a named curve (`openssl ec -in KEY -param_enc named_curve -out NAMED.pem` re-encodes the key)",
    },
    {
      name: "PKCS#8 P-256 with explicit parameters",
      make: [["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "n.key"], ["ec", "-in", "n.key", "-param_enc", "explicit", "-out", "e.key"], ["pkey", "-in", "e.key", "-out", "x.key"]],
      why: "explicit EC parameters are not supported: use a named curve (`openssl ec -in KEY -param_enc named_curve -out NAMED.pem` re-encodes the key)",
    },
  ])("openssl $name: refused for what it is", ({ make, why }) => {
    for (const args of make) openssl(...args);
    expect(() => decodePrivatePem(file("x.key"), "x.key")).toThrow(`cannot read key x.key: ${why}`);
  });

  test("openssl's SEC1 and ecparam outputs decode to the key openssl derives", () => {
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-out", "ecp.key");
    openssl("ec", "-in", "ecp.key", "-pubout", "-out", "ecp.pub");
    expect(decodePrivatePem(file("ecp.key"), "ecp.key").publicKey).toEqual(decodePublicPem(file("ecp.pub"), "ecp.pub"));
  });
});
