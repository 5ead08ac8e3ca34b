/**
 * The boot-state commands of the running OS: status, mark-good, mark-bad,
 * rollback, reboot, init. Each parses its options, calls lib/, prints.
 */
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { onlyThese, parseArgs, type OptionSpecs, type ParsedArgs } from "../../lib/cli/args.ts";
import { runTransition, type Outcome } from "../../lib/bootstate/commit.ts";
import { TABLE, type Event } from "../../lib/bootstate/machine.ts";
import { EVENT_ACTION } from "../../lib/bootstate/rules.ts";
import { initBoot } from "../../lib/bootstate/init.ts";
import { parseSlot, SLOTS, type Slot } from "../../lib/bootstate/state.ts";
import { requireTryboot } from "../../lib/bootloader/eeprom.ts";
import { bootedFrom } from "../../lib/bootloader/platform.ts";
import { REFERENCE_CMDLINE } from "../../lib/bootloader/piboot.ts";
import { describeErrno, ZbError } from "../../lib/errors.ts";
import { BOOT_OPTIONS, BOOT_OPTIONS_HELP, host, platform, rebooter } from "../common.ts";
import { rebootNow } from "../../lib/sys/reboot.ts";
import { err, out } from "../output.ts";
import { statusJson, statusText } from "./status.ts";

const USAGE: Record<string, string> = {
  status: "zb status [--json]\n\nThe committed and booted slot, the try state, counters, versions, mode and the last events.",
  "mark-good": "zb mark-good [--health-dir DIR]\n\nMark the booted slot good: reset its boot counter; on a try boot, commit the try\n(zb_slot := the try slot, config.txt rewritten, tryboot.txt removed). Idempotent.\nWith --health-dir, every executable in DIR runs first (in name order); one that\nexits non-zero or cannot be run vetoes the mark (exit 11). A missing DIR means no checks.",
  "mark-bad": "zb mark-bad [booted|other]\n\nMark a slot bad. booted (default): on a try boot, the try ends as failed; on the\ncommitted slot, an armed try is dropped and the device hands over to the other\nslot, or to recovery when the other is not valid or its folder holds no kernel or\nno .dtb file (refused when there is no recovery enclave either). other: the other\nslot is invalid and a pending try of it is dropped; refused when the other slot\nis the committed one (confirm this slot first) or when nothing bootable would be\nleft. Takes effect at the next boot.",
  rollback: "zb rollback\n\nSwitch to the other valid slot at the next boot. During a try (armed or running), abandon the\nupdate instead: the tried slot is marked invalid and the committed slot boots next.",
  reboot: "zb reboot [--try SLOT [--rearms N] | --recover | --raw [--param ARG]]\n\nReboot. --try SLOT: try SLOT once through tryboot (the firmware falls back to the\ncommitted slot on any reset; re-armed up to N times, default 2, when the try never\nreaches its initramfs). --recover: enter the zboot enclave through tryboot.\n--raw: reboot now, passing ARG to the firmware (e.g. \"0 tryboot\"), without reading\nor changing the boot state (under systemd the reboot is queued); zbunlock, started\nwithout the JIT, hands its reboots to it.",
  init: "zb init --slot a|b [--valid a,b] [--boot-limit N] [--force]\n\nTake over the boot partition: keep config.txt and cmdline.txt as zb/config.txt and\nzb/cmdline.txt, create the env pair, generate config.txt and the slot cmdlines.\n--valid lists the slots that hold a working system (default: the --slot one).\n--boot-limit N: boots a slot may take without a mark-good before zbunlock rolls\nback (zb_boot_limit, 1 to 999, default 3). Only zb's variables are written: the\nenv's other variables are kept. --force resets an existing zb boot state (an env\nwith zb_slot: its counters, tries and events are lost; without it init refuses,\nexit 2); an env without one (zb env init) needs no --force.",
};

const EXTRA: Record<string, OptionSpecs> = {
  "mark-good": { "health-dir": { value: true } },
  reboot: { try: { value: true }, rearms: { value: true }, recover: {}, raw: {}, param: { value: true } },
  init: { slot: { value: true }, valid: { value: true }, "boot-limit": { value: true }, force: {} },
};


