/**
 * The tpm2 HSM backend: seals a secret to the TPM's storage key under a
 * policy, and unseals it over a salted session with response encryption, so
 * the secret never crosses the TPM bus (SPI/I²C/LPC) in clear. Speaks the
 * TPM 2.0 command protocol itself (no TSS library, no tpm2-tools needed in
 * the initramfs). docs/hsm/tpm2.md explains the design and the blob format.
 *
 * Every operation opens its own connection and flushes every handle it
 * created before closing it: swtpm over TCP has no resource manager, and
 * swtpm serves one connection at a time.
 */
import { isZbError, ZbError } from "../../errors.ts";
import type { BackendOptions, Hsm, ProbeResult, SealedData, SealOptions, UnsealResult } from "../types.ts";
import { nameOfPublic2b, Tpm, TpmRcError } from "./commands.ts";
import { sha256 } from "./crypto.ts";
import { ATTR, sealedTemplate } from "./objects.ts";
import { normalizePcrs, policyPcrDigest, unsealOnlyPolicy, LOCKABLE_PCRS } from "./policy.ts";
import { decodeSealed, encodeSealed, type Tpm2Sealed } from "./sealed.ts";
import { SE_HMAC, SE_POLICY, SESSION_ATTR, type Session } from "./session.ts";
import { ensureSrk, readKeyAt, readSrk, SRK_HANDLE, storageKey, type Srk } from "./srk.ts";
import { connect, DEFAULT_DEVICE, formatAddress, heldByAnother, parseAddress, type Tpm2Address, type TransportFactory } from "./transport.ts";
import { BUSY_RCS, CC, decodeRc, describeRc, equalBytes, hex } from "./wire.ts";

export { warmUp } from "./crypto.ts";

/** Options of {@link Tpm2Hsm}. */
export interface Tpm2Options extends BackendOptions {
  /** `/dev/tpmrm0` (default), any character device path, `device:PATH`, or `swtpm:host=H,port=N` (control port N+1, unused). */
  device?: string;
  /** Persistent handle of the storage key (default 0x81000001). */
  srkHandle?: number;
  /** Opens the connection; tests wrap the default to record or corrupt traffic. */
  connect?: TransportFactory;
}

/** A KEYEDHASH sealed object holds at most MAX_SYM_DATA = 128 bytes (Part 2 §10.4.4). */
const MAX_SECRET = 128;

/** TPM_RC_PCR_CHANGED (Part 2 §6.6.3): a PCR changed while the policy session was in use; one more try, at once. */
const PCR_CHANGED = 0x128;
/**
 * The TPM is busy for a moment (Part 2 §6.6.3): YIELDED, TESTING (self-test
 * still running), RETRY. The kernel's TPM driver retries RETRY and TESTING
 * itself (tpm_transmit, drivers/char/tpm/tpm-interface.c); swtpm over TCP
 * has no driver in between, so zb retries these, after a short wait each.
 */
const BUSY = BUSY_RCS;
/** The waits before each retry of a {@link BUSY} code: at most 5 retries, 0.75 s in all. */
export const BUSY_DELAYS_MS = [50, 100, 200, 200, 200];
/** Refusals by policy: POLICY_FAIL, EXPIRED, POLICY_CC, AUTH_FAIL, POLICY, PCR. */
const DENIED = new Set([0x9d, 0xa3, 0xa4, 0x8e, 0x126, 0x127]);
/**
 * AUTH_FAIL and BAD_AUTH at Load: zb loads under the storage key with an
 * empty password, so these mean that key (at 0x81000001, same template, so
 * the same name) was made with a password. Not `denied`: the sealed object
 * and its policy are fine, and a slot must not be given up for good (U2) for
 * the storage key's setup; each try without noDA also counts toward lockout.
 */
