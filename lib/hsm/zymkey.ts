/**
 * The `zymkey` backend: seal a secret with a Zymbit Zymkey / HSM4 / HSM6 /
 * SCM through `libzk_app_utils.so` and bun:ffi (docs/hsm/zymkey.md).
 *
 * zkLockDataB2B encrypts and signs a buffer; zkUnlockDataB2B verifies the
 * signature, then decrypts (Zymbit C API, zk_app_utils.h). zb always passes
 * `use_shared_key = false`, which selects the device's *one-way* key: data
 * locked with it can be unlocked only on this device bound to this host. The
 * shared key exists for publishing data to a party that can derive it too,
 * which is the opposite of what a LUKS key needs.
 *
 * Every operation opens its own context and closes it again (zkOpen/zkClose),
 * so a restarted zkifc daemon or a re-bound device is picked up on the next
 * call. Output buffers are malloc'd by the library; they are copied, wiped
 * when they held plaintext, and freed with libc free (lib/sys/libc.ts).
 *
 * FFI calls are synchronous: a lock or unlock blocks the event loop for as
 * long as the device takes (an I²C round trip through the daemon), which is
 * fine for zbunlock and the `zb cred` commands.
 *
 * Host access: dlopen of the library, on first use.
 */
import type { Pointer } from "bun:ffi";
import { ZbError } from "../errors.ts";
import { wipe } from "../secret.ts";
import { b64, b64field } from "./blob.ts";
import { existsSync } from "node:fs";
import { libraryDirs, systemLibrary } from "../sys/dlopen.ts";
import { takeMalloced } from "../sys/libc.ts";
import type { BackendOptions, Hsm, ProbeResult, SealedData, SealOptions, UnsealResult } from "./types.ts";

/** The library's name, looked up in the system's library folders (lib/sys/dlopen.ts). */
export const ZYMKEY_LIBRARY = "libzk_app_utils.so";

/** Where the library is looked for when no `library` option is given, in order. */
export const ZYMKEY_SEARCH: readonly string[] = [ZYMKEY_LIBRARY, `/usr/lib/${ZYMKEY_LIBRARY}`, `/usr/local/lib/${ZYMKEY_LIBRARY}`];

/** Version of the sealed-data layout `{version, locked}`. */
export const ZYMKEY_DATA_VERSION = 1;

/** Largest buffer accepted from or handed to the library; a sealed blob is at most 64 KiB anyway. */
const MAX_BYTES = 64 * 1024;

/** use_shared_key = false: the one-way key, bound to this host (Zymbit C API, zkLockDataF2F). */
const ONE_WAY_KEY = false;

/**
 * zkUnlockDataB2B attempts before a failure (rc < 0) counts as no-match, and
 * the pause between them. The library answers every failure with a negative
 * rc, a signature that does not verify (another device: for good) and a
 * daemon or I²C hiccup (zkifc restarting, a bus error: gone a moment later)
 * alike; no-match makes zbunlock mark the slot invalid (row U2), so one
 * hiccup must not. A genuine no-match costs (attempts - 1) × delay more.
 */
export const UNLOCK_ATTEMPTS = 3;
export const UNLOCK_RETRY_DELAY_MS = 250;

export interface ZymkeyOptions extends BackendOptions {
  /** Path or name of libzk_app_utils.so; default: search {@link ZYMKEY_SEARCH}. */
  library?: string;
}

const ZK_SYMBOLS = {
  zkOpen: { args: ["ptr"], returns: "i32" },
  zkClose: { args: ["ptr"], returns: "i32" },
  zkLockDataB2B: { args: ["ptr", "ptr", "i32", "ptr", "ptr", "bool"], returns: "i32" },
  zkUnlockDataB2B: { args: ["ptr", "ptr", "i32", "ptr", "ptr", "bool"], returns: "i32" },
} as const;

type CtxPtr = Pointer | bigint;
type B2B = (ctx: CtxPtr, src: Uint8Array, srcSz: number, dst: BigUint64Array, dstSz: Int32Array, shared: boolean) => number;

interface ZkLib {
  path: string;
  zkOpen(cell: BigUint64Array): number;
  zkClose(ctx: CtxPtr): number;
  zkLockDataB2B: B2B;
  zkUnlockDataB2B: B2B;
  close(): void;
}

type Loaded = { ok: true; lib: ZkLib } | { ok: false; why: string };

/** What one B2B call gave back: its return code and the output buffer (a JS copy), if any. */
interface B2BResult {
  rc: number;
  out: Uint8Array | null;
}

/**
 * A Zymkey reached through libzk_app_utils.so.
 * @example const hsm = new ZymkeyHsm({}); const data = await hsm.seal(key); await hsm.close();
 */
