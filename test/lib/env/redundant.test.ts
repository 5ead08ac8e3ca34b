/** U-Boot's active-copy rule (u-boot:env/common.c env_check_redund), row by row. */
import { describe, expect, test } from "bun:test";
import type { DecodeResult } from "../../../lib/env/codec.ts";
import { newer, nextFlag, pickActive } from "../../../lib/env/redundant.ts";

const good = (flag: number, v = String(flag)): DecodeResult => ({ ok: true, vars: new Map([["v", v]]), flag });
const bad = (code: "ENV_CRC" | "ENV_FORMAT" | "IO" = "ENV_CRC"): DecodeResult => ({ ok: false, code, why: code });

describe("newer(flag1, flag2)", () => {
  test.each([
    { f1: 1, f2: 1, active: 0, why: "equal → first" },
    { f1: 2, f2: 1, active: 0, why: "larger wins" },
    { f1: 1, f2: 2, active: 1, why: "larger wins" },
    { f1: 255, f2: 0, active: 1, why: "wrapped: 0 follows 255" },
    { f1: 0, f2: 255, active: 0, why: "wrapped: 0 follows 255" },
    { f1: 254, f2: 255, active: 1, why: "larger wins near the wrap" },
    { f1: 1, f2: 0xc0, active: 1, why: "U-Boot, not serial arithmetic: snapd would pick the first" },
    { f1: 0, f2: 0, active: 0, why: "equal → first" },
  ])("$f1 vs $f2 → copy $active ($why)", ({ f1, f2, active }) => {
    expect(newer(f1, f2)).toBe(active as 0 | 1);
  });
});

describe("pickActive", () => {
  test("both good: by flag", () => {
    const r = pickActive(good(3, "old"), good(4, "new"));
    expect(r.active).toBe(1);
    expect(r.copy.vars.get("v")).toBe("new");
    expect(r.otherFailure).toBeUndefined();
  });
  test("first bad: second, and the failure is reported", () => {
    const r = pickActive(bad(), good(1));
    expect(r.active).toBe(1);
    expect(r.otherFailure?.code).toBe("ENV_CRC");
  });
  test("second bad: first, even with a lower flag", () => {
    const r = pickActive(good(1), bad("ENV_FORMAT"));
    expect(r.active).toBe(0);
  });
  test.each([
    { a: "ENV_CRC", b: "ENV_CRC", code: "ENV_CRC" },
    { a: "ENV_CRC", b: "ENV_FORMAT", code: "ENV_FORMAT" },
    { a: "IO", b: "ENV_CRC", code: "IO" },
  ] as const)("both bad ($a, $b) → ZbError $code, no default env", ({ a, b, code }) => {
    expect(() => pickActive(bad(a), bad(b))).toThrow(expect.objectContaining({ code }));
  });
  test.each([
    { name: "both files missing", a: true, b: true, message: /^cannot read env: there is none \(x; y\)$/, hint: /zb init/ },
    { name: "one missing, one unreadable", a: true, b: false, message: /^cannot read env: both copies are invalid/, hint: /backup/ },
  ])("$name → IO with a message and hint for that case", ({ a, b, message, hint }) => {
    const io = (why: string, missing: boolean) => ({ ok: false as const, code: "IO" as const, why, ...(missing ? { missing: true as const } : {}) });
    expect(() => pickActive(io("x", a), io("y", b))).toThrow(expect.objectContaining({ code: "IO", message: expect.stringMatching(message), hint: expect.stringMatching(hint) }));
  });
});

test.each([
  { active: 1, next: 2 },
  { active: 254, next: 255 },
  { active: 255, next: 0 },
])("nextFlag($active) = $next", ({ active, next }) => {
  expect(nextFlag(active)).toBe(next);
});
