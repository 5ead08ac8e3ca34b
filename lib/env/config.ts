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
 */
import { join } from "node:path";
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
 * Parse fw_env.config text.
 * @param source file name, for messages
 * @throws {ZbError} CONFIG for a malformed line, more than two copies, or
 *   copies of different sizes
 */
export function parseFwEnvConfig(text: string, source: string): StoreConfig {
  const copies: Location[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    copies.push(parseLine(line, `${source}:${i + 1}`));
  });
  if (copies.length === 0) throw configError(source, "it names no env copy");
  if (copies.length > 2) throw configError(source, `it names ${copies.length} copies; at most two are allowed`);
  const [a, b] = copies as [Location, Location | undefined];
  if (b && b.size !== a.size) {
    throw configError(source, `the two copies differ in size (0x${a.size.toString(16)} and 0x${b.size.toString(16)})`);
  }
  return { copies: b ? [a, b] : [a], source };
}

function parseLine(line: string, where: string): Location {
  const fields = line.split(/\s+/);
  if (fields.length < 3) throw configError(where, "expected: device offset size [sector-size [sectors]]");
  const [path, offsetText, sizeText, sectorText] = fields as [string, string, string, string | undefined];
  const offset = parseCInteger(offsetText);
  if (offset === null) throw configError(where, `offset ${JSON.stringify(offsetText)} is not a number`);
  const size = parseHex(sizeText);
  if (size === null || size < MIN_SIZE) throw configError(where, `env size ${JSON.stringify(sizeText)} is not a hex size of at least ${MIN_SIZE}`);
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
