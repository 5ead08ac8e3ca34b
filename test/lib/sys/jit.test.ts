/**
 * lib/sys/jit.ts and the reboot hand-over of a process without the JIT
 * (lib/sys/reboot.ts). Spawner and syscall are replaced: nothing here can
 * restart the host. The real hand-over runs under QEMU (qemu/bootflow.sh:
 * zbunlock re-arms a try with "0 tryboot" through `zb reboot --raw`).
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { envWithJit, JIT_VAR, jitOff, runWithJit } from "../../../lib/sys/jit.ts";
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

test("envWithJit drops only BUN_JSC_useJIT", () => {
  expect(envWithJit({ PATH: "/bin", BUN_JSC_useJIT: "0", BUN_JSC_other: "1", EMPTY: undefined })).toEqual({ PATH: "/bin", BUN_JSC_other: "1" });
});

test("runWithJit starts this executable with the role as argv[0] and without the variable", () => {
  const saved = process.env[JIT_VAR];
  process.env[JIT_VAR] = "0";
  try {
    const seen: { cmd: string[]; argv0: string; env: Record<string, string> }[] = [];
    const code = runWithJit({ argv0: "zbunlock", args: ["--no-reboot"] }, (cmd, argv0, env) => (seen.push({ cmd, argv0, env }), 7));
    expect(code).toBe(7);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.cmd).toEqual([process.execPath, "--no-reboot"]);
    expect(seen[0]!.argv0).toBe("zbunlock");
    expect(seen[0]!.env[JIT_VAR]).toBeUndefined();
    expect(seen[0]!.env.PATH).toBe(process.env.PATH!);
  } finally {
    if (saved === undefined) delete process.env[JIT_VAR];
    else process.env[JIT_VAR] = saved;
  }
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
