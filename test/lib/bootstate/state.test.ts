/** readState's refusals of values zb cannot act on, and the event log's sequence number wrapping before it outgrows them. */
import { describe, expect, test } from "bun:test";
import { logEvent, readState } from "../../../lib/bootstate/state.ts";

const vars = (text: string) => new Map(text.split(/\s+/).filter(Boolean).map((kv) => kv.split("=", 2) as [string, string]));

describe("readState refuses what no row can act on (STATE_INVALID, the variable named)", () => {
  test.each([
    { before: "zb_boot_limit=0", why: 'zb_boot_limit is "0", expected a number from 1 up' },
    { before: "zb_boot_limit=x", why: 'zb_boot_limit is "x", expected a decimal number' },
    { before: "zb_seq=1000000000", why: 'zb_seq is "1000000000", expected a decimal number' },
    { before: "zb_slot=c", why: 'zb_slot is "c", expected one of "a", "b"' },
  ])("$before", ({ before, why }) => {
    expect(() => readState(vars(before))).toThrow(expect.objectContaining({ code: "STATE_INVALID", message: `cannot read boot state: ${why}` }));
  });

  test.each([
    { before: "", after: { bootLimit: 3, seq: 0 } },
    { before: "zb_boot_limit=1 zb_seq=999999999", after: { bootLimit: 1, seq: 999999999 } },
  ])("$before → $after", ({ before, after }) => {
    const s = readState(vars(before));
    expect({ bootLimit: s.bootLimit, seq: s.seq }).toEqual(after);
  });
});

describe("logEvent", () => {
  test.each([
    { seq: 0, after: 1 },
    { seq: 41, after: 42 },
    { seq: 999999998, after: 999999999 },
    { seq: 999999999, after: 1 },
  ])("zb_seq $seq → $after (nine digits, then wraps to 1)", ({ seq, after }) => {
    const s = readState(vars(`zb_seq=${seq}`));
    logEvent(s, "something happened");
    expect(s.seq).toBe(after);
    expect(s.log.at(-1)).toBe(`${after} something happened`);
    expect(readState(new Map([["zb_seq", String(s.seq)]])).seq).toBe(after);
  });
});
