/**
 * PKCS#11 LP64 struct layouts and the CK_FUNCTION_LIST order. Expected bytes
 * are written out by hand from the v2.40 struct definitions; the offsets were
 * cross-checked once with gcc offsetof() on p11-kit's pkcs11.h (CK_INFO 88,
 * CK_TOKEN_INFO 208 with flags @96, CK_ATTRIBUTE/CK_MECHANISM 24,
 * CK_RSA_PKCS_OAEP_PARAMS 40, C_Decrypt @280, C_WaitForSlotEvent @544).
 * The function table is checked against a real module: SoftHSM2 exports
 * every C_* symbol, so each table slot must hold the address dlsym() gives.
 */
import { dlopen, FFIType, read, type Pointer } from "bun:ffi";
import { describe, expect, test } from "bun:test";
import {
  ATTRIBUTE_SIZE, attributeLengths, CKA, CKM, decodeInfo, decodeTokenInfo, encodeAttributes, encodeMechanism,
  encodeOaepParams, FUNCTIONS, functionOffset, INFO_SIZE, MECHANISM_SIZE, OAEP_PARAMS_SIZE, rvName, TOKEN_INFO_SIZE,
  ulongBytes, type FunctionName,
} from "../../../../lib/hsm/pkcs11/layout.ts";
import { SOFTHSM_MODULE } from "../../../peers/softhsm.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
/** A CK_ULONG as 16 hex digits, little-endian. */
const ul = (n: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b.toString("hex");
};

describe("CK_ATTRIBUTE templates (type, pValue, ulValueLen; 8 bytes each)", () => {
  test.each([
    { name: "empty template", attrs: [], after: "" },
    { name: "CKA_CLASS, value at 0x1000, 8 bytes", attrs: [{ type: CKA.CLASS, addr: 0x1000, len: 8 }], after: ul(0n) + ul(0x1000n) + ul(8n) },
    {
      name: "CKA_ID then CKA_LABEL",
      attrs: [{ type: CKA.ID, addr: 0x7f00_1234_5678, len: 1 }, { type: CKA.LABEL, addr: 0x10, len: 4 }],
      after: ul(0x102n) + ul(0x7f0012345678n) + ul(1n) + ul(3n) + ul(0x10n) + ul(4n),
    },
    { name: "size query: NULL pValue", attrs: [{ type: CKA.MODULUS, addr: 0, len: 0 }], after: ul(0x120n) + ul(0n) + ul(0n) },
  ])("$name", ({ attrs, after }) => {
    const b = encodeAttributes(attrs);
    expect(b.byteLength).toBe(ATTRIBUTE_SIZE * attrs.length);
    expect(hex(b)).toBe(after);
  });

  test("ulValueLen read back, CK_UNAVAILABLE_INFORMATION included", () => {
    const b = encodeAttributes([{ type: 1, addr: 0, len: 256 }, { type: 2, addr: 0, len: 0xffff_ffff_ffff_ffffn }]);
    expect(attributeLengths(b)).toEqual([256n, 0xffff_ffff_ffff_ffffn]);
  });
});

describe("CK_MECHANISM and CK_RSA_PKCS_OAEP_PARAMS", () => {
  test.each([
    { name: "CKM_RSA_PKCS, no parameter", before: [CKM.RSA_PKCS, 0, 0], after: ul(1n) + ul(0n) + ul(0n) },
    { name: "CKM_RSA_PKCS_OAEP with a 40-byte parameter", before: [CKM.RSA_PKCS_OAEP, 0xdead_beef, 40], after: ul(9n) + ul(0xdeadbeefn) + ul(40n) },
  ])("$name", ({ before, after }) => {
    const [type, addr, len] = before as [number, number, number];
    const b = encodeMechanism(type, addr, len);
    expect(b.byteLength).toBe(MECHANISM_SIZE);
    expect(hex(b)).toBe(after);
  });

  test.each([
    // hashAlg, mgf, source = CKZ_DATA_SPECIFIED, pSourceData = NULL, ulSourceDataLen = 0
    { hash: "sha256" as const, after: ul(0x250n) + ul(2n) + ul(1n) + ul(0n) + ul(0n) },
    { hash: "sha1" as const, after: ul(0x220n) + ul(1n) + ul(1n) + ul(0n) + ul(0n) },
  ])("OAEP params, $hash", ({ hash, after }) => {
    const b = encodeOaepParams(hash);
    expect(b.byteLength).toBe(OAEP_PARAMS_SIZE);
    expect(hex(b)).toBe(after);
  });

  test.each([
    { before: 0, after: "0000000000000000" },
    { before: 3, after: "0300000000000000" },
    { before: 0x80000001, after: "0100008000000000" },
  ])("CK_ULONG $before", ({ before, after }) => {
    expect(hex(ulongBytes(before))).toBe(after);
  });
});

