/**
 * initramfs-hooks/scripts/local-top/zb under dash and busybox sh, with a
 * fake zbunlock and reboot on PATH. The script's two fixed paths,
 * /scripts/functions and /proc/cmdline, are rewritten to files in a temp
 * dir: first the recording fake-functions.sh, then the real
 * scripts/functions of initramfs-tools-core.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const SCRIPT = resolve(import.meta.dir, "../../initramfs-hooks/scripts/local-top/zb");
const FAKE_FUNCTIONS = resolve(import.meta.dir, "fake-functions.sh");
const REAL_FUNCTIONS = "/usr/share/initramfs-tools/scripts/functions";
const EXIT_CODES = resolve(import.meta.dir, "../../docs/exit-codes.md");
/** The initramfs runs boot scripts with busybox sh; Debian's /bin/sh is dash. */
const SHELLS = ["dash", "busybox sh"];
const CMDLINE = "console=ttyAMA0 root=/dev/mapper/zb-root zb.boot=/dev/mmcblk0p1 rootwait";

const roots: string[] = [];
afterAll(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});

interface Setup {
  functions: string;
  cmdline: string;
  /** zbunlock's exit status; null: no zbunlock on PATH. */
  status: number | null;
  /** "kill": reboot never returns (it kills the script, as reboot(2) would); "fail": it returns 1. */
  reboot: "kill" | "fail" | "return";
  env?: Record<string, string>;
}

/** The script with its fixed paths pointing into t; each must occur exactly once. */
function rewritten(t: string, functions: string): string {
  let text = readFileSync(SCRIPT, "utf8");
  for (const [from, to] of [[". /scripts/functions\n", `. ${functions}\n`], ["$(cat /proc/cmdline)", `$(cat ${t}/cmdline)`]] as const) {
    expect(text.split(from).length).toBe(2);
    text = text.replace(from, to);
  }
  return text;
}

function run(shell: string[], s: Setup): { code: number | null; signal: string | null; out: string; calls: string[] } {
  const t = mkdtempSync(join(tmpdir(), "zb-localtop-"));
  roots.push(t);
  const log = join(t, "log");
  mkdirSync(join(t, "bin"));
  writeFileSync(join(t, "cmdline"), s.cmdline + "\n");
  writeFileSync(join(t, "local-top-zb"), rewritten(t, s.functions));
  if (s.status !== null) {
    writeFileSync(join(t, "bin/zbunlock"), `#!/bin/sh\necho "zbunlock args=$# BUN_JSC_useJIT=\${BUN_JSC_useJIT-unset}" >>"${log}"\nexit ${s.status}\n`, { mode: 0o755 });
  }
  const reboot = { kill: 'kill -KILL "$PPID"', fail: "exit 1", return: "exit 0" }[s.reboot];
  writeFileSync(join(t, "bin/reboot"), `#!/bin/sh\necho "reboot $*" >>"${log}"\n${reboot}\n`, { mode: 0o755 });
  const p = Bun.spawnSync([...shell, join(t, "local-top-zb")], {
    env: { PATH: `${join(t, "bin")}:/usr/bin:/bin`, ZB_FAKE_LOG: log, ...s.env },
    stdin: "ignore",
  });
  let calls: string[] = [];
  try {
    calls = readFileSync(log, "utf8").split("\n").filter(Boolean);
  } catch {
    // no call logged at all
  }
  return { code: p.exitCode, signal: p.signalCode == null ? null : String(p.signalCode), out: p.stdout.toString(), calls };
}

const BEGIN = "begin zb: running zbunlock";
// zbunlock starts without the JIT (lib/sys/jit.ts): a faster start for a one-second process.
const ZB = "zbunlock args=0 BUN_JSC_useJIT=0";

/** zbunlock's status and the command line before; the calls logged and how the script ended after. */
interface Row {
  name: string;
  before: { cmdline: string; status: number | null; reboot: Setup["reboot"] };
  after: { code: number | null; signal: string | null; calls: string[] };
}

