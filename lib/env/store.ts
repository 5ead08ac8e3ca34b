/**
 * Reading and writing an env through the injected Sys: the only I/O of
 * lib/env. Power-safe write order (redundant pair):
 *
 *   1. read both copies, pick the active one (redundant.ts)
 *   2. compute the new vars; if they equal the active copy's, write nothing
 *      (snapd's dirty check: no flash wear, no mtime change)
 *   3. encode with flag = active + 1 and write it over the INACTIVE copy only
 *   4. fsync the file; its directory only when the file was created (an
 *      overwrite in place changes no directory entry; the file's fsync also
 *      writes its own metadata, on FAT its directory entry: fat_file_fsync)
 *
 * A cut anywhere in 3–4 leaves the active copy untouched and the inactive one
 * either complete (the new env, with the higher flag) or failing its CRC (the
 * old env stays active). test/lib/env/powercut.test.ts checks every boundary.
 *
 * A single copy has no such guarantee in place, so a single env that is a whole
 * regular file is replaced via temp file + fsync + rename + directory fsync, as
 * U-Boot's fw_env.c does; inside a larger file or on a device it is written in
 * place (use a redundant pair there). The rename replaces the file the path
 * resolves to (replaceFile): a symlink stays a symlink, the mode (and, as root,
 * the owner) is kept, and a file with other hard links is written in place.
 */
import { dirname } from "node:path";
import { ZbError } from "../errors.ts";
import { resolveFile, writeFileAtomic } from "../sys/atomic.ts";
import type { FileInfo, Sys } from "../sys/sys.ts";
import { encode, sameVars, tryDecode, type DecodeFailure, type DecodeResult, type Layout, type Vars } from "./codec.ts";
import { defaultConfig, layoutOf, MAX_CONFIG_FILE_BYTES, overlapError, parseFwEnvConfig, rangesOverlap, type Location, type StoreConfig } from "./config.ts";
import { nextFlag, pickActive, type CopyIndex } from "./redundant.ts";
import { applyChanges, type Change } from "./script.ts";

/** What a read found. */
export interface EnvState {
  vars: Vars;
  /** Which copy was read (always 0 for a single env). */
  active: CopyIndex;
  /** The active copy's flag byte (redundant only). */
  flag?: number;
  /** Why the other copy of a redundant pair is unusable; absent when both are good. */
  degraded?: DecodeFailure;
}

/** What a write did. */
export interface WriteResult {
  written: boolean;
  /** The copy that was written (redundant), or 0. */
  copy?: CopyIndex;
  /** The flag the written copy carries (redundant). */
  flag?: number;
  vars: Vars;
}

/** An env bound to its storage. */
export class EnvStore {
  readonly layout: Layout;

  constructor(
    private readonly sys: Sys,
    readonly config: StoreConfig,
  ) {
    this.layout = layoutOf(config);
  }

  /**
   * Read the env.
   * @throws {ZbError} IO when a copy cannot be read; ENV_CRC/ENV_FORMAT when no copy is valid
   */
  read(): EnvState {
    const results = this.config.copies.map((loc) => this.readCopy(loc));
    if (results.length === 1) {
      const r = results[0]!;
      if (!r.ok) throw new ZbError(r.code, r.code === "IO" ? r.why : `cannot read env ${describe(this.config.copies[0])}: ${r.why}`);
      return { vars: r.vars, active: 0 };
    }
    const pair = pickActive(results[0]!, results[1]!);
    const state: EnvState = { vars: pair.copy.vars, active: pair.active };
    if (pair.copy.flag !== undefined) state.flag = pair.copy.flag;
    if (pair.otherFailure) state.degraded = pair.otherFailure;
    return state;
  }

  /**
   * Apply changes in one write (nothing is written when nothing changes).
   * @param basis what {@link read} returned when the caller computed
   *   `changes` from it moments ago (a boot transition): built on instead of
   *   reading both copies again
   * @throws {ZbError} as {@link read}, ENV_NOSPACE when the result does not fit, IO on write failure
   */
  update(changes: readonly Change[], basis?: EnvState): WriteResult {
    // Read and write under one lock: a write computed from a read another tool has since overtaken would undo it.
    const release = this.lock();
    try {
      const state = basis ?? this.read();
      const next = applyChanges(state.vars, changes);
      if (sameVars(next, state.vars)) return { written: false, vars: state.vars };
      return this.writeOver(state, next);
    } finally {
      release();
    }
  }

  /**
   * Hold the env lock other env tools share (lib/sys/flock.ts) until the
   * returned release is called; re-entrant, and a no-op for a Sys without one.
   * @throws {ZbError} IO when another process holds it too long
   */
  lock(): () => void {
    return this.sys.lockEnv?.() ?? (() => undefined);
  }