/** A blank-padded CK_UTF8CHAR field. */
const field = (s: string, n: number) => Buffer.concat([Buffer.from(s), Buffer.alloc(n - Buffer.byteLength(s), 0x20)]);

describe("CK_INFO and CK_TOKEN_INFO decoding", () => {
  test("CK_INFO: versions, blank-padded strings, flags skipped", () => {
    const b = Buffer.alloc(INFO_SIZE, 0xee);
    b.set([2, 40], 0);
    field("SoftHSM", 32).copy(b, 2);
    b.writeBigUInt64LE(0n, 40);
    field("Implementation of PKCS11", 32).copy(b, 48);
    b.set([2, 6], 80);
    expect(decodeInfo(new Uint8Array(b))).toEqual({
      cryptokiVersion: "2.40", manufacturer: "SoftHSM", library: "Implementation of PKCS11", libraryVersion: "2.6",
    });
  });

  test.each([
    { name: "blank padding", pad: 0x20, label: "zb-a" },
    { name: "NUL padding (some modules)", pad: 0x00, label: "zb-a" },
    { name: "a full 32-byte label", pad: 0x20, label: "x".repeat(32) },
  ])("CK_TOKEN_INFO: $name", ({ pad, label }) => {
    const b = Buffer.alloc(TOKEN_INFO_SIZE, pad);
    b.write(label, 0);
    b.write("SoftHSM project", 32);
    b.write("SoftHSM v2", 64);
    b.write("3c46fca20bd96292", 80);
    b.writeBigUInt64LE(0x42dn, 96);
    expect(decodeTokenInfo(new Uint8Array(b))).toEqual({
      label, manufacturer: "SoftHSM project", model: "SoftHSM v2", serial: "3c46fca20bd96292", flags: 0x42d,
    });
  });
});

describe("CK_RV names", () => {
  test.each([
    { rv: 0xa0, after: "CKR_PIN_INCORRECT (0xa0)" },
    { rv: 0x7, after: "CKR_ARGUMENTS_BAD (0x7)" },
    { rv: 0x191, after: "CKR_CRYPTOKI_ALREADY_INITIALIZED (0x191)" },
    { rv: 0x80000123, after: "CKR 0x80000123" },
  ])("$rv → $after", ({ rv, after }) => {
    expect(rvName(rv)).toBe(after);
  });
});

describe("CK_FUNCTION_LIST order", () => {
  test.each([
    { name: "C_Initialize", offset: 8 },
    { name: "C_GetFunctionList", offset: 32 },
    { name: "C_Login", offset: 152 },
    { name: "C_Decrypt", offset: 280 },
    { name: "C_WaitForSlotEvent", offset: 544 },
  ])("$name at byte $offset (gcc offsetof on pkcs11.h)", ({ name, offset }) => {
    expect(functionOffset(name as FunctionName)).toBe(offset);
  });

  test("all 68 v2.40 slots of SoftHSM2's table hold the function dlsym() names", () => {
    expect(FUNCTIONS.length).toBe(68);
    const symbols = Object.fromEntries(FUNCTIONS.map((n) => [n, { args: [], returns: FFIType.void }]));
    const lib = dlopen(SOFTHSM_MODULE, { ...symbols, C_GetFunctionList: { args: [FFIType.ptr], returns: FFIType.u64 } });
    const out = new BigUint64Array(1);
    expect(lib.symbols.C_GetFunctionList(out)).toBe(0n);
    const table = Number(out[0]) as Pointer;
    expect(read.u8(table, 0)).toBe(2); // CK_VERSION major of a v2.x table
    const exported = lib.symbols as unknown as Record<string, { ptr: number }>;
    const mismatched = FUNCTIONS.filter((n) => read.ptr(table, functionOffset(n)) !== exported[n]!.ptr);
    expect(mismatched).toEqual([]);
    // Not closed: SoftHSM stays loaded for the other tests (see lib/hsm/pkcs11/ffi.ts loadModule).
  });
});
