/**
 * Signatures over an image manifest, the trust directory, and the policy
 * "at least N distinct trusted keys signed".
 *
 * Signature bytes are the standard ones, so openssl checks what zb signs and
 * zb checks what openssl signs (test/lib/image/sign.test.ts runs both ways):
 *
 *   ed25519  64-byte pure Ed25519 signature over the message (RFC 8032 §5.1.6);
 *            `openssl pkeyutl -sign -rawin` writes and `-verify -rawin` reads it.
 *   p256     DER ECDSA-Sig-Value (r, s) (RFC 3279 §2.2.3) over SHA-256 of the
 *            message; `openssl dgst -sha256 -sign` writes and `-verify` reads it.
 *
 * High S (ECDSA malleability): zb *signs* low-S (s ≤ n/2, noble's default) and
 * RFC 6979 deterministic k, so the same key and manifest give the same bytes.
 * zb *accepts* high-S too, as openssl does: openssl signs high-S about half the
 * time, and malleability cannot hurt here — signatures are never used as
 * identifiers, the signed manifest is, and a re-encoded (r, n−s) is exactly as
 * good a proof that the key holder signed those bytes. DER must be strict
 * (minimal integers, no trailing bytes) and r, s in 1..n−1.
 *
 * Ed25519 verification is RFC 8032 strict (not ZIP-215): canonical encodings
 * of A and R and S < L, as openssl demands (a test proves it for a non-canonical
 * R); small-order keys are refused when a key is loaded (keys.ts). noble checks the cofactored equation
 * [8][S]B = [8]R + [8][k]A (RFC 8032 §5.1.7), openssl the cofactorless one; they
 * can only disagree on a signature the key holder crafted with a torsion
 * component on purpose, which gives no one else any power.
 */
import { ed25519 } from "@noble/curves/ed25519.js";
import { p256 } from "@noble/curves/nist.js";
import { join } from "node:path";
import { ZbError } from "../errors.ts";
import type { Sys } from "../sys/sys.ts";
import { LIMITS, signaturesBytesLimit } from "./format.ts";
import { decodePublicPem, MAX_KEY_FILE, type Alg, type PrivateKey, type PublicKey } from "./keys.ts";

/** One signature over a message. */
export interface Signature {
  alg: Alg;
  /** {@link import("./keys.ts").keyId} of the signing key: where to look it up. */
  keyId: string;
  /** ed25519: 64 bytes (RFC 8032); p256: DER ECDSA-Sig-Value (RFC 3279 §2.2.3) over SHA-256(message). */
  sig: Uint8Array;
}

/** Signing is an interface so an HSM (PKCS#11) signer plugs in later. */
export interface Signer {
  readonly publicKey: PublicKey;
  sign(message: Uint8Array): Promise<Signature>;
  /** Done signing: wipe what the signer holds of its private key (an HSM signer holds nothing). */
  close?(): void;
}

/** A P-256 DER signature is at most 2 + 2 × (2 + 33) = 72 bytes; the smallest sane one is 8. */
const P256_SIG_MAX = 72;
const P256_SIG_MIN = 8;
const ED25519_SIG = 64;

function sha256(message: Uint8Array): Uint8Array {
  // Bun's native hasher: manifests are small, but the message size is the caller's business.
  return new Uint8Array(new Bun.CryptoHasher("sha256").update(message).digest());
}

/**
 * A {@link Signer} holding the private key in memory. The key is referenced,
 * not copied: wiping `key.secret` disables the signer, and close() does so.
 * @example const s = await keySigner(key).sign(manifestBytes)
 */
export function keySigner(key: PrivateKey): Signer {
  const publicKey = key.publicKey;
  return {
    publicKey,
    async sign(message: Uint8Array): Promise<Signature> {
      const sig =
        key.alg === "ed25519"
          ? ed25519.sign(message, key.secret)
          : p256.sign(sha256(message), key.secret, { prehash: false, lowS: true, format: "der" });
      return { alg: key.alg, keyId: publicKey.id, sig };
    },
    close(): void {
      key.secret.fill(0);
    },
  };
}

/**
 * Check one signature's bytes against one key. Never throws: malformed bytes,
 * a wrong length or a different algorithm are simply `false`. The `keyId`
 * field is not compared; it is the lookup hint {@link checkSignatures} uses.
 * @returns true when `sig` is a valid signature of `message` by `pub`
 * @example verifySignature(pub, manifestBytes, sig)
 */
