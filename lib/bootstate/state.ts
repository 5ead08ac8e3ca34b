/**
 * The boot state as typed values, read from and written to the env
 * (docs/boot-flow.md lists every variable). Pure.
 *
 * Unset variables take their defaults, so an env made by `zb init` and one
 * made by hand with a few variables both read; a variable with a value zb
 * does not understand is an error, never guessed around.
 */
import { ZbError } from "../errors.ts";
import type { Change } from "../env/script.ts";

export type Slot = "a" | "b";
export const SLOTS: readonly Slot[] = ["a", "b"];
/** snapd's kernel_status (boot/boot.go DefaultStatus, TryStatus, TryingStatus). */
export type Status = "" | "try" | "trying";
/** run: boot a slot; install: enter zboot through tryboot; recover: zboot from config.txt. */
export type Mode = "run" | "install" | "recover";

export interface SlotState {
  /** False after an interrupted install, a failed try, or mark-bad. */
  valid: boolean;
  /** Boots since the last mark-good (Bootware's counter). */
  bootCount: number;
  version: string;
  /** Anti-rollback serial of the installed image (image issue). */
  serial: number;
}

export interface BootState {
  status: Status;
  /**
   * A kernel_status value zb does not know, read as "" (snapd resets any
   * unknown value); row Z1 logs it and ends a pending try. Never written.
   */
  unknownStatus: string | null;
  /**
   * A recovery enclave is on the boot partition (zboot/ holds a kernel), so
   * zb_mode=recover and install lead somewhere. Not an env variable: the
   * backend looks when a row asks (commit.ts, withFacts); readState alone assumes one. Never written.
   */
  enclave: boolean;
  /**
   * Each slot's folder holds what the firmware needs to boot it (a kernel and
   * a .dtb file): an automatic switch to a slot without them would boot
   * nothing. Not an env variable: the backend looks when a row asks (commit.ts, withFacts); readState
   * alone assumes both do. Never written.
   */
  bootable: Record<Slot, boolean>;
  committed: Slot;
  trySlot: Slot | null;
  /** Re-arms left for a try lost before its initramfs ran. */
  tryLeft: number;
  /** The slot an install was begun into (S1) and not yet finished (S3). */
  installing: Slot | null;
  bootLimit: number;
  mode: Mode;
  slots: Record<Slot, SlotState>;
  serialFloor: number;
  /** Boots that only rewrote config.txt to match the env (bounded). */
  fixups: number;
  /** Event sequence number, increases with every logged event. */
  seq: number;
  /** The newest events, oldest first: `<seq> <event text>`. */
  log: string[];
}

export const DEFAULTS = { bootLimit: 3, tryRearms: 2, logSize: 8 } as const;

/** Env variable names; the contract between zbunlock, zb and zboot. */
export const VAR = {
  status: "kernel_status",
  committed: "zb_slot",
  trySlot: "zb_try_slot",
  tryLeft: "zb_try_left",
  installing: "zb_installing",
  bootLimit: "zb_boot_limit",
  mode: "zb_mode",
  serialFloor: "zb_serial_floor",
  fixups: "zb_fixups",
  seq: "zb_seq",
  log: "zb_log",
  valid: (s: Slot) => `zb_valid_${s}`,
  bootCount: (s: Slot) => `zb_boot_count_${s}`,
  version: (s: Slot) => `zb_version_${s}`,
  serial: (s: Slot) => `zb_serial_${s}`,
} as const;

/** Log entries are joined with this byte; it never appears in an event text. */
const LOG_SEP = ";";

/**
 * Read the boot state from env vars.
 * @throws {ZbError} STATE_INVALID when a variable holds a value zb does not know
 */