const SRK_AUTH = new Set([0x8e, 0xa2]);
/**
 * TPM_RC_LOCKOUT: dictionary-attack lockout (Part 1, "Dictionary Attack
 * Protection"). Not `denied`: it heals by itself after the recovery time, and
 * while the storage key lacks noDA any process with TPM access can cause it
 * with wrong passwords, so it must not make zbunlock give up on a slot for good.
 */
const LOCKOUT = 0x921;
/** Load failures that mean "not sealed under this key": INTEGRITY, and a private area the parent cannot decrypt. */
const NOT_OURS = new Set([0x9f, 0x10b]);
/** TPM_RC_INITIALIZE: TPM2_Startup has not been run since the TPM was reset. */
const INITIALIZE = 0x100;

/** The outcome classes of a failed unseal, carried as ZbError codes until unseal() returns. */
function refuse(code: "HSM_NO_MATCH" | "HSM_DENIED", why: string): ZbError {
  return new ZbError(code, why);
}

/**
 * Run `fn` (a whole operation, on one connection; it flushes its handles on
 * errors), again when the TPM answers a code that asks for it: PCR_CHANGED
 * once at once, a {@link BUSY} code up to {@link BUSY_DELAYS_MS}.length times
 * after those waits. Anything else, or the last failure, is thrown.
 */
async function withRetries<T>(fn: () => Promise<T>, sleep: (ms: number) => Promise<void>): Promise<T> {
  let pcrChanged = 0;
  let busy = 0;
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof TpmRcError)) throw e;
      if (e.rc === PCR_CHANGED && pcrChanged++ < 1) continue;
      if (BUSY.has(e.rc) && busy < BUSY_DELAYS_MS.length) {
        await sleep(BUSY_DELAYS_MS[busy++]!);
        continue;
      }
      throw e;
    }
  }
}

/** The message for a dictionary-attack lockout: what it is and that it heals. */
function lockoutWhy(e: TpmRcError): string {
  return `the TPM is in dictionary-attack lockout, which heals by itself: ${e.command} returned ${describeRc(e.rc)}; ` +
    "it ends after the TPM's lockout recovery time (tpm2_getcap properties-variable), or with tpm2_dictionarylockout --clear-lockout";
}

/** A TPM error during unseal, classified by the step it happened in. */
function classify(e: unknown, step: "load" | "unseal"): unknown {
  if (!(e instanceof TpmRcError)) return e;
  const base = decodeRc(e.rc).base;
  if (base === LOCKOUT) return new ZbError("HSM_FAILED", lockoutWhy(e), { cause: e });
  if (step === "load" && SRK_AUTH.has(base)) {
    return new ZbError("HSM_FAILED", `the storage key at 0x81000001 has a password, and zb uses it with none: ${e.command} returned ${describeRc(e.rc)}`, {
      cause: e,
      hint: "recreate the storage key without a password (tpm2_evictcontrol to remove it; zb hsm seal creates it), then seal again",
    });
  }
  if (DENIED.has(base)) return refuse("HSM_DENIED", `the TPM refused: ${e.command} returned ${describeRc(e.rc)}`);
  if (step === "load" && NOT_OURS.has(base)) {
    return refuse("HSM_NO_MATCH", `the sealed object does not belong to this TPM's storage key: ${e.command} returned ${describeRc(e.rc)}`);
  }
  return e;
}

/** TPM_PT_FIXED properties (Part 2 §6.13). */
const PT = { family: 0x100, revision: 0x102, manufacturer: 0x105, vendor1: 0x106, fw1: 0x10b, fw2: 0x10c } as const;

function ascii(...words: (number | undefined)[]): string {
  const bytes = words.flatMap((w) => (w === undefined ? [] : [w >>> 24, (w >>> 16) & 0xff, (w >>> 8) & 0xff, w & 0xff]));
  return String.fromCharCode(...bytes.filter((b) => b >= 0x20 && b < 0x7f)).replace(/\s+/g, " ").trim();
}

/** Re-exported for callers of the backend (tests, docs). */
export { LOCKABLE_PCRS };

