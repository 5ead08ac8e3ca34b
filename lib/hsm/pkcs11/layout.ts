/**
 * PKCS#11 v2.40 constants and C struct layouts, as pure functions over bytes.
 *
 * Only LP64 is supported (x86_64 and aarch64 Linux, the two targets of
 * build.ts): `CK_ULONG` and pointers are 8 bytes, structs use natural
 * alignment without packing (PKCS#11 v2.40 §2.1 leaves packing to the
 * platform; Linux modules use the default). Both targets are little-endian.
 * Addresses are passed in as numbers so everything here is testable without
 * a module; lib/hsm/pkcs11/ffi.ts supplies real addresses.
 */

/** Size of CK_ULONG / CK_RV / handles / pointers on LP64. */
export const ULONG = 8;
/** CK_ATTRIBUTE = { CK_ATTRIBUTE_TYPE type; void *pValue; CK_ULONG ulValueLen } (v2.40 base spec §3.4). */
export const ATTRIBUTE_SIZE = 24;
/** CK_MECHANISM = { CK_MECHANISM_TYPE mechanism; void *pParameter; CK_ULONG ulParameterLen } (base spec §3.5). */
export const MECHANISM_SIZE = 24;
/** CK_RSA_PKCS_OAEP_PARAMS = { hashAlg; mgf; source; pSourceData; ulSourceDataLen } (v2.40 Current Mechanisms §2.1.7). */
export const OAEP_PARAMS_SIZE = 40;
/** sizeof(CK_INFO): version(2) manufacturerID[32] pad(6) flags(8) libraryDescription[32] libraryVersion(2) pad(6). */
export const INFO_SIZE = 88;
/** sizeof(CK_TOKEN_INFO): four strings (96), flags + ten CK_ULONGs (88), two versions, utcTime[16], pad. */
export const TOKEN_INFO_SIZE = 208;
/** CK_UNAVAILABLE_INFORMATION: ulValueLen when an attribute cannot be revealed (v2.40 §5.7 C_GetAttributeValue). */
export const UNAVAILABLE = 0xffff_ffff_ffff_ffffn;

/**
 * The CK_FUNCTION_LIST members in the order of the v2.40 header (pkcs11f.h,
 * which the spec's §5 follows). The table starts with CK_VERSION (2 bytes),
 * padded to 8, then one pointer per name; {@link functionOffset} derives the
 * offset from this list instead of a hand-kept index table.
 */
export const FUNCTIONS = [
  "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList",
  "C_GetSlotList", "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo",
  "C_InitToken", "C_InitPIN", "C_SetPIN",
  "C_OpenSession", "C_CloseSession", "C_CloseAllSessions", "C_GetSessionInfo",
  "C_GetOperationState", "C_SetOperationState", "C_Login", "C_Logout",
  "C_CreateObject", "C_CopyObject", "C_DestroyObject", "C_GetObjectSize",
  "C_GetAttributeValue", "C_SetAttributeValue", "C_FindObjectsInit", "C_FindObjects", "C_FindObjectsFinal",
  "C_EncryptInit", "C_Encrypt", "C_EncryptUpdate", "C_EncryptFinal",
  "C_DecryptInit", "C_Decrypt", "C_DecryptUpdate", "C_DecryptFinal",
  "C_DigestInit", "C_Digest", "C_DigestUpdate", "C_DigestKey", "C_DigestFinal",
  "C_SignInit", "C_Sign", "C_SignUpdate", "C_SignFinal", "C_SignRecoverInit", "C_SignRecover",
  "C_VerifyInit", "C_Verify", "C_VerifyUpdate", "C_VerifyFinal", "C_VerifyRecoverInit", "C_VerifyRecover",
  "C_DigestEncryptUpdate", "C_DecryptDigestUpdate", "C_SignEncryptUpdate", "C_DecryptVerifyUpdate",
  "C_GenerateKey", "C_GenerateKeyPair", "C_WrapKey", "C_UnwrapKey", "C_DeriveKey",
  "C_SeedRandom", "C_GenerateRandom", "C_GetFunctionStatus", "C_CancelFunction", "C_WaitForSlotEvent",
] as const;
export type FunctionName = (typeof FUNCTIONS)[number];

/** Byte offset of a function pointer inside CK_FUNCTION_LIST. */
export function functionOffset(name: FunctionName): number {
  return ULONG + ULONG * FUNCTIONS.indexOf(name);
}

