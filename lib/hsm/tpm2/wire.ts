/**
 * TPM 2.0 wire format: big-endian marshalling, command/response framing and
 * response-code decoding. Pure: no I/O, no crypto.
 *
 * References: TCG TPM 2.0 Library Part 1 §18 (command/response structure),
 * Part 2 §6 (constants), §6.6 (TPM_RC), §10 (TPM2B), Part 3 per command.
 */
import { ZbError } from "../../errors.ts";

/** Part 2 §6.9 TPM_ST: command/response tags. */
export const ST_NO_SESSIONS = 0x8001;
export const ST_SESSIONS = 0x8002;

/** Part 2 §6.5.2 TPM_CC, the commands zb sends. */
export const CC = {
  EvictControl: 0x120,
  CreatePrimary: 0x131,
  Create: 0x153,
  Load: 0x157,
  Unseal: 0x15e,
  FlushContext: 0x165,
  PolicyCommandCode: 0x16c,
  ReadPublic: 0x173,
  StartAuthSession: 0x176,
  GetCapability: 0x17a,
  GetRandom: 0x17b,
  PCR_Read: 0x17e,
  PolicyPCR: 0x17f,
  PolicyGetDigest: 0x189,
  PCR_Extend: 0x182,
} as const;

/** Part 2 §7.4 permanent handles. */
export const RH_OWNER = 0x40000001;
export const RH_NULL = 0x40000007;
export const RS_PW = 0x40000009;

/** Part 2 §6.3 TPM_ALG_ID values used here. */
export const ALG = {
  RSA: 0x0001,
  AES: 0x0006,
  KEYEDHASH: 0x0008,
  SHA256: 0x000b,
  NULL: 0x0010,
  ECC: 0x0023,
  CFB: 0x0043,
} as const;

/** Part 2 §6.4 TPM_ECC_CURVE. */
export const ECC_NIST_P256 = 0x0003;

/** Largest response a TPM sends (Part 2 §6.13 MAX_RESPONSE_SIZE is 4096 on PC-client TPMs). */
export const MAX_RESPONSE = 4096;

function malformed(why: string): ZbError {
  return new ZbError("HSM_FAILED", `cannot parse TPM data: ${why}`);
}

/** Growable big-endian writer. */
export class Writer {
  private buf = new Uint8Array(256);
  private len = 0;

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    next.set(this.buf.subarray(0, this.len));
    this.buf.fill(0); // may have held sensitive bytes
    this.buf = next;
  }

  u8(v: number): this {
    this.room(1);
    this.buf[this.len++] = v & 0xff;
    return this;
  }

  u16(v: number): this {
    this.room(2);
    this.buf[this.len++] = (v >>> 8) & 0xff;
    this.buf[this.len++] = v & 0xff;
    return this;
  }

  u32(v: number): this {
    this.room(4);
    new DataView(this.buf.buffer).setUint32(this.len, v >>> 0);
    this.len += 4;
    return this;
  }

  bytes(b: Uint8Array): this {
    this.room(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
    return this;
  }

  /** TPM2B: u16 size, then the bytes (Part 2 §10.4). */
  tpm2b(b: Uint8Array): this {
    if (b.length > 0xffff) throw new ZbError("INTERNAL", "internal error: TPM2B larger than 65535 bytes");
    return this.u16(b.length).bytes(b);
  }

  /** A copy of the bytes written; the internal buffer is wiped. */
  finish(): Uint8Array {
    const out = this.buf.slice(0, this.len);
    this.buf.fill(0);
    this.len = 0;
    return out;
  }
}

/** Marshal with a writer callback. */
export function marshal(fn: (w: Writer) => void): Uint8Array {
  const w = new Writer();
  fn(w);
  return w.finish();
}

/** A TPM2B whose content is itself a marshalled structure (e.g. TPM2B_PUBLIC). */
export function sized(fn: (w: Writer) => void): Uint8Array {
  const inner = marshal(fn);
  try {
    return marshal((w) => w.tpm2b(inner));
  } finally {
    inner.fill(0);
  }
}

/** Bounds-checked big-endian reader; every overrun is a ZbError HSM_FAILED. */
export class Reader {
  constructor(private readonly buf: Uint8Array, private off = 0) {}

  get remaining(): number {
    return this.buf.length - this.off;
  }

  private need(n: number, what: string): void {
    if (this.off + n > this.buf.length) throw malformed(`${what} runs past the end (${this.buf.length} bytes)`);
  }

  u8(what = "byte"): number {
    this.need(1, what);
    return this.buf[this.off++]!;
  }

  u16(what = "u16"): number {
    this.need(2, what);
    const v = (this.buf[this.off]! << 8) | this.buf[this.off + 1]!;
    this.off += 2;
    return v;
  }

  u32(what = "u32"): number {
    this.need(4, what);
    const v = new DataView(this.buf.buffer, this.buf.byteOffset).getUint32(this.off);
    this.off += 4;
    return v;
  }

