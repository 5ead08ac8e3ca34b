/**
 * The `pkcs11` HSM backend: wrap a secret to an RSA key pair on a PKCS#11
 * token (SoftHSM2, smartcards, network HSMs, any module), unwrap it on the
 * token after C_Login with the user PIN.
 *
 * - seal: read the public key without logging in (a CKO_PUBLIC_KEY object,
 *   else a certificate with the same CKA_ID/CKA_LABEL) and RSA-OAEP encrypt
 *   on the host (why on the host: lib/hsm/pkcs11/rsa.ts). The OAEP hash is
 *   SHA-256 unless the token refuses it (see {@link Pkcs11Options.oaep}).
 * - unseal: among the tokens with the recorded label, find the one whose
 *   public key has the recorded fingerprint (without login), ask for the
 *   PIN, C_Login(CKU_USER) to that token only, C_DecryptInit
 *   (CKM_RSA_PKCS_OAEP) + C_Decrypt, C_Logout, C_CloseSession, C_Finalize.
 *   Labels are not unique (a backup token, a stranger's USB token can carry
 *   the same one), and the PIN must not go to a token that is not the one
 *   sealed to: a token whose key cannot be matched is never logged in to.
 *
 * Sealed data: lib/hsm/pkcs11/sealed.ts and docs/hsm/pkcs11.md.
 */
import { isZbError, ZbError, type ErrorCode } from "../../errors.ts";
import { wipe } from "../../secret.ts";
import type { BackendOptions, Hsm, ProbeResult, SealedData, SealOptions, UnsealFailure, UnsealResult } from "../types.ts";
import { addressOf, CkError, type Cryptoki } from "./ffi.ts";
import { CKF_USER_PIN_FINAL_TRY, CKM, CKR, CKU_USER, encodeMechanism, encodeOaepParams, rvName, type OaepHash } from "./layout.ts";
import { fingerprint, modulusBytes, oaepCapacity, oaepEncrypt, sameBytes, type RsaPublic } from "./rsa.ts";
import { oaepMechanism, parseSelector, readSealed, writeSealed, type KeySelector, type Mechanism, type Sealed } from "./sealed.ts";
import { describeKey, findPrivateKey, findPublicKey, tokens, withCryptoki, withSession, type FoundPublicKey, type Token } from "./token.ts";

export { readPinFile } from "./pin.ts";

/** Options of {@link Pkcs11Hsm}, from `pkcs11.*` lines of /etc/zb/hsm.conf or flags. */
export interface Pkcs11Options extends BackendOptions {
  /** Path of the PKCS#11 module (e.g. /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so). */
  module: string;
  /** Token label to seal to; default: the one token holding the key. */
  token?: string;
  /**
   * Token serial number (CK_TOKEN_INFO.serialNumber, trailing blanks
   * removed): chooses between tokens that share a label. Unseal picks the
   * token by the key's fingerprint; with a serial set it looks at that token
   * only, so a token that shows a copy of the public key (public objects
   * can be copied by anyone) under the same label is never sent the PIN.
   */
  tokenSerial?: string;
  /** CKA_LABEL of the key pair. */
  keyLabel?: string;
  /** CKA_ID of the key pair, hex. */
  keyId?: string;
  /** The user PIN, asked only by unseal; the backend wipes the returned buffer after C_Login. */
  pin: () => Promise<Uint8Array>;
  /**
   * How many PINs `pin` may be asked for when the token says one was wrong
   * (default 1). More only for a person at a prompt: a PIN file asked again
   * gives the same wrong PIN, and tokens lock after a few.
   */
  pinAttempts?: number;
  /**
   * OAEP hash for seal. `auto` (default): SHA-256 unless the token's
   * C_EncryptInit on the public key refuses SHA-256 parameters and accepts
   * SHA-1 (SoftHSM 2.6 does OAEP with SHA-1 only).
   */
  oaep?: OaepHash | "auto";
}

/** The CK_MECHANISM for C_DecryptInit, and the parameter buffer it points into. */
function mechanismFor(m: Mechanism): { mechanism: Uint8Array; keep: Uint8Array[] } {
  if (m === "rsa-pkcs1") return { mechanism: encodeMechanism(CKM.RSA_PKCS), keep: [] };
  const params = encodeOaepParams(m === "rsa-oaep-sha256" ? "sha256" : "sha1");
  return { mechanism: encodeMechanism(CKM.RSA_PKCS_OAEP, addressOf(params), params.byteLength), keep: [params] };
}

/** RSA key pair on a PKCS#11 token. See the file comment for the protocol. */
export class Pkcs11Hsm implements Hsm {
  readonly name = "pkcs11" as const;
  private readonly sel: KeySelector;

