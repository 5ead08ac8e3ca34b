/**
 * U-Boot environment codec: bytes in, values out. No I/O.
 *
 * Layout of one copy of total size N (u-boot:include/env_internal.h `env_t`):
 *
 *   single     [0..3] CRC-32   [4..N)  data
 *   redundant  [0..3] CRC-32   [4] flag (outside the CRC)   [5..N)  data
 *
 * The CRC is zlib's CRC-32/IEEE over the *whole* data area, padding included,
 * stored little-endian (U-Boot and fw_env memcpy a u32 on LE CPUs). Data is
 * `name=value\0` entries; an entry that begins with `\0` ends the list, so a
 * written env ends in `\0\0` and mkenvimage's empty env is `\0` + padding.
 *
 * Strings are *byte strings*: every char is one byte (latin1), so values that
 * are not UTF-8 survive a round trip unchanged. Convert at the CLI edge with
 * {@link toBytes}/{@link fromBytes}.
 */
import { ZbError } from "../errors.ts";

/** An environment: variable name to value, both byte strings. */
export type Vars = Map<string, string>;

/** Where the data starts and how big a copy is. */
export interface Layout {
  /** Total bytes of one copy, header included (CONFIG_ENV_SIZE). */
  size: number;
  /** Redundant copies carry a flag byte after the CRC (5-byte header). */
  redundant: boolean;
}

/** One decoded copy. */
export interface Copy {
  vars: Vars;
  /** The flag byte (redundant layout only). */
  flag?: number;
}

/**
 * Why a copy is unusable; returned, not thrown, by {@link tryDecode}. The store
 * also reports an unreadable copy file this way (code IO).
 */
/**
 * `missing`: the copy's file does not exist at all (not a damaged copy).
 * `wrongSize`: the file's size differs from the configured env size (a wrong fw_env.config, not damage).
 */
export type DecodeFailure = { ok: false; code: "ENV_CRC" | "ENV_FORMAT" | "IO"; why: string; missing?: true; wrongSize?: true };
export type DecodeResult = ({ ok: true } & Copy) | DecodeFailure;

/** Smallest copy that can hold a header and an empty env. */
export const MIN_SIZE = 8;
const LATIN1 = "latin1";

export function headerSize(layout: Layout): number {
  return layout.redundant ? 5 : 4;
}

/**
 * CRC-32/IEEE (zlib's crc32()) as an unsigned number, through Bun's native
 * zlib-compatible hasher: a table-driven JavaScript CRC costs ~0.5 ms per
 * 16 KiB copy without the JIT (zbunlock runs so, lib/sys/jit.ts), about a
 * thousand times the native call, and builds its tables at start-up.
 */
export function crc32(data: Uint8Array): number {
  return Bun.hash.crc32(data);
}

/**
 * Decode one copy; failures are values, because a bad copy is an expected
 * case in redundant mode.
 * @param bytes exactly `layout.size` bytes
 */
export function tryDecode(bytes: Uint8Array, layout: Layout): DecodeResult {
  const hdr = headerSize(layout);
  if (bytes.length !== layout.size || layout.size < MIN_SIZE) {
    return { ok: false, code: "ENV_FORMAT", why: `expected ${layout.size} bytes, got ${bytes.length}` };
  }
  const data = bytes.subarray(hdr);
  const stored = readU32LE(bytes, 0);
  const actual = crc32(data);
  if (stored !== actual) {
    return { ok: false, code: "ENV_CRC", why: `bad CRC (stored ${hex32(stored)}, computed ${hex32(actual)})` };
  }
  const parsed = parseData(data);
  if (!parsed.ok) return parsed;
  return layout.redundant ? { ok: true, vars: parsed.vars, flag: bytes[4]! } : { ok: true, vars: parsed.vars };
}

/**
 * Decode one copy.
 * @throws {ZbError} ENV_CRC on a CRC mismatch, ENV_FORMAT on malformed data
 */
export function decode(bytes: Uint8Array, layout: Layout): Copy {
  const r = tryDecode(bytes, layout);
  if (!r.ok) throw new ZbError(r.code, `cannot decode env: ${r.why}`);
  return r.flag === undefined ? { vars: r.vars } : { vars: r.vars, flag: r.flag };
}

/**
 * Parse the data area (after the CRC has been checked). Duplicate names: the
 * last one wins, as in U-Boot's himport_r, libubootenv and snapd.
 */
function parseData(data: Uint8Array): { ok: true; vars: Vars } | DecodeFailure {
  const vars: Vars = new Map();
  let pos = 0;
  while (pos < data.length && data[pos] !== 0) {
    const end = data.indexOf(0, pos);
    if (end < 0) return fail(`entry at data offset ${pos} has no NUL terminator`);
    const entry = Buffer.from(data.buffer, data.byteOffset + pos, end - pos).toString(LATIN1);
    const eq = entry.indexOf("=");
    if (eq < 0) return fail(`entry at data offset ${pos} has no '='`);
    if (eq === 0) return fail(`entry at data offset ${pos} has an empty name`);
    vars.set(entry.slice(0, eq), entry.slice(eq + 1));
    pos = end + 1;
  }
  // pos === data.length: the last entry's NUL is the final byte and no empty
  // entry follows. libubootenv's fw_setenv writes a full env that way, and
  // U-Boot reads it (himport_r copies the data into size + 1 bytes and puts a
  // NUL after them, lib/hashtable.c), so it is a whole env, not a cut one.
  return { ok: true, vars };
}

