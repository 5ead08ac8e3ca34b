/**
 * LUKS2 through the cryptsetup program: format, add/remove a key, open,
 * test a key, close, read the UUID and keyslots.
 *
 * Host access: runs `cryptsetup` (cryptsetup(8), 2.6); creates pipes with
 * pipe2(2) through bun:ffi for a second key; reads a device's first 4 KiB
 * (Sys) to refuse LUKS1 before a key is added or removed. Keys travel only through the
 * child's inherited descriptors: the first key on stdin (`--key-file=-`,
 * read to EOF, so any byte including `\n` and NUL is part of it — without
 * `--key-file=-` cryptsetup stops at the first newline), written into Bun's
 * stdin socket and closed; a second key (add-key) on an inherited pipe
 * opened as `/dev/fd/3`. Bun's own "pipe" is a socketpair, which is fine to
 * read(2) from but open(2) of /dev/fd/N on a socket fails with ENXIO, hence
 * a real pipe there. Opening a volume needs only stdin, so zbunlock, which
 * runs without the JIT and hence without bun:ffi (lib/sys/jit.ts), never
 * needs pipe2. A key is at most 4096 bytes, so it fits the socket or pipe
 * buffer and is written at once. Keys are never in argv, the environment (the
 * child gets only PATH and LC_ALL=C), logs or files, and never in error
 * messages: cryptsetup's stderr is scrubbed of every form of the key. The
 * key transport and the scrub are in lib/luks/keyio.ts; spawning, the time
 * limit and the bounded wait after a kill (shared with dmsetup) in
 * lib/luks/tool.ts.
 *
 * Random 256-bit keys need no password stretching, so keyslots use PBKDF2-
 * SHA512 with 1000 iterations, as systemd-cryptenroll
 * (cryptsetup_set_minimal_pbkdf) and clevis do for machine keys; the argon2id
 * default costs seconds and up to 1 GiB of RAM per unlock (docs/luks.md has
 * the measured figures).
 */
import { closeSync } from "node:fs";
import type { FileSink } from "bun";
import { ZbError } from "../errors.ts";
import { HostSys, type Sys } from "../sys/sys.ts";
import { wipe } from "../secret.ts";
import { checkDevice, checkLuks2, checkName, parseKeyslots, type Keyslot } from "./checks.ts";
import { keyPipe, scrub, sendKey } from "./keyio.ts";
import { KILL_WAIT_MS, OUTPUT_GRACE_MS, resolveBinary, stderrDetail, ToolRun, type ToolProcess } from "./tool.ts";

/** One keyslot as `luksDump --dump-json-metadata` reports it (parsed in checks.ts). */
export type { Keyslot };

/** Largest key accepted: fits any pipe buffer, so writing it never blocks. */
export const MAX_KEY_BYTES = 4096;

export interface FormatOptions {
  /** LUKS2 label (blkid's LABEL). */
  label?: string;
  /** A fixed UUID instead of a random one. */
  uuid?: string;
  /** Default aes-xts-plain64 (on a Pi 4 without AES instructions consider xchacha12,aes-adiantum-plain64, docs/luks.md). */
  cipher?: string;
  /** Bits; default 512 (AES-256 in XTS mode). */
  keySize?: number;
  /** Encryption sector size in bytes (512 or 4096); default: cryptsetup's choice. */
  sectorSize?: number;
  /**
   * Keyslot KDF. Default "pbkdf2-1000": PBKDF2-SHA512, 1000 iterations, no
   * benchmark. "argon2id-benchmarked" is cryptsetup's own default, for
   * comparison only (bench/luks-pbkdf.ts); never needed for random keys.
   */
  pbkdf?: "pbkdf2-1000" | "argon2id-benchmarked";
}

export interface AddKeyOptions {
  /** Keyslot number for the new key; default the first free one. */
  keySlot?: number;
}

export interface RemoveKeyOptions {
  /**
   * cryptsetup removes the last keyslot without asking when stdin is not a
   * terminal, which makes the device unusable; refused unless this is true.
   */
  allowLastKeyslot?: boolean;
}

export interface OpenOptions {
  readOnly?: boolean;
  /** Pass TRIM through (leaks which blocks are free; off by default). */
  allowDiscards?: boolean;
}

/**
 * LUKS operations zb needs. Every method throws ZbError LUKS_FAILED when cryptsetup fails.
 * Keys stay the caller's: no method wipes, changes or keeps a key it is given,
 * so the caller wipes its key in a `finally` once the call returns or throws.
 */