  /** @throws {ZbError} CONFIG when the module path is empty or keyId is not hex */
  constructor(private readonly opts: Pkcs11Options) {
    if (!opts.module) throw new ZbError("CONFIG", "cannot use pkcs11: no module path given (pkcs11.module=)");
    this.sel = parseSelector(opts.keyId, opts.keyLabel, (why) => new ZbError("CONFIG", `cannot use pkcs11: ${why}`));
  }

  /** Module and token facts, without logging in. Never throws. */
  async probe(): Promise<ProbeResult> {
    try {
      return await withCryptoki(this.opts.module, (ck) => this.probeWith(ck));
    } catch (e) {
      return { backend: "pkcs11", present: false, detail: (e as Error).message, info: { module: this.opts.module } };
    }
  }

  private async probeWith(ck: Cryptoki): Promise<ProbeResult> {
    const m = ck.info();
    const all = tokens(ck);
    const info: Record<string, string | number | boolean> = {
      module: this.opts.module, manufacturer: m.manufacturer, library: m.library,
      libraryVersion: m.libraryVersion, cryptokiVersion: m.cryptokiVersion, tokens: all.length,
    };
    const lib = `${m.library} ${m.libraryVersion} (${m.manufacturer})`;
    const named = all.filter((t) => this.named(t));
    const tok = named[0];
    if (!tok) {
      const what = this.opts.token === undefined && this.opts.tokenSerial === undefined ? "no token present" : `no ${this.tokenName()}`;
      return { backend: "pkcs11", present: false, detail: `${lib}: ${what}`, info };
    }
    Object.assign(info, { token: tok.info.label, model: tok.info.model, serial: tok.info.serial, tokenManufacturer: tok.info.manufacturer });
    let detail = `${lib}: token ${JSON.stringify(tok.info.label)} (${tok.info.model}, serial ${tok.info.serial})`;
    const twins = named.filter((t) => t.info.label === tok.info.label).length - 1;
    if (twins > 0) {
      info.sameLabel = twins;
      detail += ` and ${twins} more with this label (pkcs11.token-serial= chooses one)`;
    }
    if (this.sel.id !== undefined || this.sel.label !== undefined) {
      const found = await withSession(ck, tok.slot, (s) => findPublicKey(ck, s, this.sel)).catch(() => undefined);
      info.key = found !== undefined;
      detail += found ? `, key ${describeKey(this.sel)}` : `, no public key ${describeKey(this.sel)}`;
    }
    return { backend: "pkcs11", present: true, detail, info };
  }

  /**
   * Encrypt `secret` to the token's public key; no PIN needed.
   * @throws {ZbError} CONFIG when no key is named; HSM_ABSENT when the module
   *   or token is missing; HSM_NO_MATCH when no (or more than one) key matches;
   *   HSM_FAILED otherwise (a module error, no usable OAEP, a secret too long)
   */
  async seal(secret: Uint8Array, opts: SealOptions = {}): Promise<SealedData> {
    if (this.sel.id === undefined && this.sel.label === undefined) {
      throw new ZbError("CONFIG", "cannot seal with pkcs11: name the key (pkcs11.key-label= or pkcs11.key-id=)");
    }
    if (opts.pcrs?.length) (this.opts.warn ?? console.error)("zb: pkcs11 does not bind to PCRs; --pcrs ignored");
    try {
      const { token, found, hash } = await withCryptoki(this.opts.module, (ck) => this.keyForSeal(ck));
      const max = oaepCapacity(found.key, hash);
      if (secret.byteLength > max) throw new ZbError("HSM_FAILED", `secret is ${secret.byteLength} bytes, OAEP under this key takes at most ${max}`);
      return writeSealed({
        mechanism: oaepMechanism(hash), token: token.info.label, sel: this.sel,
        pubkeySha256: fingerprint(found.key), ciphertext: oaepEncrypt(found.key, secret, hash),
      });
    } catch (e) {
      throw sealError(e);
    }
  }

  /** Does `t` fit the token options (label and serial, each when given)? */
  private named(t: Token): boolean {
    return (this.opts.token === undefined || t.info.label === this.opts.token) && (this.opts.tokenSerial === undefined || t.info.serial === this.opts.tokenSerial);
  }

  /** The token options for messages: `token labelled "zb" with serial 42`. */
  private tokenName(): string {
    const parts = [];
    if (this.opts.token !== undefined) parts.push(`labelled ${JSON.stringify(this.opts.token)}`);
    if (this.opts.tokenSerial !== undefined) parts.push(`with serial ${JSON.stringify(this.opts.tokenSerial)}`);
    return `token ${parts.join(" ")}`;
  }