/** Object classes, key types, attributes, mechanisms and flags used here (v2.40 base spec §4 and §5). */
export const CKO = { PUBLIC_KEY: 2, PRIVATE_KEY: 3, CERTIFICATE: 1 } as const;
export const CKK = { RSA: 0 } as const;
export const CKA = {
  CLASS: 0x000, LABEL: 0x003, VALUE: 0x011, KEY_TYPE: 0x100, ID: 0x102,
  MODULUS: 0x120, PUBLIC_EXPONENT: 0x122,
} as const;
export const CKM = { RSA_PKCS: 0x001, RSA_PKCS_OAEP: 0x009, SHA_1: 0x220, SHA256: 0x250 } as const;
/** MGF1 with SHA-1 / SHA-256 and the OAEP "encoding parameter specified" source (Current Mechanisms §2.1.7). */
export const CKG_MGF1_SHA1 = 0x1;
export const CKG_MGF1_SHA256 = 0x2;
export const CKZ_DATA_SPECIFIED = 0x1;
export const CKU_USER = 1;
/** C_OpenSession flags: CKF_SERIAL_SESSION is mandatory (§5.6); no CKF_RW_SESSION, zb never writes. */
export const CKF_SERIAL_SESSION = 0x4;
export const CKF_TOKEN_PRESENT = 0x1;
/** CK_TOKEN_INFO.flags: the token has been initialized (C_InitToken) and can hold keys (§3.2). */
export const CKF_TOKEN_INITIALIZED = 0x400;
/** CK_TOKEN_INFO.flags: one more wrong user PIN locks the token (§3.2). */
export const CKF_USER_PIN_FINAL_TRY = 0x20000;

/** Return values zb tells apart or names in messages (v2.40 base spec §5.1). */
export const CKR: Record<string, number> = {
  OK: 0x0, CANCEL: 0x1, HOST_MEMORY: 0x2, SLOT_ID_INVALID: 0x3, GENERAL_ERROR: 0x5,
  FUNCTION_FAILED: 0x6, ARGUMENTS_BAD: 0x7, ATTRIBUTE_SENSITIVE: 0x11, ATTRIBUTE_TYPE_INVALID: 0x12,
  DATA_INVALID: 0x20, DATA_LEN_RANGE: 0x21, DEVICE_ERROR: 0x30, DEVICE_MEMORY: 0x31, DEVICE_REMOVED: 0x32,
  ENCRYPTED_DATA_INVALID: 0x40, ENCRYPTED_DATA_LEN_RANGE: 0x41, FUNCTION_NOT_SUPPORTED: 0x54,
  KEY_HANDLE_INVALID: 0x60, KEY_SIZE_RANGE: 0x62, KEY_TYPE_INCONSISTENT: 0x63,
  KEY_FUNCTION_NOT_PERMITTED: 0x68, MECHANISM_INVALID: 0x70, MECHANISM_PARAM_INVALID: 0x71,
  OBJECT_HANDLE_INVALID: 0x82, OPERATION_ACTIVE: 0x90, OPERATION_NOT_INITIALIZED: 0x91,
  PIN_INCORRECT: 0xa0, PIN_INVALID: 0xa1, PIN_LEN_RANGE: 0xa2, PIN_EXPIRED: 0xa3, PIN_LOCKED: 0xa4,
  SESSION_CLOSED: 0xb0, SESSION_COUNT: 0xb1, SESSION_HANDLE_INVALID: 0xb3, TEMPLATE_INCOMPLETE: 0xd0,
  TEMPLATE_INCONSISTENT: 0xd1, TOKEN_NOT_PRESENT: 0xe0, TOKEN_NOT_RECOGNIZED: 0xe1,
  USER_ALREADY_LOGGED_IN: 0x100, USER_NOT_LOGGED_IN: 0x101, USER_PIN_NOT_INITIALIZED: 0x102,
  USER_TYPE_INVALID: 0x103, BUFFER_TOO_SMALL: 0x150, CRYPTOKI_NOT_INITIALIZED: 0x190,
  CRYPTOKI_ALREADY_INITIALIZED: 0x191, LIBRARY_LOAD_FAILED: 0x1c2, PIN_TOO_WEAK: 0x1c3,
};

const CKR_NAMES = new Map(Object.entries(CKR).map(([k, v]) => [v, `CKR_${k}`]));

/** `CKR_PIN_INCORRECT (0xa0)`, or `CKR 0x…` for values zb does not name (vendor codes included). */
export function rvName(rv: number): string {
  const hex = `0x${rv.toString(16)}`;
  const name = CKR_NAMES.get(rv);
  return name ? `${name} (${hex})` : `CKR ${hex}`;
}

/** One CK_ATTRIBUTE as the C side sees it: a type and a (pointer, length) pair. */
export interface RawAttribute {
  type: number;
  /** Address of the value buffer; 0 asks C_GetAttributeValue for the length only. */
  addr: number;
  len: number | bigint;
}

