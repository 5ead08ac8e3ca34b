/**
 * stages/common.ts rebooter: what a stage does with a planned reboot. The
 * reboot itself is a stand-in: nothing here can restart the host.
 */
import { describe, expect, test } from "bun:test";
import { parseArgs } from "../../lib/cli/args.ts";
import { ZbError } from "../../lib/errors.ts";
import { BOOT_OPTIONS, rebooter } from "../../stages/common.ts";

type Row = {
  name: string;
  argv: string[];
  pendOnFailure: boolean;
  /** What the stand-in reboot does: return (queued), or throw this code. */
  fails: "IO" | "USAGE" | null;
  after: { calls: number; pending: string | null; thrown: string | null };
};

describe("rebooter", () => {
  const rows: Row[] = [
    { name: "reboot started", argv: [], pendOnFailure: true, fails: null, after: { calls: 1, pending: null, thrown: null } },
    { name: "--no-reboot: recorded, not attempted", argv: ["--no-reboot"], pendOnFailure: false, fails: "IO", after: { calls: 0, pending: '"0 tryboot"', thrown: null } },
    { name: "zbunlock: a failed reboot (IO) becomes pending (exit 12)", argv: [], pendOnFailure: true, fails: "IO", after: { calls: 1, pending: '"0 tryboot"', thrown: null } },
    { name: "zb: a failed reboot (IO) is the error", argv: [], pendOnFailure: false, fails: "IO", after: { calls: 1, pending: null, thrown: "IO" } },
    { name: "zbunlock: ZB_NO_REBOOT (USAGE) stays an error", argv: [], pendOnFailure: true, fails: "USAGE", after: { calls: 1, pending: null, thrown: "USAGE" } },
  ];
  test.each(rows)("$name", ({ argv, pendOnFailure, fails, after }) => {
    let calls = 0;
    const r = rebooter(parseArgs(argv, BOOT_OPTIONS, "zbunlock"), "zbunlock", {
      pendOnFailure,
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
    expect({ calls, pending: r.pending(), thrown }).toEqual(after);
  });
});