  /**
   * The one token and public key the options name (tokens are searched when
   * no label is given), and the OAEP hash. Two tokens holding the key are
   * refused, also when they share a label: the blob records only the label,
   * and which of them was meant is for the person sealing to say
   * (pkcs11.token-serial=).
   */
  private async keyForSeal(ck: Cryptoki): Promise<{ token: Token; found: FoundPublicKey; hash: OaepHash }> {
    const candidates = tokens(ck).filter((t) => this.named(t));
    if (candidates.length === 0) {
      throw new ZbError("HSM_ABSENT", this.opts.token === undefined && this.opts.tokenSerial === undefined ? "no token present" : `no ${this.tokenName()}`);
    }
    const hits: { token: Token; found: FoundPublicKey; hash: OaepHash }[] = [];
    for (const token of candidates) {
      await withSession(ck, token.slot, (s) => {
        const found = findPublicKey(ck, s, this.sel);
        if (found) hits.push({ token, found, hash: this.oaepHash(ck, s, found) });
      });
    }
    if (hits.length === 0) {
      const names = [...new Set(candidates.map((t) => JSON.stringify(t.info.label)))].join(", ");
      throw new ZbError("HSM_NO_MATCH", `no RSA public key or certificate with ${describeKey(this.sel)} on token ${names}`);
    }
    if (hits.length > 1) {
      const names = hits.map((h) => `${JSON.stringify(h.token.info.label)} (serial ${JSON.stringify(h.token.info.serial)})`).join(", ");
      const sameLabel = hits.every((h) => h.token.info.label === hits[0]!.token.info.label);
      throw new ZbError("HSM_NO_MATCH", `a key with ${describeKey(this.sel)} is on tokens ${names}; name the token (${sameLabel ? "pkcs11.token-serial=" : "pkcs11.token="})`);
    }
    return hits[0]!;
  }

  /**
   * The OAEP hash to seal with. `auto` asks the token, without login, through
   * C_EncryptInit on the public-key object: modules check mechanism
   * parameters the same way for both directions (SoftHSM 2.6 answers
   * CKR_ARGUMENTS_BAD to SHA-256). Inconclusive answers keep SHA-256.
   * Modules that do public-key operations in software (OpenSC) may accept
   * SHA-256 the card cannot decrypt: configure `oaep` for those.
   */
  private oaepHash(ck: Cryptoki, session: bigint, found: FoundPublicKey): OaepHash {
    const choice = this.opts.oaep ?? "auto";
    if (choice !== "auto") return choice;
    if (found.handle === undefined) return "sha256"; // only a certificate: nothing to ask
    const refused = [CKR.ARGUMENTS_BAD, CKR.MECHANISM_PARAM_INVALID, CKR.MECHANISM_INVALID];
    const ask = (h: OaepHash) => {
      const { mechanism, keep } = mechanismFor(oaepMechanism(h));
      return ck.tryEncryptInit(session, found.handle!, mechanism, keep);
    };
    const rv = ask("sha256");
    if (!refused.includes(rv)) return "sha256";
    const rv1 = ask("sha1");
    if (rv1 === CKR.OK) return "sha1";
    throw new ZbError("HSM_FAILED", `the token refuses RSA-OAEP with SHA-256 and SHA-1 (C_EncryptInit returned ${rvName(rv1)})`);
  }

  /**
   * Decrypt on the token the sealed data names (label, and the key's
   * fingerprint among tokens that share the label). Answers, never throws
   * for: absent (module or token missing), no-match (key missing or another
   * key, on every token with the label), denied (PIN refused), failed
   * (anything else, including a damaged ciphertext).
   * @throws {ZbError} the PIN callback's own error, with its code: a PIN file
   *   with a loose mode is CONFIG (lib/hsm/pkcs11/pin.ts), a missing terminal
   *   USAGE — the caller's setup, not the token's answer
   */
  async unseal(data: SealedData): Promise<UnsealResult> {
    try {
      const sealed = readSealed(data);
      return await withCryptoki(this.opts.module, (ck) => this.unsealWith(ck, sealed));
    } catch (e) {
      if (e instanceof PinSourceError) throw e.error;
      return failure(e);
    }
  }

