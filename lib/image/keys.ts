/**
 * Signing keys of the image format, in the encodings openssl reads and writes,
 * so a publisher can keep using `openssl genpkey` keys and a device trusts the
 * same `PUBLIC KEY` files. Two algorithms:
 *
 *   ed25519  RFC 8032 pure Ed25519; secret = 32-byte seed, public = 32 bytes
 *   p256     ECDSA over NIST P-256 (FIPS 186-4/5, SEC1); secret = 32-byte scalar,
 *            public = 65-byte uncompressed SEC1 point (04 ‖ X ‖ Y)
 *
 * Encodings (DER inside RFC 7468 PEM):
 *
 *   PUBLIC KEY       SubjectPublicKeyInfo (RFC 5280 §4.1): RFC 8410 §4 (Ed25519),
 *                    RFC 5480 §2 (id-ecPublicKey + namedCurve prime256v1)
 *   PRIVATE KEY      PKCS#8 PrivateKeyInfo / OneAsymmetricKey (RFC 5958): RFC 8410 §7
 *                    for Ed25519; for P-256 an ECPrivateKey (RFC 5915) with the public
 *                    key and no inner parameters, byte for byte what openssl writes
 *   EC PRIVATE KEY   SEC1 / RFC 5915 ECPrivateKey, P-256 only, read but never written
 *
 * This file knows which structures a key file holds; the DER under them
 * (der.ts) and the PEM armor around them (pem.ts) are read and written apart.
 *
 * Key handling: DER buffers that held a secret are wiped (`fill(0)`) once used.
 * What JS cannot guarantee: the PEM text is an immutable string, the engine's
 * GC may have copied any buffer before the wipe, and noble's scalar arithmetic
 * runs on bigints that cannot be wiped at all. Keep signing keys off devices.
 */
import { ed25519 } from "@noble/curves/ed25519.js";
import { p256 } from "@noble/curves/nist.js";
import { BIT_STRING, bitString, CTX0, CTX1, CTX1_IMPLICIT, Der, equal, hex, int, INTEGER, OCTET_STRING, OID, oidName, SEQUENCE, tlv, type Fail } from "./der.ts";
import { pem, pemBlocks, type PemBlock } from "./pem.ts";
import { ZbError } from "../errors.ts";

export type Alg = "ed25519" | "p256";

/** A public key; `id` is {@link keyId} of it, computed on construction. */
export interface PublicKey {
  alg: Alg;
  /** ed25519: 32 bytes (RFC 8032 §5.1.5); p256: 65-byte uncompressed SEC1 point. */
  raw: Uint8Array;
  id: string;
}

/** A private key with its public half. Wipe `secret` with `fill(0)` when done. */
export interface PrivateKey {
  alg: Alg;
  /** 32 bytes: the Ed25519 seed (RFC 8032 §5.1.5), or the P-256 scalar d. */
  secret: Uint8Array;
  publicKey: PublicKey;
}

// OID contents (DER, without tag and length).
const OID_ED25519 = hex("2b6570"); // 1.3.101.112 id-Ed25519 (RFC 8410 §3)
const OID_EC_PUBLIC_KEY = hex("2a8648ce3d0201"); // 1.2.840.10045.2.1 (RFC 5480 §2.1.1)
const OID_P256 = hex("2a8648ce3d030107"); // 1.2.840.10045.3.1.7 prime256v1 / secp256r1 (RFC 5480 §2.1.1.1)

/** Explicit curve parameters (`openssl ec -param_enc explicit`) in place of the namedCurve OID. */
const EXPLICIT_PARAMS = "explicit EC parameters are not supported: use a named curve (`openssl ec -in KEY -param_enc named_curve -out NAMED.pem` re-encodes the key)";

/** The one failure path of this module: KEY_INVALID naming the key source. */
function failFor(source: string): Fail {
  return (why) => {
    throw new ZbError("KEY_INVALID", `cannot read key ${source}: ${why}`);
  };
}

