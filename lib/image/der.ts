/**
 * The DER subset the key files of lib/image/keys.ts are made of (X.690):
 * a cursor that reads one TLV at a time and a writer for the same
 * structures. Kept apart from keys.ts because it knows tags and lengths, not
 * keys: which TLVs a PUBLIC KEY or PRIVATE KEY holds is keys.ts's business.
 *
 * The reader understands exactly the encodings those structures use and
 * refuses anything else (other tags, BER lengths, trailing bytes) with a
 * precise reason; it is not an ASN.1 library.
 */
import { ZbError } from "../errors.ts";

// DER tags (X.690 §8): universal, and the context tags of RFC 5915 / RFC 5958.
export const INTEGER = 0x02;
export const BIT_STRING = 0x03;
export const OCTET_STRING = 0x04;
export const OID = 0x06;
export const SEQUENCE = 0x30;
export const CTX0 = 0xa0; // [0] constructed: ECPrivateKey parameters, PKCS#8 attributes
export const CTX1 = 0xa1; // [1] constructed: ECPrivateKey publicKey
export const CTX1_IMPLICIT = 0x81; // [1] IMPLICIT BIT STRING: OneAsymmetricKey publicKey (RFC 5958 §2)

/** Names for OIDs a user is likely to feed us by mistake, for the error message. */
const OID_NAMES: Record<string, string> = {
  "1.2.840.113549.1.1.1": "RSA",
  "1.2.840.10040.4.1": "DSA",
  "1.3.101.110": "X25519",
  "1.3.101.111": "X448",
  "1.3.101.113": "Ed448",
  "1.3.132.0.34": "secp384r1 (P-384)",
  "1.3.132.0.35": "secp521r1 (P-521)",
  "1.3.132.0.10": "secp256k1",
  "1.2.840.113549.1.5.13": "PBES2 (encrypted)",
};

const MAX_LEN = 0xffff; // our structures are < 200 bytes; two length octets are plenty

/** Throws KEY_INVALID naming the key source (keys.ts `failFor`); the one failure path of the DER and PEM readers. */
export type Fail = (why: string) => never;

/** A cursor over DER content; `next` checks one TLV and returns a cursor over its content. */
export class Der {
  private pos: number;
  constructor(
    private readonly buf: Uint8Array,
    private readonly fail: Fail,
    private readonly what: string,
  ) {
    this.pos = 0;
  }

  peek(): number | undefined {
    return this.buf[this.pos];
  }

  /** Read one TLV of tag `tag` (X.690 §10.1: definite, minimal length). */
  next(tag: number, what: string): Der {
    const b = this.buf;
    const at = this.pos;
    if (at >= b.length) this.fail(`${what} missing (truncated ${this.what})`);
    if (b[at] !== tag) this.fail(`${what}: expected tag 0x${byteHex(tag)}, found 0x${byteHex(b[at]!)}`);
    if (at + 1 >= b.length) this.fail(`${what}: truncated length`);
    let len = b[at + 1]!;
    let start = at + 2;
    if (len === 0x80) this.fail(`${what}: indefinite length (BER, not DER)`);
    if (len > 0x80) {
      const n = len & 0x7f;
      if (n > 2 || start + n > b.length) this.fail(`${what}: bad length`);
      len = 0;
      for (let i = 0; i < n; i++) len = len * 256 + b[start + i]!;
      // DER: the shortest form; long form only from 128, no leading zero octet.
      if (len < 0x80 || (n === 2 && len < 0x100)) this.fail(`${what}: length not minimally encoded (not DER)`);
      start += n;
    }
    if (len > MAX_LEN || start + len > b.length) this.fail(`${what}: truncated (needs ${len} bytes)`);
    this.pos = start + len;
    return new Der(b.subarray(start, start + len), this.fail, what);
  }

  /** The remaining content bytes (a view; callers copy what they keep). */
  rest(): Uint8Array {
    const r = this.buf.subarray(this.pos);
    this.pos = this.buf.length;
    return r;
  }

  /** Read a TLV whose content must equal `content` exactly (versions, OIDs). */
  expect(tag: number, content: Uint8Array, what: string, why: (got: Uint8Array) => string): void {
    const got = this.next(tag, what).rest();
    if (!equal(got, content)) this.fail(why(got));
  }

  /** BIT STRING holding whole bytes (unused-bits octet 0, X.690 §8.6.2). */
  bits(tag: number, what: string): Uint8Array {
    const c = this.next(tag, what).rest();
    if (c.length === 0 || c[0] !== 0) this.fail(`${what}: BIT STRING with unused bits`);
    return c.subarray(1);
  }

  end(): void {
    if (this.pos !== this.buf.length) {
      this.fail(`${this.buf.length - this.pos} unexpected trailing byte(s) after ${this.what}`);
    }
  }
}

/**
 * One DER TLV, for the writer.
 * @throws {ZbError} INTERNAL for a value over MAX_LEN (no key structure comes near it)
 */
export function tlv(tag: number, ...parts: Uint8Array[]): Uint8Array {
  const len = parts.reduce((n, p) => n + p.length, 0);
  if (len > MAX_LEN) throw new ZbError("INTERNAL", `internal error: DER value of ${len} bytes`);
  const head = len < 0x80 ? [tag, len] : len < 0x100 ? [tag, 0x81, len] : [tag, 0x82, len >> 8, len & 0xff];
  const out = new Uint8Array(head.length + len);
  out.set(head, 0);
  let at = head.length;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A BIT STRING of whole bytes (unused-bits octet 0). */
export const bitString = (bytes: Uint8Array) => tlv(BIT_STRING, Uint8Array.of(0), bytes);
/** A one-octet INTEGER (the version fields). */
export const int = (v: number) => tlv(INTEGER, Uint8Array.of(v));

// ---- small helpers ----

/** An OID as dotted arcs, with its name when it is one a user may feed us by mistake. */
export function oidName(oid: Uint8Array): string {
  const arcs: number[] = [];
  let v = 0;
  for (const b of oid) {
    v = v * 128 + (b & 0x7f);
    if ((b & 0x80) !== 0) continue;
    arcs.push(v);
    v = 0;
  }
  if (arcs.length === 0) return "(empty OID)";
  const first = arcs[0]!;
  const dotted = [first < 80 ? Math.floor(first / 40) : 2, first < 80 ? first % 40 : first - 80, ...arcs.slice(1)].join(".");
  const name = OID_NAMES[dotted];
  return name ? `${name} (${dotted})` : dotted;
}

/** Byte-wise equality. */
export function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Bytes of a hex literal (the OID constants). */
export function hex(s: string): Uint8Array {
  return Uint8Array.from(Buffer.from(s, "hex"));
}

function byteHex(b: number): string {
  return b.toString(16).padStart(2, "0");
}
