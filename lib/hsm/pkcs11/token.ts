/**
 * Token-level steps of the pkcs11 backend, built on lib/hsm/pkcs11/ffi.ts:
 * initialize/finalize a module around one operation, find a token by label,
 * run a session, find RSA keys by CKA_LABEL / CKA_ID and read their public
 * halves. Nothing here logs in; index.ts does that with the caller's PIN.
 */
import { ZbError } from "../../errors.ts";
import { CkError, loadModule, type Cryptoki } from "./ffi.ts";
import { CKA, CKF_TOKEN_INITIALIZED, CKK, CKO, CKR, ulongBytes, type TokenInfo } from "./layout.ts";
import { fingerprint, rsaFromCertificate, sameBytes, type RsaPublic } from "./rsa.ts";
import type { KeySelector } from "./sealed.ts";

/** A slot with a token in it. */
export interface Token {
  slot: bigint;
  info: TokenInfo;
}

/** Operations on one module run one at a time: login state is per token and per process (v2.40 §5.6). */
const queues = new Map<string, Promise<unknown>>();

/**
 * Load `path`, C_Initialize it, run `fn`, and C_Finalize it whatever happens
 * (v2.40 §5.4: Finalize ends the application's use of the module, closing
 * its sessions). Calls on the same module are serialised.
 * @throws {ZbError} HSM_ABSENT when the module cannot be loaded or initialized; whatever `fn` throws
 */
export function withCryptoki<T>(path: string, fn: (ck: Cryptoki) => Promise<T> | T): Promise<T> {
  const prev = queues.get(path) ?? Promise.resolve();
  const run = prev.then(() => initialized(path, fn), () => initialized(path, fn));
  queues.set(path, run.catch(() => undefined));
  return run;
}

async function initialized<T>(path: string, fn: (ck: Cryptoki) => Promise<T> | T): Promise<T> {
  const ck = loadModule(path);
  let ours = true;
  try {
    ck.initialize();
  } catch (e) {
    // Another user in this process (not zb) initialized it: share, and leave Finalize to them.
    if (e instanceof CkError && e.rv === CKR.CRYPTOKI_ALREADY_INITIALIZED) ours = false;
    else throw new ZbError("HSM_ABSENT", (e as Error).message, { cause: e });
  }
  try {
    return await fn(ck);
  } finally {
    if (ours) quietly(() => ck.finalize());
  }
}

/** Clean-up calls whose failure changes nothing for the caller (the session or module is going away). */
function quietly(f: () => void): void {
  try {
    f();
  } catch {
    /* already closed or removed */
  }
}

/**
 * Present, initialized tokens, in slot order. Uninitialized tokens (SoftHSM
 * always offers one free slot) hold no keys and refuse sessions with
 * CKR_TOKEN_NOT_RECOGNIZED. A slot whose token vanishes or is not recognised
 * between the two calls is skipped (hot-plug race).
 */
export function tokens(ck: Cryptoki): Token[] {
  const out: Token[] = [];
  for (const slot of ck.slots()) {
    try {
      const info = ck.tokenInfo(slot);
      if (info.flags & CKF_TOKEN_INITIALIZED) out.push({ slot, info });
    } catch (e) {
      const gone = [CKR.TOKEN_NOT_PRESENT, CKR.TOKEN_NOT_RECOGNIZED, CKR.DEVICE_REMOVED, CKR.SLOT_ID_INVALID];
      if (!(e instanceof CkError && gone.includes(e.rv))) throw e;
    }
  }
  return out;
}

/** Open a read-only session on `slot`, run `fn`, close the session whatever happens. */
export async function withSession<T>(ck: Cryptoki, slot: bigint, fn: (session: bigint) => Promise<T> | T): Promise<T> {
  const session = ck.openSession(slot);
  try {
    return await fn(session);
  } finally {
    quietly(() => ck.closeSession(session));
  }
}

/** Human name of a selector for messages: `label "luks", id 01`. */
export function describeKey(sel: KeySelector): string {
  const parts: string[] = [];
  if (sel.label !== undefined) parts.push(`label ${JSON.stringify(sel.label)}`);
  if (sel.id !== undefined) parts.push(`id ${Buffer.from(sel.id).toString("hex")}`);
  return parts.join(", ");
}