  private async unsealWith(ck: Cryptoki, sealed: Sealed): Promise<UnsealResult> {
    const serial = this.opts.tokenSerial;
    const labelled = tokens(ck).filter((t) => t.info.label === sealed.token && (serial === undefined || t.info.serial === serial));
    if (labelled.length === 0) {
      throw new ZbError("HSM_ABSENT", `no token labelled ${JSON.stringify(sealed.token)}${serial === undefined ? "" : ` with serial ${JSON.stringify(serial)}`}`);
    }
    const token = await this.tokenForUnseal(ck, labelled, sealed);
    return withSession(ck, token.slot, async (s) => {
      await this.login(ck, s, token.slot);
      try {
        const key = findPrivateKey(ck, s, sealed.sel);
        if (!key) throw new ZbError("HSM_NO_MATCH", `token ${JSON.stringify(sealed.token)} has no private key with ${describeKey(sealed.sel)}`);
        if (key.pub) checkKey(key.pub, sealed);
        const { mechanism, keep } = mechanismFor(sealed.mechanism);
        return { kind: "ok" as const, secret: ck.decrypt(s, key.handle, mechanism, keep, sealed.ciphertext) };
      } finally {
        try {
          ck.logout(s);
        } catch {
          /* the session is closed next anyway, which ends the login (v2.40 §5.6) */
        }
      }
    });
  }

  /**
   * The token to log in to, chosen before any PIN is asked for. With the
   * key's fingerprint in the sealed data (zb always records it): the token
   * among `labelled` whose public key (a CKO_PUBLIC_KEY, else a certificate,
   * readable without login; seal needed it too) has that fingerprint. A token
   * showing no such key is never logged in to; when none shows it, the
   * answer is no-match and no PIN is asked for. Several tokens showing it
   * (the same key on a backup token) are equivalent: the first is used.
   * Without a fingerprint (data imported from systemd-cryptenroll) nothing
   * can be checked before login, so the label must name one token.
   * @throws {ZbError} HSM_NO_MATCH; HSM_FAILED when the key's size does not fit the ciphertext
   */
  private async tokenForUnseal(ck: Cryptoki, labelled: Token[], sealed: Sealed): Promise<Token> {
    const label = JSON.stringify(sealed.token);
    const fp = sealed.pubkeySha256;
    if (fp === undefined) {
      if (labelled.length > 1) {
        throw new ZbError("HSM_NO_MATCH", `${labelled.length} tokens are labelled ${label} and the sealed data has no key fingerprint (pubkeySha256) to tell them apart; the PIN goes to none of them`);
      }
      const only = labelled[0]!;
      await withSession(ck, only.slot, (s) => {
        const pub = findPublicKey(ck, s, sealed.sel);
        if (pub) checkKey(pub.key, sealed);
      });
      return only;
    }
    const matching: Token[] = [];
    const others: string[] = [];
    for (const t of labelled) {
      const why = await withSession(ck, t.slot, (s) => {
        let pub: FoundPublicKey | undefined;
        try {
          pub = findPublicKey(ck, s, sealed.sel);
        } catch (e) {
          if (isZbError(e, "HSM_NO_MATCH")) return e.message; // several different keys: none is certainly ours
          throw e;
        }
        if (!pub) return `no RSA public key or certificate with ${describeKey(sealed.sel)} to check before login`;
        if (!sameBytes(fingerprint(pub.key), fp)) return `the key with ${describeKey(sealed.sel)} is not the key the secret was sealed to`;
        checkKey(pub.key, sealed);
        return null;
      });
      if (why === null) matching.push(t);
      else others.push(labelled.length === 1 ? `token ${label}: ${why}` : `serial ${JSON.stringify(t.info.serial)}: ${why}`);
    }
    if (matching.length === 0) {
      throw new ZbError("HSM_NO_MATCH", labelled.length === 1 ? others[0]! : `none of the ${labelled.length} tokens labelled ${label} holds the key the secret was sealed to (${others.join("; ")})`);
    }
    if (matching.length > 1) {
      const serials = matching.map((t) => JSON.stringify(t.info.serial)).join(", ");
      this.opts.warn?.(`zb: ${matching.length} tokens labelled ${label} (serials ${serials}) show the key the secret was sealed to; using serial ${JSON.stringify(matching[0]!.info.serial)}`);
    }
    return matching[0]!;
  }

