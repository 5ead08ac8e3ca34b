/**
 * Redundant env pairs: which copy is active, which one the next save writes.
 * Pure; the I/O lives in store.ts.
 *
 * U-Boot's rule (u-boot:env/common.c `env_check_redund`), also used by fw_env.c
 * and libubootenv for files and block devices (FLAG_INCREMENTAL):
 *   - only one copy has a good CRC → that copy;
 *   - flags 255 and 0 → the 0 copy (the counter wrapped);
 *   - otherwise the larger flag wins; equal flags → the first copy.
 * A save writes the *inactive* copy with flag = active + 1 (mod 256) and never
 * touches the active one, so a power cut leaves the old env readable.
 */
import type { Copy, DecodeFailure, DecodeResult } from "./codec.ts";
import { ZbError } from "../errors.ts";

/** Index of a copy in the pair: 0 = first config line, 1 = second. */
export type CopyIndex = 0 | 1;

/** The outcome of reading a pair. */
export interface PairState {
  /** The copy the env is read from. */
  active: CopyIndex;
  /** The decoded active copy. */
  copy: Copy;
  /** Why the other copy was unusable, when it was (a degraded pair). */
  otherFailure?: DecodeFailure;
}

/**
 * Choose the active copy by U-Boot's rule.
 * @throws {ZbError} ENV_CRC or ENV_FORMAT when neither copy decodes (no silent defaults)
 */
export function pickActive(first: DecodeResult, second: DecodeResult): PairState {
  if (first.ok && second.ok) {
    const active = newer(first.flag ?? 0, second.flag ?? 0);
    return { active, copy: asCopy(active === 0 ? first : second) };
  }
  if (first.ok) return { active: 0, copy: asCopy(first), otherFailure: second as DecodeFailure };
  if (second.ok) return { active: 1, copy: asCopy(second), otherFailure: first as DecodeFailure };
  if (first.missing && second.missing) {
    // Nothing there at all: a --boot or fw_env.config that names the wrong place, or a
    // partition zb has not taken over yet; not a damaged env to restore.
    throw new ZbError("IO", `cannot read env: there is none (${first.why}; ${second.why})`, {
      hint: "check --boot (the boot partition's mount point) or fw_env.config; a new partition is taken over with `zb init` (boot state) or `zb env init` (env only)",
    });
  }
  if (first.wrongSize || second.wrongSize) {
    throw new ZbError(first.code === second.code ? first.code : "ENV_FORMAT", `cannot read env: both copies are invalid (first: ${first.why}; second: ${second.why})`, {
      hint: "the files' size does not match the configured env size (fw_env.config, or zb's default 0x4000): check the size before recreating the env, which would replace what is there",
    });
  }
  const codes = [first.code, second.code];
  const code = codes.includes("IO") ? "IO" : codes.every((c) => c === "ENV_CRC") ? "ENV_CRC" : "ENV_FORMAT";
  throw new ZbError(code, `cannot read env: both copies are invalid (first: ${first.why}; second: ${second.why})`, {
    hint: "restore the env from a backup, or recreate it: `zb init --slot a|b --force` for zb's boot state (the slot that runs now), `zb env init --force` for a bare env",
  });
}

function asCopy(r: Copy): Copy {
  return r.flag === undefined ? { vars: r.vars } : { vars: r.vars, flag: r.flag };
}

/** U-Boot's comparison of two good copies' flags: which one is newer. */
export function newer(f1: number, f2: number): CopyIndex {
  if (f1 === 255 && f2 === 0) return 1;
  if (f2 === 255 && f1 === 0) return 0;
  return f1 >= f2 ? 0 : 1;
}

/** The flag a save gives the inactive copy. */
export function nextFlag(activeFlag: number): number {
  return (activeFlag + 1) & 0xff;
}