/** AlgorithmIdentifier: RFC 8410 §3 (no parameters) or RFC 5480 §2.1.1 (namedCurve). */
function algorithmId(alg: Alg): Uint8Array {
  return alg === "ed25519"
    ? tlv(SEQUENCE, tlv(OID, OID_ED25519))
    : tlv(SEQUENCE, tlv(OID, OID_EC_PUBLIC_KEY), tlv(OID, OID_P256));
}

function readAlgorithmId(r: Der, fail: Fail): Alg {
  const a = r.next(SEQUENCE, "AlgorithmIdentifier");
  const oid = a.next(OID, "algorithm OID").rest();
  if (equal(oid, OID_ED25519)) {
    if (a.peek() !== undefined) fail("Ed25519 AlgorithmIdentifier must have no parameters (RFC 8410 §3)");
    return "ed25519";
  }
  if (!equal(oid, OID_EC_PUBLIC_KEY)) fail(`unsupported key algorithm ${oidName(oid)} (supported: Ed25519, EC P-256)`);
  if (a.peek() === SEQUENCE) fail(EXPLICIT_PARAMS);
  if (a.peek() !== OID) fail("EC parameters must be a namedCurve OID (RFC 5480 §2.1.1)");
  const curve = a.next(OID, "namedCurve").rest();
  if (!equal(curve, OID_P256)) fail(`unsupported EC curve ${oidName(curve)} (supported: P-256 / prime256v1)`);
  a.end();
  return "p256";
}

/** Check the encoding and the point itself; returns the raw key. */
function checkPublicRaw(alg: Alg, raw: Uint8Array, fail: Fail): Uint8Array {
  if (alg === "ed25519") {
    if (raw.length !== 32) fail(`Ed25519 public key must be 32 bytes, got ${raw.length}`);
    let small = false;
    try {
      small = ed25519.Point.fromBytes(raw, false).isSmallOrder();
    } catch {
      fail("Ed25519 public key is not a valid curve point (RFC 8032 §5.1.3)");
    }
    if (small) fail("Ed25519 public key is a small-order point (no one knows its secret)");
    return raw;
  }
  if (raw.length === 33 && (raw[0] === 2 || raw[0] === 3)) {
    fail("compressed EC point; re-export with `openssl pkey -pubin -ec_conv_form uncompressed`");
  }
  if (raw.length !== 65 || raw[0] !== 4) fail(`P-256 public key must be a 65-byte uncompressed SEC1 point, got ${raw.length} bytes`);
  if (!p256.utils.isValidPublicKey(raw, false)) fail("P-256 public key is not on the curve (SEC1 §3.2.2)");
  return raw;
}

/**
 * A public key from its raw bytes, validated.
 * @param raw ed25519: 32 bytes; p256: 65-byte uncompressed point
 * @returns the key with its {@link keyId}; `raw` is copied
 * @throws {ZbError} KEY_INVALID when the bytes are not a valid point of that curve
 * @example publicKeyFromRaw("ed25519", bytes32).id
 */
export function publicKeyFromRaw(alg: Alg, raw: Uint8Array): PublicKey {
  const key = new Uint8Array(checkPublicRaw(alg, raw, failFor(`(raw ${alg})`)));
  const pub = { alg, raw: key, id: "" };
  pub.id = keyId(pub);
  return pub;
}

/**
 * The private key for a secret, with its public half derived.
 * @param secret 32 bytes: Ed25519 seed or P-256 scalar (1 ≤ d < n); copied (wipe yours)
 * @throws {ZbError} KEY_INVALID for a wrong length or an out-of-range scalar
 * @example privateKeyFromSecret("ed25519", seed).publicKey.id
 */