export interface Cryptsetup {
  /** Make `device` a fresh LUKS2 volume whose only keyslot opens with `key`. Destroys the device's content. */
  format(device: string, key: Uint8Array, opts?: FormatOptions): Promise<void>;
  /** Add a keyslot for `newKey`, authorised by `existingKey`. Refuses a LUKS1 volume before changing it. */
  addKey(device: string, existingKey: Uint8Array, newKey: Uint8Array, opts?: AddKeyOptions): Promise<void>;
  /** Remove the keyslot `key` opens. Refuses a LUKS1 volume before changing it. */
  removeKey(device: string, key: Uint8Array, opts?: RemoveKeyOptions): Promise<void>;
  /** Map the decrypted device at /dev/mapper/`name` (needs device-mapper and dm-crypt). `key` is not wiped: the caller wipes it. */
  open(device: string, name: string, key: Uint8Array, opts?: OpenOptions): Promise<void>;
  /** `open`, started before the key is known; the key follows through the result. */
  prepareOpen(device: string, name: string, opts?: OpenOptions): PreparedOpen;
  /** Does `key` open a keyslot of `device`? (`open --test-passphrase`: no mapping made.) */
  testKey(device: string, key: Uint8Array): Promise<boolean>;
  /** Remove the mapping /dev/mapper/`name`. */
  close(name: string): Promise<void>;
  /** The LUKS UUID (lower-case 8-4-4-4-12). */
  uuid(device: string): Promise<string>;
  /** Is `device` a LUKS volume? False for other content; throws when it cannot be read. */
  isLuks(device: string): Promise<boolean>;
  /** Active keyslots, by number. */
  keyslots(device: string): Promise<Keyslot[]>;
}

/** A cryptsetup `open` started before its key is known (CryptsetupCli.prepareOpen). */
export interface PreparedOpen {
  /**
   * Hand over the key and wait for the mapping. The key is not wiped here: it
   * stays the caller's, who wipes it in a `finally` once this returns or throws.
   * @throws {ZbError} LUKS_FAILED
   */
  open(key: Uint8Array): Promise<void>;
  /**
   * No key is coming: kill cryptsetup and wait for it, as at a timeout
   * (ToolRun.kill, lib/luks/tool.ts: the constructor's killer, SIGKILL by
   * default, through Bun's Subprocess, which signals no child it already
   * reaped, so never a reused PID; then at most the kill bound). What it
   * guarantees: nothing is mapped (cryptsetup maps only after reading a key,
   * and none is ever written to it: `open` after a cancel throws INTERNAL);
   * a cryptsetup that ended is reaped, and its stdin closed, so a process it
   * forked (the real one forks none) reads the end, never a key. One the kill
   * did not end (stuck in the kernel) is left waiting on a stdin that stays
   * open and empty; zbunlock's step before a panic shell finds and kills
   * leftover cryptsetup processes (lib/unlock/leftover.ts). Never throws.
   */
  cancel(): Promise<void>;
}

/** Exit statuses documented in cryptsetup(8) "RETURN CODES". */
const EXIT_REASONS: Record<number, string> = {
  // cryptsetup(8) calls 1 "wrong parameters"; it also covers a device that is not LUKS
  // ("Device X is not a valid LUKS device.") and no device-mapper, which stderr then names.
  1: "cryptsetup refused (wrong parameters, not a LUKS device, or no device-mapper)",
  2: "the key does not open any keyslot",
  3: "out of memory",
  4: "wrong device (missing or unreadable)",
  5: "the device already exists or is busy",
};

const PBKDF2_1000 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--hash", "sha512"];
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

interface RunResult {
  code: number;
  stdout: string;
}

/** Output cut by a process cryptsetup left holding its pipe (ToolOutput.cut): the message for a caller that parses it. */
function cutOutput(what: string): ZbError {
  return new ZbError("LUKS_FAILED", `cannot ${what}: cryptsetup's output did not end within ${OUTPUT_GRACE_MS / 1000} s of its exit (a process it started still holds it), so what it printed may be incomplete`);
}

interface RunSpec {
  /** What failed, for the message: `cannot <what>: …`. */
  what: string;
  args: string[];
  stdinKey?: Uint8Array;
  fd3Key?: Uint8Array;
  /** Exit statuses that are answers, not failures. */
  accept?: number[];
  /** The caller reads what it printed: a cut output fails (ToolOutput.cut) rather than being parsed. */
  parsesStdout?: boolean;
}

/** The real cryptsetup program. */
export class CryptsetupCli implements Cryptsetup {
  private readonly binary: string;
  private readonly timeoutMs: number;
  private readonly killWaitMs: number;
  private readonly killer: ((proc: ToolProcess) => void) | undefined;
  private readonly sys: Sys;