/** What lock() extends: SHA-256 of a fixed text, so the event is recognisable in an event log. */
const lockEvent = () => sha256(new TextEncoder().encode("zb: volumes unlocked, no more unseals until reboot"));

/** Waits between a lock's tries while the TPM device is held by another process (1.5 s in all). */
export const LOCK_BUSY_WAITS_MS = [250, 500, 750];

/** The tpm2 backend. */
export class Tpm2Hsm implements Hsm {
  readonly name = "tpm2" as const;
  private readonly address: Tpm2Address;
  private readonly srkHandle: number;
  private readonly open: TransportFactory;
  private readonly warn: (line: string) => void;
  private readonly sleep: (ms: number) => Promise<void>;
  private queue: Promise<unknown> = Promise.resolve();

  /**
   * @throws {ZbError} USAGE when `device` is not a TPM address
   * @example new Tpm2Hsm({ device: "swtpm:host=127.0.0.1,port=2321" })
   */
  constructor(opts: Tpm2Options = {}) {
    this.address = parseAddress(opts.device ?? DEFAULT_DEVICE);
    this.srkHandle = opts.srkHandle ?? SRK_HANDLE;
    this.open = opts.connect ?? connect;
    this.warn = opts.warn ?? ((line) => process.stderr.write(`${line}\n`));
    this.sleep = opts.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  /** One connection per operation, operations one at a time. */
  private withTpm<T>(fn: (tpm: Tpm) => Promise<T>): Promise<T> {
    const run = async () => {
      const transport = await this.open(this.address);
      try {
        return await fn(new Tpm(transport));
      } finally {
        transport.close();
      }
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  /**
   * Present: the TPM answers GetCapability; info has manufacturer, firmware and the storage key.
   * A busy answer ({@link BUSY}) to either command is retried like seal and unseal retry it;
   * a TPM still busy after the last retry is there but busy (`info.busy` true).
   * A TPM that answers TPM_RC_INITIALIZE is there but not started (`info.started` false).
   * Both are present, as unseal calls them `failed`, not `absent`. Never throws.
   */
  async probe(): Promise<ProbeResult> {
    const where = formatAddress(this.address);
    try {
      return await this.withTpm((tpm) => withRetries(() => this.probeOnce(tpm, where), this.sleep));
    } catch (e) {
      if (e instanceof TpmRcError && e.rc === INITIALIZE) {
        const detail = `TPM at ${where} is there but not started: it answers ${describeRc(e.rc)}, and seal and unseal fail ` +
          "until TPM2_Startup runs (the kernel runs it when its driver finds the TPM; swtpm needs --flags startup-clear)";
        return { backend: this.name, present: true, detail, info: { address: where, started: false } };
      }
      if (e instanceof TpmRcError && BUSY.has(e.rc)) {
        const waited = BUSY_DELAYS_MS.reduce((a, b) => a + b, 0) / 1000;
        const detail = `TPM at ${where} is there but busy: ${e.command} still returned ${describeRc(e.rc)} after ` +
          `${BUSY_DELAYS_MS.length} retries over ${waited} s; seal and unseal fail while it is busy, try again in a moment`;
        return { backend: this.name, present: true, detail, info: { address: where, busy: true } };
      }
      return { backend: this.name, present: false, detail: (e as Error).message ?? String(e) };
    }
  }

  /** One probe on one connection; a busy answer goes up to {@link withRetries}, which runs it again. */
  private async probeOnce(tpm: Tpm, where: string): Promise<ProbeResult> {
    const p = await tpm.properties(PT.family, 0x0d);
    const info: Record<string, string | number | boolean> = {
      address: where,
      family: ascii(p.get(PT.family)),
      revision: (p.get(PT.revision) ?? 0) / 100,
      manufacturer: ascii(p.get(PT.manufacturer)),
      vendor: ascii(...[0, 1, 2, 3].map((i) => p.get(PT.vendor1 + i))),
      firmware: [(p.get(PT.fw1) ?? 0) >>> 16, (p.get(PT.fw1) ?? 0) & 0xffff, (p.get(PT.fw2) ?? 0) >>> 16, (p.get(PT.fw2) ?? 0) & 0xffff].join("."),
    };
    // A busy ReadPublic says nothing about the key: it goes up to be retried, not into info.srk.
    const srk = await readSrk(tpm, this.srkHandle).catch((e: unknown) => {
      if (e instanceof TpmRcError && BUSY.has(e.rc)) throw e;
      return (e as Error).message;
    });
    info.srk = typeof srk === "string" ? `unusable: ${srk}` : srk ? "present" : "absent (created by the first seal)";
    if (srk && typeof srk !== "string") info.srkName = hex(srk.name);
    const detail = `TPM ${info.family} at ${where}: ${info.manufacturer} (${info.vendor}), firmware ${info.firmware}, storage key ${info.srk}`;
    return { backend: this.name, present: true, detail, info };
  }

  /**
   * Seal `secret` to the storage key (created at 0x81000001 if missing), bound to `opts.pcrs`
   * (sha256 bank, current values) and `opts.lockPcr` (at zero), or, without PCRs, to
   * PolicyCommandCode(TPM2_Unseal).
   * The sensitive data travels encrypted (salted session, decrypt attribute).
   * @throws {ZbError} HSM_ABSENT when the TPM is not there; USAGE for bad PCR indices or a secret that is empty or over 128 bytes;
   *   CONFIG when the device path is not a character device; HSM_FAILED otherwise (a dictionary-attack lockout included)
   */
  async seal(secret: Uint8Array, opts: SealOptions = {}): Promise<SealedData> {
    if (secret.length === 0 || secret.length > MAX_SECRET) {
      // The caller's input, not the TPM, is wrong: USAGE, like an empty secret on stdin.
      throw new ZbError("USAGE", `cannot seal with tpm2: the secret is ${secret.length} bytes; a TPM seals 1 to ${MAX_SECRET} bytes`);
    }
    const lock = opts.lockPcr;
    if (lock !== undefined && !LOCKABLE_PCRS.includes(lock)) {
      throw new ZbError("USAGE", `cannot use PCR ${lock} as the lock PCR: it must reset to zero at boot and only then (PCRs 0–15; 16 and 23 can be reset by software, 17–22 reset to ones)`);
    }
    const pcrs = normalizePcrs([...new Set([...(opts.pcrs ?? []), ...(lock !== undefined ? [lock] : [])])]);
    let warned = false; // once per seal, not once per retry
    const warn = (line: string) => {
      if (!warned) this.warn(line);
      warned = true;
    };
    return await this.withTpm((tpm) => withRetries(() => this.sealOnce(tpm, secret, pcrs, lock, warn), this.sleep))
      .catch((e: unknown) => {
        throw e instanceof TpmRcError && e.rc === LOCKOUT ? new ZbError("HSM_FAILED", `cannot seal with tpm2: ${lockoutWhy(e)}`, { cause: e }) : e;
      });
  }

  private async sealOnce(tpm: Tpm, secret: Uint8Array, pcrs: number[], lockPcr: number | undefined, warn: (line: string) => void): Promise<SealedData> {
    const srk = await ensureSrk(tpm, this.srkHandle);
    // Without noDA, every use of the key's authorization counts against the TPM's
    // dictionary-attack protection (Part 1, "Dictionary Attack Protection"): wrong
    // passwords from any process can then lock the TPM, and Load of this blob fails
    // until the lockout heals. zb's own template has noDA; a key made by other tools may not.
    if (!(srk.area.attributes & ATTR.noDA)) {
      warn(`zb: warning: the storage key at 0x${srk.handle.toString(16)} lacks the noDA attribute: any process that can reach the TPM ` +
        "can put it into dictionary-attack lockout with wrong passwords, and unseals then fail until the lockout heals (docs/hsm/tpm2.md)");
    }
    // The lock PCR is sealed at its boot value, zeros (Part 1 §17.5: TPM2_Startup(CLEAR)
    // resets it), whatever it holds now: after this boot's unlock it was extended already.
    const values = pcrs.length ? (await tpm.pcrRead(pcrs)).map((v, i) => (pcrs[i] === lockPcr ? new Uint8Array(v.length) : v)) : [];
    const policyDigest = pcrs.length ? policyPcrDigest(pcrs, values) : unsealOnlyPolicy();
    const session = await tpm.startSession(SE_HMAC, srk);
    try {
      const auth = { kind: "session" as const, session, attrs: SESSION_ATTR.decrypt };
      const { priv, pub } = await tpm.create(srk, auth, secret, sealedTemplate(policyDigest));
      return encodeSealed({
        srkHandle: srk.handle, srkName: srk.name, policy: pcrs.length ? "pcr" : "command-code", pcrs, policyDigest, public: pub, private: priv,
        ...(lockPcr !== undefined ? { lockPcr } : {}),
      });
    } finally {
      await this.endSession(tpm, session);
    }
  }

  /**
   * Extend the blob's lock PCR (if it has one) with a fixed "unlocked" event,
   * so its PolicyPCR fails until the next reboot resets the PCR.
   * @returns true when a PCR was extended
   * @throws {ZbError} CRED_INVALID for malformed data; HSM_ABSENT when there is no TPM; CONFIG when
   *   the device path is not a character device; HSM_FAILED when the TPM fails or another process
   *   holds its device (EBUSY)
   */
  async lock(data: SealedData): Promise<boolean> {
    return (await this.extendLock(data, false)) === "locked";
  }

  /**
   * lock(), but only on the TPM the blob was sealed to: the storage key at
   * the blob's handle must carry the pinned name, as for an unseal. For a
   * lock made on a device that is a guess (zbunlock's step before a shell
   * when the HSM configuration cannot be used): a TPM that does not hold the
   * key's storage key cannot unseal it, and its PCR is none of zb's business.
   * @returns "locked" (PCR extended), "no-lock" (the blob names no lock PCR) or "other-tpm"
   * @throws {ZbError} as lock()
   */
  lockIfPinned(data: SealedData): Promise<"locked" | "no-lock" | "other-tpm"> {
    return this.extendLock(data, true);
  }

  /** The extend of lock() and lockIfPinned(); `pinned`: first check the storage key is the blob's. */
  private async extendLock(data: SealedData, pinned: boolean): Promise<"locked" | "no-lock" | "other-tpm"> {
    const sealed = decodeSealed(data);
    if (sealed.lockPcr === undefined) return "no-lock";
    const pcr = sealed.lockPcr;
    const once = async (tpm: Tpm): Promise<"locked" | "other-tpm"> => {
      if (pinned) {
        try {
          await this.pinnedSrk(tpm, sealed);
        } catch (e) {
          if (isZbError(e, "HSM_NO_MATCH")) return "other-tpm";
          throw e;
        }
      }
      await tpm.pcrExtend(pcr, lockEvent());
      return "locked";
    };
    return await this.whenFree(() => this.withTpm((tpm) => withRetries(() => once(tpm), this.sleep))).catch((e: unknown) => Promise.reject(lockFailure(e, pcr)));
  }

  /**
   * A lock's TPM access, tried again while another process holds the device
   * (EBUSY on /dev/tpm0, which admits one opener): a holder that is about to
   * let go (a tool run by the initramfs) must not turn the step before a
   * shell into a reboot. Bounded: LOCK_BUSY_WAITS_MS, then the lock fails.
   */
  private async whenFree<T>(fn: () => Promise<T>): Promise<T> {
    for (let i = 0; ; i++) {
      try {
        return await fn();
      } catch (e) {
        if (!heldByAnother(e) || i >= LOCK_BUSY_WAITS_MS.length) throw e;
        await this.sleep(LOCK_BUSY_WAITS_MS[i]!);
      }
    }
  }

  /** Unseal sealed data (made by seal() or imported from tpm2-tools). Never throws. */
  async unseal(data: SealedData): Promise<UnsealResult> {
    let sealed: Tpm2Sealed;
    try {
      sealed = decodeSealed(data);
    } catch (e) {
      return { kind: "failed", why: (e as Error).message };
    }
    try {
      const secret = await this.withTpm((tpm) => withRetries(() => this.unsealOnce(tpm, sealed), this.sleep));
      return { kind: "ok", secret };
    } catch (e) {
      const why = (e as Error).message ?? String(e);
      if (isZbError(e, "HSM_ABSENT")) return { kind: "absent", why };
      if (isZbError(e, "HSM_NO_MATCH")) return { kind: "no-match", why };
      if (isZbError(e, "HSM_DENIED")) return { kind: "denied", why };
      return { kind: "failed", why };
    }
  }

  /**
   * The storage key the blob pinned. Names are compared before the key's kind
   * is judged: any other key at the handle (another curve, another symmetric
   * algorithm, a signing key) is `no-match`, like another TPM's storage key.
   */
  private async pinnedSrk(tpm: Tpm, s: Tpm2Sealed): Promise<Srk> {
    const at = `0x${s.srkHandle.toString(16)}`;
    const found = await readKeyAt(tpm, s.srkHandle);
    if (!found) throw refuse("HSM_NO_MATCH", `this TPM has no storage key at ${at} (another TPM, or it was cleared)`);
    if (!found.name || !equalBytes(found.name, s.srkName)) {
      throw refuse("HSM_NO_MATCH", `the storage key at ${at} is not the one sealed to (name ${hex(found.name ?? found.tpmName)}, pinned ${hex(s.srkName)}): another TPM, or it was cleared or replaced`);
    }
    return storageKey(found);
  }

  private async unsealOnce(tpm: Tpm, s: Tpm2Sealed): Promise<Uint8Array> {
    const srk = await this.pinnedSrk(tpm, s);
    const name = nameOfPublic2b(s.public);
    let item: number | undefined;
    let session: Session | undefined;
    try {
      const loaded = await tpm.load(srk.handle, s.private, s.public).catch((e: unknown) => Promise.reject(classify(e, "load")));
      item = loaded.handle;
      if (!equalBytes(loaded.name, name)) throw new ZbError("HSM_FAILED", "cannot trust the TPM: the loaded object's name differs from its public area's");
      session = await tpm.startSession(SE_POLICY, srk);
      if (s.policy === "pcr") await tpm.policyPcr(session, s.pcrs);
      else await tpm.policyCommandCode(session, CC.Unseal);
      // continueSession clear: the TPM flushes the session after a successful Unseal.
      const auth = { kind: "session" as const, session, attrs: SESSION_ATTR.encrypt };
      return await tpm.unseal({ handle: item, name }, auth).catch((e: unknown) => Promise.reject(classify(e, "unseal")));
    } finally {
      if (session) await this.endSession(tpm, session);
      await tpm.flush(item);
    }
  }

  private async endSession(tpm: Tpm, session: Session): Promise<void> {
    if (session.live) await tpm.flush(session.handle);
    session.forget();
  }

  /** Waits for running operations; nothing stays open between them. */
  async close(): Promise<void> {
    await this.queue;
  }
}

/**
 * How a failed lock is reported. A device another process holds is a TPM
 * that is there: once it is free a shell could unseal, so the lock failed
 * (unseal and probe keep calling it absent). A device path that is no TPM
 * stays CONFIG: the caller may lock through the default device instead.
 */
function lockFailure(e: unknown, pcr: number): unknown {
  if ((isZbError(e, "HSM_ABSENT") && !heldByAnother(e)) || isZbError(e, "CONFIG")) return e;
  return new ZbError("HSM_FAILED", `cannot extend PCR ${pcr} after the unlock: ${(e as Error).message}`, { cause: e });
}
