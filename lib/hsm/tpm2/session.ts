/**
 * Authorization sessions on the wire: the command HMAC, the response HMAC
 * check and parameter encryption of the first TPM2B parameter. Pure.
 *
 * References: Part 1 §19.6.4–19.6.8 (nonces, sessionKey, HMAC), §18.7
 * (cpHash/rpHash over the parameters as transmitted, i.e. encrypted), §21
 * (parameter encryption: only the data of the first parameter, a TPM2B).
 *
 * zb's sessions are unbound and their entities have empty authValues (the
 * storage key, sealed objects), so the HMAC key and the parameter-encryption
 * sessionValue are the sessionKey alone (§19.6.8: sessionKey ‖ authValue).
 */
import { ZbError } from "../../errors.ts";
import { randomSecret, wipe } from "../../secret.ts";
import { cfbParam, DIGEST_SIZE, hmacSha256, sha256 } from "./crypto.ts";
import { equalBytes, marshal, RS_PW, type AuthCommand, type AuthResponse } from "./wire.ts";

/** Part 2 §6.11 TPM_SE. */
export const SE_HMAC = 0;
export const SE_POLICY = 1;
export const SE_TRIAL = 3;

/** Part 2 §8.4 TPMA_SESSION bits. */
export const SESSION_ATTR = { continueSession: 0x01, decrypt: 0x20, encrypt: 0x40 } as const;

/** A started session; `live` is false once the TPM flushed it. */
export class Session {
  live = true;

  constructor(
    readonly handle: number,
    /** Empty for unsalted unbound sessions. Wiped by {@link Session.forget}. */
    readonly key: Uint8Array,
    public nonceTPM: Uint8Array,
  ) {}

  /** Wipe the key; the handle is flushed separately. */
  forget(): void {
    wipe(this.key);
    this.live = false;
  }
}

/** How one command handle is authorized. zb never needs more than one. */
export type Auth = { kind: "password" } | { kind: "session"; session: Session; attrs: number };

/** What a prepared command needs to check its response. */
export interface Prepared {
  auth: AuthCommand;
  /** The parameters to send (the first one encrypted when `decrypt` is set). */
  params: Uint8Array;
  nonceCaller: Uint8Array;
}

/** The TPM2B data span of the first parameter: [start, end). */
function firstTpm2b(params: Uint8Array, what: string): [number, number] {
  if (params.length < 2) throw new ZbError("INTERNAL", `internal error: ${what} has no TPM2B first parameter`);
  const size = (params[0]! << 8) | params[1]!;
  if (2 + size > params.length) throw new ZbError("HSM_FAILED", `cannot decrypt ${what}: first parameter overruns`);
  return [2, 2 + size];
}

/** Copy of `params` with the first TPM2B's data en- or decrypted. */
async function cryptFirst(params: Uint8Array, key: Uint8Array, newer: Uint8Array, older: Uint8Array, decrypt: boolean, what: string): Promise<Uint8Array> {
  const [start, end] = firstTpm2b(params, what);
  const out = params.slice();
  const data = await cfbParam(key, newer, older, params.subarray(start, end), decrypt);
  out.set(data, start);
  wipe(data);
  return out;
}

/**
 * Build the authorization area for a command and encrypt its first parameter if asked.
 * @param names the names of all handles of the command, in order (for cpHash)
 */
export async function prepare(auth: Auth, cc: number, names: Uint8Array[], params: Uint8Array): Promise<Prepared> {
  if (auth.kind === "password") {
    // TPM_RS_PW with an empty password (Part 1 §19.8.4).
    const empty = new Uint8Array(0);
    return { auth: { handle: RS_PW, nonce: empty, attrs: 0, hmac: empty }, params, nonceCaller: empty };
  }
  const { session, attrs } = auth;
  if (!session.live) throw new ZbError("INTERNAL", "internal error: session used after it was flushed");
  const nonceCaller = randomSecret(DIGEST_SIZE);
  const sent = attrs & SESSION_ATTR.decrypt
    ? await cryptFirst(params, session.key, nonceCaller, session.nonceTPM, false, "the command parameter")
    : params;
  const cpHash = sha256(marshal((w) => w.u32(cc)), ...names, sent);
  const hmac = hmacSha256(session.key, cpHash, nonceCaller, session.nonceTPM, Uint8Array.of(attrs));
  return { auth: { handle: session.handle, nonce: nonceCaller, attrs, hmac }, params: sent, nonceCaller };
}

/**
 * Check a successful response's HMAC, roll the session's nonce, and decrypt
 * the first response parameter when `encrypt` was set.
 * @returns the (decrypted) parameters; a fresh copy when decrypted, which the caller wipes
 * @throws {ZbError} HSM_FAILED when the response HMAC does not verify
 */
export async function finish(auth: Auth, prepared: Prepared, cc: number, params: Uint8Array, reply: AuthResponse | undefined): Promise<Uint8Array> {
  if (auth.kind === "password") return params;
  const { session, attrs } = auth;
  if (!reply) throw new ZbError("HSM_FAILED", "cannot check the TPM response: no authorization area");
  const rpHash = sha256(marshal((w) => w.u32(0).u32(cc)), params);
  const want = hmacSha256(session.key, rpHash, reply.nonce, prepared.nonceCaller, Uint8Array.of(reply.attrs));
  if (!equalBytes(want, reply.hmac)) {
    throw new ZbError("HSM_FAILED", "cannot trust the TPM response: its HMAC does not verify (corrupted or tampered on the way)");
  }
  session.nonceTPM = reply.nonce.slice();
  if (!(attrs & SESSION_ATTR.continueSession)) session.live = false;
  if (!(attrs & SESSION_ATTR.encrypt)) return params;
  return await cryptFirst(params, session.key, session.nonceTPM, prepared.nonceCaller, true, "the response parameter");
}