export class ZymkeyHsm implements Hsm {
  readonly name = "zymkey" as const;
  readonly #candidates: readonly string[];
  readonly #warn: (line: string) => void;
  readonly #sleep: (ms: number) => Promise<void>;
  #lib: ZkLib | null = null;

  constructor(opts: ZymkeyOptions = {}) {
    this.#candidates = opts.library ? [opts.library] : ZYMKEY_SEARCH;
    this.#warn = opts.warn ?? ((line) => console.error(line));
    this.#sleep = opts.sleep ?? ((ms) => Bun.sleep(ms));
  }

  /** Loads the library and opens (then closes) a context. Never throws. */
  async probe(): Promise<ProbeResult> {
    const loaded = this.#load();
    if (!loaded.ok) return { backend: this.name, present: false, detail: loaded.why };
    const r = withContext(loaded.lib, () => null);
    if (!r.ok) return { backend: this.name, present: false, detail: r.why };
    return { backend: this.name, present: true, detail: `Zymkey reachable through ${loaded.lib.path}`, info: { library: loaded.lib.path } };
  }

  /**
   * Lock `secret` with the one-way key.
   * @throws {ZbError} HSM_ABSENT when the library or the device is not there; HSM_FAILED when the lock fails; USAGE for an empty or oversized secret
   */
  async seal(secret: Uint8Array, _opts?: SealOptions): Promise<SealedData> {
    if (secret.length === 0 || secret.length > MAX_BYTES) {
      throw new ZbError("USAGE", `cannot seal with zymkey: the secret must be 1 to ${MAX_BYTES} bytes, not ${secret.length}`);
    }
    const loaded = this.#load();
    if (!loaded.ok) throw new ZbError("HSM_ABSENT", `cannot seal with zymkey: ${loaded.why}`);
    const lib = loaded.lib;
    const r = withContext(lib, (ctx) => callB2B(lib.zkLockDataB2B, ctx, secret, false));
    if (!r.ok) throw new ZbError("HSM_ABSENT", `cannot seal with zymkey: ${r.why}`);
    const { rc, out } = r.value;
    if (rc < 0 || !out || out.length === 0) {
      throw new ZbError("HSM_FAILED", `cannot seal with zymkey: zkLockDataB2B ${rc < 0 ? `failed (rc ${rc})` : "returned no data"}`);
    }
    return { version: ZYMKEY_DATA_VERSION, locked: b64(out) };
  }

  /**
   * Verify and decrypt data from seal(). A failed unlock (rc < 0) is tried
   * again, in a new context, {@link UNLOCK_ATTEMPTS} times in all before it
   * counts as no-match (see there). Never throws.
   */
  async unseal(data: SealedData): Promise<UnsealResult> {
    let locked: Uint8Array;
    try {
      locked = parseSealed(data);
    } catch (e) {
      return { kind: "failed", why: (e as Error).message };
    }
    const loaded = this.#load();
    if (!loaded.ok) return { kind: "absent", why: loaded.why };
    const lib = loaded.lib;
    const failures: number[] = [];
    for (let attempt = 1; ; attempt++) {
      let r: Ctx<B2BResult>;
      try {
        r = withContext(lib, (ctx) => callB2B(lib.zkUnlockDataB2B, ctx, locked, true));
      } catch (e) {
        return { kind: "failed", why: (e as Error).message };
      }
      if (!r.ok) return { kind: "absent", why: r.why };
      if (r.value.rc >= 0 || attempt >= UNLOCK_ATTEMPTS) {
        if (r.value.rc >= 0 && failures.length > 0) this.#warn(`zb: zkUnlockDataB2B succeeded on attempt ${attempt} (before: rc ${failures.join(", rc ")})`);
        return unlockOutcome(r.value, attempt);
      }
      failures.push(r.value.rc);
      await this.#sleep(UNLOCK_RETRY_DELAY_MS);
    }
  }

  /** Unload the library. Idempotent; a later call loads it again. */
  async close(): Promise<void> {
    const lib = this.#lib;
    this.#lib = null;
    lib?.close();
  }