  /**
   * Replace the whole env with `vars`, for `zb env init` and for storing a
   * default env when no copy is readable. A readable env is kept unless `force`.
   * @throws {ZbError} USAGE when an env exists and `force` is not set; IO on failure
   */
  create(vars: Vars, opts: { force?: boolean } = {}): WriteResult {
    const release = this.lock();
    try {
      return this.createLocked(vars, opts);
    } finally {
      release();
    }
  }

  private createLocked(vars: Vars, opts: { force?: boolean }): WriteResult {
    let existing: EnvState | null = null;
    try {
      existing = this.read();
    } catch (e) {
      if (!(e instanceof ZbError) || !["ENV_CRC", "ENV_FORMAT", "IO"].includes(e.code)) throw e;
    }
    if (existing && !opts.force) {
      throw new ZbError("USAGE", `cannot create env at ${this.config.source}: a valid env exists already`, {
        hint: "change variables with `zb env set`, or pass --force to replace the env (`zb init --force` also resets zb's boot state)",
      });
    }
    if (existing) return this.writeOver(existing, vars);
    // No valid copy: write the second copy first (flag 1), then the first
    // (flag 2), as snapd's CreateRedundant does, so a cut leaves one copy.
    const copies = this.config.copies;
    if (copies.length === 2) this.writeCopy(copies[1], encode(vars, this.layout, { flag: 1 }), true);
    const flag = copies.length === 2 ? 2 : undefined;
    this.writeCopy(copies[0], encode(vars, this.layout, flag === undefined ? {} : { flag }), true);
    return { written: true, copy: 0, ...(flag === undefined ? {} : { flag }), vars };
  }

  private writeOver(state: EnvState, vars: Vars): WriteResult {
    if (this.config.copies.length === 1) {
      this.writeCopy(this.config.copies[0], encode(vars, this.layout), false);
      return { written: true, copy: 0, vars };
    }
    const target: CopyIndex = state.active === 0 ? 1 : 0;
    const flag = nextFlag(state.flag ?? 0);
    const loc = this.config.copies[target]!;
    // A missing twin file is recreated (a user deleted it); never invent a
    // file under /dev or inside a larger file.
    const mayCreate = loc.offset === 0 && !loc.path.startsWith("/dev/");
    this.writeCopy(loc, encode(vars, this.layout, { flag }), mayCreate);
    return { written: true, copy: target, flag, vars };
  }

  /** One copy; an unreadable copy is a failure value so its twin can still serve. */
  private readCopy(loc: Location): DecodeResult {
    let bytes: Uint8Array;
    try {
      bytes = this.sys.readAt(loc.path, this.resolveOffset(loc), loc.size);
    } catch (e) {
      if (e instanceof ZbError && e.code === "IO") return { ok: false, code: "IO", why: e.message, ...(this.sys.stat(loc.path) ? {} : { missing: true as const }) };
      throw e;
    }
    if (bytes.length < loc.size) {
      return { ok: false, code: "ENV_FORMAT", why: `${describe(loc)} is short: ${bytes.length} of ${loc.size} bytes`, wrongSize: true };
    }
    const r = tryDecode(bytes, this.layout);
    // A whole-file copy of another size than configured: the CRC covers the wrong span, so every
    // copy fails alike. Say so: recreating the env would overwrite a good one.
    const st = !r.ok && r.code === "ENV_CRC" && loc.offset === 0 ? this.sys.stat(loc.path) : null;
    if (!r.ok && st?.kind === "file" && st.size !== loc.size) {
      return { ...r, why: `${r.why} (${loc.path} is ${st.size} bytes, the configuration says ${loc.size})`, wrongSize: true };
    }
    return r;
  }

  private writeCopy(loc: Location, bytes: Uint8Array, create: boolean): void {
    const st = this.sys.stat(loc.path);
    if (!st && !create) throw new ZbError("IO", `cannot write env ${describe(loc)}: no such file`);
    if (!st) this.sys.mkdirp(dirname(loc.path));
    const offset = this.resolveOffset(loc);
    const wholeFile = this.config.copies.length === 1 && offset === 0 && (!st || (st.kind === "file" && st.size === loc.size));
    if (wholeFile) return st ? this.replaceFile(loc.path, bytes, st) : writeFileAtomic(this.sys, loc.path, bytes);
    this.sys.writeAt(loc.path, offset, bytes, { create: !st });
    this.sys.fsync(loc.path);
    if (!st) this.sys.fsync(dirname(loc.path));
  }

