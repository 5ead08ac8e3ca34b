/**
 * Keys on their way to cryptsetup and out of its messages: the stdin
 * handover, a pipe for a second key, and the scrub of every printable form
 * of a key from cryptsetup's stderr (lib/luks/cryptsetup.ts explains why
 * each key travels the way it does).
 */
import { closeSync, writeSync } from "node:fs";
import type { FileSink } from "bun";
import { ZbError } from "../errors.ts";
import { libc } from "../sys/libc.ts";
import { wipe } from "../secret.ts";

/**
 * A message from cryptsetup's raw output, with every printable form of the
 * keys replaced by `[key]`: raw bytes, hex, HEX, base64 and base64url (each
 * with and without `=` padding). The search runs on the bytes as cryptsetup
 * wrote them, before they are decoded: decoding turns a key that is not UTF-8
 * into U+FFFD, and its raw form would no longer be found. The forms are built
 * into buffers that are wiped afterwards, never into JavaScript strings, which
 * cannot be wiped and live until the garbage collector frees them
 * (docs/credentials.md). `output` itself is the caller's to wipe.
 * @param output cryptsetup's stderr as bytes
 * @returns the scrubbed text (invalid UTF-8 left over becomes U+FFFD)
 * @example scrub(stderrBytes, [key]) // "No key available with this passphrase."
 */
export function scrub(output: Uint8Array, keys: Uint8Array[]): string {
  if (output.length === 0) return "";
  let out = Buffer.from(output.buffer, output.byteOffset, output.byteLength);
  const copies: Buffer[] = [];
  for (const k of keys) {
    // Padded forms first: the unpadded ones would leave the '=' behind.
    const forms = [Uint8Array.from(k), hexBytes(k, HEX_LOWER), hexBytes(k, HEX_UPPER), base64Bytes(k, BASE64, true), base64Bytes(k, BASE64, false), base64Bytes(k, BASE64URL, true), base64Bytes(k, BASE64URL, false)];
    for (const form of forms) {
      if (form.length >= 4) {
        const next = replaceAll(out, form, KEY_MARK);
        if (next !== out) copies.push((out = next));
      }
      wipe(form);
    }
  }
  const text = out.toString("utf8");
  wipe(...copies); // intermediate copies may still hold other forms of a key
  return text;
}

const KEY_MARK = Buffer.from("[key]");
const HEX_LOWER = Buffer.from("0123456789abcdef");
const HEX_UPPER = Buffer.from("0123456789ABCDEF");
const BASE64 = Buffer.from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
/** RFC 4648 §5: the URL- and filename-safe alphabet. */
const BASE64URL = Buffer.from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_");

function hexBytes(k: Uint8Array, digits: Uint8Array): Uint8Array {
  const out = new Uint8Array(k.length * 2);
  k.forEach((b, i) => {
    out[2 * i] = digits[b >> 4]!;
    out[2 * i + 1] = digits[b & 15]!;
  });
  return out;
}

/** RFC 4648 base64 in `alphabet`, with `=` padding (as `base64` and Buffer print it) or without (as base64url usually is). */
function base64Bytes(k: Uint8Array, alphabet: Uint8Array, padded: boolean): Uint8Array {
  const out = new Uint8Array(Math.ceil(k.length / 3) * 4).fill(0x3d); // "="
  let o = 0;
  for (let i = 0; i < k.length; i += 3) {
    const n = (k[i]! << 16) | ((k[i + 1] ?? 0) << 8) | (k[i + 2] ?? 0);
    const have = Math.min(3, k.length - i) + 1; // output characters this group yields
    for (let c = 0; c < have; c++) out[o++] = alphabet[(n >> (18 - 6 * c)) & 63]!;
  }
  if (padded || o === out.length) return out;
  const bare = out.slice(0, o);
  wipe(out);
  return bare;
}

function replaceAll(hay: Buffer, needle: Uint8Array, mark: Uint8Array): Buffer {
  const parts: Uint8Array[] = [];
  let from = 0;
  for (let at = hay.indexOf(needle, from); at >= 0; at = hay.indexOf(needle, from)) {
    parts.push(hay.subarray(from, at), mark);
    from = at + needle.length;
  }
  if (from === 0) return hay;
  parts.push(hay.subarray(from));
  return Buffer.concat(parts);
}

/**
 * Write the key into the child's stdin and close it (EOF ends the key). A
 * child that exits without reading (a bad device, a missing module) makes
 * the write fail with EPIPE or ECONNRESET, or (Bun 1.4, once the child is
 * gone) return `true` instead of a byte count: its exit status says why, so
 * that failure is not reported on its own. Anything else is.
 * @throws {ZbError} LUKS_FAILED when the key could not be handed over
 */
export async function sendKey(sink: FileSink, key: Uint8Array, what: string): Promise<void> {
  try {
    // A write the socket cannot take at once returns a Promise (Bun then
    // holds the rest); keys fit the socket buffer, so that means the child is gone.
    const n: unknown = sink.write(key);
    if (n instanceof Promise) await n;
    else if (typeof n !== "number") return; // the sink is closed: the child is gone
    else if (n !== key.length) throw new Error(`only ${n} of its ${key.length} bytes were written`);
    await sink.end();
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "EPIPE" || code === "ECONNRESET") return;
    throw new ZbError("LUKS_FAILED", `cannot ${what}: cannot hand the key to cryptsetup: ${(e as Error).message}`, { cause: e });
  }
}

/** O_CLOEXEC on Linux (asm-generic/fcntl.h, same on x86_64 and arm64): no other child inherits our end. */
const O_CLOEXEC = 0o2000000;

/**
 * A pipe holding `key` and then EOF; returns its read end (the caller closes
 * it). The key fits the pipe buffer (≤ 4096 bytes), so the write never blocks.
 */
export function keyPipe(key: Uint8Array, what: string): number {
  const { ptr } = require("bun:ffi") as typeof import("bun:ffi");
  const fds = new Int32Array(2);
  let rc: number;
  try {
    rc = libc().pipe2(ptr(fds), O_CLOEXEC);
  } catch (e) {
    throw new ZbError("LUKS_FAILED", `cannot ${what}: cannot create a pipe for the key: ${(e as Error).message}`, { cause: e });
  }
  if (rc !== 0) throw new ZbError("LUKS_FAILED", `cannot ${what}: pipe2() failed`);
  const [readEnd, writeEnd] = [fds[0]!, fds[1]!];
  try {
    let done = 0;
    while (done < key.length) done += writeSync(writeEnd, key, done, key.length - done);
  } catch (e) {
    closeSync(readEnd);
    throw new ZbError("LUKS_FAILED", `cannot ${what}: cannot write the key to a pipe`, { cause: e });
  } finally {
    closeSync(writeEnd);
  }
  return readEnd;
}