  #load(): Loaded {
    if (this.#lib) return { ok: true, lib: this.#lib };
    const loaded = loadLibrary(this.#candidates);
    if (loaded.ok) this.#lib = loaded.lib;
    return loaded;
  }
}

/**
 * The locked bytes of sealed data, strictly checked.
 * @throws {ZbError} CRED_INVALID when the data is not `{version: 1, locked: <base64>}`
 */
function parseSealed(data: SealedData): Uint8Array {
  const bad = (why: string) => new ZbError("CRED_INVALID", `cannot read zymkey sealed data: ${why}`);
  for (const k of Object.keys(data)) if (k !== "version" && k !== "locked") throw bad(`unknown field ${JSON.stringify(k)}`);
  if (data.version !== ZYMKEY_DATA_VERSION) throw bad(`version is ${JSON.stringify(data.version)}, expected ${ZYMKEY_DATA_VERSION}`);
  const locked = b64field(data, "locked");
  if (locked.length === 0 || locked.length > MAX_BYTES) throw bad(`locked data is ${locked.length} bytes`);
  return locked;
}

/**
 * Classify an unlock. The C API documents 0 as success, and Zymbit's own
 * Python binding (zymkey/module.py, Zymkey.unlock) reads 1 as "unlocked" and 0
 * as "signature verification failed": so success is rc ≥ 0 *with* data.
 * Anything else is `no-match`: the Zymkey checks the signature with the
 * one-way key before decrypting, so data locked by another device and
 * corrupted data fail the same way and cannot be told apart.
 * @param attempts how many unlocks were tried (all failed when this one did)
 */
function unlockOutcome({ rc, out }: B2BResult, attempts: number): UnsealResult {
  if (rc >= 0 && out && out.length > 0) return { kind: "ok", secret: out };
  wipe(out);
  const how = rc < 0 ? `zkUnlockDataB2B failed (rc ${rc}${attempts > 1 ? `, ${attempts} attempts` : ""})` : `zkUnlockDataB2B returned ${rc} without data`;
  return {
    kind: "no-match",
    why: `${how}: the data was locked by another Zymkey or host binding, or it is corrupted (the two cannot be told apart)`,
  };
}

/** Try each candidate in order; the first that loads and exports the four functions wins. */
function loadLibrary(candidates: readonly string[]): Loaded {
  const { dlopen } = require("bun:ffi") as typeof import("bun:ffi");
  const errors: string[] = [];
  const tried = new Set<string>();
  const missing: string[] = [];
  for (const name of candidates) {
    // A bare name only from the system's library folders, never the working directory (lib/sys/dlopen.ts).
    const path = systemLibrary(name);
    if (path === null) {
      missing.push(...libraryDirs());
      continue;
    }
    if (tried.has(path)) continue;
    tried.add(path);
    // A file that is not there is one line of the summary, not the loader's paragraph.
    if (!existsSync(path)) {
      missing.push(path);
      continue;
    }
    try {
      const h = dlopen(path, ZK_SYMBOLS);
      const s = h.symbols as unknown as Omit<ZkLib, "path" | "close">;
      return { ok: true, lib: { ...s, path, close: () => h.close() } };
    } catch (e) {
      errors.push(`${path}: ${firstLine(e)}`);
    }
  }
  // One library named by the user: that file. The default search: the folders it looked in.
  const named = candidates.length === 1 && candidates[0]!.includes("/");
  const folders = [...new Set(missing.map((m) => (m.endsWith(".so") || m.includes(".so.") ? m.slice(0, m.lastIndexOf("/")) : m)))];
  const notThere = missing.length === 0 ? [] : named ? [`${missing[0]}: no such file`] : [`${ZYMKEY_LIBRARY}: not in ${folders.join(", ")}`];
  const all = [...notThere, ...errors];
  const hint = errors.length === 0 ? " (is Zymbit's software installed?)" : "";
  const why = all.length === 1 ? `cannot load ${all[0]}${hint}` : `cannot load ${ZYMKEY_LIBRARY} (${all.join("; ")})`;
  return { ok: false, why };
}

function firstLine(e: unknown): string {
  return String((e as Error)?.message ?? e).split("\n")[0]!;
}

type Ctx<T> = { ok: true; value: T } | { ok: false; why: string };

/**
 * Run `fn` with an open context and always close it. zkOpen < 0 means the
 * library cannot reach the device (zkifc not running, device not bound or
 * not plugged): the HSM is absent for now.
 */
function withContext<T>(lib: ZkLib, fn: (ctx: CtxPtr) => T): Ctx<T> {
  const cell = new BigUint64Array(1);
  const rc = lib.zkOpen(cell);
  if (rc < 0) return { ok: false, why: `zkOpen failed (rc ${rc}): is the zkifc daemon running and the Zymkey bound to this host?` };
  const ctx = cell[0]!;
  try {
    return { ok: true, value: fn(ctx) };
  } finally {
    lib.zkClose(ctx);
  }
}

/**
 * One zkLockDataB2B/zkUnlockDataB2B call with the one-way key. The output
 * buffer is taken (copied, wiped if `secretOut`, freed) whatever the return
 * code, so a library that allocates before failing does not leak.
 */
function callB2B(fn: B2B, ctx: CtxPtr, src: Uint8Array, secretOut: boolean): B2BResult {
  const dst = new BigUint64Array(1);
  const dstSz = new Int32Array(1);
  const rc = fn(ctx, src, src.length, dst, dstSz, ONE_WAY_KEY);
  const out = takeMalloced(dst[0]!, dstSz[0]!, { secret: secretOut, maxBytes: MAX_BYTES });
  if (rc < 0 && out) {
    wipe(out);
    return { rc, out: null };
  }
  return { rc, out };
}
