/**
 * awaitGo (stages/zbunlock/prestart.ts) with a fake clock: when the go file
 * appears it returns the wait; when it does not, NOT_STARTED at the
 * deadline, after a bounded number of polls. reportExitTo with a recorded
 * exit handler (the real descriptor is tested through the binary in
 * test/stages/unlock.test.ts).
 */
import { describe, expect, test } from "bun:test";
import { isZbError } from "../../lib/errors.ts";
import { awaitGo, GO_POLL_MS, reportExitTo, type GoSeams } from "../../stages/zbunlock/prestart.ts";

function fake(appearsAtMs: number): GoSeams & { polls: () => number; renamed: () => string[] } {
  let clock = 0;
  let polls = 0;
  const renamed: string[] = [];
  return {
    rename: (from, to) => void renamed.push(`${from} -> ${to}`),
    renamed: () => renamed,
    exists: (path) => {
      polls++;
      expect(path).toBe("/run/zb/prestart/go");
      return clock >= appearsAtMs;
    },
    now: () => clock,
    sleep: (ms) => void (clock += ms),
    polls: () => polls,
  };
}

describe("awaitGo", () => {
  const rows = [
    { name: "the file is there at once: no wait, taken", before: { appearsAtMs: 0, waitS: 1 }, after: { waited: 0, polls: 1, taken: true } },
    { name: "it appears after 0.5 s: waited 0.5 s, taken", before: { appearsAtMs: 500, waitS: 1 }, after: { waited: 0.5, polls: 500 / GO_POLL_MS + 1, taken: true } },
    { name: "it appears exactly at the deadline: still taken", before: { appearsAtMs: 1000, waitS: 1 }, after: { waited: 1, polls: 1000 / GO_POLL_MS + 1, taken: true } },
    { name: "never: NOT_STARTED at the deadline, nothing taken", before: { appearsAtMs: Infinity, waitS: 1 }, after: { waited: null, polls: 1000 / GO_POLL_MS + 1, taken: false } },
  ];
  test.each(rows)("$name", async ({ before, after }) => {
    const s = fake(before.appearsAtMs);
    let waited: number | null = null;
    try {
      waited = await awaitGo("/run/zb/prestart/go", before.waitS, s);
    } catch (e) {
      expect(isZbError(e, "NOT_STARTED")).toBe(true);
      expect((e as Error).message).toBe("cannot go on: /run/zb/prestart/go did not appear within 1 s; zbunlock did nothing (the boot script runs it again)");
    }
    expect(waited).toBe(after.waited);
    expect(s.polls()).toBe(after.polls);
    expect(s.renamed()).toEqual(after.taken ? ["/run/zb/prestart/go -> /run/zb/prestart/go.taken"] : []);
  });

  test("a go that cannot be taken (rename fails): IO, nothing done", async () => {
    const s = { ...fake(0), rename: () => { throw new Error("EROFS: read-only file system"); } };
    await expect(awaitGo("/run/zb/prestart/go", 1, s)).rejects.toThrow("cannot take the go: renaming /run/zb/prestart/go: EROFS: read-only file system; zbunlock did nothing");
  });
});

describe("reportExitTo", () => {
  function recorder(failWrite = false) {
    const handlers: ((code: number) => void)[] = [];
    const written: [number, string][] = [];
    return {
      on: (h: (code: number) => void) => void handlers.push(h),
      write: (fd: number, text: string) => {
        if (failWrite) throw new Error("EBADF: bad file descriptor");
        written.push([fd, text]);
      },
      exit: (code: number) => handlers.forEach((h) => h(code)),
      written,
      handlers,
    };
  }
  const rows = [
    { name: "fd 3, exit 0: one line on fd 3", before: { fd: "3", exit: 0 }, after: [[3, "exited 0\n"]] },
    { name: "fd 9, exit 20: the status as given to exit", before: { fd: "9", exit: 20 }, after: [[9, "exited 20\n"]] },
  ];
  test.each(rows)("$name", async ({ before, after }) => {
    const r = recorder();
    reportExitTo(before.fd, r.on, r.write);
    expect(r.written).toEqual([]); // nothing before the exit
    r.exit(before.exit);
    expect(r.written).toEqual(after as never);
  });

  test.each(["0", "2", "-1", "x", "3x", "", "99999"])("%p is not a descriptor it may write: USAGE, no handler", (fd) => {
    const r = recorder();
    expect(() => reportExitTo(fd, r.on, r.write)).toThrow(/^cannot use --status-fd .*: expected a descriptor number from 3 up$/);
    expect(r.handlers).toHaveLength(0);
  });

  test("a failed write is ignored (the wrapper reports the status as well)", () => {
    const r = recorder(true);
    reportExitTo("3", r.on, r.write);
    expect(() => r.exit(0)).not.toThrow();
  });
});