/** Objects of class `cls` matching the selector (CKA_CLASS + CKA_ID + CKA_LABEL template, v2.40 §4.2). */
export function findByClass(ck: Cryptoki, session: bigint, cls: number, sel: KeySelector): bigint[] {
  const tpl: { type: number; value: Uint8Array }[] = [{ type: CKA.CLASS, value: ulongBytes(cls) }];
  if (sel.id !== undefined) tpl.push({ type: CKA.ID, value: sel.id });
  if (sel.label !== undefined) tpl.push({ type: CKA.LABEL, value: new TextEncoder().encode(sel.label) });
  return ck.findObjects(session, tpl);
}

/**
 * The RSA public half of a key object (public or private key): CKA_MODULUS
 * and CKA_PUBLIC_EXPONENT are never sensitive (Current Mechanisms §2.1.3),
 * but a private key is only visible after login. Null for non-RSA keys.
 */
export function rsaPublicOf(ck: Cryptoki, session: bigint, object: bigint): RsaPublic | null {
  const [type, n, e] = ck.attributes(session, object, [CKA.KEY_TYPE, CKA.MODULUS, CKA.PUBLIC_EXPONENT]);
  if (!type || type.byteLength !== 8 || new DataView(type.buffer, type.byteOffset, 8).getBigUint64(0, true) !== BigInt(CKK.RSA)) return null;
  if (!n || !e || n.byteLength === 0 || e.byteLength === 0) return null;
  return { n, e };
}

/** A public key found on the token; `handle` is set when it is a CKO_PUBLIC_KEY object (not a certificate). */
export interface FoundPublicKey {
  key: RsaPublic;
  handle?: bigint;
}

/**
 * The RSA public key named by `sel`, read without login: from a public-key
 * object, else from a certificate with the same CKA_ID/CKA_LABEL (tokens set
 * up for systemd-cryptenroll). Undefined when neither exists.
 * @throws {ZbError} HSM_NO_MATCH when several different keys match
 */
export function findPublicKey(ck: Cryptoki, session: bigint, sel: KeySelector): FoundPublicKey | undefined {
  const found: FoundPublicKey[] = [];
  for (const handle of findByClass(ck, session, CKO.PUBLIC_KEY, sel)) {
    const key = rsaPublicOf(ck, session, handle);
    if (key) found.push({ key, handle });
  }
  if (found.length === 0) {
    for (const h of findByClass(ck, session, CKO.CERTIFICATE, sel)) {
      const [der] = ck.attributes(session, h, [CKA.VALUE]);
      const key = der ? certificateKey(der) : null;
      if (key) found.push({ key });
    }
  }
  return single(found, sel);
}

/**
 * The RSA private key named by `sel` (after login) and its public half when
 * the module reveals it.
 * @throws {ZbError} HSM_NO_MATCH when several private keys match
 */
export function findPrivateKey(ck: Cryptoki, session: bigint, sel: KeySelector): { handle: bigint; pub: RsaPublic | null } | undefined {
  const handles = findByClass(ck, session, CKO.PRIVATE_KEY, sel);
  if (handles.length > 1) {
    throw new ZbError("HSM_NO_MATCH", `${handles.length} private keys match ${describeKey(sel)}; name the key by id`);
  }
  const handle = handles[0];
  return handle === undefined ? undefined : { handle, pub: rsaPublicOf(ck, session, handle) };
}

function certificateKey(der: Uint8Array): RsaPublic | null {
  try {
    return rsaFromCertificate(der);
  } catch {
    return null; // not X.509 (CKC_WTLS or a broken object): not a key zb can seal to
  }
}

function single(found: FoundPublicKey[], sel: KeySelector): FoundPublicKey | undefined {
  const first = found[0];
  if (first === undefined) return undefined;
  const fp = fingerprint(first.key);
  if (found.some((f) => !sameBytes(fingerprint(f.key), fp))) {
    throw new ZbError("HSM_NO_MATCH", `${found.length} different keys match ${describeKey(sel)}; name the key by id`);
  }
  return first;
}
