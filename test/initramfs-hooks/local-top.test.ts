/**
 * initramfs-hooks/scripts/local-top/zb and init-top/prestart-zb under dash,
 * busybox sh and klibc's sh, with a fake zbunlock and reboot on PATH and the
 * recording fake-functions.sh as /scripts/functions (local-top-harness.ts);
 * zb-functions itself is the real file, paths rewritten. The same scripts
 * with initramfs-tools' real functions: local-top-real.test.ts.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { BEGIN, CMDLINE, FAKE_FUNCTIONS, LOCK, OPEN, PRE, SCRIPT, SHELLS, WENT, ZB, failed, removeRoots, run, stillOpen, type Setup } from "./local-top-harness.ts";

afterAll(removeRoots);

/** zbunlock's status and the command line before; the calls logged and how the script ended after. */
interface Row {
  name: string;
  before: { cmdline: string; status: number | null; reboot: Setup["reboot"]; prestart?: Setup["prestart"]; lockStatus?: number; rebootParam?: string; zbReboot?: Setup["zbReboot"] };
  after: { code: number | null; signal: string | null; calls: string[] };
}
describe.each(SHELLS)("with the fake functions, under %s", (shellName) => {
  const shell = shellName.split(" ");
  const rows: Row[] = [
    {
      name: "zbunlock exits 0: the boot goes on",
      before: { cmdline: CMDLINE, status: 0, reboot: "kill" },
      after: { code: 0, signal: null, calls: [BEGIN, ZB, ...OPEN] },
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
        calls: [BEGIN, ZB, "failure zb: zbunlock needs a reboot it did not perform (exit 12); rebooting", "reboot -f", LOCK, "panic zb: reboot -f failed after zbunlock asked for a reboot"],
      },
    },
    {
      name: 'exits 12 with "0 tryboot" recorded (an N1 re-arm): zb reboot --raw --param "0 tryboot", with the JIT, which never returns',
      before: { cmdline: CMDLINE, status: 12, reboot: "kill", rebootParam: "0 tryboot", zbReboot: "kill" },
      after: {
        code: null,
        signal: "SIGKILL",
        calls: [BEGIN, ZB, 'failure zb: zbunlock needs a reboot ("0 tryboot") it did not perform (exit 12); rebooting with zb reboot --raw', "zb args=4 reboot --raw --param 0 tryboot BUN_JSC_useJIT=unset"],
      },
    },
    {
      name: 'exits 12 with "0 tryboot" recorded and zb reboot --raw fails: a plain reboot -f',
      before: { cmdline: CMDLINE, status: 12, reboot: "kill", rebootParam: "0 tryboot", zbReboot: "fail" },
      after: {
        code: null,
        signal: "SIGKILL",
        calls: [
          BEGIN,
          ZB,
          'failure zb: zbunlock needs a reboot ("0 tryboot") it did not perform (exit 12); rebooting with zb reboot --raw',
          "zb args=4 reboot --raw --param 0 tryboot BUN_JSC_useJIT=unset",
          'failure zb: zb reboot --raw --param "0 tryboot" failed; rebooting plainly',
          "reboot -f",
        ],
      },
    },
    {
      name: "exits 12 with an empty line recorded (a plain reboot): reboot -f, no zb reboot --raw",
      before: { cmdline: CMDLINE, status: 12, reboot: "kill", rebootParam: "", zbReboot: "kill" },
      after: { code: null, signal: "SIGKILL", calls: [BEGIN, ZB, "failure zb: zbunlock needs a reboot it did not perform (exit 12); rebooting", "reboot -f"] },
    },
    {
      name: "exits 20 (HSM_DENIED): panic naming the code",
      before: { cmdline: CMDLINE, status: 20, reboot: "kill" },
      after: {
        code: 1,
        signal: null,
        calls: [BEGIN, ZB, ...failed(20, "HSM_DENIED")],
      },
    },
    {
      name: "exits 10 (STATE_REFUSED, e.g. no zb.slot= on the command line): panic naming the code",
      before: { cmdline: CMDLINE, status: 10, reboot: "kill" },
      after: {
        code: 1,
        signal: null,
        calls: [BEGIN, ZB, ...failed(10, "STATE_REFUSED")],
      },
    },
    {
      name: "exits 99 (no such code): panic pointing at the table",
      before: { cmdline: CMDLINE, status: 99, reboot: "kill" },
      after: {
        code: 1,
        signal: null,
        calls: [BEGIN, ZB, ...failed(99, "see docs/exit-codes.md")],
      },
    },
    {
      name: "no zbunlock in the initramfs: panic with 127",
      before: { cmdline: CMDLINE, status: null, reboot: "kill" },
      after: {
        code: 1,
        signal: null,
        calls: [BEGIN, ...failed(127, "zbunlock not found")],
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
      name: "started by init-top, exits 0 after the go: the boot goes on, zbunlock is not run again",
      before: { cmdline: CMDLINE, status: 0, reboot: "kill", prestart: "run" },
      after: { code: 0, signal: null, calls: [PRE, BEGIN, WENT, ...OPEN] },
    },
    {
      name: "started by init-top, exits 20 after the go: panic naming the code, not run again",
      before: { cmdline: CMDLINE, status: 20, reboot: "kill", prestart: "run" },
      after: {
        code: 1,
        signal: null,
        calls: [PRE, BEGIN, WENT, ...failed(20, "HSM_DENIED")],
      },
    },
    {
      name: "started by init-top, gave up before the go (24, NOT_STARTED): zbunlock runs here",
      before: { cmdline: CMDLINE, status: 0, reboot: "kill", prestart: "gave-up" },
      after: { code: 0, signal: null, calls: [PRE, BEGIN, ZB, ...OPEN] },
    },
    {
      name: "the early zbunlock's wrapper vanished before zbunlock took the go: zbunlock runs here",
      before: { cmdline: CMDLINE, status: 0, reboot: "kill", prestart: "vanished" },
      after: { code: 0, signal: null, calls: [BEGIN, ZB, ...OPEN] },
    },
    {
      name: "the wrapper's PID was reused by a process that lives on: the start time differs, so it counts as gone and zbunlock runs here",
      before: { cmdline: CMDLINE, status: 0, reboot: "kill", prestart: "reused" },
      after: { code: 0, signal: null, calls: [BEGIN, ZB, ...OPEN] },
    },
    {
      name: "started by init-top, exits 2 before the go (a zbunlock without --go-file): nothing was done, zbunlock runs here",
      before: { cmdline: CMDLINE, status: 0, reboot: "kill", prestart: "old" },
      after: { code: 0, signal: null, calls: [PRE, BEGIN, ZB, ...OPEN] },
    },
    {
      name: "the wrapper is killed, zbunlock took the go and ends alone: its own status line counts",
      before: { cmdline: CMDLINE, status: 0, reboot: "kill", prestart: "wrapper-killed" },
      after: { code: 0, signal: null, calls: [PRE, BEGIN, WENT, ...OPEN] },
    },
    {
      name: "the wrapper is killed, zbunlock took the go and dies without a status: it is lost, so panic (70), never a second zbunlock",
      before: { cmdline: CMDLINE, status: 0, reboot: "kill", prestart: "wrapper-killed-mute" },
      after: {
        code: 1,
        signal: null,
        calls: [PRE, BEGIN, WENT, ...failed(70, "INTERNAL")],
      },
    },
    {
      name: "zbunlock writes its status, then takes seconds to end: the boot goes on without waiting for the end",
      before: { cmdline: CMDLINE, status: 0, reboot: "kill", prestart: "slow-exit" },
      after: { code: 0, signal: null, calls: [PRE, BEGIN, WENT, ...OPEN] },
    },
    {
      name: "zb.skip=1: init-top starts nothing, local-top runs nothing",
      before: { cmdline: `${CMDLINE} zb.skip=1`, status: 0, reboot: "kill", prestart: "run" },
      after: { code: 0, signal: null, calls: ["warning zb: zb.skip=1 on the kernel command line: not running zbunlock"] },
    },
    {
      name: "exits 22 and --lock-only cannot close the root (exit 22): no panic shell, reboot -f",
      before: { cmdline: CMDLINE, status: 22, reboot: "kill", lockStatus: 22 },
      after: { code: null, signal: "SIGKILL", calls: [BEGIN, ZB, "failure zb: zbunlock failed (exit 22)", LOCK, stillOpen(22), "reboot -f"] },
    },
    {
      name: "--lock-only cannot lock the keys (exit 21, the volumes closed): says so, no panic shell, reboot -f",
      before: { cmdline: CMDLINE, status: 21, reboot: "kill", lockStatus: 21 },
      after: { code: null, signal: "SIGKILL", calls: [BEGIN, ZB, "failure zb: zbunlock failed (exit 21)", LOCK, "failure zb: the sealed keys could not be locked (zbunlock --lock-only exit 21): no shell, rebooting", "reboot -f"] },
    },
    {
      name: "--lock-only itself dies (OOM: 137): nothing is known to be closed, so no shell either",
      before: { cmdline: CMDLINE, status: 21, reboot: "kill", lockStatus: 137 },
      after: { code: null, signal: "SIGKILL", calls: [BEGIN, ZB, "failure zb: zbunlock failed (exit 21)", LOCK, stillOpen(137), "reboot -f"] },
    },
    {
      name: "a volume stays open and reboot -f fails: the script stops for good, neither a shell nor a return to initramfs-tools",
      before: { cmdline: CMDLINE, status: 21, reboot: "fail", lockStatus: 22 },
      after: {
        code: null,
        signal: "SIGKILL",
        calls: [BEGIN, ZB, "failure zb: zbunlock failed (exit 21)", LOCK, stillOpen(22), "reboot -f", "failure zb: reboot -f failed; stopping here (power-cycle the device)", "sleep 60"],
      },
    },
    {
      name: "exits 12, reboot -f fails and a volume stays open: no shell",
      before: { cmdline: CMDLINE, status: 12, reboot: "fail", lockStatus: 22 },
      after: {
        code: null,
        signal: "SIGKILL",
        calls: [BEGIN, ZB, "failure zb: zbunlock needs a reboot it did not perform (exit 12); rebooting", "reboot -f", LOCK, stillOpen(22), "reboot -f", "failure zb: reboot -f failed; stopping here (power-cycle the device)", "sleep 60"],
      },
    },
    {
      name: "--lock-only exits 0 (all closed): the panic as before",
      before: { cmdline: CMDLINE, status: 22, reboot: "kill", lockStatus: 0 },
      after: { code: 1, signal: null, calls: [BEGIN, ZB, ...failed(22, "LUKS_FAILED")] },
    },
    {
      name: "zb.skip=10 and xzb.skip=1 are other words: zbunlock runs",
      before: { cmdline: `${CMDLINE} zb.skip=10 xzb.skip=1`, status: 0, reboot: "kill" },
      after: { code: 0, signal: null, calls: [BEGIN, ZB, ...OPEN] },
    },
  ];
  test.each(rows)("$name", ({ before, after }) => {
    const r = run(shell, { functions: FAKE_FUNCTIONS, ...before });
    expect(r.calls).toEqual(after.calls);
    const says: Partial<Record<NonNullable<Setup["prestart"]>, string>> = {
      vanished: "zb: the zbunlock started early ended before the go (status unknown); running it here",
      reused: "zb: the zbunlock started early ended before the go (status unknown); running it here",
      old: "zb: the zbunlock started early ended before the go (status 2); running it here",
      "wrapper-killed-mute": "zb: the zbunlock started early went on, but its exit status is lost; not running it a second time",
    };
    if (before.prestart && says[before.prestart]) expect(r.err).toContain(says[before.prestart]!);
    expect(r.signal).toBe(after.signal);
    expect(r.code).toBe(after.code);
  });

  test("prereqs prints the empty PREREQ and runs nothing", () => {
    const p = Bun.spawnSync([...shell, SCRIPT, "prereqs"], { env: { PATH: "/usr/bin:/bin" } });
    expect(p.stdout.toString()).toBe("\n");
    expect(p.exitCode).toBe(0);
  });
});
