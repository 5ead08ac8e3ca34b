/**
 * What zb checks around a cryptsetup call: the arguments it passes (a
 * device path, a device-mapper name), the LUKS version of a device before a
 * key is added or removed, and the keyslots cryptsetup reports. Pure but for
 * the LUKS1 check, which reads a device's first 4 KiB through the injected Sys.
 * Used by CryptsetupCli (lib/luks/cryptsetup.ts), dmsetupRemover and enrol.
 */
import { ZbError } from "../errors.ts";
import type { Sys } from "../sys/sys.ts";
import { LUKS_PROBE_BYTES, parseLuksHeader } from "./header.ts";

/** One keyslot as `luksDump --dump-json-metadata` describes it. */
export interface Keyslot {
  slot: number;
  kdf: string;
  hash?: string;
  iterations?: number;
  /** argon2: memory cost in KiB, time cost, parallel threads. */
  memoryKiB?: number;
  time?: number;
  cpus?: number;
}

/** device-mapper names: no '/', at most 127 bytes (DM_NAME_LEN - 1). */
const NAME_RE = /^[A-Za-z0-9_.+][A-Za-z0-9_.+-]{0,126}$/;

/**
 * A device path cryptsetup cannot take for an option: a leading '-' would be read as one.
 * @throws {ZbError} USAGE
 */
export function checkDevice(device: string): string {
  if (device.length === 0 || device.startsWith("-") || device.includes("\0")) {
    throw new ZbError("USAGE", `cannot use ${JSON.stringify(device)} as a LUKS device: not a device path`);
  }
  return device;
}

/**
 * A device-mapper name cryptsetup accepts (checked before anything is formatted).
 * @throws {ZbError} USAGE
 */
export function checkName(name: string): string {
  if (!NAME_RE.test(name)) throw new ZbError("USAGE", `cannot use ${JSON.stringify(name)} as a mapping name: letters, digits, '_.+-' only, at most 127`);
  return name;
}

/**
 * addKey and removeKey only work together on LUKS2: removeKey counts the
 * keyslots in cryptsetup's LUKS2 JSON metadata, so on LUKS1 a rotation
 * would add its new key and then fail to remove the old one, leaving both.
 * Both refuse LUKS1 from its header before running cryptsetup. A missing
 * device is left to cryptsetup, whose exit 4 names it.
 * @throws {ZbError} LUKS_FAILED for LUKS1; IO when the header cannot be read; USAGE for a bad path
 */
export function checkLuks2(sys: Sys, device: string, what: string): void {
  if (sys.stat(checkDevice(device)) === null) return;
  refuseLuks1(sys, device, what);
}

/**
 * Refuse `device` when its header says LUKS1: zb reads keyslots from
 * cryptsetup's LUKS2 JSON metadata (keyslots, hence removeKey) and zbunlock
 * falls back to the LUKS2 secondary header. Anything else (LUKS2, no LUKS
 * header at all) passes: the cryptsetup call that follows reports it.
 * @param what the refused action for the message: `cannot <what>: it is a LUKS1 volume…`
 * @throws {ZbError} LUKS_FAILED with a hint to convert it; IO when `device` cannot be read
 * @example refuseLuks1(sys, "/dev/mmcblk0p4", "enrol the data volume /dev/mmcblk0p4")
 */
export function refuseLuks1(sys: Sys, device: string, what: string): void {
  if (parseLuksHeader(sys.readAt(device, 0, LUKS_PROBE_BYTES))?.version !== 1) return;
  throw new ZbError("LUKS_FAILED", `cannot ${what}: it is a LUKS1 volume; zb needs LUKS2`, {
    hint: `back up its header (cryptsetup luksHeaderBackup ${device} --header-backup-file FILE), then convert it in place: cryptsetup convert --type luks2 ${device}`,
  });
}

/** Parse the keyslots of `luksDump --dump-json-metadata` (LUKS2 spec §3.2 "keyslots"). */
export function parseKeyslots(json: string, what: string): Keyslot[] {
  const bad = (why: string) => new ZbError("LUKS_FAILED", `cannot ${what}: ${why}`);
  let meta: unknown;
  try {
    meta = JSON.parse(json);
  } catch {
    throw bad("cryptsetup printed no JSON metadata");
  }
  const slots = (meta as { keyslots?: unknown })?.keyslots;
  if (typeof slots !== "object" || slots === null) throw bad("the metadata has no keyslots object");
  const out: Keyslot[] = [];
  for (const [n, v] of Object.entries(slots as Record<string, { kdf?: Record<string, unknown> }>)) {
    const kdf = v?.kdf ?? {};
    const k: Keyslot = { slot: Number(n), kdf: String(kdf.type ?? "unknown") };
    if (typeof kdf.hash === "string") k.hash = kdf.hash;
    if (typeof kdf.iterations === "number") k.iterations = kdf.iterations;
    if (typeof kdf.memory === "number") k.memoryKiB = kdf.memory;
    if (typeof kdf.time === "number") k.time = kdf.time;
    if (typeof kdf.cpus === "number") k.cpus = kdf.cpus;
    out.push(k);
  }
  return out.sort((a, b) => a.slot - b.slot);
}