  bytes(n: number, what = "bytes"): Uint8Array {
    this.need(n, what);
    const v = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return v;
  }

  /** TPM2B content (a view, not a copy). */
  tpm2b(what = "TPM2B"): Uint8Array {
    return this.bytes(this.u16(what), what);
  }

  /** TPM2B including its size field (e.g. a TPM2B_PUBLIC to store verbatim). */
  tpm2bRaw(what = "TPM2B"): Uint8Array {
    const start = this.off;
    this.tpm2b(what);
    return this.buf.subarray(start, this.off);
  }

  /** Assert that everything was consumed. */
  end(what: string): void {
    if (this.off !== this.buf.length) throw malformed(`${this.buf.length - this.off} trailing bytes after ${what}`);
  }
}

/** One authorization area of a command (Part 1 §18.7, TPMS_AUTH_COMMAND). */
export interface AuthCommand {
  handle: number;
  nonce: Uint8Array;
  attrs: number;
  hmac: Uint8Array;
}

/**
 * Frame a command: header, handles, authorization area (when `auths` is non-empty) and parameters.
 * @returns the command bytes, tag 0x8002 with sessions, 0x8001 without (Part 1 §18.2)
 */
export function frameCommand(cc: number, handles: number[], auths: AuthCommand[], params: Uint8Array): Uint8Array {
  return marshal((w) => {
    const authArea = marshal((a) => {
      for (const s of auths) a.u32(s.handle).tpm2b(s.nonce).u8(s.attrs).tpm2b(s.hmac);
    });
    const size = 10 + 4 * handles.length + (auths.length ? 4 + authArea.length : 0) + params.length;
    w.u16(auths.length ? ST_SESSIONS : ST_NO_SESSIONS).u32(size).u32(cc);
    for (const h of handles) w.u32(h);
    if (auths.length) w.u32(authArea.length).bytes(authArea);
    w.bytes(params);
  });
}

/** One authorization area of a response (Part 1 §18.8, TPMS_AUTH_RESPONSE). */
export interface AuthResponse {
  nonce: Uint8Array;
  attrs: number;
  hmac: Uint8Array;
}

/** A parsed response; `params` and the auth fields are views into the response bytes. */
export interface Response {
  rc: number;
  handles: number[];
  params: Uint8Array;
  auths: AuthResponse[];
}

/**
 * Split a response into handles, parameters and authorization areas.
 * An error response (rc ≠ 0) is a bare header with tag TPM_ST_NO_SESSIONS
 * (Part 1 §18.8). The tag is checked before the code is believed, so a
 * garbled frame is a parse failure (HSM_FAILED), never a refusal.
 * @param handleCount handles the command returns on success (Part 3 "Response" table)
 * @param sessions how many authorization areas the command carried
 * @throws {ZbError} HSM_FAILED when the framing is inconsistent
 */
export function parseResponse(bytes: Uint8Array, handleCount: number, sessions: number): Response {
  const r = new Reader(bytes);
  const tag = r.u16("tag");
  const size = r.u32("size");
  const rc = r.u32("response code");
  if (size !== bytes.length) throw malformed(`response size field ${size} but ${bytes.length} bytes received`);
  // TPM 1.2-style TPM_ST_RSP_COMMAND (0x00c4, with TPM_RC_BAD_TAG) answers a bad command tag only; zb never sends one.
  const want = rc !== 0 ? ST_NO_SESSIONS : sessions ? ST_SESSIONS : ST_NO_SESSIONS;
  if (tag !== want) throw malformed(`unexpected response tag 0x${tag.toString(16)} (response code 0x${rc.toString(16)})`);
  if (rc !== 0) {
    r.end("an error response");
    return { rc, handles: [], params: new Uint8Array(0), auths: [] };
  }
  const handles: number[] = [];
  for (let i = 0; i < handleCount; i++) handles.push(r.u32("handle"));
  const params = sessions ? r.bytes(r.u32("parameterSize"), "parameters") : r.bytes(r.remaining, "parameters");
  const auths: AuthResponse[] = [];
  for (let i = 0; i < sessions; i++) {
    auths.push({ nonce: r.tpm2b("nonceTPM"), attrs: r.u8("sessionAttributes"), hmac: r.tpm2b("hmac") });
  }
  r.end("the response");
  return { rc, handles, params, auths };
}