  /**
   * @param opts.binary program name or path; default `cryptsetup` on PATH (plus /usr/sbin, /sbin)
   * @param opts.timeoutMs kill cryptsetup after this long; default 120 s (an argon2id format takes ~11 s here).
   *   The clock starts when cryptsetup is given its key (or its stdin is
   *   closed), not when it is spawned: a prepared open waits for a key that
   *   may take a person minutes to unlock (a PIN prompt), and that wait is
   *   not cryptsetup's work
   * @param opts.killWaitMs how long a killed cryptsetup (timeout, cancel) gets to end before the call
   *   stops waiting for it; default KILL_WAIT_MS of lib/luks/tool.ts (2 s)
   * @param opts.sys reads a device's LUKS header before a key is added or removed; default the host
   * @param opts.killer sends the kill at a timeout or cancel; default SIGKILL (tests: one that does nothing)
   */
  constructor(opts: { binary?: string; timeoutMs?: number; killWaitMs?: number; sys?: Sys; killer?: (proc: ToolProcess) => void } = {}) {
    this.binary = opts.binary ?? "cryptsetup";
    this.timeoutMs = opts.timeoutMs ?? 120_000;
    this.killWaitMs = opts.killWaitMs ?? KILL_WAIT_MS;
    this.killer = opts.killer;
    this.sys = opts.sys ?? new HostSys();
  }

  /** @throws {ZbError} LUKS_FAILED */
  async format(device: string, key: Uint8Array, opts: FormatOptions = {}): Promise<void> {
    const args = ["luksFormat", "--batch-mode", "--type", "luks2", "--cipher", opts.cipher ?? "aes-xts-plain64"];
    args.push("--key-size", String(opts.keySize ?? 512));
    if ((opts.pbkdf ?? "pbkdf2-1000") === "pbkdf2-1000") args.push(...PBKDF2_1000);
    else args.push("--pbkdf", "argon2id");
    if (opts.label !== undefined) args.push("--label", opts.label);
    if (opts.uuid !== undefined) args.push("--uuid", opts.uuid);
    if (opts.sectorSize !== undefined) args.push("--sector-size", String(opts.sectorSize));
    args.push("--key-file=-", checkDevice(device));
    await this.run({ what: `format ${device} as LUKS2`, args, stdinKey: key });
  }

  /**
   * @throws {ZbError} LUKS_FAILED (exit 2: `existingKey` does not open the device; a LUKS1 volume,
   *   refused before anything changes); IO when its header cannot be read
   */
  async addKey(device: string, existingKey: Uint8Array, newKey: Uint8Array, opts: AddKeyOptions = {}): Promise<void> {
    checkLuks2(this.sys, device, `add a key to ${device}`);
    const args = ["luksAddKey", "--batch-mode", ...PBKDF2_1000, "--key-file=-"];
    if (opts.keySlot !== undefined) args.push("--new-key-slot", String(opts.keySlot));
    // The new key file as the positional argument works with every cryptsetup 2.x (--new-keyfile came later).
    args.push(checkDevice(device), "/dev/fd/3");
    await this.run({ what: `add a key to ${device}`, args, stdinKey: existingKey, fd3Key: newKey });
  }

  /**
   * @throws {ZbError} LUKS_FAILED, also when it would remove the last keyslot without
   *   `allowLastKeyslot` and for a LUKS1 volume (refused before anything changes); IO when its header cannot be read
   */
  async removeKey(device: string, key: Uint8Array, opts: RemoveKeyOptions = {}): Promise<void> {
    checkLuks2(this.sys, device, `remove a key from ${device}`);
    if (!opts.allowLastKeyslot && (await this.keyslots(device)).length <= 1) {
      throw new ZbError("LUKS_FAILED", `cannot remove a key from ${device}: it is the only keyslot, the device would become unusable`);
    }
    await this.run({ what: `remove a key from ${device}`, args: ["luksRemoveKey", "--key-file=-", checkDevice(device)], stdinKey: key });
  }

  /** `key` is left as it is, for the caller to wipe. @throws {ZbError} LUKS_FAILED; USAGE for a name device-mapper cannot hold */
  async open(device: string, name: string, key: Uint8Array, opts: OpenOptions = {}): Promise<void> {
    checkKey(key, `open ${device} as ${name}`);
    await this.prepareOpen(device, name, opts).open(key);
  }