export function privateKeyFromSecret(alg: Alg, secret: Uint8Array, source = "(raw secret)"): PrivateKey {
  const fail = failFor(source);
  if (secret.length !== 32) fail(`${alg} secret must be 32 bytes, got ${secret.length}`);
  if (alg === "p256" && !p256.utils.isValidSecretKey(secret)) fail("P-256 scalar out of range 1..n-1 (SEC1 §3.2.1)");
  const raw = alg === "ed25519" ? ed25519.getPublicKey(secret) : p256.getPublicKey(secret, false);
  return { alg, secret: new Uint8Array(secret), publicKey: publicKeyFromRaw(alg, raw) };
}

/**
 * A fresh random key (crypto.getRandomValues through noble).
 * @example encodePrivatePem(generateKey("ed25519"))
 */
export function generateKey(alg: Alg): PrivateKey {
  const secret = alg === "ed25519" ? ed25519.utils.randomSecretKey() : p256.utils.randomSecretKey();
  try {
    return privateKeyFromSecret(alg, secret);
  } finally {
    secret.fill(0);
  }
}

/**
 * SubjectPublicKeyInfo DER: RFC 8410 §4 for Ed25519 (`302a300506032b6570032100` ‖ key),
 * RFC 5480 for P-256 (id-ecPublicKey, prime256v1, uncompressed point).
 * @example spkiDer(pub).length // 44 (ed25519) or 91 (p256)
 */
export function spkiDer(pub: PublicKey): Uint8Array {
  return tlv(SEQUENCE, algorithmId(pub.alg), bitString(pub.raw));
}

/**
 * The key id: lowercase hex SHA-256 of {@link spkiDer}, i.e. of the DER form of the
 * `PUBLIC KEY` file, so `openssl pkey -pubin -in k.pub -outform DER | sha256sum`
 * prints the same id. One id form for both algorithms, and no zb tool is needed
 * to compute it.
 * @example keyId(pub) // "3f2a…" (64 hex digits)
 */
export function keyId(pub: PublicKey): string {
  return new Bun.CryptoHasher("sha256").update(spkiDer(pub)).digest("hex");
}

/**
 * The largest key file zb reads. A PEM key is a few hundred bytes (an
 * openssl P-256 PKCS#8 file: 241); 64 KiB leaves room for comments around
 * it, and a path that is no key file at all (/dev/zero, a disk image) is
 * refused after 64 KiB instead of read to its end.
 */
export const MAX_KEY_FILE = 64 * 1024;

/**
 * RFC 7468 `PUBLIC KEY` PEM of {@link spkiDer}, 64-character lines, as openssl writes it.
 * @example Bun.write("release.pub", encodePublicPem(key.publicKey))
 */
export function encodePublicPem(pub: PublicKey): string {
  return pem("PUBLIC KEY", spkiDer(pub));
}

/**
 * Parse a `PUBLIC KEY` PEM (SubjectPublicKeyInfo) of an Ed25519 or P-256 key.
 * @param source where the text came from, for messages (a path)
 * @throws {ZbError} KEY_INVALID: not PEM, another label (a private key, a certificate),
 *   bad DER, trailing bytes, an unsupported algorithm or curve, an invalid point
 * @example decodePublicPem(sys.readText(path), path).id
 */
export function decodePublicPem(text: string, source: string): PublicKey {
  const fail = failFor(source);
  const block = onlyBlock(text, fail, ["PUBLIC KEY"]);
  const spki = new Der(block.der, fail, "key file");
  const body = spki.next(SEQUENCE, "SubjectPublicKeyInfo");
  spki.end();
  const alg = readAlgorithmId(body, fail);
  const raw = body.bits(BIT_STRING, "subjectPublicKey");
  body.end();
  const pub = { alg, raw: new Uint8Array(checkPublicRaw(alg, raw, fail)), id: "" };
  pub.id = keyId(pub);
  return pub;
}