export function readState(vars: ReadonlyMap<string, string>): BootState {
  const get = (name: string) => vars.get(name) ?? "";
  const slots = {} as Record<Slot, SlotState>;
  for (const s of SLOTS) {
    slots[s] = {
      valid: flag(VAR.valid(s), get(VAR.valid(s)), true),
      bootCount: count(VAR.bootCount(s), get(VAR.bootCount(s)), 0),
      version: get(VAR.version(s)),
      serial: count(VAR.serial(s), get(VAR.serial(s)), 0),
    };
  }
  const log = get(VAR.log);
  const rawStatus = get(VAR.status);
  // try/trying name no slot without zb_try_slot (an env edited by hand): unknown, so Z1 resets it
  // rather than N1 re-arming a try of nothing.
  const known = rawStatus === "" || ((rawStatus === "try" || rawStatus === "trying") && get(VAR.trySlot) !== "");
  return {
    status: known ? rawStatus : "",
    unknownStatus: known ? null : rawStatus,
    enclave: true,
    bootable: { a: true, b: true },
    committed: oneOf(VAR.committed, get(VAR.committed), SLOTS, "a"),
    trySlot: get(VAR.trySlot) === "" ? null : oneOf(VAR.trySlot, get(VAR.trySlot), SLOTS, "a"),
    tryLeft: count(VAR.tryLeft, get(VAR.tryLeft), 0),
    installing: get(VAR.installing) === "" ? null : oneOf(VAR.installing, get(VAR.installing), SLOTS, "a"),
    bootLimit: atLeastOne(VAR.bootLimit, count(VAR.bootLimit, get(VAR.bootLimit), DEFAULTS.bootLimit)),
    mode: oneOf(VAR.mode, get(VAR.mode), ["run", "install", "recover"] as const, "run"),
    serialFloor: count(VAR.serialFloor, get(VAR.serialFloor), 0),
    fixups: count(VAR.fixups, get(VAR.fixups), 0),
    seq: count(VAR.seq, get(VAR.seq), 0),
    log: log === "" ? [] : log.split(LOG_SEP),
    slots,
  };
}

/**
 * The env as zb writes it for a state: every variable explicit, so a reader
 * never depends on defaults. Values that equal "nothing" are deleted.
 */
export function stateVars(s: BootState): Map<string, string> {
  const v = new Map<string, string>();
  const put = (k: string, val: string) => {
    if (val !== "") v.set(k, val);
  };
  put(VAR.status, s.status);
  put(VAR.committed, s.committed);
  put(VAR.trySlot, s.trySlot ?? "");
  put(VAR.tryLeft, s.trySlot ? String(s.tryLeft) : "");
  put(VAR.installing, s.installing ?? "");
  put(VAR.bootLimit, String(s.bootLimit));
  put(VAR.mode, s.mode);
  put(VAR.serialFloor, String(s.serialFloor));
  put(VAR.fixups, s.fixups ? String(s.fixups) : "");
  put(VAR.seq, String(s.seq));
  put(VAR.log, s.log.join(LOG_SEP));
  for (const slot of SLOTS) {
    const st = s.slots[slot];
    put(VAR.valid(slot), st.valid ? "1" : "0");
    put(VAR.bootCount(slot), String(st.bootCount));
    put(VAR.version(slot), st.version);
    put(VAR.serial(slot), String(st.serial));
  }
  return v;
}

/** The env changes that turn `before` into `after` (zb-owned variables only). */
export function stateChanges(before: ReadonlyMap<string, string>, after: BootState): Change[] {
  const want = stateVars(after);
  const changes: Change[] = [];
  for (const name of ownedNames()) {
    const next = want.get(name);
    if (before.get(name) !== next) changes.push({ name, value: next ?? null });
  }
  return changes;
}

/** Every variable this module owns; user variables in the env are left alone. */
export function ownedNames(): string[] {
  const names: string[] = [VAR.status, VAR.committed, VAR.trySlot, VAR.tryLeft, VAR.installing, VAR.bootLimit, VAR.mode, VAR.serialFloor, VAR.fixups, VAR.seq, VAR.log];
  for (const s of SLOTS) names.push(VAR.valid(s), VAR.bootCount(s), VAR.version(s), VAR.serial(s));
  return names;
}

/** Append an event to the bounded log. Event texts must not contain ';'. */
export function logEvent(s: BootState, text: string): void {
  // Wraps before it outgrows the nine digits readState accepts (a device that
  // logged a billion events must not turn every later boot into STATE_INVALID).
  s.seq = s.seq >= MAX_COUNT ? 1 : s.seq + 1;
  s.log = [...s.log, `${s.seq} ${text.replaceAll(LOG_SEP, ",")}`].slice(-DEFAULTS.logSize);
}