/** An array of CK_ATTRIBUTE (a "template"), 24 bytes per entry. */
export function encodeAttributes(attrs: readonly RawAttribute[]): Uint8Array {
  const out = new Uint8Array(ATTRIBUTE_SIZE * attrs.length);
  const v = view(out);
  attrs.forEach((a, i) => {
    const o = i * ATTRIBUTE_SIZE;
    v.setBigUint64(o, BigInt(a.type), true);
    v.setBigUint64(o + 8, BigInt(a.addr), true);
    v.setBigUint64(o + 16, BigInt(a.len), true);
  });
  return out;
}

/** The ulValueLen fields of a template after C_GetAttributeValue filled them in. */
export function attributeLengths(template: Uint8Array): bigint[] {
  const v = view(template);
  const n = template.byteLength / ATTRIBUTE_SIZE;
  return Array.from({ length: n }, (_, i) => v.getBigUint64(i * ATTRIBUTE_SIZE + 16, true));
}

/** A CK_MECHANISM with an optional parameter block. */
export function encodeMechanism(type: number, paramAddr = 0, paramLen = 0): Uint8Array {
  const out = new Uint8Array(MECHANISM_SIZE);
  const v = view(out);
  v.setBigUint64(0, BigInt(type), true);
  v.setBigUint64(8, BigInt(paramAddr), true);
  v.setBigUint64(16, BigInt(paramLen), true);
  return out;
}

/** The OAEP hash (and MGF1 hash: zb always uses the same one for both, as RFC 8017 §A.2.1 recommends). */
export type OaepHash = "sha256" | "sha1";

/**
 * CK_RSA_PKCS_OAEP_PARAMS for OAEP with `hash` for both the label hash and
 * MGF1, and an empty label: Current Mechanisms §2.1.7 says an empty encoding
 * parameter is pSourceData = NULL, ulSourceDataLen = 0, with source
 * CKZ_DATA_SPECIFIED.
 */
export function encodeOaepParams(hash: OaepHash): Uint8Array {
  const out = new Uint8Array(OAEP_PARAMS_SIZE);
  const v = view(out);
  v.setBigUint64(0, BigInt(hash === "sha256" ? CKM.SHA256 : CKM.SHA_1), true);
  v.setBigUint64(8, BigInt(hash === "sha256" ? CKG_MGF1_SHA256 : CKG_MGF1_SHA1), true);
  v.setBigUint64(16, BigInt(CKZ_DATA_SPECIFIED), true);
  return out; // pSourceData and ulSourceDataLen stay 0
}

/** A CK_ULONG value (for CKA_CLASS and CKA_KEY_TYPE templates). */
export function ulongBytes(n: number): Uint8Array {
  const out = new Uint8Array(ULONG);
  view(out).setBigUint64(0, BigInt(n), true);
  return out;
}

/** What C_GetInfo reports about the module. */
export interface ModuleInfo {
  cryptokiVersion: string;
  manufacturer: string;
  library: string;
  libraryVersion: string;
}

/** Decode CK_INFO (LP64 offsets: manufacturerID @2, flags @40, libraryDescription @48, libraryVersion @80). */
export function decodeInfo(b: Uint8Array): ModuleInfo {
  return {
    cryptokiVersion: version(b, 0),
    manufacturer: padded(b, 2, 32),
    library: padded(b, 48, 32),
    libraryVersion: version(b, 80),
  };
}

/** What C_GetTokenInfo reports about a token. */
export interface TokenInfo {
  label: string;
  manufacturer: string;
  model: string;
  serial: string;
  flags: number;
}

/** Decode CK_TOKEN_INFO (LP64 offsets: label @0, manufacturerID @32, model @64, serialNumber @80, flags @96). */
export function decodeTokenInfo(b: Uint8Array): TokenInfo {
  return {
    label: padded(b, 0, 32),
    manufacturer: padded(b, 32, 32),
    model: padded(b, 64, 16),
    serial: padded(b, 80, 16),
    flags: Number(view(b).getBigUint64(96, true)),
  };
}

/**
 * CK_UTF8CHAR fields are blank-padded and not NUL-terminated (CK_INFO and CK_TOKEN_INFO in v2.40 base
 * spec §3.2); some modules NUL-pad anyway, so both are trimmed.
 */
function padded(b: Uint8Array, off: number, len: number): string {
  return new TextDecoder().decode(b.subarray(off, off + len)).replace(/[ \0]+$/, "");
}

function version(b: Uint8Array, off: number): string {
  return `${b[off]}.${b[off + 1]}`;
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}
