/**
 * The pkcs11 sealed-data fields: rows of data before → parsed fields after,
 * every rejection with its message, and write∘read = identity.
 */
import { describe, expect, test } from "bun:test";
import { isZbError } from "../../../../lib/errors.ts";
import { readSealed, writeSealed } from "../../../../lib/hsm/pkcs11/sealed.ts";
import type { SealedData } from "../../../../lib/hsm/types.ts";

const CT = Buffer.alloc(256, 7).toString("base64");
const FP = Buffer.alloc(32, 1).toString("base64");
const base: SealedData = { mechanism: "rsa-oaep-sha256", token: "zb-a", keyId: "0A1b", keyLabel: "luks", pubkeySha256: FP, ciphertext: CT };

describe("readSealed", () => {
  test.each([
    { name: "all fields", before: base, after: { mechanism: "rsa-oaep-sha256", token: "zb-a", id: "0a1b", label: "luks", fp: true } },
    { name: "id only, SHA-1 OAEP", before: { ...base, mechanism: "rsa-oaep-sha1", keyLabel: undefined }, after: { mechanism: "rsa-oaep-sha1", token: "zb-a", id: "0a1b", label: undefined, fp: true } },
    { name: "label only, v1.5 import without fingerprint", before: { ...base, mechanism: "rsa-pkcs1", keyId: undefined, pubkeySha256: undefined }, after: { mechanism: "rsa-pkcs1", token: "zb-a", id: undefined, label: "luks", fp: false } },
  ])("$name", ({ before, after }) => {
    const s = readSealed(strip(before));
    expect({
      mechanism: s.mechanism, token: s.token, id: s.sel.id && Buffer.from(s.sel.id).toString("hex"),
      label: s.sel.label, fp: s.pubkeySha256 !== undefined,
    }).toEqual(after);
    expect(s.ciphertext.byteLength).toBe(256);
  });

  test.each([
    { name: "unknown field", before: { ...base, pcrs: [7] }, why: 'unknown field "pcrs"' },
    { name: "unknown mechanism", before: { ...base, mechanism: "rsa-x509" }, why: 'unknown mechanism "rsa-x509"' },
    { name: "no mechanism", before: { ...base, mechanism: undefined }, why: "unknown mechanism undefined" },
    { name: "empty token label", before: { ...base, token: "" }, why: "no token label" },
    { name: "token is a number", before: { ...base, token: 5 }, why: "token is not a string" },
    { name: "odd hex id", before: { ...base, keyId: "abc" }, why: 'key id "abc" is not hex bytes' },
    { name: "no key name", before: { ...base, keyId: undefined, keyLabel: undefined }, why: "neither keyId nor keyLabel" },
    { name: "ciphertext not base64", before: { ...base, ciphertext: "%%%%" }, why: 'field "ciphertext" is not base64' },
    { name: "empty ciphertext", before: { ...base, ciphertext: "" }, why: "ciphertext is 0 bytes" },
    { name: "ciphertext over 2048 bytes", before: { ...base, ciphertext: Buffer.alloc(2049).toString("base64") }, why: "ciphertext is 2049 bytes" },
    { name: "short fingerprint", before: { ...base, pubkeySha256: Buffer.alloc(20).toString("base64") }, why: "pubkeySha256 is not 32 bytes" },
  ])("rejects $name", ({ before, why }) => {
    let err: unknown;
    try {
      readSealed(strip(before as Record<string, unknown>));
    } catch (e) {
      err = e;
    }
    expect(isZbError(err, "CRED_INVALID")).toBe(true);
    expect((err as Error).message).toContain(why);
  });

  test("writeSealed(readSealed(x)) keeps every field (id lower-cased)", () => {
    expect(writeSealed(readSealed(base))).toEqual({ ...base, keyId: "0a1b" });
  });
});

/** Rows spell absent fields as undefined; sealed data has no undefined values. */
function strip(o: Record<string, unknown>): SealedData {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as SealedData;
}