export function bootMain(command: string, argv: string[]): number {
  // A repeated option is refused: `--try a --try b` must not quietly arm b.
  const args = parseArgs(argv, { ...BOOT_OPTIONS, ...(EXTRA[command] ?? {}) }, `zb ${command}`, { repeats: "refuse" });
  if (args.flags.has("help")) {
    // --no-reboot only matters where a reboot can follow (zb reboot; zbunlock has its own help).
    const options = command === "reboot" ? BOOT_OPTIONS_HELP : BOOT_OPTIONS_HELP.split("\n").filter((l) => !l.includes("--no-reboot")).join("\n");
    out(`usage: ${USAGE[command]}\n\nOptions:\n${options}\n`);
    return 0;
  }
  // `zb rollback b` must not roll back to whatever the other slot is and say nothing.
  onlyThese(args, null, command === "mark-bad" ? 1 : 0, `zb ${command}`);
  switch (command) {
    case "status":
      return status(args);
    case "mark-good":
      return markGood(args);
    case "mark-bad":
      return markBad(args);
    case "rollback":
      return transition(args, "rollback", { kind: "rollback" });
    case "reboot":
      return reboot(args);
    case "init":
      return init(args);
  }
  throw new ZbError("INTERNAL", `internal error: no boot command ${command}`);
}

function status(args: ParsedArgs): number {
  const h = host(args);
  out(args.flags.has("json") ? JSON.stringify(statusJson(h), null, 2) + "\n" : statusText(h));
  return 0;
}

function markGood(args: ParsedArgs): number {
  const dir = args.values.get("health-dir");
  if (dir !== undefined) runHealthChecks(dir, args.flags.has("json"));
  const booted = bootedFrom(platform(host(args)));
  return transition(args, "mark-good", { kind: "mark-good", booted: booted.slot, tryboot: booted.tryboot });
}

function markBad(args: ParsedArgs): number {
  const which = args.positional[0] ?? "booted";
  if (which !== "booted" && which !== "other") throw new ZbError("USAGE", `cannot mark bad: expected booted or other, not ${JSON.stringify(which)}`);
  const booted = bootedFrom(platform(host(args)));
  return transition(args, "mark-bad", { kind: "mark-bad", which, booted: booted.slot, tryboot: booted.tryboot });
}

function reboot(args: ParsedArgs): number {
  const trySlot = args.values.get("try");
  const param = args.values.get("param");
  if (args.flags.has("raw")) {
    const extra = ["try", "rearms", "boot"].filter((o) => args.values.has(o)).concat(["recover", "no-reboot", "json"].filter((f) => args.flags.has(f)));
    if (extra.length > 0) throw new ZbError("USAGE", `cannot reboot: --raw takes only --param and --root, not --${extra.join(", --")}`);
    // stderr: a JIT-less zbunlock runs this as its child, and its stdout may be --json.
    err(`zb reboot: rebooting (${param === undefined ? "normal" : `"${param}"`}), boot state untouched\n`);
    rebootNow(param ?? null, args.values.get("root") ?? "/");
    return 0; // under systemd: the reboot job is queued
  }
  if (param !== undefined) throw new ZbError("USAGE", "cannot reboot: --param needs --raw");
  if (trySlot === undefined && args.values.has("rearms")) throw new ZbError("USAGE", "cannot reboot: --rearms needs --try SLOT (without it this would be a plain reboot)");
  if (trySlot !== undefined && args.flags.has("recover")) throw new ZbError("USAGE", "cannot reboot: give --try or --recover, not both");
  if (trySlot !== undefined) {
    const rearms = args.values.has("rearms") ? count(args.values.get("rearms")!, "--rearms") : undefined;
    if (rearms !== undefined && rearms > MAX_REARMS) throw new ZbError("USAGE", `cannot use --rearms ${rearms}: at most ${MAX_REARMS} (each re-arm is a boot that never reached the try's initramfs)`);
    const slot = parseSlot(trySlot, "try");
    // The firmware ignores an os_prefix with no kernel or no .dtb under it: a try of an empty folder boots nothing.
    const h = host(args);
    const missing = h.backend.missingIn(`slot-${slot}/`);
    if (missing !== null) {
      throw new ZbError("STATE_REFUSED", `cannot ${EVENT_ACTION["arm-try"]}: slot-${slot}/ holds ${missing}, so the firmware would boot nothing`, {
        hint: `put the slot's boot files (kernel, initramfs, .dtb files, overlays/) into slot-${slot}/ first`,
      });
    }
    // A Pi 4 bootloader older than tryboot would boot config.txt: N1, N1, N2 would blame the slot.
    requireTryboot(h.sys, h.root, EVENT_ACTION["arm-try"]);
    return transition(args, "reboot", { kind: "arm-try", slot, ...(rearms === undefined ? {} : { rearms }) });
  }
  if (args.flags.has("recover")) {
    const h = host(args);
    requireTryboot(h.sys, h.root, EVENT_ACTION["enter-install"]);
    return transition(args, "reboot", { kind: "enter-install" });
  }
  return transition(args, "reboot", { kind: "reboot" });
}

