/**
 * Where the env lives: fw_env.config (libubootenv's legacy format) or zb's
 * default pair on the boot partition. Pure parsing; resolving negative
 * offsets against a device size happens in store.ts.
 *
 * fw_env.config (u-boot:tools/env/fw_env.config, libubootenv
 * docs/fw_env_config.md): one line per copy, at most two; a second line makes
 * the env redundant. Fields: device-or-file, offset (`%lli`: decimal, 0x hex,
 * leading-0 octal; negative = from the end of the device), env size (`%lx`:
 * hex even without 0x), then optional sector size and sector count, which only
 * matter for MTD flash and are kept for reference. `#` lines are comments.
 *
 * As libubootenv 0.3.2 reads it (measured with its fw_printenv): a line is
 * sscanf("%ms %lli %lx %lx %lx %d"), so a `#` after the device name ends the
 * fields (`env 0x0 0x4000 # comment` is a copy), and the file is read only
 * until two copies are found (a third line is never looked at; U-Boot's
 * fw_env.c stops at two as well). Deliberately stricter: libubootenv skips a
 * line it cannot convert three fields of, and reads a number's valid prefix
 * (`0x4000zz`); zb refuses both, since a skipped line silently turns a pair
 * into a single copy whose header it then misreads. Also refused: an env
 * size over {@link MAX_ENV_SIZE} and two copies over the same bytes.
 */
import { join, normalize } from "node:path";
import { ZbError } from "../errors.ts";
import { MIN_SIZE, type Layout } from "./codec.ts";

/** One copy's location. */
export interface Location {
  path: string;
  /** Byte offset; negative counts from the end of the device. */
  offset: number;
  /** CONFIG_ENV_SIZE: the copy's total size including the header. */
  size: number;
  /** Optional sector size (MTD erase size); unused for files and block devices. */
  sectorSize?: number;
}

/** A complete storage description: one copy (single) or two (redundant). */
export interface StoreConfig {
  copies: [Location] | [Location, Location];
  /** Where the description came from, for messages. */
  source: string;
}

/** zb's default env size: U-Boot's default for the Pi (rpi_arm64_defconfig ENV_SIZE). */
export const DEFAULT_ENV_SIZE = 0x4000;
/**
 * Largest env size accepted: 16 MiB. U-Boot envs are KiB (CONFIG_ENV_SIZE
 * 0x4000 on the Pi; on NAND a copy is at most an erase block or a few, 128 KiB
 * to 1 MiB), so anything near this is a typo; zb holds each copy in memory,
 * and a size like 0xffffffffff crashed with "RangeError: Out of memory".
 * libubootenv has no bound: it fails to read such an env and exits 243/244.
 */
export const MAX_ENV_SIZE = 16 * 1024 * 1024;
/**
 * Largest fw_env.config read: 64 KiB. The file is a few lines (two copies
 * and comments, under 1 KiB); a larger one is no fw_env.config (`-c
 * /dev/zero`, `-c /dev/mmcblk0p1`), refused (CONFIG) once these bytes are
 * past, not read until memory runs out.
 */
export const MAX_CONFIG_FILE_BYTES = 64 * 1024;
/** Default mount point of the boot partition in the running OS. */
export const DEFAULT_BOOT_DIR = "/boot/firmware";
/** Default fw_env.config of libubootenv, used by the fw_printenv/fw_setenv personalities. */
export const DEFAULT_FW_ENV_CONFIG = "/etc/fw_env.config";

/** The layout (size, header) a config implies. */
export function layoutOf(config: StoreConfig): Layout {
  return { size: config.copies[0].size, redundant: config.copies.length === 2 };
}

/**
 * zb's own default: `<boot>/zb/zb.env` + `<boot>/zb/zb.env.redund`, 16 KiB each.
 * @param bootDir mount point of the boot partition
 */
export function defaultConfig(bootDir: string = DEFAULT_BOOT_DIR): StoreConfig {
  return {
    copies: [
      { path: join(bootDir, "zb", "zb.env"), offset: 0, size: DEFAULT_ENV_SIZE },
      { path: join(bootDir, "zb", "zb.env.redund"), offset: 0, size: DEFAULT_ENV_SIZE },
    ],
    source: `default location under ${bootDir}`,
  };
}

/**
 * Parse fw_env.config text: the first two copies it names; lines after the
 * second are not read (libubootenv 0.3.2 stops there too).
 * @param source file name, for messages
 * @throws {ZbError} CONFIG for a malformed line among those read, no copy,
 *   copies of different sizes, an env size over {@link MAX_ENV_SIZE}, or two
 *   copies whose byte ranges overlap in one file
 * @example parseFwEnvConfig("/boot/uboot.env 0x0 0x4000 # single\n", "/etc/fw_env.config")
 */