  /**
   * C_Login from the callback's buffer, wiped right after. A PIN the token
   * refuses as wrong (incorrect, or of a length or form it does not take: a
   * typing error) is asked again while attempts are left, unless the token
   * says the next wrong one locks it.
   */
  private async login(ck: Cryptoki, session: bigint, slot: bigint): Promise<void> {
    const attempts = Math.max(1, this.opts.pinAttempts ?? 1);
    for (let attempt = 1; ; attempt++) {
      let pin: Uint8Array;
      try {
        pin = await this.opts.pin();
      } catch (e) {
        // A typed error is the caller's setup (a PIN file readable by others: CONFIG), not the token's answer: it keeps its code.
        if (isZbError(e)) throw new PinSourceError(e);
        throw new ZbError("HSM_FAILED", `cannot get the token PIN: ${(e as Error).message}`, { cause: e });
      }
      try {
        ck.login(session, CKU_USER, pin);
        return;
      } catch (e) {
        // Already logged in through another session of this process: that login serves us too.
        if (e instanceof CkError && e.rv === CKR.USER_ALREADY_LOGGED_IN) return;
        if (e instanceof CkError && attempt < attempts && pinRetryable(e.rv, tokenFlags(ck, slot))) {
          this.opts.warn?.(`zb: the token refused the PIN; ${attempts - attempt} more ${attempts - attempt === 1 ? "try" : "tries"}`);
          continue;
        }
        throw e;
      } finally {
        wipe(pin);
      }
    }
  }

  /** Nothing is held between calls: every operation finalizes the module. */
  async close(): Promise<void> {}
}

/** The PIN callback's own ZbError, carried out of unseal unchanged (not turned into a `failed` answer). */
class PinSourceError extends Error {
  constructor(readonly error: ZbError) {
    super(error.message);
  }
}

/** The key found must be the one sealed to, and its size must fit the ciphertext. */
function checkKey(key: RsaPublic, sealed: Sealed): void {
  if (sealed.pubkeySha256 && !sameBytes(fingerprint(key), sealed.pubkeySha256)) {
    throw new ZbError("HSM_NO_MATCH", `the key with ${describeKey(sealed.sel)} on token ${JSON.stringify(sealed.token)} is not the key the secret was sealed to`);
  }
  if (modulusBytes(key) !== sealed.ciphertext.byteLength) {
    throw new ZbError("HSM_FAILED", `ciphertext is ${sealed.ciphertext.byteLength} bytes, the key's modulus ${modulusBytes(key)}`);
  }
}

const PIN_REFUSED = [CKR.PIN_INCORRECT, CKR.PIN_INVALID, CKR.PIN_LEN_RANGE, CKR.PIN_EXPIRED, CKR.PIN_LOCKED];
/** Refusals a person's typing error gives (OpenSC tokens answer a short PIN with PIN_LEN_RANGE). */
const MISTYPED = [CKR.PIN_INCORRECT, CKR.PIN_INVALID, CKR.PIN_LEN_RANGE];

/**
 * May a PIN refused with `rv` be asked for again? Only a typing error, and
 * not when the token's flags (null: unknown) say the next wrong PIN locks it. Pure.
 */
export function pinRetryable(rv: number, flags: number | null): boolean {
  return MISTYPED.includes(rv) && ((flags ?? 0) & CKF_USER_PIN_FINAL_TRY) === 0;
}

function tokenFlags(ck: Cryptoki, slot: bigint): number | null {
  try {
    return ck.tokenInfo(slot).flags;
  } catch {
    return null;
  }
}
/** The token went away mid-operation: it may come back (hot-plug). */
const TOKEN_GONE = [CKR.TOKEN_NOT_PRESENT, CKR.TOKEN_NOT_RECOGNIZED, CKR.DEVICE_REMOVED];
const KINDS: Partial<Record<ErrorCode, UnsealFailure["kind"]>> = { HSM_ABSENT: "absent", HSM_NO_MATCH: "no-match", HSM_DENIED: "denied" };

/**
 * Failure class of an error raised during unseal. A decrypt error after the
 * key's fingerprint matched (e.g. CKR_ENCRYPTED_DATA_INVALID) is `failed`:
 * the right key could not decrypt, so the blob is damaged, not foreign.
 */
function failure(e: unknown): UnsealFailure {
  if (e instanceof CkError) {
    if (PIN_REFUSED.includes(e.rv)) return { kind: "denied", why: e.message };
    if (TOKEN_GONE.includes(e.rv)) return { kind: "absent", why: e.message };
    return { kind: "failed", why: e.message };
  }
  if (e instanceof ZbError) return { kind: KINDS[e.code] ?? "failed", why: e.message };
  return { kind: "failed", why: e instanceof Error ? e.message : String(e) };
}

/** Seal errors keep their class; CK errors of a vanished token become HSM_ABSENT. */
function sealError(e: unknown): ZbError {
  const f = failure(e);
  const code: ErrorCode = e instanceof ZbError && !(e instanceof CkError) ? e.code : f.kind === "absent" ? "HSM_ABSENT" : "HSM_FAILED";
  return new ZbError(code, `cannot seal with pkcs11: ${f.why}`, { cause: e });
}
