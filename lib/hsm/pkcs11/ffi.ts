/**
 * The host edge of the pkcs11 backend: dlopen a PKCS#11 module with bun:ffi
 * and call the few Cryptoki functions zb needs through its function list.
 *
 * Only C_GetFunctionList is looked up by name (PKCS#11 v2.40 base spec §5.4:
 * it is the one entry point every module must export); every other function
 * comes from the CK_FUNCTION_LIST it returns, at the offset that
 * lib/hsm/pkcs11/layout.ts derives from the header's order. That is how
 * modules are meant to be used and it works with modules that export nothing
 * else (p11-kit proxies, some vendor libraries).
 *
 * Each call checks CK_RV and throws {@link CkError}; the caller classifies it.
 */
import { CFunction, dlopen, FFIType, ptr, read, type Pointer } from "bun:ffi";
import { existsSync } from "node:fs";
import { ZbError } from "../../errors.ts";
import { libraryDirs, systemLibrary } from "../../sys/dlopen.ts";
import {
  attributeLengths, CKF_SERIAL_SESSION, CKR, decodeInfo, decodeTokenInfo, encodeAttributes, functionOffset,
  INFO_SIZE, rvName, TOKEN_INFO_SIZE, UNAVAILABLE, type FunctionName, type ModuleInfo, type TokenInfo,
} from "./layout.ts";

const { ptr: P, u64: UL, u8: BBOOL } = FFIType;

/** Argument types per prototype (v2.40 §5); CK_ULONG and handles are u64 on LP64, CK_BBOOL is a byte. */
const SIGNATURES = {
  C_Initialize: [P],
  C_Finalize: [P],
  C_GetInfo: [P],
  C_GetSlotList: [BBOOL, P, P],
  C_GetTokenInfo: [UL, P],
  C_OpenSession: [UL, UL, P, P, P],
  C_CloseSession: [UL],
  C_Login: [UL, UL, P, UL],
  C_Logout: [UL],
  C_GetAttributeValue: [UL, UL, P, UL],
  C_FindObjectsInit: [UL, P, UL],
  C_FindObjects: [UL, P, UL, P],
  C_FindObjectsFinal: [UL],
  C_EncryptInit: [UL, P, UL],
  C_DecryptInit: [UL, P, UL],
  C_Decrypt: [UL, P, UL, P, P],
} as const satisfies Partial<Record<FunctionName, readonly FFIType[]>>;

type Name = keyof typeof SIGNATURES;
type Fn = (...args: unknown[]) => bigint;

/** How many times the slot list is asked for while tokens keep appearing between the size query and the fill. */
export const SLOT_LIST_ATTEMPTS = 4;

/** A failed Cryptoki call; `rv` is the CK_RV. A ZbError (HSM_FAILED) so it never escapes untyped. */
export class CkError extends ZbError {
  constructor(readonly fn: string, readonly rv: number, what: string) {
    super("HSM_FAILED", `cannot ${what}: ${fn} returned ${rvName(rv)}`);
  }
}

/**
 * Buffers a C call holds pointers into (templates, mechanism parameters).
 * A pointer taken with ptr() does not keep its TypedArray alive, so they are
 * parked here for the duration of the call.
 */
const inFlight = new Set<Uint8Array>();

function pinned<T>(bufs: Uint8Array[], call: () => T): T {
  for (const b of bufs) inFlight.add(b);
  try {
    return call();
  } finally {
    for (const b of bufs) inFlight.delete(b);
  }
}

/** Address of a buffer for a struct field; empty buffers become NULL. */
export function addressOf(b: Uint8Array): number {
  return b.byteLength === 0 ? 0 : ptr(b);
}

/** One loaded module and its function table. Obtain with {@link loadModule}. */
export class Cryptoki {
  constructor(readonly path: string, private readonly fns: Record<Name, Fn>) {}

  private call(name: Name, what: string, ...args: unknown[]): void {
    const rv = Number(this.fns[name](...args));
    if (rv !== CKR.OK) throw new CkError(name, rv, what);
  }

  /** C_Initialize with NULL args: zb calls from one thread only (v2.40 §5.4). */
  initialize(): void {
    this.call("C_Initialize", `initialize PKCS#11 module ${this.path}`, null);
  }

  finalize(): void {
    this.call("C_Finalize", `finalize PKCS#11 module ${this.path}`, null);
  }