/**
 * PKCS#8 `PRIVATE KEY` PEM, unencrypted: RFC 8410 §7 for Ed25519 (what `openssl genpkey
 * -algorithm ed25519` writes); for P-256 an RFC 5915 ECPrivateKey with the public key
 * (what `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes).
 * Protect the file (mode 0600); this function does not encrypt.
 * @example Bun.write("release.key", encodePrivatePem(generateKey("p256")), { mode: 0o600 })
 */
export function encodePrivatePem(key: PrivateKey): string {
  const temps: Uint8Array[] = [];
  const t = (b: Uint8Array) => (temps.push(b), b);
  try {
    const secret = t(tlv(OCTET_STRING, key.secret));
    const inner =
      key.alg === "ed25519"
        ? secret // CurvePrivateKey ::= OCTET STRING (RFC 8410 §7)
        : t(tlv(SEQUENCE, int(1), secret, tlv(CTX1, bitString(key.publicKey.raw))));
    return pem("PRIVATE KEY", t(tlv(SEQUENCE, int(0), algorithmId(key.alg), t(tlv(OCTET_STRING, inner)))));
  } finally {
    for (const b of temps) b.fill(0);
  }
}

/**
 * Parse an unencrypted private key: PKCS#8 `PRIVATE KEY` (Ed25519 or EC P-256, version 0,
 * or version 1 with a public key that must match), or SEC1 `EC PRIVATE KEY` (P-256; an
 * `EC PARAMETERS` block before it, as `openssl ecparam -genkey` writes, is allowed).
 * @param source where the text came from, for messages (a path)
 * @throws {ZbError} KEY_INVALID: encrypted keys (decrypt with openssl first), other labels,
 *   bad DER, unsupported algorithms, a secret out of range, a public key that does not match
 * @example keySigner(decodePrivatePem(readFileSync(path, "utf8"), path))
 */
export function decodePrivatePem(text: string, source: string): PrivateKey {
  const fail = failFor(source);
  const block = onlyBlock(text, fail, ["PRIVATE KEY", "EC PRIVATE KEY"]);
  try {
    if (block.label === "EC PRIVATE KEY") return readEcPrivateKey(block.der, fail, { topLevel: true }, source);
    return readPkcs8(block.der, fail, source);
  } finally {
    block.der.fill(0);
  }
}

function readPkcs8(der: Uint8Array, fail: Fail, source: string): PrivateKey {
  const top = new Der(der, fail, "key file");
  const info = top.next(SEQUENCE, "PrivateKeyInfo");
  top.end();
  const version = info.next(INTEGER, "version").rest();
  if (version.length !== 1 || version[0]! > 1) fail("PKCS#8 version must be 0 or 1 (RFC 5958 §2)");
  const alg = readAlgorithmId(info, fail);
  const privateKey = info.next(OCTET_STRING, "privateKey").rest();
  if (info.peek() === CTX0) fail("PKCS#8 attributes are not supported");
  let pubRaw: Uint8Array | undefined;
  if (info.peek() === CTX1_IMPLICIT) {
    if (version[0] !== 1) fail("a PKCS#8 publicKey needs version 1 (RFC 5958 §2)");
    pubRaw = info.bits(CTX1_IMPLICIT, "publicKey");
  }
  info.end();
  let key: PrivateKey;
  if (alg === "p256") {
    key = readEcPrivateKey(privateKey, fail, { topLevel: false }, source);
  } else {
    const curveKey = new Der(privateKey, fail, "CurvePrivateKey");
    key = privateKeyFromSecret("ed25519", curveKey.next(OCTET_STRING, "CurvePrivateKey").rest(), source);
    curveKey.end();
  }
  if (pubRaw && !matchesPublic(pubRaw, key)) fail("the public key does not match the private key");
  return key;
}

/**
 * Whether a key file's own copy of the public key is the key's: as bytes, or
 * for P-256 as points, since openssl writes a compressed point (`-conv_form
 * compressed`, `-ec_conv_form compressed`) as readily as an uncompressed one.
 */
