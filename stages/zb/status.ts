/**
 * `zb status`: the boot state, the booted slot and what the firmware will
 * read next. The JSON is a stable contract (docs/boot-flow.md, "zb status").
 */
import { readState, SLOTS, VAR, type Mode, type SlotState, type Status } from "../../lib/bootstate/state.ts";
import { asText } from "../../lib/env/codec.ts";
import { prefixTarget } from "../../lib/bootloader/piconfig.ts";
import { bootedFrom } from "../../lib/bootloader/platform.ts";
import { platformOrNull, type Host } from "../common.ts";

export interface FirmwareFile {
  osPrefix: string;
  target: "a" | "b" | "zboot" | null;
  cmdline: string;
}

export interface StatusJson {
  version: 1;
  /** The env holds zb's boot state (zb_slot, which `zb init` writes); false: every value below is a default. */
  initialized: boolean;
  committed: "a" | "b";
  booted: { slot: "a" | "b" | null; tryboot: boolean; dtTryboot: boolean | null; dtPartition: number | null } | null;
  status: Status;
  try: { slot: "a" | "b"; left: number } | null;
  mode: Mode;
  bootLimit: number;
  serialFloor: number;
  slots: Record<"a" | "b", SlotState>;
  /** `behind`: generated files that do not yet hold an edit of zb/config.txt or zb/cmdline.txt. */
  firmware: { config: FirmwareFile | null; tryboot: FirmwareFile | null; behind: string[] };
  events: { seq: number | null; text: string }[];
}

export function statusJson(h: Host): StatusJson {
  const vars = h.backend.readVars();
  const s = readState(vars);
  const sel = h.backend.selections();
  const file = (f: { osPrefix: string; cmdline: string } | null): FirmwareFile | null =>
    f ? { osPrefix: f.osPrefix, target: prefixTarget(f.osPrefix), cmdline: f.cmdline } : null;
  return {
    version: 1,
    initialized: vars.has(VAR.committed),
    committed: s.committed,
    booted: booted(h),
    status: s.status,
    try: s.trySlot ? { slot: s.trySlot, left: s.tryLeft } : null,
    mode: s.mode,
    bootLimit: s.bootLimit,
    serialFloor: s.serialFloor,
    // The env holds bytes (latin1 strings): free text is shown as UTF-8, an invalid byte as U+FFFD (as `zb env print --json`).
    slots: { a: { ...s.slots.a, version: asText(s.slots.a.version) }, b: { ...s.slots.b, version: asText(s.slots.b.version) } },
    firmware: { config: file(sel.config), tryboot: file(sel.tryboot), behind: h.backend.behind() },
    events: s.log.map((e) => parseEvent(asText(e))),
  };
}

/** The same facts as text: rendered from the JSON, so both always agree. */
export function statusText(h: Host): string {
  const j = statusJson(h);
  const fw = j.firmware;
  const lines = [
    // An env without zb's variables (made by `zb env init`, or by hand) reads as all defaults: say so.
    ...(j.initialized ? [] : ["boot state:     not set up (the env has no zb_slot; `zb init --slot a|b` sets it up): defaults below"]),
    `committed slot: ${j.committed}${j.mode !== "run" ? `   mode: ${j.mode}` : ""}`,
    `booted slot:    ${j.booted?.slot ?? "unknown"}${j.booted?.tryboot ? " (try boot)" : ""}`,
    `try:            ${j.try ? `slot ${j.try.slot}, kernel_status=${j.status}, ${j.try.left} re-arms left` : "none"}`,
    `next boot:      ${fw.config?.target ?? "?"}${fw.tryboot ? `   (tryboot.txt: ${fw.tryboot.target ?? "?"})` : ""}`,
    ...(fw.behind.length
      ? [`behind:         ${fw.behind.join(", ")} lag behind zb/config.txt or zb/cmdline.txt: an edit there takes effect when zb next writes them (an update's try and commit, a rollback, or \`zb init --force\`)`]
      : []),
    ...SLOTS.map((x) => {
      const st = j.slots[x];
      return `slot ${x}:         ${st.valid ? "valid" : "INVALID"}, boots ${st.bootCount}/${j.bootLimit}${st.version ? `, version ${st.version}` : ""}${st.serial ? `, serial ${st.serial}` : ""}`;
    }),
    `serial floor:   ${j.serialFloor}`,
    "events:",
    ...(j.events.length ? j.events.map((e) => `  ${e.seq ?? "-"} ${e.text}`) : ["  (none)"]),
  ];
  return lines.join("\n") + "\n";
}

/** The booted slot from /proc/cmdline; null fields when not booted through zb. */
function booted(h: Host): StatusJson["booted"] {
  const p = platformOrNull(h);
  if (!p) return null;
  let slot: "a" | "b" | null = null;
  let tryboot = false;
  try {
    ({ slot, tryboot } = bootedFrom(p));
  } catch {
    slot = null;
  }
  return { slot, tryboot, dtTryboot: p.dtTryboot, dtPartition: p.dtPartition };
}

/** `<seq> <text>` as zb logs it; an entry written by hand without its number keeps all its text, seq null. */
function parseEvent(e: string): { seq: number | null; text: string } {
  const m = /^(\d{1,15}) (.*)$/s.exec(e);
  return m ? { seq: Number(m[1]), text: m[2]! } : { seq: null, text: e };
}