  /**
   * Start `open` before the key is there: cryptsetup loads its libraries and
   * reads the LUKS header while the caller unseals the key (under QEMU that
   * part was 0.11–0.16 s of an open of 0.39–0.53 s), then blocks reading stdin, where
   * `open(key)` writes the key. `cancel()` kills it when no key comes; it has
   * mapped nothing then (the mapping is made only after a keyslot opened).
   * The timeout counts from `open(key)`: the unseal before it may wait for a
   * PIN for as long as the person takes.
   * @throws {ZbError} LUKS_FAILED when cryptsetup cannot be started; USAGE for a bad name
   */
  prepareOpen(device: string, name: string, opts: OpenOptions = {}): PreparedOpen {
    // --type luks: never plain mode, where any key "opens" the device into garbage.
    const args = ["open", "--type", "luks", "--key-file=-"];
    if (opts.readOnly) args.push("--readonly");
    if (opts.allowDiscards) args.push("--allow-discards");
    args.push(checkDevice(device), checkName(name));
    const child = this.start({ what: `open ${device} as ${name}`, args, stdin: true });
    return {
      open: async (key) => void (await child.finish(key)),
      cancel: () => child.kill(),
    };
  }

  /** @throws {ZbError} LUKS_FAILED when the device cannot be read (a wrong key is `false`) */
  async testKey(device: string, key: Uint8Array): Promise<boolean> {
    const args = ["open", "--type", "luks", "--test-passphrase", "--key-file=-", checkDevice(device)];
    const r = await this.run({ what: `test a key on ${device}`, args, stdinKey: key, accept: [2] });
    return r.code === 0;
  }

  /** @throws {ZbError} LUKS_FAILED (exit 4: no such mapping; 5: still in use) */
  async close(name: string): Promise<void> {
    await this.run({ what: `close ${name}`, args: ["close", checkName(name)] });
  }

  /** @throws {ZbError} LUKS_FAILED when the device is not LUKS */
  async uuid(device: string): Promise<string> {
    const what = `read the LUKS UUID of ${device}`;
    const r = await this.run({ what, args: ["luksUUID", checkDevice(device)], accept: [1], parsesStdout: true });
    // luksUUID exits 1, silently, for a readable device without a LUKS header.
    if (r.code === 1) throw new ZbError("LUKS_FAILED", `cannot ${what}: not a LUKS device`);
    const uuid = r.stdout.trim().toLowerCase();
    if (!UUID_RE.test(uuid)) throw new ZbError("LUKS_FAILED", `cannot ${what}: cryptsetup printed ${JSON.stringify(r.stdout.slice(0, 80))}`);
    return uuid;
  }

  /** @throws {ZbError} LUKS_FAILED when the device is missing or unreadable */
  async isLuks(device: string): Promise<boolean> {
    const r = await this.run({ what: `check ${device} for a LUKS header`, args: ["isLuks", checkDevice(device)], accept: [1] });
    return r.code === 0;
  }

  /** @throws {ZbError} LUKS_FAILED */
  async keyslots(device: string): Promise<Keyslot[]> {
    const what = `read the keyslots of ${device}`;
    const r = await this.run({ what, args: ["luksDump", "--dump-json-metadata", checkDevice(device)], parsesStdout: true });
    return parseKeyslots(r.stdout, what);
  }

  private async run(spec: RunSpec): Promise<RunResult> {
    const fds: number[] = [];
    try {
      if (spec.fd3Key) {
        checkKey(spec.fd3Key, spec.what);
        track(fds, keyPipe(spec.fd3Key, spec.what));
      }
      if (spec.stdinKey) checkKey(spec.stdinKey, spec.what);
      const child = this.start({ ...spec, stdin: spec.stdinKey !== undefined }, fds, spec.fd3Key ? [spec.fd3Key] : []);
      // The child holds its own copies of the read ends now.
      fds.splice(0).forEach((fd) => closeSync(fd));
      return await child.finish(spec.stdinKey);
    } finally {
      fds.forEach((fd) => closeSync(fd));
    }
  }