export function parseFwEnvConfig(text: string, source: string): StoreConfig {
  const copies: Location[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length && copies.length < 2; i++) {
    const line = lines[i]!.trim();
    if (line === "" || line.startsWith("#")) continue;
    copies.push(parseLine(line, `${source}:${i + 1}`));
  }
  if (copies.length === 0) throw configError(source, "it names no env copy");
  const [a, b] = copies as [Location, Location | undefined];
  if (!b) return { copies: [a], source };
  if (b.size !== a.size) {
    throw configError(source, `the two copies differ in size (0x${a.size.toString(16)} and 0x${b.size.toString(16)})`);
  }
  // Spellings of one path only; links and offsets of both signs need the
  // file itself, which openStore (store.ts) checks.
  if (normalize(a.path) === normalize(b.path) && (a.offset < 0) === (b.offset < 0) && rangesOverlap(a, b)) {
    throw overlapError(source, normalize(a.path), a, b);
  }
  return { copies: [a, b], source };
}

/**
 * Do two copies' byte ranges [offset, offset+size) share a byte? Both offsets
 * must count from the same end (both ≥ 0, or both < 0).
 * @example rangesOverlap({ offset: 0, size: 0x4000 }, { offset: 0x2000, size: 0x4000 }) // true
 */
export function rangesOverlap(a: { offset: number; size: number }, b: { offset: number; size: number }): boolean {
  return a.offset < b.offset + b.size && b.offset < a.offset + a.size;
}

/**
 * The CONFIG error for two copies over the same bytes: a save writes the
 * inactive copy, so here it would overwrite (part of) the active one, the only
 * good env, and a power cut would leave none. libubootenv 0.3.2 accepts such
 * a config and overwrites its only copy (measured).
 * @param file the one file, as the message should name it
 * @returns a ZbError CONFIG naming both ranges
 */
export function overlapError(source: string, file: string, a: { offset: number; size: number }, b: { offset: number; size: number }): ZbError {
  const range = (l: { offset: number; size: number }) => `[${hex(l.offset)}, ${hex(l.offset + l.size)})`;
  return configError(source, `the two copies overlap in ${file}: ${range(a)} and ${range(b)}; a save of one would overwrite the other`);
}

function hex(n: number): string {
  return (n < 0 ? "-0x" : "0x") + Math.abs(n).toString(16);
}

function parseLine(line: string, where: string): Location {
  // The device name is one word (%ms), `#` and all; after it a `#` ends the
  // fields, where libubootenv's sscanf stops converting.
  const m = /^(\S+)(.*)$/.exec(line)!;
  const path = m[1]!;
  const fields = [path, ...m[2]!.split("#")[0]!.split(/\s+/).filter((f) => f !== "")];
  if (fields.length < 3) throw configError(where, "expected: device offset size [sector-size [sectors]]");
  const [, offsetText, sizeText, sectorText] = fields as [string, string, string, string | undefined];
  const offset = parseCInteger(offsetText);
  if (offset === null) throw configError(where, `offset ${JSON.stringify(offsetText)} is not a number`);
  const size = parseHex(sizeText);
  if (size === null || size < MIN_SIZE) throw configError(where, `env size ${JSON.stringify(sizeText)} is not a hex size of at least ${MIN_SIZE}`);
  if (size > MAX_ENV_SIZE) throw configError(where, `env size ${hex(size)} is larger than 16 MiB; U-Boot envs are KiB (a typo?)`);
  const loc: Location = { path, offset, size };
  if (sectorText !== undefined) {
    const sectorSize = parseHex(sectorText);
    if (sectorSize === null) throw configError(where, `sector size ${JSON.stringify(sectorText)} is not a hex number`);
    loc.sectorSize = sectorSize;
  }
  return loc;
}

/** strtoll with base 0, as `%lli` reads it: [-+], then 0x hex, 0 octal, or decimal. */
export function parseCInteger(text: string): number | null {
  const m = /^([-+]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text);
  if (!m) return null;
  const body = m[2]!;
  const magnitude = /^0[xX]/.test(body) ? parseInt(body.slice(2), 16) : body.startsWith("0") ? parseInt(body || "0", 8) : parseInt(body, 10);
  const v = m[1] === "-" ? -magnitude : magnitude;
  return Number.isSafeInteger(v) ? v : null;
}

/** `%lx`: hex with an optional 0x prefix ("4000" is 0x4000). */
export function parseHex(text: string): number | null {
  const m = /^(?:0[xX])?([0-9a-fA-F]+)$/.exec(text);
  if (!m) return null;
  const v = parseInt(m[1]!, 16);
  return Number.isSafeInteger(v) ? v : null;
}

function configError(where: string, why: string): ZbError {
  return new ZbError("CONFIG", `cannot use env config ${where}: ${why}`);
}
