/**
 * RFC 7468 PEM armor: the BEGIN/END blocks around the DER of a key file, in
 * and out. Kept apart from keys.ts because it is text framing only; which
 * block is the key, and which labels a caller accepts, is decided there.
 */
import type { Fail } from "./der.ts";

/** One BEGIN/END block: its label and the base64 body decoded (wipe `der` when it held a secret). */
export interface PemBlock {
  label: string;
  der: Uint8Array;
}

/**
 * Append every BEGIN/END block of `text` to `blocks` (the caller wipes them).
 * @throws what `fail` throws: a block without its END line, an unexpected header,
 *   a legacy encrypted key, a body that is not canonical base64
 */
export function pemBlocks(text: string, fail: Fail, blocks: PemBlock[]): void {
  let label: string | null = null;
  let body: string[] = [];
  let encrypted = false;
  // A UTF-8 byte order mark, as some editors save a file: openssl reads past it, so does zb.
  for (const line of text.replace(/^\uFEFF/, "").split(/\r?\n/)) {
    if (label === null) {
      const m = /^-----BEGIN ([A-Z0-9 ]+)-----\s*$/.exec(line);
      if (m) {
        label = m[1]!;
        body = [];
        encrypted = false;
      }
      continue;
    }
    const end = /^-----END ([A-Z0-9 ]+)-----\s*$/.exec(line);
    if (end) {
      if (end[1] !== label) fail(`PEM block "${label}" ends with "${end[1]}"`);
      if (encrypted) fail("the private key is encrypted (Proc-Type 4,ENCRYPTED); decrypt it first: openssl pkey -in KEY -out PLAIN.pem");
      blocks.push({ label, der: base64Strict(body.join(""), fail) });
      label = null;
      continue;
    }
    if (line.includes(":")) {
      // RFC 1421 headers only appear in legacy encrypted keys.
      if (/^Proc-Type:.*ENCRYPTED/.test(line)) encrypted = true;
      else if (!/^DEK-Info:/.test(line)) fail(`unexpected PEM header "${line.slice(0, 40)}"`);
      continue;
    }
    body.push(line.trim());
  }
  if (label !== null) fail(`PEM block "${label}" has no END line`);
}

/** Canonical base64 only (RFC 4648 §4): Buffer's decoder silently skips junk. */
function base64Strict(b64: string, fail: Fail): Uint8Array {
  if (b64.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) fail("PEM body is not valid base64");
  const der = Buffer.from(b64, "base64");
  if (der.toString("base64") !== b64) {
    der.fill(0);
    fail("PEM body is not canonical base64");
  }
  if (der.length === 0) fail("empty PEM body");
  // A plain Uint8Array: Buffer#slice is a view, so copies taken later would alias the wiped bytes.
  const out = new Uint8Array(der);
  der.fill(0);
  return out;
}

/** `der` as a PEM block with 64-character lines, as openssl writes it. */
export function pem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.length).toString("base64");
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}
