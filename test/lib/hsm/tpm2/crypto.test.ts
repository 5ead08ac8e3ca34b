/**
 * Session cryptography against a second implementation, OpenSSL 3:
 * - KDFa is SP 800-108 counter mode with HMAC, i.e. `openssl kdf KBKDF`
 *   (its default 0x00 separator and [L]32 suffix are KDFa's, Part 1 §11.4.10.2);
 * - KDFe is the SP 800-56A one-step KDF, `openssl kdf SSKDF` with
 *   FixedInfo = label ‖ 00 ‖ partyU ‖ partyV (Part 1 §11.4.10.3);
 * - parameter encryption is `openssl enc -aes-128-cfb` with KDFa's key ‖ IV.
 * Salts are checked by the receiving side's computation (ECDH with the
 * private key, RSA-OAEP decryption with label "SECRET\0").
 * The end-to-end proof that these match a TPM is index.test.ts (swtpm accepts
 * the session HMACs and the parameter encryption).
 */
import { describe, expect, test } from "bun:test";
import { constants, createECDH, generateKeyPairSync, privateDecrypt } from "node:crypto";
import { cfbParam, hmacSha256, kdfa, kdfe, makeSalt, sha256 } from "../../../../lib/hsm/tpm2/crypto.ts";
import { hex, Reader } from "../../../../lib/hsm/tpm2/wire.ts";

const h = (s: string) => new Uint8Array(Buffer.from(s, "hex"));

function openssl(args: string[], stdin?: Uint8Array): Uint8Array {
  const r = Bun.spawnSync(["openssl", ...args], { stdin: stdin ?? "ignore" });
  if (r.exitCode !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr.toString()}`);
  return new Uint8Array(r.stdout);
}

/** `openssl kdf` prints AA:BB:…; back to bytes. */
function kdfOut(args: string[]): string {
  return new TextDecoder().decode(openssl(["kdf", ...args])).trim().replaceAll(":", "").toLowerCase();
}

const rows = [
  { name: "session key (ATH), 256 bits", key: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", label: "ATH", u: "a1".repeat(32), v: "b2".repeat(16), bits: 256 },
  { name: "CFB key and IV, 256 bits", key: "5e".repeat(32), label: "CFB", u: "01".repeat(32), v: "02".repeat(32), bits: 256 },
  { name: "two blocks (512 bits)", key: "42", label: "STORAGE", u: "", v: "c3".repeat(20), bits: 512 },
  { name: "truncated (128 bits)", key: "9f".repeat(16), label: "INTEGRITY", u: "77", v: "", bits: 128 },
];

describe("KDFa == openssl KBKDF (counter, HMAC-SHA256)", () => {
  test.each(rows)("$name", ({ key, label, u, v, bits }) => {
    const want = kdfOut([
      "-keylen", String(bits / 8), "-kdfopt", "mac:HMAC", "-kdfopt", "digest:SHA256", "-kdfopt", `hexkey:${key}`,
      "-kdfopt", `salt:${label}`, "-kdfopt", `hexinfo:${u}${v}`, "KBKDF",
    ]);
    expect(hex(kdfa(h(key), label, h(u), h(v), bits))).toBe(want);
  });
});

describe("KDFe == openssl SSKDF (SHA-256)", () => {
  test.each(rows)("$name", ({ key, label, u, v, bits }) => {
    const fixed = Buffer.from(`${label}\0`).toString("hex") + u + v;
    const want = kdfOut(["-keylen", String(bits / 8), "-kdfopt", "digest:SHA256", "-kdfopt", `hexkey:${key}`, "-kdfopt", `hexinfo:${fixed}`, "SSKDF"]);
    expect(hex(kdfe(h(key), label, h(u), h(v), bits))).toBe(want);
  });
});

describe("hashes", () => {
  test("sha256 of parts == sha256 of the concatenation (FIPS 180-4 'abc')", () => {
    expect(hex(sha256(h("61"), h("6263")))).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  });
  test("hmacSha256 == openssl dgst -hmac", () => {
    const want = new TextDecoder().decode(openssl(["dgst", "-sha256", "-mac", "HMAC", "-macopt", "hexkey:0b0b", "-r"], h("6869"))).split(" ")[0];
    expect(hex(hmacSha256(h("0b0b"), h("68"), h("69")))).toBe(want!);
  });
});

describe("parameter encryption == openssl enc -aes-128-cfb with KDFa(\"CFB\") key ‖ iv", () => {
  const value = h("aa".repeat(32));
  const newer = h("11".repeat(32));
  const older = h("22".repeat(16));
  test.each([
    { name: "32-byte secret", data: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff" },
    { name: "odd length (CFB is a stream mode)", data: "0102030405" },
    { name: "two blocks and a short one (each block's input is the previous ciphertext)", data: "00112233445566778899aabbccddeeff".repeat(2) + "0102030405060708" },
  ])("$name", async ({ data }) => {
    const keyIv = kdfa(value, "CFB", newer, older, 256);
    const want = openssl(["enc", "-aes-128-cfb", "-nosalt", "-K", hex(keyIv.subarray(0, 16)), "-iv", hex(keyIv.subarray(16))], h(data));
    const ct = await cfbParam(value, newer, older, h(data), false);
    expect(hex(ct)).toBe(hex(want));
    expect(hex(ct)).not.toBe(data);
    expect(hex(await cfbParam(value, newer, older, ct, true))).toBe(data);
  });
});

describe("salts: the receiving side derives the same salt", () => {
  test("ECC: ECDH with the storage key's private key, then KDFe(\"SECRET\", Qe.x, Qs.x)", async () => {
    const srk = createECDH("prime256v1");
    const pub = new Uint8Array(srk.generateKeys());
    const x = pub.subarray(1, 33);
    const { salt, encrypted } = await makeSalt({ kind: "ecc", x, y: pub.subarray(33) });
    const r = new Reader(encrypted); // TPMS_ECC_POINT
    const ex = r.tpm2b();
    const ey = r.tpm2b();
    r.end("point");
    const z = new Uint8Array(srk.computeSecret(Buffer.concat([Buffer.of(4), ex, ey])));
    expect(hex(kdfe(z, "SECRET", ex, x, 256))).toBe(hex(salt));
    expect(salt.length).toBe(32);
  });

  test("ECC: a point off the curve is refused", async () => {
    await expect(makeSalt({ kind: "ecc", x: new Uint8Array(32).fill(1), y: new Uint8Array(32).fill(2) })).rejects.toThrow(/not on P-256/);
  });

  test("RSA: OAEP-SHA256 with label \"SECRET\\0\" (Part 1 Annex B.10.3); another label fails", async () => {
    const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const n = new Uint8Array(Buffer.from(publicKey.export({ format: "jwk" }).n!, "base64url"));
    const { salt, encrypted } = await makeSalt({ kind: "rsa", n, exponent: 0 });
    const opts = (label: string) => ({ key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256", oaepLabel: Buffer.from(label) });
    expect(hex(privateDecrypt(opts("SECRET\0"), encrypted))).toBe(hex(salt));
    expect(() => privateDecrypt(opts("SECRET"), encrypted)).toThrow();
  });
});