describe.each(SHELLS)("with the fake functions, under %s", (shellName) => {
  const shell = shellName.split(" ");
  const rows: Row[] = [
    {
      name: "zbunlock exits 0: the boot goes on",
      before: { cmdline: CMDLINE, status: 0, reboot: "kill" },
      after: { code: 0, signal: null, calls: [BEGIN, ZB, "end", "success zb: the root is open at /dev/mapper/zb-root"] },
    },
    {
      name: "exits 12 (REBOOT_PENDING): reboot -f, which never returns",
      before: { cmdline: CMDLINE, status: 12, reboot: "kill" },
      after: { code: null, signal: "SIGKILL", calls: [BEGIN, ZB, "failure zb: zbunlock needs a reboot it did not perform (exit 12); rebooting", "reboot -f"] },
    },
    {
      name: "exits 12 and reboot -f fails: panic",
      before: { cmdline: CMDLINE, status: 12, reboot: "fail" },
      after: {
        code: 1,
        signal: null,
        calls: [BEGIN, ZB, "failure zb: zbunlock needs a reboot it did not perform (exit 12); rebooting", "reboot -f", "panic zb: reboot -f failed after zbunlock asked for a reboot"],
      },
    },
    {
      name: "exits 20 (HSM_DENIED): panic naming the code",
      before: { cmdline: CMDLINE, status: 20, reboot: "kill" },
      after: {
        code: 1,
        signal: null,
        calls: [BEGIN, ZB, "failure zb: zbunlock failed (exit 20)", "panic zbunlock failed (exit 20, HSM_DENIED): the root is not open; the messages above say why"],
      },
    },
    {
      name: "exits 99 (no such code): panic pointing at the table",
      before: { cmdline: CMDLINE, status: 99, reboot: "kill" },
      after: {
        code: 1,
        signal: null,
        calls: [BEGIN, ZB, "failure zb: zbunlock failed (exit 99)", "panic zbunlock failed (exit 99, see docs/exit-codes.md): the root is not open; the messages above say why"],
      },
    },
    {
      name: "no zbunlock in the initramfs: panic with 127",
      before: { cmdline: CMDLINE, status: null, reboot: "kill" },
      after: {
        code: 1,
        signal: null,
        calls: [BEGIN, "failure zb: zbunlock failed (exit 127)", "panic zbunlock failed (exit 127, zbunlock not found): the root is not open; the messages above say why"],
      },
    },
    {
      name: "zb.skip=1: zbunlock does not run",
      before: { cmdline: `${CMDLINE} zb.skip=1`, status: 20, reboot: "kill" },
      after: { code: 0, signal: null, calls: ["warning zb: zb.skip=1 on the kernel command line: not running zbunlock"] },
    },
    {
      name: "zb.skip=1 as the first word: zbunlock does not run",
      before: { cmdline: `zb.skip=1 ${CMDLINE}`, status: 20, reboot: "kill" },
      after: { code: 0, signal: null, calls: ["warning zb: zb.skip=1 on the kernel command line: not running zbunlock"] },
    },
    {
      name: "zb.skip=10 and xzb.skip=1 are other words: zbunlock runs",
      before: { cmdline: `${CMDLINE} zb.skip=10 xzb.skip=1`, status: 0, reboot: "kill" },
      after: { code: 0, signal: null, calls: [BEGIN, ZB, "end", "success zb: the root is open at /dev/mapper/zb-root"] },
    },
  ];
  test.each(rows)("$name", ({ before, after }) => {
    const r = run(shell, { functions: FAKE_FUNCTIONS, ...before });
    expect(r.calls).toEqual(after.calls);
    expect(r.signal).toBe(after.signal);
    expect(r.code).toBe(after.code);
  });

  test("prereqs prints the empty PREREQ and runs nothing", () => {
    const p = Bun.spawnSync([...shell, SCRIPT, "prereqs"], { env: { PATH: "/usr/bin:/bin" } });
    expect(p.stdout.toString()).toBe("\n");
    expect(p.exitCode).toBe(0);
  });
});

describe.each(SHELLS)("with the real scripts/functions, under %s", (shellName) => {
  const shell = shellName.split(" ");
  // init exports quiet and panic; panic=-1 makes panic() reboot at once.
  const env = { quiet: "n", panic: "-1" };

  test("exit 0: Begin … done, Success", () => {
    const r = run(shell, { functions: REAL_FUNCTIONS, cmdline: CMDLINE, status: 0, reboot: "return", env });
    expect(r.out).toBe("Begin: zb: running zbunlock ... done.\nSuccess: zb: the root is open at /dev/mapper/zb-root\n");
    expect(r.calls).toEqual([ZB]);
    expect(r.code).toBe(0);
  });

  test("exit 21: Failure, then panic= reboots with reboot -f", () => {
    const r = run(shell, { functions: REAL_FUNCTIONS, cmdline: CMDLINE, status: 21, reboot: "return", env });
    expect(r.out).toBe(
      "Begin: zb: running zbunlock ... Failure: zb: zbunlock failed (exit 21)\n" +
        "zbunlock failed (exit 21, HSM_FAILED): the root is not open; the messages above say why\n" +
        "Rebooting automatically due to panic= boot argument\n",
    );
    expect(r.calls).toEqual([ZB, "reboot -f"]);
  });
});

test("every exit status the script names has that name in docs/exit-codes.md", () => {
  const named = [...readFileSync(SCRIPT, "utf8").matchAll(/^\t(\d+)\) echo ([A-Z_]+) ;;$/gm)].map((m) => [m[1], m[2]]);
  const documented = new Set([...readFileSync(EXIT_CODES, "utf8").matchAll(/^\| (\d+) \| `([A-Z_]+)` \|/gm)].map((m) => `${m[1]} ${m[2]}`));
  expect(named.length).toBe(9);
  for (const [code, name] of named) expect(documented.has(`${code} ${name}`)).toBe(true);
});
