/**
 * The boot-state power-cut harness (docs/boot-flow.md, "Power-safe order"),
 * shared by test/lib/bootstate/powercut-*.test.ts. A scenario brings a fresh
 * device to the state just before one transition, which is then run once
 * without a cut and once per cut point: before each write, fsync, rename,
 * unlink and mkdir, and inside each write at every 512-byte offset
 * (test/fakes/powercut.ts).
 *
 * The uncut run must take exactly the scenario's rows to exactly its new
 * state, and its next boot must reach the scenario's target. After each
 * cut the tryboot flag is gone (it is volatile), and what the cut left must
 * hold the documented invariants ({@link checkCut}); then the next power-on
 * must reach the new target when the env already holds the new state, the
 * old target when it does not.
 */
import { expect } from "bun:test";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { runTransition } from "../../../lib/bootstate/commit.ts";
import type { Actor, Event } from "../../../lib/bootstate/machine.ts";
import { readState, type BootState, type Slot } from "../../../lib/bootstate/state.ts";
import { prefixTarget, readSelection } from "../../../lib/bootloader/piconfig.ts";
import type { Sys } from "../../../lib/sys/sys.ts";
import { TempLockSys } from "../../fakes/envlock.ts";
import { CuttingSys, cutPoints, PowerCut, type CutPlan } from "../../fakes/powercut.ts";
import { Device } from "../../fakes/device.ts";

/** Where a boot ends: a running slot, or the enclave. */
export type Where = Slot | "zboot";

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] };

export interface Scenario {
  /** Starts with the row under test. */
  name: string;
  /** Device options (enclave: false leaves zboot/ empty). */
  device?: { enclave?: boolean };
  /** Bring a fresh device to the state just before the transition (no cuts). */
  setup(d: Device): void;
  /** The transition: the next power-on (zbunlock's boot event), or an actor's event in the running system. */
  act: { powerOn: true } | { actor: Actor; event: Event };
  /** The rows the uncut transition takes, in order. */
  rows: string[];
  /** Fields of the state the uncut transition writes. */
  state: DeepPartial<BootState>;
  /** Where the device runs next without a cut (the flag as the transition left it). */
  uncut: Where;
  /** Where the first power-on after a cut runs: `old` while the env holds the old state, `new` once it holds the new one. */
  cut: { old: Where; new: Where };
}

/**
 * The host Sys of the scenarios. Its fsync does nothing: a cut drops every
 * operation after it on the real file system, so the host's fsync would add
 * nothing but minutes; CuttingSys still counts each fsync as a cut point.
 */
class NoSyncSys extends TempLockSys {
  override fsync(): void {}
}
const host = new NoSyncSys();
/** The devices of the scenario running now: removed when it ends (runScenario). */
const devices: Device[] = [];

function fresh(s: Scenario): Device {
  const d = new Device(host, s.device);
  devices.push(d);
  s.setup(d);
  return d;
}

// ---- setups shared by the scenarios

/** Boot until slot a (or whatever config.txt says) runs. */
export const running = (d: Device): void => void d.bootUntilRunning();
/** A running a that armed a try of b (`zb reboot --try b`): the flag is set. */
export const armed = (d: Device, rearms?: number): void => {
  d.bootUntilRunning();
  d.zb({ kind: "arm-try", slot: "b", ...(rearms === undefined ? {} : { rearms }) });
};
/** The try of b running (T1 done, kernel_status=trying). */
export const trying = (d: Device): void => {
  armed(d);
  d.bootUntilRunning();
};
/** Write env variables as a hand edit (or an older zb) would. */
export const setVars = (d: Device, vars: Record<string, string>): void =>
  d.backend(host).writeVars(Object.entries(vars).map(([name, value]) => ({ name, value })));
/** Write a tryboot.txt that selects `slot`, whatever the env says. */
export const writeTryboot = (d: Device, slot: Slot): void => d.backend(host).writeTryboot({ ...d.state(), mode: "run", trySlot: slot });

// ---- what a device holds

interface Snapshot {
  /** The env's variables, sorted (for comparing). */
  env: string;
  state: BootState;
  config: string;
  tryboot: string | null;
}

/** Reads the env (it must decode) and the files the firmware reads. */
function snapshot(d: Device): Snapshot {
  const vars = d.backend(host).readVars();
  const file = (name: string) => (existsSync(join(d.boot, name)) ? readFileSync(join(d.boot, name), "utf8") : null);
  return { env: JSON.stringify([...vars].sort()), state: readState(vars), config: file("config.txt")!, tryboot: file("tryboot.txt") };
}

/** What a config file selects. */
const selects = (text: string): Where | null => prefixTarget(readSelection(text).osPrefix);
/** What config.txt should select for a state. */
const envTarget = (s: BootState): Where => (s.mode === "recover" ? "zboot" : s.committed);
/** The env still wants tryboot.txt: a try not yet reached, or the enclave being entered. */
const wantsTryboot = (s: BootState): boolean => s.status === "try" || s.mode === "install";

/** Run the transition on `d` through `sys` (a PowerCut escapes); `ran` is where a power-on that booted on runs. */
function perform(d: Device, s: Scenario, sys: Sys): { trace: string[]; ran: Where | null } {
  d.sys = sys;
  try {
    if ("powerOn" in s.act) {
      const rec = d.powerOn();
      return { trace: rec.outcome?.trace ?? [], ran: rec.end === "running" ? rec.fw.target : null };
    }
    const o = runTransition(d.backend(), s.act.event, { actor: s.act.actor, reboot: (arg) => d.fw.reboot(arg) });
    return { trace: o.trace, ran: null };
  } finally {
    d.sys = host;
  }
}

/**
 * The invariants of the power-safe order at a cut, given the device before
 * the transition and after it ran uncut. Returns what is violated.
 */