function fail(why: string): DecodeFailure {
  return { ok: false, code: "ENV_FORMAT", why };
}

/** Options for {@link encode}. */
export interface EncodeOptions {
  /** Flag byte for the redundant layout (ignored for single). */
  flag?: number;
  /** Padding byte after the terminator; 0xFF like mkenvimage and snapd. */
  pad?: number;
}

/**
 * Encode vars as one copy: entries sorted bytewise by name (U-Boot hexport,
 * libubootenv), a terminating NUL, padding, then the CRC. The terminating NUL
 * is always written, even where libubootenv would fill the last byte with
 * the last entry's own NUL: older U-Boot releases copied the data into
 * exactly `size` bytes and relied on it.
 * An empty env is a single NUL, as mkenvimage writes it.
 * @throws {ZbError} ENV_FORMAT for an invalid name or value,
 *   ENV_NOSPACE when the entries do not fit the data area
 */
export function encode(vars: ReadonlyMap<string, string>, layout: Layout, opts: EncodeOptions = {}): Uint8Array {
  const hdr = headerSize(layout);
  if (layout.size < MIN_SIZE) throw new ZbError("ENV_FORMAT", `cannot encode env: size ${layout.size} is below ${MIN_SIZE}`);
  const out = new Uint8Array(layout.size);
  const cap = layout.size - hdr;
  let pos = hdr;
  for (const name of [...vars.keys()].sort(byteOrder)) {
    const value = vars.get(name)!;
    checkName(name);
    checkValue(name, value);
    const entry = Buffer.from(`${name}=${value}\0`, LATIN1);
    if (pos - hdr + entry.length + 1 > cap) throw noSpace(vars, cap);
    out.set(entry, pos);
    pos += entry.length;
  }
  out[pos++] = 0; // the empty entry that ends the list
  out.fill(opts.pad ?? 0xff, pos);
  if (layout.redundant) out[4] = (opts.flag ?? 1) & 0xff;
  writeU32LE(out, 0, crc32(out.subarray(hdr)));
  return out;
}

/** Bytes the encoded entries need, terminator included. */
export function encodedLength(vars: ReadonlyMap<string, string>): number {
  let n = 1;
  for (const [k, v] of vars) n += Buffer.byteLength(`${k}=${v}`, LATIN1) + 1;
  return n;
}

function noSpace(vars: ReadonlyMap<string, string>, cap: number): ZbError {
  return new ZbError("ENV_NOSPACE", `cannot encode env: ${encodedLength(vars)} bytes of entries do not fit ${cap} bytes of data`, {
    hint: "remove variables or configure a larger env size",
  });
}

/**
 * @throws {ZbError} ENV_FORMAT when a name is empty or holds '=', NUL or a
 *   non-byte character
 */
export function checkName(name: string): void {
  if (name.length === 0) throw new ZbError("ENV_FORMAT", "cannot use an empty variable name");
  if (/[=\0]/.test(name)) throw new ZbError("ENV_FORMAT", `cannot use variable name ${JSON.stringify(asText(name))}: it contains '=' or NUL`);
  if (/[^\x00-\xff]/.test(name)) throw new ZbError("INTERNAL", "internal error: variable name is not a byte string");
}

/** @throws {ZbError} ENV_FORMAT when the value holds NUL */
export function checkValue(name: string, value: string): void {
  if (value.includes("\0")) throw new ZbError("ENV_FORMAT", `cannot set ${asText(name)}: the value contains NUL`);
  if (/[^\x00-\xff]/.test(value)) throw new ZbError("INTERNAL", "internal error: variable value is not a byte string");
}

/** strcmp order over byte strings; JS code-unit order equals byte order for latin1. */
export function byteOrder(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** UTF-8 text (argv, script files) to a byte string. */
export function toBytes(text: string): string {
  return Buffer.from(text, "utf8").toString(LATIN1);
}

/** A byte string as text for a message: its bytes read as UTF-8 (a name typed as `café` shows as café, not cafÃ©). */
export function asText(s: string): string {
  return Buffer.from(s, LATIN1).toString("utf8");
}

/** A byte string to raw bytes, for writing to stdout. */
export function fromBytes(s: string): Uint8Array {
  return Buffer.from(s, LATIN1);
}

/** Two envs hold the same variables and values. */
export function sameVars(a: ReadonlyMap<string, string>, b: ReadonlyMap<string, string>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

function readU32LE(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
}

function writeU32LE(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff;
  b[at + 1] = (v >>> 8) & 0xff;
  b[at + 2] = (v >>> 16) & 0xff;
  b[at + 3] = (v >>> 24) & 0xff;
}

function hex32(v: number): string {
  return "0x" + v.toString(16).padStart(8, "0");
}