function init(args: ParsedArgs): number {
  const h = host(args);
  const given = args.values.get("slot");
  if (given === undefined) throw new ZbError("USAGE", "cannot init: --slot a|b is required: the slot whose system runs now (its folder is slot-a/ or slot-b/)");
  const slot = parseSlot(given, "init");
  const valid = (args.values.get("valid") ?? slot).split(",").map((s) => parseSlot(s.trim(), "init"));
  const limit = args.values.has("boot-limit") ? count(args.values.get("boot-limit")!, "--boot-limit") : undefined;
  // 0 would count every boot out before it starts: the first boot would go to recovery.
  if (limit === 0) throw new ZbError("USAGE", "cannot use --boot-limit 0: a slot needs at least one boot to be confirmed");
  const state = initBoot(h.sys, h.bootDir, { slot, valid, force: args.flags.has("force"), ...(limit === undefined ? {} : { bootLimit: limit }) });
  for (const line of initWarnings(h, valid)) err(`zb init: warning: ${line}\n`);
  if (args.flags.has("json")) out(JSON.stringify(statusJson(h), null, 2) + "\n");
  else out(`zb init: ${h.bootDir}: slot ${state.committed} committed; valid: ${SLOTS.filter((s: Slot) => state.slots[s].valid).join(", ")}\n`);
  return 0;
}

/** Run one event through the machine, print what happened, reboot if asked. */
export function transition(args: ParsedArgs, tool: string, event: Event): number {
  const h = host(args);
  const r = rebooter(args, `zb ${tool}`);
  runTransition(h.backend, event, {
    actor: event.kind.startsWith("install") ? "zboot" : "zb",
    reboot: r.reboot,
    announce: (o) => report(args, `zb ${tool}`, o, args.flags.has("no-reboot")),
  });
  return 0;
}

/** The transition document of docs/json.md ("Boot state"). */
export interface TransitionJson {
  dryRun: boolean;
  trace: { id: string; actor: string; when: string; then: string }[];
  effects: Outcome["effects"];
  envChanged: boolean;
  reboot: Outcome["reboot"];
  rebootPerformed: boolean;
  proceed: boolean;
  stale: string | null;
  warnings: string[];
  /** null only in zbunlock's document of a boot it could not record (stages/zbunlock/json.ts). */
  state: { committed: string; status: string; trySlot: string | null; mode: string } | null;
}

/** The rows a transition applied, in order. */
function appliedRows(o: Outcome): (typeof TABLE)[number][] {
  return o.trace.map((id) => TABLE.find((r) => r.id === id)!);
}

/** The document of one transition as `--json` prints it. */
export function transitionJson(o: Outcome, rebootSuppressed: boolean, dryRun = false): TransitionJson {
  return {
    dryRun,
    trace: appliedRows(o).map((r) => ({ id: r.id, actor: r.actor, when: r.when, then: r.then })),
    effects: o.effects,
    envChanged: o.envChanged,
    reboot: o.reboot,
    rebootPerformed: o.reboot !== null && !rebootSuppressed && !dryRun,
    proceed: o.proceed,
    stale: o.stale ? o.stale.message : null,
    warnings: o.warnings,
    state: { committed: o.state.committed, status: o.state.status, trySlot: o.state.trySlot, mode: o.state.mode },
  };
}

/**
 * One line per applied row (or JSON), printed before any reboot. Shared with
 * zbunlock, which passes `json` to take the document into its own (one per
 * run, stages/zbunlock/json.ts) instead of printing it.
 */