function checkCut(before: Snapshot, after: Snapshot, at: Snapshot): string[] {
  const bad: string[] = [];
  // Step 2, the commit point: a redundant-pair save is atomic.
  const envNew = at.env === after.env;
  if (!envNew && at.env !== before.env) return [`the env is neither the old nor the new one: ${at.env}`];
  // Generated files are replaced atomically: each is its old or its new self.
  if (at.config !== before.config && at.config !== after.config) bad.push("config.txt is neither the old nor the new one");
  if (at.tryboot !== before.tryboot && at.tryboot !== after.tryboot) bad.push("tryboot.txt is neither the old nor the new one");
  if (envNew) {
    // Step 3 after 2: config.txt may still be stale (N5 repairs it) but then it is the old file.
    if (at.config !== before.config && selects(at.config) !== envTarget(at.state)) bad.push(`config.txt selects ${selects(at.config)}, the env ${envTarget(at.state)}`);
    // Step 1 before 2: a tryboot.txt the transition writes is there once the env wants it.
    if (after.tryboot !== null && after.tryboot !== before.tryboot && at.tryboot !== after.tryboot) bad.push("the env is committed but the new tryboot.txt is not written");
  } else {
    // Step 3 after 2: config.txt is never written ahead of the env.
    if (at.config !== before.config) bad.push(`config.txt was rewritten (selects ${selects(at.config)}) before the env was`);
    // Step 4 after 2: tryboot.txt is never removed ahead of the env.
    if (before.tryboot !== null && at.tryboot === null) bad.push("tryboot.txt was removed before the env was written");
  }
  if (wantsTryboot(at.state) && at.tryboot === null) bad.push(`the env wants a tryboot.txt (kernel_status=${at.state.status}, zb_mode=${at.state.mode}) and there is none`);
  return bad;
}

/**
 * The uncut run, then every cut point: the whole check of one scenario.
 * @returns the number of cut points tried
 */
export function runScenario(s: Scenario): number {
  // Removed here, scenario by scenario: an afterAll in this shared module would be registered in
  // the first test file that imports it only, and the other files' devices stayed in /tmp.
  try {
    return cutScenario(s);
  } finally {
    for (const d of devices.splice(0)) rmSync(d.boot, { recursive: true, force: true });
  }
}

function cutScenario(s: Scenario): number {
  // Uncut: exactly the rows, exactly the new state, and the next boot reaches the target.
  const d = fresh(s);
  const before = snapshot(d);
  const dry = new CuttingSys(host, { never: true });
  const done = perform(d, s, dry);
  expect(done.trace).toEqual(s.rows);
  const after = snapshot(d);
  expect(after.env).not.toBe(before.env); // every scenario's transition writes
  expect(after.state).toMatchObject(s.state);
  expect(selects(after.config)).toBe(envTarget(after.state));
  expect(done.ran ?? d.bootUntilRunning(8).fw.target).toBe(s.uncut);
  expect(dry.ops.length).toBeGreaterThan(0);

  const plans: CutPlan[] = cutPoints(dry.ops);
  const ends = new Map<string, number>();
  for (const plan of plans) {
    const c = fresh(s);
    const fail = (why: string) => {
      throw new Error(`${s.name}: after the cut ${JSON.stringify(plan)}: ${why}; boots: ${c.trace()}`);
    };
    try {
      perform(c, s, new CuttingSys(host, plan));
    } catch (e) {
      if (!(e instanceof PowerCut)) throw e;
    }
    c.fw.powerCut();
    const at = snapshot(c);
    const bad = checkCut(before, after, at);
    if (bad.length > 0) fail(bad.join("; "));
    const envNew = at.env === after.env;
    const want = envNew ? s.cut.new : s.cut.old;
    const on = c.bootUntilRunning(8).fw.target;
    if (on !== want) fail(`the env holds the ${envNew ? "new" : "old"} state, so the next boot must run ${want}, but it runs ${on}`);
    if (on !== "zboot" && !c.state().slots[on].valid) fail(`it runs ${on}, which the env holds invalid`);
    staleTryboot(c, on, fail);
    const key = `${envNew ? "new" : "old"} env → ${on}`;
    ends.set(key, (ends.get(key) ?? 0) + 1);
  }
  console.log(`  ${s.name}: ${dry.ops.length} operations, ${plans.length} cut points: ${[...ends].map(([k, n]) => `${k} ×${n}`).join(", ")}`);
  return plans.length;
}

/**
 * A tryboot.txt the env no longer wants (a cut before step 4, or between
 * steps 1 and 2) is read only under the flag. zb sets it only after writing
 * the file anew (A1, I1); when something else sets it (`zb reboot --raw
 * --param "0 tryboot"`) and the file selects a slot, that slot's zbunlock
 * removes the file (T4) and the same slot runs again. One that selects
 * zboot/ is the enclave's to handle (no zbunlock runs there): not checked.
 */
function staleTryboot(d: Device, on: Where, fail: (why: string) => never): void {
  const state = d.state();
  const tryboot = join(d.boot, "tryboot.txt");
  if (on === "zboot" || state.status !== "" || state.mode !== "run" || !existsSync(tryboot)) return;
  if (selects(readFileSync(tryboot, "utf8")) === "zboot") return;
  // The boot was healthy (zb-mark-good.service): the extra boots below must not run into the boot limit.
  if (state.committed === on) d.zb({ kind: "mark-good", booted: on, tryboot: false });
  d.fw.reboot("0 tryboot");
  const again = d.bootUntilRunning(8).fw.target;
  if (again !== on) fail(`a stale tryboot.txt under the flag led to ${again}, not back to ${on}`);
  if (existsSync(tryboot)) fail("a stale tryboot.txt survived a try boot");
}