export function verifySignature(pub: PublicKey, message: Uint8Array, sig: Signature): boolean {
  if (sig.alg !== pub.alg) return false;
  try {
    if (pub.alg === "ed25519") {
      return sig.sig.length === ED25519_SIG && ed25519.verify(sig.sig, message, pub.raw, { zip215: false });
    }
    if (sig.sig.length < P256_SIG_MIN || sig.sig.length > P256_SIG_MAX) return false;
    return p256.verify(sig.sig, sha256(message), pub.raw, { prehash: false, lowS: false, format: "der" });
  } catch {
    return false;
  }
}

/** Trusted public keys by key id, and the file each came from. */
export interface TrustStore {
  keys: Map<string, PublicKey>;
  sources: Map<string, string>;
}

/**
 * Load every `*.pem` and `*.pub` file of `dir` (SPKI `PUBLIC KEY` PEM, one key
 * each) in name order; other names, dot files and subdirectories are ignored.
 * Such a name that is not a regular file — a dangling symlink, a FIFO, a
 * device — is a bad key file like any other.
 * The same key in two files is one trusted key (the first file is its source).
 * One file that is not such a key — a compressed P-256 point, a certificate,
 * a private key, junk — fails the whole load (fail closed), naming the file,
 * the reason and the fix.
 * @throws {ZbError} IO when `dir` is missing or unreadable; KEY_INVALID naming a
 *   malformed file; SIG_INVALID when no key file is found ("no trusted keys in DIR")
 * @example checkSignatures(manifest, sigs, loadTrustDir(sys, "/etc/zb/trust"))
 */
export function loadTrustDir(sys: Sys, dir: string): TrustStore {
  const st = sys.stat(dir);
  if (st === null) throw new ZbError("IO", `cannot load trusted keys: ${dir}: no such directory`);
  if (st.kind !== "dir") throw new ZbError("IO", `cannot load trusted keys: ${dir}: not a directory`);
  const names = sys.listDir(dir).filter((n) => /^[^.].*\.(pem|pub)$/.test(n)).sort();
  const store: TrustStore = { keys: new Map(), sources: new Map() };
  for (const name of names) {
    const path = join(dir, name);
    const info = sys.stat(path);
    if (info?.kind === "dir") continue;
    let key: PublicKey;
    try {
      // Named like a key, so meant as one: a link to nothing or a FIFO (which would block the read) is no key either.
      // A name that is not UTF-8 comes back from readdir with U+FFFD in it, a name no file has.
      if (info === null && name.includes("\uFFFD")) throw new ZbError("KEY_INVALID", `cannot read key ${path}: its name is not UTF-8 (zb cannot open it by that name)`);
      if (info === null) throw new ZbError("KEY_INVALID", `cannot read key ${path}: it does not exist (a symbolic link to nothing)`);
      if (info.kind !== "file") throw new ZbError("KEY_INVALID", `cannot read key ${path}: it is not a regular file`);
      if (info.size > MAX_KEY_FILE) throw new ZbError("KEY_INVALID", `cannot read key ${path}: ${info.size} bytes is too large for a public key`);
      key = decodePublicPem(sys.readText(path), path);
    } catch (e) {
      // Fail closed: a key file that cannot be read might be the very key an image needs, and
      // skipping it would make the outcome depend on which file broke. Say so, and how to fix it.
      if (e instanceof ZbError && e.code === "KEY_INVALID") {
        throw new ZbError("KEY_INVALID", e.message, { hint: `every *.pem and *.pub file in ${dir} must be one SPKI "PUBLIC KEY" (Ed25519, or P-256 uncompressed); fix or remove ${name}: until then no image verifies` });
      }
      throw e;
    }
    if (store.keys.has(key.id)) continue;
    store.keys.set(key.id, key);
    store.sources.set(key.id, path);
  }
  if (store.keys.size === 0) {
    throw new ZbError("SIG_INVALID", `cannot load trusted keys: no trusted keys in ${dir}`, {
      hint: "put the publisher's public key there as a .pem or .pub file (openssl pkey -in KEY -pubout)",
    });
  }
  return store;
}


/** Why a signature did not count. */
export type IgnoredWhy = "untrusted" | "invalid" | "duplicate";

/** What the policy check found. */
export interface PolicyResult {
  /** Distinct trusted key ids with a valid signature, in signature order. */
  trustedSigners: string[];
  ignored: { keyId: string; why: IgnoredWhy }[];
}

/**
 * The policy: at least `required` DISTINCT trusted keys made a valid signature
 * of `message`. A signature by an unknown key id is "untrusted"; one whose
 * bytes do not verify, or whose alg differs from the trusted key's, is "invalid";
 * a second valid signature by an already counted key is "duplicate".
 * @param required at least 1 (the default)
 * @returns who counted and why the others did not, when the policy holds
 * @throws {ZbError} SIG_INVALID when fewer than `required` trusted keys signed, e.g.
 *   "cannot verify image signatures: found 0 of the 1 trusted signatures required (key 3f2a… is not trusted)";
 *   INTERNAL when `required` is not a positive integer
 * @example checkSignatures(manifestBytes, sigs, trust, 2).trustedSigners
 */