export function report(args: ParsedArgs, tool: string, o: Outcome, rebootSuppressed: boolean, dryRun = false, json?: (doc: TransitionJson) => void): void {
  // On stderr whatever the output format: the decision is recorded, a boot file is behind it.
  if (o.stale) err(`${tool}: warning: ${o.stale.message}; the env has the new state, and the next boot rewrites the file (row N5)\n`);
  for (const w of o.warnings) err(`${tool}: warning: ${w}\n`);
  if (args.flags.has("json")) {
    const doc = transitionJson(o, rebootSuppressed, dryRun);
    if (json) json(doc);
    else out(JSON.stringify(doc, null, 2) + "\n");
    return;
  }
  const rows = appliedRows(o);
  for (const r of rows) out(`${tool}: ${dryRun ? "would apply " : ""}${r.id}: ${r.then}\n`);
  if (!o.envChanged && rows.length > 0 && !o.reboot && !dryRun) out(`${tool}: nothing to change\n`);
}

/**
 * Run every executable in `dir`, in name order; the first that fails, or
 * cannot be run at all (a dangling link, no interpreter line, a directory
 * named like a check is skipped), vetoes the mark: a check that was meant to
 * run and did not has not said the system is healthy.
 * @throws {ZbError} HEALTH_VETO, or USAGE/IO when `dir` cannot be listed
 */
function runHealthChecks(dir: string, json = false): void {
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "ENOENT") return; // no checks installed
    if (code === "ENOTDIR") throw new ZbError("USAGE", `cannot run health checks in ${dir}: it is not a directory`);
    throw new ZbError("IO", `cannot run health checks in ${dir}: ${describeErrno(e)}`);
  }
  const veto = (path: string, why: string) =>
    new ZbError("HEALTH_VETO", `cannot mark good: health check ${path} ${why}`, {
      hint: "the slot stays unconfirmed; without mark-good its boot counter keeps rising until rollback",
    });
  for (const name of names) {
    const path = join(dir, name);
    let st: ReturnType<typeof statSync>;
    try {
      st = statSync(path);
    } catch (e) {
      throw veto(path, `cannot run: ${(e as { code?: string }).code === "ENOENT" ? "it is a link to nothing" : describeErrno(e)}`);
    }
    if (!st.isFile() || (st.mode & 0o111) === 0) continue;
    let p: ReturnType<typeof Bun.spawnSync>;
    try {
      // Under --json stdout carries only zb's JSON: a check's own output goes to stderr.
      p = Bun.spawnSync([path], { stdout: json ? 2 : "inherit", stderr: "inherit" });
    } catch (e) {
      const code = (e as { code?: string }).code;
      throw veto(path, `cannot run: ${code === "ENOEXEC" ? "it is not a program the kernel can start (no #! line?)" : describeErrno(e)}`);
    }
    if (p.exitCode !== 0) throw veto(path, `failed (${p.exitCode === null ? `killed by ${p.signalCode ?? "a signal"}` : `exit ${p.exitCode}`})`);
  }
}

/** Most re-arms of a try lost before its initramfs ran (each costs a boot). */
const MAX_REARMS = 10;

/**
 * What `zb init` cannot fix but a boot would trip over: a valid slot whose
 * folder holds no kernel (the firmware then boots nothing), and a root= on
 * the reference command line other than zb's (both slots would mount it).
 */
function initWarnings(h: ReturnType<typeof host>, valid: Slot[]): string[] {
  const lines: string[] = [];
  for (const s of valid) {
    const missing = h.backend.missingIn(`slot-${s}/`);
    if (missing !== null) {
      lines.push(`slot-${s}/ holds ${missing}: move slot ${s}'s kernel, initramfs, .dtb files and overlays/ there before the next reboot, or the firmware boots nothing`);
    }
  }
  const cmdline = join(h.bootDir, REFERENCE_CMDLINE);
  const ref = h.sys.stat(cmdline) ? h.sys.readText(cmdline) : "";
  const root = /(?:^|\s)root=(\S+)/.exec(ref)?.[1];
  if (root !== undefined && root !== "/dev/mapper/zb-root") {
    lines.push(`the command line says root=${root} for both slots: zbunlock opens each slot's own LUKS root as /dev/mapper/zb-root (root=/dev/mapper/zb-root), and with any other root= both slots mount the same file system`);
  }
  return lines;
}

function count(text: string, what: string): number {
  if (!/^\d{1,3}$/.test(text)) throw new ZbError("USAGE", `cannot use ${what} ${JSON.stringify(text)}: expected a small number`);
  return Number(text);
}