  info(): ModuleInfo {
    const b = new Uint8Array(INFO_SIZE);
    this.call("C_GetInfo", `read PKCS#11 module info`, b);
    return decodeInfo(b);
  }

  /**
   * Slots with a token present, in module order (size query, then fill:
   * v2.40 §5.5). A token plugged in between the two calls makes the fill
   * answer CKR_BUFFER_TOO_SMALL with the new count (§5.2, "Buffer size
   * conventions"): the pair is asked again, a few times.
   */
  slots(): bigint[] {
    const count = new BigUint64Array(1);
    for (let attempt = 1; ; attempt++) {
      this.call("C_GetSlotList", "list PKCS#11 slots", 1, null, count);
      if (count[0] === 0n) return [];
      const list = new BigUint64Array(Number(count[0]));
      const rv = Number(this.fns.C_GetSlotList(1, list, count));
      if (rv === CKR.OK) return Array.from(list.subarray(0, Number(count[0])));
      if (rv !== CKR.BUFFER_TOO_SMALL || attempt >= SLOT_LIST_ATTEMPTS) throw new CkError("C_GetSlotList", rv, "list PKCS#11 slots");
    }
  }

  tokenInfo(slot: bigint): TokenInfo {
    const b = new Uint8Array(TOKEN_INFO_SIZE);
    this.call("C_GetTokenInfo", `read token info of slot ${slot}`, slot, b);
    return decodeTokenInfo(b);
  }

  /** A read-only serial session (no callback: Notify and pApplication are NULL). */
  openSession(slot: bigint): bigint {
    const h = new BigUint64Array(1);
    this.call("C_OpenSession", `open a session on slot ${slot}`, slot, BigInt(CKF_SERIAL_SESSION), null, null, h);
    return h[0]!;
  }

  closeSession(session: bigint): void {
    this.call("C_CloseSession", "close the PKCS#11 session", session);
  }

  /** C_Login straight from the caller's buffer; an empty PIN is NULL (protected authentication path, §5.6). */
  login(session: bigint, userType: number, pin: Uint8Array): void {
    this.call("C_Login", "log in to the token", session, BigInt(userType), pin.byteLength ? pin : null, BigInt(pin.byteLength));
  }

  logout(session: bigint): void {
    this.call("C_Logout", "log out of the token", session);
  }

  /** All objects matching a template of (type, value) pairs, via FindObjectsInit/FindObjects/FindObjectsFinal (§5.7). */
  findObjects(session: bigint, attrs: readonly { type: number; value: Uint8Array }[]): bigint[] {
    const values = attrs.map((a) => a.value);
    const tpl = encodeAttributes(attrs.map((a) => ({ type: a.type, addr: addressOf(a.value), len: a.value.byteLength })));
    pinned([tpl, ...values], () => this.call("C_FindObjectsInit", "search the token", session, tpl.byteLength ? tpl : null, BigInt(attrs.length)));
    const found: bigint[] = [];
    try {
      const batch = new BigUint64Array(16);
      const n = new BigUint64Array(1);
      for (;;) {
        this.call("C_FindObjects", "search the token", session, batch, BigInt(batch.length), n);
        if (n[0] === 0n) break;
        found.push(...batch.subarray(0, Number(n[0])));
      }
    } finally {
      this.call("C_FindObjectsFinal", "end the token search", session);
    }
    return found;
  }

  /**
   * Attribute values of one object; null for each attribute the object lacks
   * or will not reveal (ulValueLen = CK_UNAVAILABLE_INFORMATION, §5.7).
   * First call sizes, second fills.
   */
  attributes(session: bigint, object: bigint, types: readonly number[]): (Uint8Array | null)[] {
    const sizing = encodeAttributes(types.map((type) => ({ type, addr: 0, len: 0 })));
    this.lenient("C_GetAttributeValue", "read object attributes", session, object, sizing, BigInt(types.length));
    const lens = attributeLengths(sizing);
    const values = lens.map((l) => (l === UNAVAILABLE ? null : new Uint8Array(Number(l))));
    const wanted = types.flatMap((type, i) => (values[i] ? [{ type, value: values[i]! }] : []));
    if (wanted.length === 0) return values;
    const tpl = encodeAttributes(wanted.map((w) => ({ type: w.type, addr: addressOf(w.value), len: w.value.byteLength })));
    pinned([tpl, ...wanted.map((w) => w.value)], () =>
      this.call("C_GetAttributeValue", "read object attributes", session, object, tpl, BigInt(wanted.length)));
    return values;
  }