export function checkSignatures(message: Uint8Array, sigs: readonly Signature[], trust: TrustStore, required = 1): PolicyResult {
  if (!Number.isInteger(required) || required < 1) {
    throw new ZbError("INTERNAL", `internal error: signature policy must require at least 1 key, got ${required}`);
  }
  const result: PolicyResult = { trustedSigners: [], ignored: [] };
  for (const sig of sigs) {
    const key = trust.keys.get(sig.keyId);
    let why: IgnoredWhy | null = null;
    if (!key) why = "untrusted";
    else if (!verifySignature(key, message, sig)) why = "invalid";
    else if (result.trustedSigners.includes(sig.keyId)) why = "duplicate";
    if (why) result.ignored.push({ keyId: sig.keyId, why });
    else result.trustedSigners.push(sig.keyId);
  }
  const found = result.trustedSigners.length;
  if (found >= required) return result;
  const reasons = result.ignored.map(({ keyId, why }) => describe(keyId, why, trust));
  if (sigs.length === 0) reasons.push("the image has no signatures");
  if (required > trust.keys.size) reasons.push(`only ${trust.keys.size} key(s) are trusted`);
  throw new ZbError(
    "SIG_INVALID",
    `cannot verify image signatures: found ${found} of the ${required} trusted signatures required` + (reasons.length ? ` (${reasons.join("; ")})` : ""),
    { hint: "sign the image with keys whose public halves are in the device's trust directory" },
  );
}

function describe(keyId: string, why: IgnoredWhy, trust: TrustStore): string {
  const short = `${keyId.slice(0, 16)}…`;
  const source = trust.sources.get(keyId);
  switch (why) {
    case "untrusted":
      return `key ${short} is not trusted`;
    case "invalid":
      return `signature by key ${short} (${source ?? "trusted"}) does not verify`;
    case "duplicate":
      return `key ${short} signed more than once; it counts once`;
    default: {
      const never: never = why;
      throw new ZbError("INTERNAL", `internal error: unknown reason ${String(never)}`);
    }
  }
}

// ---- the signatures entry of the image: canonical JSON ----

const KEYID = /^[0-9a-f]{64}$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
export { signaturesBytesLimit } from "./format.ts";

/**
 * Canonical JSON of the signatures: `{"signatures":[{"alg":…,"keyid":…,"sig":…}]}`,
 * object keys sorted, no whitespace, UTF-8, `sig` in padded base64 (RFC 4648 §4),
 * entries sorted by keyid so the same signatures always give the same bytes.
 * @throws {ZbError} INTERNAL for a malformed keyid or a key id given twice (the
 *   caller replaces a key's old signature rather than adding a second)
 * @example encodeSignatures([await keySigner(key).sign(manifest)])
 */
export function encodeSignatures(sigs: readonly Signature[]): Uint8Array {
  const sorted = [...sigs].sort((a, b) => (a.keyId < b.keyId ? -1 : a.keyId > b.keyId ? 1 : 0));
  sorted.forEach((s, i) => {
    if (!KEYID.test(s.keyId)) throw new ZbError("INTERNAL", `internal error: bad key id ${JSON.stringify(s.keyId)}`);
    if (i > 0 && sorted[i - 1]!.keyId === s.keyId) throw new ZbError("INTERNAL", `internal error: two signatures by key ${s.keyId}`);
  });
  const entries = sorted.map((s) => ({ alg: s.alg, keyid: s.keyId, sig: Buffer.from(s.sig).toString("base64") }));
  return new TextEncoder().encode(JSON.stringify({ signatures: entries }));
}

/**
 * An image with more signatures than a reader takes opens nowhere: every
 * device refuses it (IMG_FORMAT). A writer checks the count it is about to
 * write, before it creates any file.
 * @param count distinct signing keys the image would carry
 * @param doing what is refused, e.g. "create out.zbi"
 * @param hint what to do instead (default: sign with fewer keys)
 * @throws {ZbError} USAGE when `count` exceeds LIMITS.signatureCount (16)
 * @example checkSignatureCount(signers.length, `create ${output}`)
 */
export function checkSignatureCount(count: number, doing: string, hint?: string): void {
  if (count <= LIMITS.signatureCount) return;
  throw new ZbError("USAGE", `cannot ${doing}: ${count} signatures, more than the ${LIMITS.signatureCount} an image can carry (readers refuse more)`, {
    hint: hint ?? `sign with at most ${LIMITS.signatureCount} keys`,
  });
}

