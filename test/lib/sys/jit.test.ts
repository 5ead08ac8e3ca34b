/**
 * lib/sys/jit.ts and the reboot hand-over of a process without the JIT
 * (lib/sys/reboot.ts). Spawner and syscall are replaced: nothing here can
 * restart the host. The real hand-over runs under QEMU (qemu/bootflow.sh:
 * zbunlock re-arms a try with "0 tryboot" through `zb reboot --raw`).
 * tieToParent runs with recorded prctl/getppid stand-ins (the real prctl
 * would tie the test runner to its own parent); the real one, in the
 * binary, is tested in test/stages/jit-child.test.ts.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { envWithJit, JIT_VAR, jitOff, PARENT_VAR, runWithJit, tieToParent, type TieSeams } from "../../../lib/sys/jit.ts";
import { rebootNow } from "../../../lib/sys/reboot.ts";
import { ZbError } from "../../../lib/errors.ts";

describe("jitOff: JavaScriptCore's boolean spellings", () => {
  const rows: { value: string | undefined; off: boolean }[] = [
    { value: undefined, off: false },
    { value: "0", off: true },
    { value: "false", off: true },
    { value: "FALSE", off: true },
    { value: "no", off: true },
    { value: " 0 ", off: false }, // Bun refuses to start with it: this process cannot see it
    { value: "1", off: false },
    { value: "true", off: false },
    { value: "", off: false },
  ];
  test.each(rows)("BUN_JSC_useJIT=$value → off $off", ({ value, off }) => {
    expect(jitOff(value === undefined ? {} : { [JIT_VAR]: value })).toBe(off);
  });
});

test("envWithJit drops BUN_JSC_useJIT and a ZB_JIT_PARENT meant for this process, nothing else", () => {
  expect(envWithJit({ PATH: "/bin", BUN_JSC_useJIT: "0", BUN_JSC_other: "1", ZB_JIT_PARENT: "17", EMPTY: undefined })).toEqual({ PATH: "/bin", BUN_JSC_other: "1" });
});

describe("runWithJit starts this executable with the role as argv[0], without BUN_JSC_useJIT; tied, with this PID as ZB_JIT_PARENT", () => {
  const rows: { name: string; tied: boolean | undefined; parent: string | undefined }[] = [
    { name: "untied (zb reboot --raw): no ZB_JIT_PARENT", tied: undefined, parent: undefined },
    { name: "tied (zbunlock's child): ZB_JIT_PARENT is this process", tied: true, parent: String(process.pid) },
  ];
  test.each(rows)("$name", ({ tied, parent }) => {
    const saved = { jit: process.env[JIT_VAR], parent: process.env[PARENT_VAR] };
    process.env[JIT_VAR] = "0";
    process.env[PARENT_VAR] = "1"; // this process's own (stale) tie: never passed on
    try {
      const seen: { cmd: string[]; argv0: string; env: Record<string, string> }[] = [];
      const code = runWithJit({ argv0: "zbunlock", args: ["--no-reboot"], ...(tied === undefined ? {} : { tied }) }, (cmd, argv0, env) => (seen.push({ cmd, argv0, env }), 7));
      expect(code).toBe(7);
      expect(seen).toHaveLength(1);
      expect(seen[0]!.cmd).toEqual([process.execPath, "--no-reboot"]);
      expect(seen[0]!.argv0).toBe("zbunlock");
      expect(seen[0]!.env[JIT_VAR]).toBeUndefined();
      expect(seen[0]!.env[PARENT_VAR]).toBe(parent as never);
      expect(seen[0]!.env.PATH).toBe(process.env.PATH!);
    } finally {
      for (const [k, v] of [[JIT_VAR, saved.jit], [PARENT_VAR, saved.parent]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});

describe("tieToParent: the death signal first, then the parent checked", () => {
  function recorder(o: { prctl?: number; ppid: number }): TieSeams & { calls: string[] } {
    const calls: string[] = [];
    return {
      calls,
      setDeathSignal: (sig) => (calls.push(`prctl(PR_SET_PDEATHSIG, ${sig})`), o.prctl ?? 0),
      parentPid: () => (calls.push("getppid()"), o.ppid),
    };
  }
  const rows: { name: string; before: { var: string | undefined; prctl?: number; ppid: number; jit?: string }; after: { tied: boolean | null; error: RegExp | null; calls: string[] } }[] = [
    { name: "no ZB_JIT_PARENT (tpm2: no child): nothing called", before: { var: undefined, ppid: 500 }, after: { tied: false, error: null, calls: [] } },
    { name: "the parent that started it: tied", before: { var: "500", ppid: 500 }, after: { tied: true, error: null, calls: ["prctl(PR_SET_PDEATHSIG, 9)", "getppid()"] } },
    {
      name: "the parent died before the prctl (reparented to 1): NOT_STARTED",
      before: { var: "500", ppid: 1 },
      after: { tied: null, error: /^cannot go on: the process that started this one \(PID 500\) is gone \(the parent is now PID 1\); did nothing$/, calls: ["prctl(PR_SET_PDEATHSIG, 9)", "getppid()"] },
    },
    { name: "prctl fails: INTERNAL, the parent not even checked", before: { var: "500", prctl: -1, ppid: 500 }, after: { tied: null, error: /^internal error: cannot tie this process to its parent: prctl\(PR_SET_PDEATHSIG\) failed$/, calls: ["prctl(PR_SET_PDEATHSIG, 9)"] } },
    // Before: a stray variable stopped a zbunlock started without the JIT (the initramfs's way) with INTERNAL (no bun:ffi).
    { name: "without the JIT (not runWithJit's child): a stray variable is ignored, nothing called", before: { var: "500", ppid: 1, jit: "0" }, after: { tied: false, error: null, calls: [] } },
    ...["", "0", "-5", "12x", "0x1f", " 500"].map((v) => ({
      name: `ZB_JIT_PARENT=${JSON.stringify(v)}: USAGE, nothing called`,
      before: { var: v, ppid: 500 },
      after: { tied: null, error: /^cannot tie this process to its parent: ZB_JIT_PARENT=.* is not a process ID$/, calls: [] },
    })),
  ];
  test.each(rows)("$name", ({ before, after }) => {
    const jit = before.jit === undefined ? {} : { [JIT_VAR]: before.jit };
    const env: Record<string, string | undefined> = { PATH: "/bin", ...jit, ...(before.var === undefined ? {} : { [PARENT_VAR]: before.var }) };
    const s = recorder(before);
    let tied: boolean | null = null;
    let thrown: unknown = null;
    try {
      tied = tieToParent(env, s);
    } catch (e) {
      thrown = e;
    }
    expect(tied).toBe(after.tied);
    if (after.error) {
      expect(thrown).toBeInstanceOf(ZbError);
      expect((thrown as Error).message).toMatch(after.error);
    } else expect(thrown).toBeNull();
    expect(s.calls).toEqual(after.calls);
    // Read once and removed: the process's own children (cryptsetup, mount) never see it.
    expect(env).toEqual({ PATH: "/bin", ...jit });
  });
});

describe("rebootNow without the JIT hands over to `zb reboot --raw`", () => {
  // ZB_NO_REBOOT=1 stays set: it guards the real exits, which the stand-ins replace.
  const saved = { jit: process.env[JIT_VAR], noReboot: process.env.ZB_NO_REBOOT };
  process.env.ZB_NO_REBOOT = "1";
  afterEach(() => {
    if (saved.jit === undefined) delete process.env[JIT_VAR];
    else process.env[JIT_VAR] = saved.jit;
  });
  afterAll(() => {
    if (saved.noReboot === undefined) delete process.env.ZB_NO_REBOOT;
    else process.env.ZB_NO_REBOOT = saved.noReboot;
  });
  const noSyscall = (arg: string | null): never => {
    throw new Error(`the test would have called reboot(2) with ${JSON.stringify(arg)}`);
  };
  // Never "/": a host booted with systemd would take `systemctl reboot` before any seam.
  const root = mkdtempSync(join(tmpdir(), "zb-jit-root-"));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const rows: { arg: string | null; jit: string | undefined; code: number; args: string[] | null; error: RegExp }[] = [
    { arg: "0 tryboot", jit: "0", code: 1, args: ["reboot", "--raw", "--param", "0 tryboot", "--root", root], error: /cannot reboot: `zb reboot --raw --param 0 tryboot --root \S+` returned \(exit 1\)/ },
    { arg: null, jit: "false", code: 2, args: ["reboot", "--raw", "--root", root], error: /returned \(exit 2\)/ },
    // With the JIT on nothing is spawned: the syscall path is taken (replaced here).
    { arg: "0 tryboot", jit: undefined, code: 0, args: null, error: /would have called reboot\(2\) with "0 tryboot"/ },
  ];
  test.each(rows)("arg $arg, BUN_JSC_useJIT=$jit", ({ arg, jit, code, args, error }) => {
    expect(process.env.ZB_NO_REBOOT).toBe("1");
    if (jit === undefined) delete process.env[JIT_VAR];
    else process.env[JIT_VAR] = jit;
    const spawned: { cmd: string[]; argv0: string; env: Record<string, string> }[] = [];
    let thrown: unknown;
    try {
      rebootNow(arg, root, { spawn: (cmd, argv0, env) => (spawned.push({ cmd, argv0, env }), code), syscall: noSyscall });
    } catch (e) {
      thrown = e;
    }
    expect(String((thrown as Error)?.message)).toMatch(error);
    if (args === null) {
      expect(spawned).toEqual([]);
      return;
    }
    expect(thrown).toBeInstanceOf(ZbError);
    expect((thrown as ZbError).code).toBe("IO");
    expect(spawned.map((s) => [s.cmd.slice(1), s.argv0, s.env[JIT_VAR]])).toEqual([[args, "zb", undefined]]);
  });

  test("ZB_NO_REBOOT=1 guards the real child: refused before anything is spawned", () => {
    process.env[JIT_VAR] = "0";
    // No spawn stand-in: the real one would start this executable; the guard stops it first.
    expect(() => rebootNow("0 tryboot", root, { syscall: noSyscall })).toThrow(/cannot reboot with "0 tryboot": ZB_NO_REBOOT=1 is set/);
  });
});
