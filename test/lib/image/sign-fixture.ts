/**
 * What the signature tests share (sign.test.ts, sign-policy.test.ts): byte
 * helpers, the vectors folder, and two trusted keys and an untrusted one,
 * each with its signature of one message (made once, at load).
 */
import { join } from "node:path";
import { ZbError } from "../../../lib/errors.ts";
import { generateKey } from "../../../lib/image/keys.ts";
import { keySigner } from "../../../lib/image/sign.ts";

/** The golden vectors made by test/vectors/keys/gen.sh. */
export const VEC = join(import.meta.dir, "../../vectors/keys");
export const hex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));
export const toHex = (b: Uint8Array) => Buffer.from(b).toString("hex");
export const utf8 = (s: string) => new TextEncoder().encode(s);

/** A copy of `b` with the low bit of byte `at` flipped. */
export function flipBit(b: Uint8Array, at = b.length >> 1): Uint8Array {
  const c = b.slice();
  c[at]! ^= 0x01;
  return c;
}
/** The ZbError `f` throws (anything else is rethrown; no throw fails the test). */
export function thrown(f: () => unknown): ZbError {
  try {
    f();
  } catch (e) {
    if (e instanceof ZbError) return e;
    throw e;
  }
  throw new Error("expected a ZbError, nothing was thrown");
}

export const ED = generateKey("ed25519");
export const EC = generateKey("p256");
export const MSG = utf8('{"compatible":"pi4","version":"1"}');
export const ED_SIG = await keySigner(ED).sign(MSG);
export const EC_SIG = await keySigner(EC).sign(MSG);
export const UNTRUSTED = generateKey("ed25519");
export const UNTRUSTED_SIG = await keySigner(UNTRUSTED).sign(MSG);