/**
 * The signatures entry of an image being written: {@link encodeSignatures},
 * refused where a reader would refuse it — too many signatures, or more
 * bytes than LIMITS.signatures (a signer whose signatures are longer than
 * Ed25519's or P-256's, which decodeSignatures would refuse as well).
 * @throws {ZbError} USAGE over a limit; INTERNAL as encodeSignatures
 * @example await w.addBytes(SIGNATURES_NAME, imageSignatures(sigs, `sign ${output}`))
 */
export function imageSignatures(sigs: readonly Signature[], doing: string): Uint8Array {
  checkSignatureCount(sigs.length, doing);
  const bytes = encodeSignatures(sigs);
  if (bytes.length > LIMITS.signatures) {
    throw new ZbError("USAGE", `cannot ${doing}: the signatures take ${bytes.length} bytes, more than the ${LIMITS.signatures} a reader accepts`);
  }
  return bytes;
}

/**
 * Parse the signatures entry strictly: exactly the keys above, a known alg,
 * 64-hex keyids, canonical base64, Ed25519 signatures of exactly 64 bytes and
 * P-256 DER of 8..72 bytes, at most `maxCount` entries, no keyid twice, and
 * the bytes must be the canonical encoding (so a signature set has one form).
 * An unknown algorithm is IMG_FORMAT, like every unknown entry of the format;
 * whether a signature *verifies* is left to {@link checkSignatures}.
 * @throws {ZbError} IMG_FORMAT naming what is wrong
 * @example decodeSignatures(bytes, { maxCount: 16 })
 */
export function decodeSignatures(bytes: Uint8Array, limits: { maxCount: number }): Signature[] {
  const fail = (why: string): never => {
    throw new ZbError("IMG_FORMAT", `cannot read image signatures: ${why}`);
  };
  if (bytes.length > signaturesBytesLimit(limits.maxCount)) fail(`${bytes.length} bytes is too large for ${limits.maxCount} signatures`);
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes));
  } catch (e) {
    return fail(`not UTF-8 JSON (${(e as Error).message})`);
  }
  const list = exactKeys(doc, ["signatures"], "the document", fail).signatures;
  if (!Array.isArray(list)) return fail(`"signatures" is not an array`);
  if (list.length > limits.maxCount) fail(`${list.length} signatures, more than the limit of ${limits.maxCount}`);
  const seen = new Set<string>();
  const out = list.map((entry, i) => {
    const e = exactKeys(entry, ["alg", "keyid", "sig"], `signature ${i}`, fail);
    const sig = decodeEntry(e, i, fail);
    if (seen.has(sig.keyId)) fail(`key ${sig.keyId} signed twice`);
    seen.add(sig.keyId);
    return sig;
  });
  if (!equalBytes(encodeSignatures(out), bytes)) fail("not in canonical form (sorted keys and keyids, no whitespace)");
  return out;
}

function decodeEntry(e: Record<string, unknown>, i: number, fail: (why: string) => never): Signature {
  const { alg, keyid, sig } = e;
  if (alg !== "ed25519" && alg !== "p256") return fail(`signature ${i}: unknown algorithm ${JSON.stringify(alg)}`);
  if (typeof keyid !== "string" || !KEYID.test(keyid)) return fail(`signature ${i}: keyid must be 64 lowercase hex digits`);
  if (typeof sig !== "string" || !BASE64.test(sig)) return fail(`signature ${i}: sig is not base64`);
  const raw = new Uint8Array(Buffer.from(sig, "base64"));
  if (Buffer.from(raw).toString("base64") !== sig) fail(`signature ${i}: sig is not canonical base64`);
  if (alg === "ed25519" && raw.length !== ED25519_SIG) fail(`signature ${i}: an Ed25519 signature is 64 bytes, got ${raw.length}`);
  if (alg === "p256" && (raw.length < P256_SIG_MIN || raw.length > P256_SIG_MAX)) {
    fail(`signature ${i}: a P-256 DER signature is ${P256_SIG_MIN}..${P256_SIG_MAX} bytes, got ${raw.length}`);
  }
  return { alg, keyId: keyid, sig: raw };
}

function exactKeys<K extends string>(v: unknown, keys: K[], what: string, fail: (why: string) => never): Record<K, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return fail(`${what} is not an object`);
  const got = Object.keys(v).sort();
  const want = [...keys].sort();
  if (got.length !== want.length || got.some((k, i) => k !== want[i])) {
    fail(`${what} must have exactly the keys ${want.join(", ")}; found ${got.join(", ") || "none"}`);
  }
  return v as Record<K, unknown>;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
