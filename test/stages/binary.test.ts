/**
 * The compiled multi-call binary (dist/zb-x64, built by `bun build.ts`):
 * dispatch on argv[0] and on the first argument, usage exits, and `zb env`
 * end to end on real files. Runs the binary as users do, through links,
 * with a temp folder on /var/lock (fakes/envlock.ts): the env lock it takes
 * is not the host's.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { withTempVarLock } from "../fakes/envlock.ts";
import { buildZymkeyStub } from "../peers/zymkey-stub.ts";

const BIN = resolve(import.meta.dir, "../../dist/zb-x64");
const ARM = resolve(import.meta.dir, "../../dist/zb-arm64");
let dir = "";

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  dir = mkdtempSync(join(tmpdir(), "zb-bin-"));
  for (const n of ["zb", "zbcli", "zbunlock", "zboot", "fw_printenv", "fw_setenv"]) symlinkSync(BIN, join(dir, n));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(name: string, args: readonly string[], stdin?: string) {
  const p = Bun.spawnSync(withTempVarLock([join(dir, name), ...args]), { stdin: stdin === undefined ? "ignore" : Buffer.from(stdin), env: { ...process.env, ZB_NO_REBOOT: "1" } });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

describe("dispatch", () => {
  test.each([
    { name: "zbunlock", args: ["--root", "/nonexistent"], code: 5, err: /cannot read \/nonexistent\/proc\/cmdline/ },
    { name: "zboot", args: [], code: 2, err: /cannot recover: the recovery stage is not implemented/ },
    { name: "zb", args: ["unlock", "--bogus"], code: 2, err: /cannot run zbunlock: unknown option --bogus/ },
    { name: "zb", args: ["recover"], code: 2, err: /usage: zboot/ },
    { name: "zbcli", args: ["bogus"], code: 2, err: /cannot run zb: unknown command "bogus"/ },
    { name: "zb", args: [], code: 2, err: /cannot run zb: no command given/ },
    { name: "zb", args: ["env", "print", "--bogus"], code: 2, err: /unknown option --bogus/ },
    // zb reboot --raw: the reboot a JIT-less zbunlock hands over (lib/sys/jit.ts); ZB_NO_REBOOT=1 stops it here
    { name: "zb", args: ["reboot", "--raw", "--param", "0 tryboot"], code: 2, err: /cannot reboot with "0 tryboot": ZB_NO_REBOOT=1 is set/ },
    { name: "zb", args: ["reboot", "--param", "0 tryboot"], code: 2, err: /cannot reboot: --param needs --raw/ },
    { name: "zb", args: ["reboot", "--raw", "--recover"], code: 2, err: /cannot reboot: --raw takes only --param and --root, not --recover/ },
    { name: "zb", args: ["reboot", "--raw", "--no-reboot"], code: 2, err: /cannot reboot: --raw takes only --param and --root, not --no-reboot/ },
    { name: "zb", args: ["reboot", "--raw", "--try", "b", "--json"], code: 2, err: /not --try, --json/ },
    { name: "zb", args: ["reboot", "--raw", "now"], code: 2, err: /cannot run zb reboot: unexpected argument "now"/ },
  ])("$name $args → exit $code", ({ name, args, code, err }) => {
    const r = run(name, args);
    expect(r.err).toMatch(err);
    expect(r.code).toBe(code);
  });

  test.each([
    { name: "zb", args: ["--help"], out: /usage: zb <command>/ },
    { name: "zbunlock", args: ["--help"], out: /usage: zbunlock/ },
    { name: "zb", args: ["recover", "--help"], out: /usage: zboot/ },
    { name: "zb", args: ["env", "set", "--help"], out: /--script FILE\|-/ },
    { name: "fw_setenv", args: ["--help"], out: /Usage fw_setenv/ },
    { name: "zbcli", args: ["version"], out: /^zb \d+\.\d+\.\d+/ },
    // Every option of a usage line is described below it, and help is never the version.
    { name: "zbunlock", args: ["--help"], out: /\n  --credentials DIR  the credentials are in DIR\/zb\/credentials/ },
    { name: "zb", args: ["init", "--help"], out: /\n--boot-limit N: boots a slot may take without a mark-good[^]*--force resets an existing zb boot state[^]*needs no --force/ },
    { name: "zb", args: ["version", "--help"], out: /^usage: zb version\n/ },
    { name: "zb", args: ["help", "version"], out: /^usage: zb version\n/ },
    { name: "zb", args: ["--help"], out: /`zb help <command>`/ },
  ])("$name $args prints usage, exit 0", ({ name, args, out }) => {
    const r = run(name, args);
    expect(r.out).toMatch(out);
    expect(r.code).toBe(0);
  });

  test.each([
    { cmd: "reboot", listed: true },
    { cmd: "status", listed: false },
    { cmd: "init", listed: false },
    { cmd: "mark-good", listed: false },
  ])("zb $cmd --help lists --no-reboot only where a reboot can follow: $listed", ({ cmd, listed }) => {
    const r = run("zb", [cmd, "--help"]);
    expect(r.code).toBe(0);
    expect(r.out.includes("--no-reboot")).toBe(listed);
  });

  // initramfs-hooks/scripts/local-top/zb starts zbunlock with BUN_JSC_useJIT=0
  // (lib/sys/jit.ts). Bun calls the BUN_JSC_* variables unstable: a Bun upgrade
  // that dropped or renamed the option must fail here, not at boot.
  test("BUN_JSC_useJIT=0 starts the binary and turns the JIT off (bun:ffi then refuses, as lib/sys/jit.ts expects)", () => {
    const stub = join(dir, "libzk_stub.so");
    buildZymkeyStub(stub);
    const probe = (env: Record<string, string>) => {
      const p = Bun.spawnSync([BIN, "hsm", "probe", "--backend", "zymkey", "--zymkey-library", stub, "--json"], { env: { ...process.env, ZB_NO_REBOOT: "1", ...env } });
      return JSON.parse(p.stdout.toString() || "{}").backends?.[0]?.detail ?? p.stderr.toString();
    };
    expect(probe({})).toContain("zkOpen failed"); // with the JIT: the stub's function ran
    expect(probe({ BUN_JSC_useJIT: "0" })).toContain("bun:ffi requires the JIT");
    const v = Bun.spawnSync([BIN, "version"], { env: { ...process.env, BUN_JSC_useJIT: "0" } });
    expect([v.exitCode, v.stdout.toString()]).toEqual([0, expect.stringMatching(/^zb \d+\.\d+\.\d+/)]);
  });

  // The initramfs scripts also set BUN_GC_TIMER_DISABLE=1: Bun's idle timer
  // would run a full collection about 1 s after the start, in the middle of
  // the unlock (docs/boot-flow.md, "Process environment"). The same check
  // against an upgrade that renames it; BUN_BE_BUN=1 runs the binary as bun.
  test("BUN_GC_TIMER_DISABLE=1 stops the idle collection that runs after 1 s", () => {
    const script = 'globalThis.keep = Array.from({ length: 20000 }, (_, i) => ({ i, s: "x" + i })); await Bun.sleep(1600);';
    const collections = (env: Record<string, string>) => {
      const p = Bun.spawnSync([BIN, "-e", script], { env: { ...process.env, BUN_BE_BUN: "1", BUN_JSC_useJIT: "0", BUN_JSC_logGC: "1", ...env }, stderr: "pipe", stdout: "pipe" });
      expect(p.exitCode).toBe(0);
      return (`${p.stdout}${p.stderr}`.match(/=> (Full|Eden)Collection/g) ?? []).length;
    };
    expect(collections({ BUN_GC_TIMER_DISABLE: "" })).toBeGreaterThan(0);
    expect(collections({ BUN_GC_TIMER_DISABLE: "1" })).toBe(0);
  }, 20_000);

  test("ignores bunfig.toml and .env in the working directory (no foreign preload)", () => {
    const cwd = join(dir, "hostile");
    Bun.spawnSync(["mkdir", "-p", cwd]);
    writeFileSync(join(cwd, "bunfig.toml"), 'preload = ["./evil.ts"]\n');
    writeFileSync(join(cwd, "evil.ts"), 'console.log("EVIL preload ran");\n');
    writeFileSync(join(cwd, ".env"), "NODE_OPTIONS=--bogus\n");
    const p = Bun.spawnSync([join(dir, "zb"), "version"], { cwd });
    expect(p.stdout.toString()).toMatch(/^zb \d+\.\d+\.\d+\n$/);
    expect(p.exitCode).toBe(0);
  });

  test("dist/zb-arm64 is an aarch64 ELF (run for real by the QEMU test)", () => {
    const h = readFileSync(ARM).subarray(0, 20);
    expect(h.subarray(0, 4).toString("latin1")).toBe("\x7fELF");
    expect(h.readUInt16LE(18)).toBe(183); // EM_AARCH64
  });
});

describe("zb env end to end", () => {
  const boot = () => join(dir, "boot");

  test("print before init: IO error naming the file, exit 5", () => {
    const r = run("zb", ["env", "print", "--boot", boot()]);
    expect(r.code).toBe(5);
    expect(r.err).toContain("zb/zb.env");
  });

  test("init from a script on stdin, then print, set, delete", () => {
    expect(run("zb", ["env", "init", "--boot", boot(), "--script", "-"], "zb_slot a\nzb_boot_limit=3\n").code).toBe(0);
    expect(run("zb", ["env", "print", "--boot", boot()]).out).toBe("zb_boot_limit=3\nzb_slot=a\n");
    expect(run("zb", ["env", "set", "--boot", boot(), "zb_slot", "b"]).code).toBe(0);
    expect(run("zb", ["env", "print", "--boot", boot(), "-n", "zb_slot"]).out).toBe("b\n");
    expect(run("zb", ["env", "set", "--boot", boot(), "zb_boot_limit"]).code).toBe(0);
    expect(run("zb", ["env", "print", "--boot", boot()]).out).toBe("zb_slot=b\n");
  });

  test("init refuses to replace a valid env", () => {
    const r = run("zb", ["env", "init", "--boot", boot()]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/a valid env exists already/);
  });

  test("--json print and set", () => {
    const set = JSON.parse(run("zb", ["env", "set", "--boot", boot(), "--json", "kernel_status", "try"]).out);
    expect(set).toMatchObject({ written: true });
    const p = JSON.parse(run("zb", ["env", "print", "--boot", boot(), "--json"]).out);
    expect(p.vars).toEqual({ kernel_status: "try", zb_slot: "b" });
    expect(p.storage).toMatchObject({ redundant: true, size: 0x4000, degraded: null });
  });

  test("unset name: exit 1; two values: usage error", () => {
    const r = run("zb", ["env", "print", "--boot", boot(), "nope"]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/cannot print "nope": not defined/);
    expect(run("zb", ["env", "set", "--boot", boot(), "a", "b", "c"]).code).toBe(2);
  });

  // A typo in a NAME or a script line is the user's input error (USAGE, 2), not ENV_FORMAT (3): 3 is
  // also ENV_CRC, whose remedy (zb env init --force) would wipe the boot state.
  test.each([
    { argv: ["set", "a=b", "c"], stdin: undefined, err: `zb: cannot set "a=b": the variable name contains '='\nzb: hint: NAME and VALUE are two arguments: zb env set NAME VALUE\n` },
    { argv: ["set", "a=b"], stdin: undefined, err: `zb: cannot set "a=b": the variable name contains '='\nzb: hint: NAME and VALUE are two arguments: zb env set NAME VALUE\n` },
    { argv: ["set", "", "x"], stdin: undefined, err: `zb: cannot set "": the variable name is empty\n` },
    { argv: ["set", "--script", "-"], stdin: "ok 1\n=bad\n", err: "zb: cannot parse script line 2: the variable name is empty\n" },
    { argv: ["init", "--force", "--script", "-"], stdin: "a 1\n  =x\n", err: "zb: cannot parse script line 2: the variable name is empty\n" },
  ])("zb env $argv: USAGE (exit 2), nothing written", ({ argv, stdin, err }) => {
    const b = join(dir, "typo");
    expect(run("zb", ["env", "init", "--boot", b, "--force", "--script", "-"], "zb_slot a\n").code).toBe(0);
    const before = readFileSync(join(b, "zb/zb.env")).toString("hex") + readFileSync(join(b, "zb/zb.env.redund")).toString("hex");
    const [sub, ...rest] = argv;
    const r = run("zb", ["env", sub!, "--boot", b, ...rest], stdin);
    expect({ code: r.code, err: r.err }).toEqual({ code: 2, err });
    expect(readFileSync(join(b, "zb/zb.env")).toString("hex") + readFileSync(join(b, "zb/zb.env.redund")).toString("hex")).toBe(before);
  });

  test("non-UTF-8 value bytes go out unchanged", () => {
    writeFileSync(join(dir, "bin.script"), Buffer.from("raw \xff\xfe\n", "latin1"));
    expect(run("zb", ["env", "set", "--boot", boot(), "--script", join(dir, "bin.script")]).code).toBe(0);
    const p = Bun.spawnSync([join(dir, "zb"), "env", "print", "--boot", boot(), "-n", "raw"]);
    expect([...p.stdout]).toEqual([0xff, 0xfe, 0x0a]);
  });

  test("both copies corrupt: ENV_CRC, exit 3", () => {
    const b = join(dir, "bad");
    expect(run("zb", ["env", "init", "--boot", b]).code).toBe(0);
    for (const f of ["zb.env", "zb.env.redund"]) writeFileSync(join(b, "zb", f), new Uint8Array(0x4000).fill(7));
    const r = run("zb", ["env", "print", "--boot", b]);
    expect(r.code).toBe(3);
    expect(r.err).toMatch(/both copies are invalid/);
  });

  test.each([["image"], ["env"], ["status"], ["unlock"]])("zb help %s prints that command's own help (zb %s --help)", (topic) => {
    const help = run("zb", ["help", topic]);
    const own = topic === "unlock" ? run("zbunlock", ["--help"]) : run("zb", [topic, "--help"]);
    expect(help.code).toBe(0);
    expect(help.out).toBe(own.out);
    expect(help.out).not.toBe(run("zb", ["--help"]).out);
  });

  test("a fw_env.config whose size is not the files': says so, and does not send the user to recreate the env", () => {
    const b = join(dir, "sized");
    expect(run("zb", ["env", "init", "--boot", b]).code).toBe(0);
    const cfg = join(dir, "fw_env.small");
    writeFileSync(cfg, `${join(b, "zb/zb.env")} 0 0x2000\n${join(b, "zb/zb.env.redund")} 0 0x2000\n`);
    const r = run("zb", ["env", "print", "-c", cfg]);
    expect(r.code).toBe(3);
    expect(r.err).toContain("zb.env is 16384 bytes, the configuration says 8192");
    expect(r.err).toContain("zb: hint: the files' size does not match the configured env size");
    expect(r.err).not.toContain("recreate it with");
  });

  test.each([
    { argv: ["env", "print", "--json", "nope", "--boot", "$B"], code: 1, codeName: "NOT_FOUND" },
    { argv: ["status", "--json", "--boot", "$NOTHING"], code: 5, codeName: "IO" },
    { argv: ["key", "id", "/nonexistent/k.pub", "--json"], code: 5, codeName: "IO" },
    // --json=VALUE is refused (the option takes no value), as asked: in JSON.
    { argv: ["status", "--json=1", "--boot", "$B"], code: 2, codeName: "USAGE" },
    { argv: ["env", "print", "--json=yes", "--boot", "$B"], code: 2, codeName: "USAGE" },
  ])("zb $argv fails with its JSON on stdout too: the last line is the failure", ({ argv, code, codeName }) => {
    const b = join(dir, "json-fail");
    expect(run("zb", ["env", "init", "--boot", b, "--force"]).code).toBe(0);
    const r = run("zb", argv.map((a) => (a === "$B" ? b : a === "$NOTHING" ? join(dir, "json-nothing") : a)));
    expect(r.code).toBe(code);
    const last = JSON.parse(r.out.trim().split("\n").at(-1)!);
    expect(last).toMatchObject({ type: "result", ok: false, code: codeName, exit: code });
    expect(r.err).toContain(`zb: ${last.message}\n`);
  });

  test("no env at all where --boot points: IO (5), says there is none and how to take a partition over", () => {
    const r = run("zb", ["status", "--boot", join(dir, "nothing-here")]);
    expect(r.code).toBe(5);
    expect(r.err).toMatch(/^zb: cannot read env: there is none \(cannot read .*nothing-here\/zb\/zb\.env: no such file or directory; .*\)\nzb: hint: check --boot .*`zb init`/);
  });
});