/** Format-one error numbers (Part 2 §6.6.3, TPM_RC_FMT1 + n), by n. */
const FMT1: Record<number, [string, string]> = {
  0x01: ["ASYMMETRIC", "asymmetric algorithm not supported"],
  0x02: ["ATTRIBUTES", "inconsistent attributes"],
  0x03: ["HASH", "hash algorithm not supported"],
  0x04: ["VALUE", "value out of range"],
  0x05: ["HIERARCHY", "hierarchy not enabled"],
  0x0b: ["HANDLE", "handle not found or not usable"],
  0x0e: ["AUTH_FAIL", "authorization failed"],
  0x0f: ["NONCE", "invalid nonce"],
  0x12: ["SCHEME", "unsupported scheme"],
  0x15: ["SIZE", "structure is the wrong size"],
  0x16: ["SYMMETRIC", "unsupported symmetric algorithm"],
  0x1a: ["INSUFFICIENT", "insufficient data"],
  0x1c: ["KEY", "key fields are not compatible"],
  0x1d: ["POLICY_FAIL", "a policy check failed"],
  0x1f: ["INTEGRITY", "integrity check failed"],
  0x22: ["BAD_AUTH", "authorization HMAC check failed (no DA increment)"],
  0x23: ["EXPIRED", "the policy has expired"],
  0x24: ["POLICY_CC", "the policy is for another command"],
  0x26: ["CURVE", "curve not supported"],
  0x27: ["ECC_POINT", "point is not on the curve"],
};

/** Format-zero codes (Part 2 §6.6.3, TPM_RC_VER1 and TPM_RC_WARN ranges). */
const FMT0: Record<number, [string, string]> = {
  0x100: ["INITIALIZE", "TPM not initialized (TPM2_Startup not run)"],
  0x101: ["FAILURE", "TPM is in failure mode"],
  0x10b: ["PRIVATE", "the private area is not usable"],
  0x120: ["DISABLED", "the command is disabled"],
  0x124: ["AUTH_TYPE", "wrong authorization type"],
  0x125: ["AUTH_MISSING", "authorization missing"],
  0x126: ["POLICY", "policy failure"],
  0x127: ["PCR", "PCR check failed"],
  0x128: ["PCR_CHANGED", "PCR changed since the policy was built"],
  0x142: ["COMMAND_SIZE", "command size is wrong"],
  0x143: ["COMMAND_CODE", "command not supported"],
  0x902: ["OBJECT_MEMORY", "out of object memory (transient objects not flushed)"],
  0x903: ["SESSION_MEMORY", "out of session memory"],
  0x908: ["YIELDED", "the TPM yielded"],
  0x909: ["CANCELED", "the command was canceled"],
  0x90a: ["TESTING", "the TPM is self-testing"],
  0x921: ["LOCKOUT", "dictionary-attack lockout"],
  0x922: ["RETRY", "the TPM asks to retry"],
  0x923: ["NV_UNAVAILABLE", "NV is not available"],
};

/** A decoded response code. `base` drops the handle/session/parameter number of format-one codes. */
export interface DecodedRc {
  rc: number;
  base: number;
  name: string;
  text: string;
  /** Format one only: which handle, session or parameter (1-based) the error is about. */
  where?: { kind: "handle" | "session" | "parameter"; index: number };
}

/**
 * Decode a response code (Part 2 §6.6, figure "Response Code Evaluation").
 * @example decodeRc(0x99d) // {base: 0x9d, name: "TPM_RC_POLICY_FAIL", where: {kind: "session", index: 1}, …}
 */
export function decodeRc(rc: number): DecodedRc {
  if (rc & 0x80) {
    const n = rc & 0x3f;
    const [name, text] = FMT1[n] ?? [`FMT1_${n.toString(16)}`, "format-one error"];
    const num = (rc >> 8) & 0xf;
    const where: DecodedRc["where"] = rc & 0x40
      ? { kind: "parameter", index: num }
      : num & 0x8 ? { kind: "session", index: num - 8 } : { kind: "handle", index: num };
    return { rc, base: 0x80 | n, name: `TPM_RC_${name}`, text, ...(num ? { where } : {}) };
  }
  const [name, text] = FMT0[rc] ?? [`0x${rc.toString(16)}`, rc & 0x100 ? "TPM 2.0 error" : "TPM error"];
  return { rc, base: rc, name: name.startsWith("0x") ? name : `TPM_RC_${name}`, text };
}

/** YIELDED, TESTING, RETRY: the TPM is busy for a moment and the command may be sent again (Part 2 §6.6.3). */
export const BUSY_RCS: ReadonlySet<number> = new Set([0x908, 0x90a, 0x922]);

/** One line for messages: `0x99d (TPM_RC_POLICY_FAIL, session 1: a policy check failed)`. */
export function describeRc(rc: number): string {
  const d = decodeRc(rc);
  const where = d.where ? `, ${d.where.kind} ${d.where.index}` : "";
  return `0x${rc.toString(16)} (${d.name}${where}: ${d.text})`;
}

/** Lowercase hex of bytes. */
export function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");
}

/** Bytes of a hex string; undefined when it is not even-length hex. */
export function unhex(s: string): Uint8Array | undefined {
  if (!/^([0-9a-fA-F]{2})*$/.test(s)) return undefined;
  return new Uint8Array(Buffer.from(s, "hex"));
}

/** Constant-time equality of two byte strings. */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}
