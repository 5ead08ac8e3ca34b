/**
 * The HSM interface: one shape for every backend that can seal a secret to a
 * piece of hardware (TPM2, a PKCS#11 token, a Zymkey) or, for development
 * only, to a key file.
 *
 * A backend turns a secret into backend-specific *sealed data* (a JSON-able
 * object of strings and numbers, see lib/hsm/blob.ts for the envelope that
 * names the backend) and back. Unsealing never throws for the expected
 * failure classes: it returns an {@link UnsealResult} so zbunlock can decide
 * between waiting, failing over and giving up (BRIEF §4, docs/credentials.md).
 */

/** Backend names, as written in sealed blobs, config files and `--backend`. */
export const BACKENDS = ["tpm2", "pkcs11", "zymkey", "soft"] as const;
export type BackendName = (typeof BACKENDS)[number];

/** Backends that are C libraries reached through bun:ffi: they need the JIT (lib/sys/jit.ts). */
export const FFI_BACKENDS: ReadonlySet<BackendName> = new Set(["pkcs11", "zymkey"]);

/** Backend-specific sealed data: flat JSON (strings, numbers, arrays of numbers). Binary fields are base64. */
export type SealedData = Record<string, string | number | number[]>;

/** What `probe()` found. Never throws for an absent device: `present: false` and why. */
export interface ProbeResult {
  backend: BackendName;
  present: boolean;
  /** One human line: what was found, or why not. */
  detail: string;
  /** Extra facts for `zb hsm probe --json` (manufacturer, firmware, token label…). */
  info?: Record<string, string | number | boolean>;
}

/**
 * The outcome of an unseal, by failure class:
 * - `absent`: the HSM is not there (no device node, no module, no token) — may appear later;
 * - `no-match`: the HSM is there but the blob is not for it (another TPM, key not on the token, another host);
 * - `denied`: the HSM refused by policy (PCR values changed, wrong PIN), for good as far as zbunlock is concerned;
 * - `failed`: anything else (malformed blob, I/O error, an integrity check on the response failed,
 *   a TPM in dictionary-attack lockout, which heals after its recovery time).
 * `secret` belongs to the caller, who wipes it after use.
 */
export type UnsealResult =
  | { kind: "ok"; secret: Uint8Array }
  | { kind: "absent" | "no-match" | "denied" | "failed"; why: string };

export type UnsealFailure = Exclude<UnsealResult, { kind: "ok" }>;

/** Options for seal(); a backend ignores what it does not support and says so in its docs. */
export interface SealOptions {
  /** TPM2: PCR indices the sealed object's policy binds to (sha256 bank). Empty or absent: no PCRs (policy still required). */
  pcrs?: number[];
  /**
   * TPM2: a PCR (sha256 bank) that must still hold its boot value (zeros) at
   * unseal time; lock() extends it after the boot's unlock, so nothing can
   * unseal the blob again until the next reboot (docs/hsm/tpm2.md).
   */
  lockPcr?: number;
}

/** A signing key held by the HSM (for `zb image sign` later); same shape as lib/image/sign.ts's Signer. */
export interface HsmSignerHook {
  /** Returns undefined when the backend cannot sign with `keyRef`. */
  signer?(keyRef: string): Promise<import("../image/sign.ts").Signer | undefined>;
}

/** One HSM backend. All methods are async: a TPM may sit behind a socket. */
export interface Hsm extends HsmSignerHook {
  readonly name: BackendName;
  /** Is the HSM there and usable? Never throws. */
  probe(): Promise<ProbeResult>;
  /**
   * Seal `secret` (not modified, not kept) to this HSM.
   * @throws {ZbError} HSM_ABSENT when the HSM is not there; HSM_FAILED (or IO) otherwise
   */
  seal(secret: Uint8Array, opts?: SealOptions): Promise<SealedData>;
  /** Unseal data produced by seal() (or imported from a peer tool). Never throws for the classes above. */
  unseal(data: SealedData): Promise<UnsealResult>;
  /**
   * After the boot's unseals: make this blob unsealable no more until the
   * next reboot (tpm2: extend its lock PCR). A no-op for blobs without a lock
   * and for backends that cannot do it. @throws {ZbError} HSM_* when it fails
   */
  lock?(data: SealedData): Promise<boolean>;
  /** Release handles (sockets, fds, sessions, library contexts). Idempotent. */
  close(): Promise<void>;
}

/** Options common to all backends, from flags or the config file (lib/hsm/config.ts). */
export interface BackendOptions {
  /** Where warnings go (the soft backend warns on every use). Default: stderr. */
  warn?: (line: string) => void;
  /** How a backend waits before retrying (tests record the waits instead of timing them). Default: a timer. */
  sleep?: (ms: number) => Promise<void>;
}
