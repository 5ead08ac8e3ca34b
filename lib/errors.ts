/**
 * The one error taxonomy of zb.
 *
 * Every failure a stage can report is a {@link ZbError} with a `code` from
 * {@link CODES}; the code fixes the process exit status. The table is the
 * single source of truth: `docs/exit-codes.md` documents it and
 * `test/lib/errors.test.ts` pins it, so scripts may rely on the numbers.
 *
 * Messages read `cannot <do X>: <why>` (snapd's convention), optionally
 * followed by a hint on what to do next.
 */

/** Error codes and their stable exit statuses. Never renumber; only add. */
export const CODES = {
  /** A requested variable or object does not exist (like grep's 1). */
  NOT_FOUND: 1,
  /** The command line is wrong, or the stage is not implemented yet. */
  USAGE: 2,
  /** Env data failed its CRC (both copies, in redundant mode). */
  ENV_CRC: 3,
  /** Env data is malformed: no terminator, entry without '=', bad name. */
  ENV_FORMAT: 3,
  /** The HSM is absent: no device node, library or token (it may appear later; the caller may wait or fall back). */
  HSM_ABSENT: 4,
  /** Reading or writing a file or device failed. */
  IO: 5,
  /** Reserved for the boot state issue: a boot or install loop was detected. */
  STATE_LOOP: 6,
  /** The new env does not fit the configured env size. */
  ENV_NOSPACE: 7,
  /** A configuration file (fw_env.config) is malformed or inconsistent. */
  CONFIG: 8,
  /** A boot state variable holds a value zb does not understand. */
  STATE_INVALID: 9,
  /** The requested state change is not allowed now (e.g. mark-good on a slot that is not the committed one). */
  STATE_REFUSED: 10,
  /** A user health check vetoed mark-good. */
  HEALTH_VETO: 11,
  /** zbunlock --no-reboot: a reboot is needed and was not performed; the caller must reboot. */
  REBOOT_PENDING: 12,
  /** An image is malformed: tar structure, entry order or names, manifest schema, a limit. */
  IMG_FORMAT: 13,
  /** Signatures missing, invalid, by untrusted keys, or fewer than the policy requires. */
  SIG_INVALID: 14,
  /** The image is for another product (`compatible` differs). */
  IMG_INCOMPATIBLE: 15,
  /** The image's serial is below the anti-rollback floor. */
  ROLLBACK_REFUSED: 16,
  /** Payload bytes do not match the signed manifest (a chunk or the whole payload). */
  PAYLOAD_CORRUPT: 17,
  /** A key file is malformed or of an unsupported algorithm. */
  KEY_INVALID: 18,
  /** The HSM is there but the sealed blob is not for it (another TPM, key not on the token, another host). */
  HSM_NO_MATCH: 19,
  /** The HSM refused by policy: PCR values changed, wrong PIN. */
  HSM_DENIED: 20,
  /** The HSM failed otherwise: a malformed blob, a protocol or integrity error, an unexpected response, a TPM lockout (it heals). */
  HSM_FAILED: 21,
  /** cryptsetup failed: wrong key for the LUKS header, missing device-mapper, bad device. */
  LUKS_FAILED: 22,
  /** Credentials (sealed keys + metadata in the initramfs) are missing or malformed. */
  CRED_INVALID: 23,
  /** zbunlock --go-file: the go file did not appear in time; zbunlock did nothing (the boot script runs it itself). */
  NOT_STARTED: 24,
  /** The install target is in use: a mounted file system, an open LUKS/device-mapper volume, another install. */
  TARGET_BUSY: 25,
  /** install --read-back: the medium does not return what was written to it (a failing or fake-capacity device). */
  TARGET_MISMATCH: 26,
  /** A bug: an invariant of zb itself was broken. */
  INTERNAL: 70,
  /** SIGHUP (the terminal or ssh session closed) stopped a long command cleanly: 128 + 1. */
  HANGUP: 129,
  /** SIGINT (Ctrl-C) stopped a long command (image install, verify, create, sign) cleanly: 128 + 2, as a shell reports it. */
  INTERRUPTED: 130,
  /** SIGTERM (`kill`, systemd stopping a service) stopped a long command cleanly: 128 + 15. */
  TERMINATED: 143,
} as const;

export type ErrorCode = keyof typeof CODES;

/** Typed error carrying a stable code; its exit status is {@link CODES}[code]. */
export class ZbError extends Error {
  readonly code: ErrorCode;
  /** Optional next step shown to the user after the message. */
  readonly hint?: string;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; hint?: string } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "ZbError";
    this.code = code;
    if (options.hint !== undefined) this.hint = options.hint;
  }

  /** The process exit status for this error. */
  get exit(): number {
    return CODES[this.code];
  }
}

/** True when `e` is a ZbError, optionally of one of the given codes. */
export function isZbError(e: unknown, ...codes: ErrorCode[]): e is ZbError {
  return e instanceof ZbError && (codes.length === 0 || codes.includes(e.code));
}

/**
 * Wrap a host error (errno from node:fs) as a ZbError IO with context.
 * @param what the action, e.g. `read /boot/firmware/zb/zb.env`
 * @returns a ZbError whose message reads `cannot <what>: <reason>`
 */
export function ioError(what: string, cause: unknown): ZbError {
  if (cause instanceof ZbError) return cause;
  const reason = describeErrno(cause);
  return new ZbError("IO", `cannot ${what}: ${reason}`, { cause });
}

const ERRNO_TEXT: Record<string, string> = {
  ENOENT: "no such file or directory",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EROFS: "read-only file system",
  ENOSPC: "no space left on device",
  EISDIR: "is a directory",
  ENOTDIR: "not a directory",
  EIO: "input/output error",
  ECONNRESET: "the connection was reset",
  ECONNREFUSED: "the connection was refused",
  ENOTFOUND: "the host name does not resolve",
  EHOSTUNREACH: "the host is unreachable",
  ENETUNREACH: "the network is unreachable",
  ETIMEDOUT: "the connection timed out",
};

/**
 * A host error in words: the errno's meaning when it is a known one, else the error's own message.
 * @param overrides words for some codes that say more in the caller's context (a TPM device node, say)
 */
export function describeErrno(cause: unknown, overrides: Record<string, string> = {}): string {
  const e = cause as { code?: string; message?: string } | undefined;
  const code = e?.code;
  if (code && (overrides[code] ?? ERRNO_TEXT[code])) return overrides[code] ?? ERRNO_TEXT[code]!;
  return e?.message ?? String(cause);
}
