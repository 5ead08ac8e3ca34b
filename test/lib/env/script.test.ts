/** The script format of `zb env set --script` / `fw_setenv -s`: before → script → after. */
import { expect, test } from "bun:test";
import { applyChanges, parseScript } from "../../../lib/env/script.ts";

const BEFORE = { keep: "k", old: "o" };

test.each([
  {
    name: "U-Boot form: the value is the rest of the line",
    script: "bootdelay 3\nbootargs console=ttyS0  root=/dev/sda2\n",
    after: { ...BEFORE, bootdelay: "3", bootargs: "console=ttyS0  root=/dev/sda2" },
  },
  { name: "libubootenv form: name=value, '=' in the value kept", script: "a=1\nb=x=y\n", after: { ...BEFORE, a: "1", b: "x=y" } },
  { name: "a space after the name, '=' later: U-Boot form", script: "a b=c\n", after: { ...BEFORE, a: "b=c" } },
  { name: "bare name deletes", script: "old\n", after: { keep: "k" } },
  { name: "name= and a name with trailing blanks delete", script: "keep=\nold \t\n", after: {} },
  { name: "comments, blank lines, CRLF, leading blanks", script: "# c\n\n  a 1\r\n\t# indented comment\n", after: { ...BEFORE, a: "1" } },
  { name: "later lines win", script: "a 1\na 2\nb 1\nb\n", after: { ...BEFORE, a: "2" } },
  { name: "deleting a missing name is no change", script: "nothere\n", after: BEFORE },
])("$name", ({ script, after }) => {
  const result = applyChanges(new Map(Object.entries(BEFORE)), parseScript(script));
  expect(Object.fromEntries(result)).toEqual(after);
});

test("a name starting with '=' is refused with its line number", () => {
  expect(() => parseScript("ok 1\n=bad\n")).toThrow(expect.objectContaining({ code: "ENV_FORMAT", message: expect.stringContaining("line 2") }));
});

test("a value with NUL is refused", () => {
  expect(() => parseScript("a x\0y\n")).toThrow(expect.objectContaining({ code: "ENV_FORMAT" }));
});