  /**
   * Replace a single whole-file copy so that what the bootloader reads gets
   * the new env, as fw_setenv's in-place write does (libubootenv 0.3.2:
   * same inode, link and mode kept). A rename replaces a name, so it goes to
   * the file behind the symlinks (`S.env -> real/S.env`: a rename over S.env
   * would leave real/S.env old) and keeps its mode and owner. A file with
   * other hard links is written in place, since a rename would detach this
   * name from them; like any single copy in place, a power cut can tear it.
   */
  private replaceFile(path: string, bytes: Uint8Array, st: FileInfo): void {
    const file = resolveFile(this.sys, path) ?? { path, links: 1 };
    if (file.links > 1) {
      this.sys.writeAt(file.path, 0, bytes);
      this.sys.fsync(file.path);
      return;
    }
    try {
      writeFileAtomic(this.sys, file.path, bytes, { sameAs: st });
    } catch (e) {
      // fw_setenv writes in place and succeeds on a full file system; zb does
      // not fall back to that: a single copy written in place can be torn by a
      // power cut (test/lib/env/powercut.test.ts would see a torn env), and a
      // full disk is no reason to give up the old env. docs/env.md, "Redundant pairs".
      if (!isNoSpace(e)) throw e;
      throw new ZbError("IO", `cannot write env ${file.path}: no space left in ${dirname(file.path)} for the ${bytes.length}-byte temporary copy that keeps a single-copy write power-safe; the env is unchanged`, {
        cause: e,
        hint: `free ${bytes.length} bytes there and retry, or use a redundant pair (written in place)`,
      });
    }
  }

  /** Negative offsets count from the end of the device (libubootenv). */
  private resolveOffset(loc: Location): number {
    if (loc.offset >= 0) return loc.offset;
    const st = this.sys.stat(loc.path);
    if (!st) throw new ZbError("IO", `cannot read env ${describe(loc)}: no such file or device`);
    const offset = st.size + loc.offset;
    if (offset < 0) throw new ZbError("CONFIG", `cannot use env ${describe(loc)}: the offset lies before the start of a ${st.size}-byte device`);
    return offset;
  }
}

/** A write that failed for lack of space (ENOSPC) or of quota (EDQUOT). */
function isNoSpace(e: unknown): boolean {
  const code = e instanceof ZbError && e.code === "IO" ? (e.cause as { code?: string } | undefined)?.code : undefined;
  return code === "ENOSPC" || code === "EDQUOT";
}

/** `path@0xOFFSET` for messages. */
export function describe(loc: Location): string {
  return loc.offset === 0 ? loc.path : `${loc.path}@${loc.offset < 0 ? "-0x" + (-loc.offset).toString(16) : "0x" + loc.offset.toString(16)}`;
}

/** Where to find the env, from the command line. */
export interface StoreSelector {
  /** An fw_env.config file; wins over `boot`. */
  configFile?: string;
  /** Mount point of the boot partition for zb's default pair. */
  bootDir?: string;
}

/**
 * Open the env named by a config file, or zb's default pair under the boot dir.
 * @throws {ZbError} IO when the config file cannot be read, CONFIG when it is
 *   malformed, larger than {@link MAX_CONFIG_FILE_BYTES} or its two copies share bytes of one file
 * @example openStore(new HostSys(), { configFile: "/etc/fw_env.config" }).read()
 */
export function openStore(sys: Sys, where: StoreSelector): EnvStore {
  const file = where.configFile;
  const config = file !== undefined ? parseFwEnvConfig(sys.readText(file, { max: MAX_CONFIG_FILE_BYTES, code: "CONFIG", what: `env config ${file}` }), file) : defaultConfig(where.bootDir);
  checkCopiesApart(sys, config);
  return new EnvStore(sys, config);
}

/**
 * The overlap check parseFwEnvConfig cannot make: the two paths name one
 * file (a symlink, a hard link, /dev/disk/by-… for /dev/mmcblk0), or one
 * offset counts from the end. A copy that does not exist yet is no overlap.
 */
function checkCopiesApart(sys: Sys, config: StoreConfig): void {
  const [a, b] = config.copies;
  if (!b) return;
  const [sa, sb] = [sys.stat(a.path), sys.stat(b.path)];
  if (sa?.id === undefined || sa.id !== sb?.id) return;
  const placed = (l: Location) => ({ offset: l.offset < 0 ? sa.size + l.offset : l.offset, size: l.size });
  if (rangesOverlap(placed(a), placed(b))) throw overlapError(config.source, `${a.path} and ${b.path} (one file)`, placed(a), placed(b));
}