  /**
   * Spawn cryptsetup; `finish` hands it the stdin key (if the spec takes
   * one), waits for it and maps its exit status.
   * @param extraFds descriptors the child inherits as fd 3, 4, …
   * @param otherKeys keys it gets another way, scrubbed from its messages too
   * @throws {ZbError} LUKS_FAILED when it cannot be started
   */
  private start(spec: Omit<RunSpec, "stdinKey" | "fd3Key"> & { stdin: boolean }, extraFds: number[] = [], otherKeys: Uint8Array[] = []): Running {
    const exe = resolveBinary(this.binary, spec.what, "install cryptsetup (Debian: cryptsetup-bin)");
    // stderr stays bytes until it is scrubbed: a key that is not UTF-8 would not survive decoding.
    const run = new ToolRun({ program: "cryptsetup", exe, args: spec.args, what: spec.what, stdin: spec.stdin, extraFds, killWaitMs: this.killWaitMs, ...(this.killer ? { killer: this.killer } : {}) });
    const proc = run.proc;
    let state: "new" | "finishing" | "killed" = "new";
    const kill = async () => {
      if (state !== "new") return;
      state = "killed";
      await run.kill();
    };
    const finish = async (key?: Uint8Array): Promise<RunResult> => {
      if (state !== "new") throw new ZbError("INTERNAL", `internal error: cryptsetup (${spec.what}) was already ${state === "killed" ? "cancelled" : "given its key"}`);
      if (key && !keyFits(key)) {
        await kill(); // it would wait for a key that is not coming
        checkKey(key, spec.what);
      }
      state = "finishing";
      const keys = key ? [key, ...otherKeys] : otherKeys;
      // cryptsetup's own work starts now: the timeout counts from here (constructor).
      const { code, stdout, stderr, cut } = await run.result(this.timeoutMs, async () => {
        // A child that already ended (a missing device) is not sent the key: its exit status says why.
        // A failed handover is killed by run.result through the same killer and bounded wait as a cancel.
        if (key && proc.exitCode === null && proc.signalCode === null) await sendKey(proc.stdin as FileSink, key, spec.what);
        else if (spec.stdin) void (proc.stdin as FileSink).end();
      });
      try {
        if (code === 0 && cut && spec.parsesStdout) throw cutOutput(spec.what);
        if (code === 0 || spec.accept?.includes(code)) return { code, stdout };
        throw exitError(spec.what, code, scrub(stderr, keys));
      } finally {
        wipe(stderr); // it may echo a key
      }
    };
    return { finish, kill };
  }
}

/** A started cryptsetup (CryptsetupCli's start). */
interface Running {
  /** @throws {ZbError} LUKS_FAILED; INTERNAL when called twice or after kill */
  finish(stdinKey?: Uint8Array): Promise<RunResult>;
  /** Kill it (ToolRun.kill: the killer, SIGKILL by default) unless it was given its key; wait for it to end, at most the kill bound. */
  kill(): Promise<void>;
}

/**
 * The ZbError for a cryptsetup exit status, with its stderr and a hint for the
 * failures an initramfs typically hits (missing kernel modules, hsm.md §4).
 * @param stderr cryptsetup's stderr, already scrubbed of keys
 * @returns a LUKS_FAILED error: `cannot <what>: <reason> (cryptsetup exit N: <stderr>)`
 * @example exitError("open /dev/mmcblk0p2 as zb-root", 2, "No key available with this passphrase.")
 */
export function exitError(what: string, code: number, stderr: string): ZbError {
  const reason = EXIT_REASONS[code] ?? `unexpected exit status ${code}`;
  const detail = stderrDetail(stderr);
  let hint: string | undefined;
  if (/device-mapper/i.test(stderr)) hint = "load the dm_mod and dm_crypt kernel modules (modprobe dm_crypt)";
  else if (/algif_skcipher|AF_ALG|kernel crypto/i.test(stderr)) hint = "load the af_alg and algif_skcipher kernel modules";
  const msg = `cannot ${what}: ${reason} (cryptsetup exit ${code}${detail ? `: ${detail}` : ""})`;
  // The exit status rides along as the cause, so isWrongKey need not read the message back.
  return new ZbError("LUKS_FAILED", msg, { cause: { cryptsetupExit: code }, ...(hint === undefined ? {} : { hint }) });
}

/** True when a LUKS_FAILED error says the key opens no keyslot (cryptsetup exit 2, "No key available with this passphrase"). */
export function isWrongKey(e: ZbError): boolean {
  return e.code === "LUKS_FAILED" && (e.cause as { cryptsetupExit?: number } | undefined)?.cryptsetupExit === 2;
}

function keyFits(key: Uint8Array): boolean {
  return key.length > 0 && key.length <= MAX_KEY_BYTES;
}

function checkKey(key: Uint8Array, what: string): void {
  if (!keyFits(key)) {
    throw new ZbError("LUKS_FAILED", `cannot ${what}: the key is ${key.length} bytes, expected 1 to ${MAX_KEY_BYTES}`);
  }
}

function track(fds: number[], fd: number): number {
  fds.push(fd);
  return fd;
}