function matchesPublic(given: Uint8Array, key: PrivateKey): boolean {
  if (equal(given, key.publicKey.raw)) return true;
  if (key.alg !== "p256") return false;
  try {
    return p256.Point.fromBytes(given).equals(p256.Point.fromBytes(key.publicKey.raw));
  } catch {
    return false; // not a point at all
  }
}

/** RFC 5915 §3 ECPrivateKey; inside PKCS#8 the curve is in the AlgorithmIdentifier. */
function readEcPrivateKey(der: Uint8Array, fail: Fail, at: { topLevel: boolean }, source: string): PrivateKey {
  const outer = new Der(der, fail, "key file");
  const ec = outer.next(SEQUENCE, "ECPrivateKey");
  outer.end();
  ec.expect(INTEGER, Uint8Array.of(1), "ECPrivateKey version", () => "ECPrivateKey version must be 1 (RFC 5915 §3)");
  const d = ec.next(OCTET_STRING, "privateKey").rest();
  // The curve before the length: a P-384 key is of another curve, not a P-256 key of the wrong length.
  if (ec.peek() === CTX0) {
    const params = ec.next(CTX0, "parameters");
    if (params.peek() === SEQUENCE) fail(EXPLICIT_PARAMS);
    const curve = params.next(OID, "namedCurve").rest();
    if (!equal(curve, OID_P256)) fail(`unsupported EC curve ${oidName(curve)} (supported: P-256 / prime256v1)`);
    params.end();
  } else if (at.topLevel) {
    fail("EC PRIVATE KEY without curve parameters");
  }
  // RFC 5915 §3: ceiling(log2(n)/8) octets, leading zeros kept; openssl always writes 32.
  if (d.length !== 32) fail(`P-256 private key must be 32 bytes, got ${d.length}`);
  const pubRaw = ec.peek() === CTX1 ? ec.next(CTX1, "publicKey").bits(BIT_STRING, "publicKey") : undefined;
  ec.end();
  const key = privateKeyFromSecret("p256", d, source);
  if (pubRaw && !matchesPublic(pubRaw, key)) fail("the public key does not match the private key");
  return key;
}

// ---- the key block of a PEM file (pem.ts reads the blocks) ----

/** The one key block of `text`; text outside blocks is ignored (RFC 7468 §2). */
function onlyBlock(text: string, fail: Fail, labels: string[]): PemBlock {
  const blocks: PemBlock[] = [];
  try {
    pemBlocks(text, fail, blocks);
    // `openssl ecparam -genkey` writes the curve as its own block before the key.
    const keys = blocks.filter((b) => !(b.label === "EC PARAMETERS" && equal(b.der, tlv(OID, OID_P256))));
    const want = `-----BEGIN ${labels[0]}-----`;
    if (keys.length === 0) fail(blocks.length ? `no key block (expected ${want})` : `not PEM text (expected ${want})`);
    if (keys.length > 1) fail("more than one PEM block; one key per file");
    if (!labels.includes(keys[0]!.label)) fail(wrongLabel(keys[0]!.label, labels));
    return keys[0]!;
  } catch (e) {
    for (const b of blocks) b.der.fill(0); // a private key may have been decoded before the failure
    throw e;
  }
}

function wrongLabel(label: string, labels: string[]): string {
  const expected = labels.map((l) => `"${l}"`).join(" or ");
  if (label === "ENCRYPTED PRIVATE KEY") {
    return "the private key is encrypted; decrypt it first: openssl pkey -in KEY -out PLAIN.pem (and keep PLAIN.pem mode 0600)";
  }
  if (label.endsWith("PRIVATE KEY") && labels.includes("PUBLIC KEY")) {
    return `expected a public key but found "${label}"; extract it with: openssl pkey -in KEY -pubout`;
  }
  if (label === "PUBLIC KEY") return `expected a private key but found "PUBLIC KEY"`;
  return `PEM label "${label}" is not ${expected}`;
}
