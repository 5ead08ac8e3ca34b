/** The exit-code table is a contract: code, docs and this test agree. */
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { CODES, ZbError, ioError, isZbError } from "../../lib/errors.ts";

test("docs/exit-codes.md lists every code with its exit status, and nothing else", () => {
  const doc = readFileSync(new URL("../../docs/exit-codes.md", import.meta.url), "utf8");
  const rows = [...doc.matchAll(/^\| (\d+) \| `([A-Z_]+)` \|/gm)].map((m) => [m[2]!, Number(m[1])]);
  expect(Object.fromEntries(rows)).toEqual({ ...CODES });
  expect(rows.length).toBe(Object.keys(CODES).length);
});

test.each([
  ["NOT_FOUND", 1],
  ["USAGE", 2],
  ["ENV_CRC", 3],
  ["ENV_FORMAT", 3],
  ["IO", 5],
  ["ENV_NOSPACE", 7],
  ["CONFIG", 8],
  ["INTERNAL", 70],
] as const)("%s exits %d", (code, exit) => {
  expect(new ZbError(code, "cannot x: y").exit).toBe(exit);
});

test("ioError names the action and a readable errno", () => {
  const e = ioError("read /x", Object.assign(new Error("ENOENT: raw"), { code: "ENOENT" }));
  expect(e).toMatchObject({ code: "IO", message: "cannot read /x: no such file or directory" });
  expect(isZbError(e, "IO")).toBe(true);
  expect(isZbError(e, "USAGE")).toBe(false);
  expect(ioError("again", e)).toBe(e);
});