/**
 * Log an event unless one of the newest `within` entries says the same: a
 * state that repeats at every boot (N10, U5) writes the env once, not at
 * every boot (FAT wear, and a log of eight identical lines says nothing).
 */
export function logOnce(s: BootState, text: string, within = 2): void {
  const t = text.replaceAll(LOG_SEP, ",");
  if (s.log.slice(-within).some((e) => e.slice(e.indexOf(" ") + 1) === t)) return;
  logEvent(s, text);
}

/**
 * Deep copy, so transitions never mutate their input. The boot-medium facts
 * are copied as they are defined: a fact still to be probed ({@link withFacts})
 * stays unprobed in the copy (its answer, once known, is shared).
 */
export function cloneState(s: BootState): BootState {
  const copy = Object.defineProperties({}, Object.getOwnPropertyDescriptors(s)) as BootState;
  copy.bootable = Object.defineProperties({}, Object.getOwnPropertyDescriptors(s.bootable)) as Record<Slot, boolean>;
  copy.log = [...s.log];
  copy.slots = { a: { ...s.slots.a }, b: { ...s.slots.b } };
  return copy;
}

/** How the boot medium answers the two facts rows may ask about (lib/bootloader: hasEnclave, slotBootable). */
export interface FactProbes {
  enclave(): boolean;
  bootable(slot: Slot): boolean;
}

/**
 * `s` with `enclave` and `bootable` answered by `probe`, each when a row's
 * guard first reads it and at most once (a probe that throws is asked again
 * by the next read, and throws again). Why lazy: each probe lists folders and
 * parses config.txt on the FAT, and most boots need none of them: zbunlock's
 * N9, a normal boot, reads neither, and under QEMU's TCG the three probes
 * took 0.08 s of every boot (qemu/README.md, Timings). Rows stay pure: a
 * guard reads a boolean, whenever it is computed.
 */
export function withFacts(s: BootState, probe: FactProbes): BootState {
  const enclave = once(() => probe.enclave());
  const a = once(() => probe.bootable("a"));
  const b = once(() => probe.bootable("b"));
  Object.defineProperty(s, "enclave", { get: enclave, enumerable: true, configurable: true });
  s.bootable = Object.defineProperties({} as Record<Slot, boolean>, {
    a: { get: a, enumerable: true, configurable: true },
    b: { get: b, enumerable: true, configurable: true },
  });
  return s;
}

function once<T>(f: () => T): () => T {
  let done = false;
  let value: T;
  return () => {
    if (!done) {
      value = f();
      done = true;
    }
    return value;
  };
}

export function otherSlot(s: Slot): Slot {
  return s === "a" ? "b" : "a";
}

function oneOf<T extends string>(name: string, value: string, allowed: readonly T[], dflt: T): T {
  if (value === "") return dflt;
  if ((allowed as readonly string[]).includes(value)) return value as T;
  throw invalid(name, value, `one of ${allowed.map((a) => JSON.stringify(a)).join(", ")}`);
}

/** The largest value {@link count} reads: nine decimal digits. */
const MAX_COUNT = 999_999_999;

/** zb_boot_limit=0 would send the first boot of every slot to recovery (N8); `zb init` refuses it too. */
function atLeastOne(name: string, n: number): number {
  if (n < 1) throw invalid(name, String(n), "a number from 1 up");
  return n;
}

function count(name: string, value: string, dflt: number): number {
  if (value === "") return dflt;
  if (!/^\d{1,9}$/.test(value)) throw invalid(name, value, "a decimal number");
  return Number(value);
}

function flag(name: string, value: string, dflt: boolean): boolean {
  if (value === "") return dflt;
  if (value === "1" || value === "0") return value === "1";
  throw invalid(name, value, '"1" or "0"');
}

function invalid(name: string, value: string, expected: string): ZbError {
  return new ZbError("STATE_INVALID", `cannot read boot state: ${name} is ${JSON.stringify(value)}, expected ${expected}`, {
    hint: `fix it with \`zb env set ${name} VALUE\``,
  });
}

/** Parse a slot name from the command line. @throws {ZbError} USAGE */
export function parseSlot(text: string, what: string): Slot {
  if (text === "a" || text === "b") return text;
  throw new ZbError("USAGE", `cannot ${what}: slot must be "a" or "b", not ${JSON.stringify(text)}`);
}