  /** C_GetAttributeValue may report sensitive or invalid types and still fill the rest (§5.7). */
  private lenient(name: Name, what: string, ...args: unknown[]): void {
    const rv = Number(this.fns[name](...args));
    if (rv !== CKR.OK && rv !== CKR.ATTRIBUTE_SENSITIVE && rv !== CKR.ATTRIBUTE_TYPE_INVALID) throw new CkError(name, rv, what);
  }

  /**
   * C_EncryptInit on a public key, returning the CK_RV instead of throwing:
   * a login-free way to ask whether the token accepts a mechanism and its
   * parameters. The operation it starts ends when the session closes (§5.8).
   */
  tryEncryptInit(session: bigint, key: bigint, mechanism: Uint8Array, keep: Uint8Array[]): number {
    return pinned([mechanism, ...keep], () => Number(this.fns.C_EncryptInit(session, mechanism, key)));
  }

  /**
   * Single-part decryption (§5.9). `mechanism` is an encoded CK_MECHANISM and
   * `keep` the buffers it points into. The output buffer is as large as the
   * ciphertext (enough for RSA); it is wiped after the plaintext is copied out.
   */
  decrypt(session: bigint, key: bigint, mechanism: Uint8Array, keep: Uint8Array[], data: Uint8Array): Uint8Array {
    const out = new Uint8Array(Math.max(data.byteLength, 1));
    const len = new BigUint64Array([BigInt(out.byteLength)]);
    try {
      pinned([mechanism, ...keep], () => {
        this.call("C_DecryptInit", "start decryption on the token", session, mechanism, key);
        this.call("C_Decrypt", "decrypt on the token", session, data, BigInt(data.byteLength), out, len);
      });
      return out.slice(0, Number(len[0]));
    } finally {
      out.fill(0);
    }
  }
}

const loaded = new Map<string, Cryptoki>();

/**
 * Load a module once per path and keep it loaded: dlclose() on modules such
 * as SoftHSM (which registers OpenSSL clean-up handlers) can crash the
 * process at exit, and keeping the handle makes later calls cheap.
 * A name without a folder is resolved with {@link systemLibrary}, never
 * against the working directory.
 * @throws {ZbError} HSM_ABSENT when the file is missing (a bare name: in no
 *   system library folder), is not a shared
 *   library, or has no C_GetFunctionList / its call fails
 */
export function loadModule(name: string, resolve: (name: string) => string | null = systemLibrary): Cryptoki {
  // A bare name (`libsofthsm2.so`) is looked up in the system's library folders only: handed to
  // Bun's dlopen as it is, a file of that name in the working directory could be loaded (lib/sys/dlopen.ts).
  const path = resolve(name);
  if (path === null) {
    throw new ZbError("HSM_ABSENT", `cannot load PKCS#11 module ${name}: it is in none of the system library folders (${libraryDirs().join(", ")})`, {
      hint: "give pkcs11.module= (or --pkcs11-module) as an absolute path",
    });
  }
  const cached = loaded.get(path);
  if (cached) return cached;
  if (!existsSync(path)) throw new ZbError("HSM_ABSENT", `cannot load PKCS#11 module ${path}: no such file`);
  let lib;
  try {
    lib = dlopen(path, { C_GetFunctionList: { args: [P], returns: UL } });
  } catch (e) {
    throw new ZbError("HSM_ABSENT", `cannot load PKCS#11 module ${path}: ${(e as Error).message}`, { cause: e });
  }
  const out = new BigUint64Array(1);
  const rv = Number(lib.symbols.C_GetFunctionList(out));
  if (rv !== CKR.OK || out[0] === 0n) {
    throw new ZbError("HSM_ABSENT", `cannot load PKCS#11 module ${path}: C_GetFunctionList returned ${rvName(rv)}`);
  }
  const table = Number(out[0]) as Pointer;
  const fns = {} as Record<Name, Fn>;
  for (const [name, args] of Object.entries(SIGNATURES) as [Name, readonly FFIType[]][]) {
    const fp = read.ptr(table, functionOffset(name));
    if (!fp) throw new ZbError("HSM_ABSENT", `cannot load PKCS#11 module ${path}: it does not provide ${name}`);
    fns[name] = CFunction({ ptr: fp as Pointer, args: [...args], returns: UL }) as unknown as Fn;
  }
  const ck = new Cryptoki(path, fns);
  loaded.set(path, ck);
  return ck;
}
