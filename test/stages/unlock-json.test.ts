/**
 * `zbunlock --json` through dist/zb-x64 on every path a boot can take: the
 * root unlocked, an unlock that fails (U2 reboots, U4 stops, an env that
 * cannot take the failure), a boot that cannot be recorded (goes on, unlocks
 * or fails; a try boot reboots instead), and usage errors. Each run's stdout
 * is what docs/json.md ("zbunlock --json") says: one indented document with
 * the documented fields, followed by the failure line exactly when the exit
 * status is neither 0 nor 12; a usage error prints the failure line alone.
 *
 * The setup is unlock-fixture.ts (see unlock.test.ts).
 */
import { describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { unlockFixture } from "./unlock-fixture.ts";

const { dir, boot, run, hsmConf, withCmdline, zbunlock } = unlockFixture();

type Json = Record<string, unknown>;

/** The transition fields (docs/json.md, "Boot state") plus zbunlock's `unrecorded`. */
const STEP_KEYS = ["dryRun", "effects", "envChanged", "proceed", "reboot", "rebootPerformed", "stale", "state", "trace", "unrecorded", "warnings"];
const FAILURE_KEYS = ["code", "exit", "hint", "message"];

/** The JSON values on stdout, in order: each begins with `{` at the start of a line (the document's own lines are indented). */
function values(stdout: string): Json[] {
  expect(stdout.endsWith("\n")).toBe(true);
  return stdout.split(/^(?=\{)/m).map((v) => JSON.parse(v) as Json);
}

/** Exactly the documented fields of a transition (or of one zbunlock could not make). */
function expectStep(s: Json): void {
  expect(Object.keys(s).sort()).toEqual(STEP_KEYS);
  if (s.unrecorded === null) {
    expect(Object.keys(s.state as Json).sort()).toEqual(["committed", "mode", "status", "trySlot"]);
    return;
  }
  const u = s.unrecorded as Json;
  expect(Object.keys(u).every((k) => FAILURE_KEYS.includes(k))).toBe(true);
  // Plain checks: bun's toMatchObject leaves its matchers in the object it checked, which the rows check again.
  expect([typeof u.code, typeof u.exit, /^cannot /.test(String(u.message))]).toEqual(["string", "number", true]);
  expect([s.trace, s.effects, s.envChanged, s.state]).toEqual([[], [], false, null]);
}

/** The whole document: the boot's step and `unlock`. */
function expectDocument(d: Json): void {
  const { unlock, ...step } = d;
  expect("unlock" in d).toBe(true);
  expectStep(step);
  if (unlock === null) return;
  const u = unlock as Json;
  if (u.ok === true) {
    expect(Object.keys(u).sort()).toEqual(["ok", "opened"]);
    return;
  }
  const { transition, kind, permanent, ok, ...failure } = u;
  expect([ok, typeof kind, typeof permanent]).toEqual([false, "string", "boolean"]);
  expect(Object.keys(failure).every((k) => FAILURE_KEYS.includes(k))).toBe(true);
  if (transition !== null) expectStep(transition as Json);
}

const ids = (s: Json) => (s.trace as { id: string }[]).map((t) => t.id);
const noCreds = () => ["--credentials", join(dir, "no-credentials-here")];
const missingBoot = () => ["--boot", join(dir, "no-boot-partition")];
const zbRoot = (c: string) => `${c} root=/dev/mapper/zb-root`;

interface Row {
  name: string;
  valid?: string;
  args: () => string[];
  cmdline?: (words: string) => string;
  /** While cryptsetup holds the key (the unlock is under way); `restore` puts it back. */
  during?: () => void;
  restore?: () => void;
  code: number;
  /** The failure line's code; null: the document alone. */
  failure: string | null;
  check: (d: Json) => void;
}

const img = join(dir, "root.img");
const envFiles = () => ["zb.env", "zb.env.redund"].map((f) => join(boot, "zb", f));
let savedImg: Buffer | undefined;

const rows: Row[] = [
  {
    name: "the root unlocked (N9): exit 0, the document alone",
    args: () => [],
    code: 0,
    failure: null,
    check: (d) => {
      expect(ids(d)).toEqual(["N9"]);
      expect(d).toMatchObject({ proceed: true, unrecorded: null, unlock: { ok: true, opened: [{ name: "zb-root", device: expect.stringContaining("dev/vdb") }] } });
    },
  },
  {
    name: "credentials that cannot work, slot b valid (U2): both transitions in one document, reboot pending (exit 12), no failure line",
    args: noCreds,
    cmdline: zbRoot,
    code: 12,
    failure: null,
    check: (d) => {
      expect(ids(d)).toEqual(["N9"]);
      const u = d.unlock as Json;
      expect(u).toMatchObject({ ok: false, kind: "credentials", permanent: true, code: "CRED_INVALID", exit: 23 });
      expect(ids(u.transition as Json)).toEqual(["U2"]);
      expect(u.transition).toMatchObject({ reboot: { argument: null }, rebootPerformed: false, proceed: false, unrecorded: null, state: { committed: "b" } });
    },
  },
  {
    name: "the same with nothing else to boot (U4): the boot stops with exit 23, the failure line last",
    valid: "a",
    args: noCreds,
    cmdline: zbRoot,
    code: 23,
    failure: "CRED_INVALID",
    check: (d) => {
      const u = d.unlock as Json;
      expect(ids(u.transition as Json)).toEqual(["U4"]);
      expect(u.transition).toMatchObject({ reboot: null, proceed: false });
    },
  },
  {
    name: "the unlock fails and the env cannot take the failure: the unlock's transition unrecorded, a plain reboot (exit 12)",
    args: () => [],
    during: () => {
      savedImg = readFileSync(img);
      writeFileSync(img, new Uint8Array(1 << 20)); // the open fails
      for (const f of envFiles()) {
        rmSync(f);
        mkdirSync(f); // and neither env copy can be read any more
      }
    },
    restore: () => {
      if (savedImg) writeFileSync(img, savedImg);
      for (const f of envFiles()) rmSync(f, { recursive: true, force: true });
    },
    code: 12,
    failure: null,
    check: (d) => {
      expect(ids(d)).toEqual(["N9"]);
      const u = d.unlock as Json;
      expect(u).toMatchObject({ ok: false, kind: "luks" });
      expect(u.transition).toMatchObject({ unrecorded: { code: expect.any(String) }, reboot: { argument: null }, rebootPerformed: false, proceed: false });
    },
  },
  {
    name: "no boot partition, --no-unlock: the boot goes on unrecorded (exit 0), the document says why",
    args: () => [...missingBoot(), "--no-unlock"],
    code: 0,
    failure: null,
    check: (d) => {
      expect(d).toMatchObject({ unrecorded: { code: "IO", exit: 5, message: expect.stringContaining("cannot read env") }, reboot: null, proceed: true, unlock: null });
    },
  },
  {
    name: "no boot partition: unrecorded, and the root unlocked (exit 0)",
    args: missingBoot,
    code: 0,
    failure: null,
    check: (d) => {
      expect(d).toMatchObject({ unrecorded: { code: "IO" }, proceed: true, unlock: { ok: true, opened: [{ name: "zb-root" }] } });
    },
  },
  {
    name: "unrecorded, and the unlock fails: not recorded either (its transition null), the failure line last",
    args: () => [...missingBoot(), ...noCreds()],
    cmdline: zbRoot,
    code: 23,
    failure: "CRED_INVALID",
    check: (d) => {
      expect(d).toMatchObject({ unrecorded: { code: "IO" }, unlock: { ok: false, code: "CRED_INVALID", transition: null } });
    },
  },
  {
    name: "an unrecorded try boot: a plain reboot instead (exit 12), no unlock",
    args: missingBoot,
    cmdline: (c) => `${c} kernel_status=trying`,
    code: 12,
    failure: null,
    check: (d) => {
      expect(d).toMatchObject({ unrecorded: { code: "IO" }, reboot: { argument: null }, rebootPerformed: false, proceed: false, unlock: null });
    },
  },
];

describe("zbunlock --json: one document per run, the failure line last when the run fails", () => {
  test.each(rows)("$name", async ({ valid, args, cmdline, during, restore, code, failure, check }) => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", valid ?? "a,b", "--force"]).code).toBe(0);
    hsmConf(join(dir, "soft.key"));
    try {
      const r = await withCmdline(cmdline ?? ((c) => c), () => zbunlock([...args(), "--json"], during));
      expect(r.code).toBe(code);
      const v = values(r.out);
      expect(v.length).toBe(failure === null ? 1 : 2);
      expectDocument(v[0]!);
      check(v[0]!);
      if (failure !== null) {
        // One line, the last one: a script reads it as it reads any command's failure.
        expect(r.out.trimEnd().split("\n").at(-1)).toBe(JSON.stringify(v[1]));
        expect(v[1]).toMatchObject({ type: "result", ok: false, code: failure, exit: code, message: expect.stringMatching(/^cannot /) });
      }
    } finally {
      restore?.();
      expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    }
  });

  test.each([
    { name: "--json=1 (the option takes no value)", args: ["--json=1"], says: "option --json takes no value" },
    { name: "--lock-only --json (not a boot: no document)", args: ["--lock-only", "--json"], says: "cannot run zbunlock --lock-only with --json" },
  ])("a usage error, $name: the failure line alone (exit 2), nothing recorded", async ({ args, says }) => {
    expect(run(["init", "--boot", boot, "--slot", "a", "--valid", "a,b", "--force"]).code).toBe(0);
    const before = run(["env", "print", "--boot", boot]).out;
    const r = await zbunlock([...args]);
    expect(r.code).toBe(2);
    const v = values(r.out);
    expect(v).toEqual([{ type: "result", ok: false, code: "USAGE", exit: 2, message: expect.stringContaining(says), hint: expect.any(String) }]);
    expect(run(["env", "print", "--boot", boot]).out).toBe(before);
  });
});
