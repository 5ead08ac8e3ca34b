/**
 * stages/common.ts rebooter: what a stage does with a planned reboot. The
 * reboot itself is a stand-in: nothing here can restart the host.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "../../lib/cli/args.ts";
import { ZbError } from "../../lib/errors.ts";
import { PENDING_REBOOT_FILE, recordPendingReboot } from "../../lib/sys/reboot.ts";
import { HostSys } from "../../lib/sys/sys.ts";
import { BOOT_OPTIONS, rebooter } from "../../stages/common.ts";

type Row = {
  name: string;
  argv: string[];
  pendOnFailure: boolean;
  /** What the stand-in reboot does: return (queued), or throw this code. */
  fails: "IO" | "USAGE" | null;
  /** recorded: the arguments recordPending was called with. */
  after: { calls: number; pending: string | null; thrown: string | null; recorded: (string | null)[] };
};

describe("rebooter", () => {
  const rows: Row[] = [
    { name: "reboot started", argv: [], pendOnFailure: true, fails: null, after: { calls: 1, pending: null, thrown: null, recorded: [] } },
    { name: "--no-reboot: recorded, not attempted", argv: ["--no-reboot"], pendOnFailure: false, fails: "IO", after: { calls: 0, pending: '"0 tryboot"', thrown: null, recorded: [] } },
    // The argument is recorded for local-top/zb, which makes that reboot: a plain one would spend an N1 re-arm.
    { name: "zbunlock: a failed reboot (IO) becomes pending (exit 12), its argument recorded", argv: [], pendOnFailure: true, fails: "IO", after: { calls: 1, pending: '"0 tryboot"', thrown: null, recorded: ["0 tryboot"] } },
    { name: "zb: a failed reboot (IO) is the error", argv: [], pendOnFailure: false, fails: "IO", after: { calls: 1, pending: null, thrown: "IO", recorded: [] } },
    { name: "zbunlock: ZB_NO_REBOOT (USAGE) stays an error", argv: [], pendOnFailure: true, fails: "USAGE", after: { calls: 1, pending: null, thrown: "USAGE", recorded: [] } },
  ];
  test.each(rows)("$name", ({ argv, pendOnFailure, fails, after }) => {
    let calls = 0;
    const recorded: (string | null)[] = [];
    const r = rebooter(parseArgs(argv, BOOT_OPTIONS, "zbunlock"), "zbunlock", {
      pendOnFailure,
      recordPending: (arg) => recorded.push(arg),
      rebootNow: (arg) => {
        calls++;
        expect(arg).toBe("0 tryboot");
        if (fails) throw new ZbError(fails, "cannot reboot: stand-in failure");
      },
    });
    let thrown: string | null = null;
    try {
      r.reboot("0 tryboot");
    } catch (e) {
      thrown = (e as ZbError).code;
    }
    expect({ calls, pending: r.pending(), thrown, recorded }).toEqual(after);
  });
});

describe("recordPendingReboot: the line local-top/zb reads after exit 12", () => {
  const root = mkdtempSync(join(tmpdir(), "zb-pending-"));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  test.each([
    { name: '"0 tryboot" (an N1 re-arm): that line', arg: "0 tryboot", line: "0 tryboot\n" },
    { name: "a plain reboot: an empty line", arg: null, line: "\n" },
  ])("$name, under <root>/run/zb (created)", ({ arg, line }) => {
    recordPendingReboot(new HostSys(), root, arg);
    expect(readFileSync(join(root, PENDING_REBOOT_FILE), "utf8")).toBe(line);
    expect(PENDING_REBOOT_FILE).toBe("run/zb/reboot-param"); // the path local-top/zb reads
  });

  test("a failure to record is a warning: the reboot is still pending (exit 12), and the script reboots plainly", () => {
    const r = rebooter(parseArgs([], BOOT_OPTIONS, "zbunlock"), "zbunlock", {
      pendOnFailure: true,
      recordPending: () => {
        throw new ZbError("IO", "cannot write: read-only /run");
      },
      rebootNow: () => {
        throw new ZbError("IO", "cannot reboot: stand-in failure");
      },
    });
    r.reboot("0 tryboot");
    expect(r.pending()).toBe('"0 tryboot"');
  });
});
