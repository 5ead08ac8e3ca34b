/** The script format of `zb env set --script` / `fw_setenv -s`: before → script → after. */
import { expect, test } from "bun:test";
import { applyChanges, changeProblem, parseScript } from "../../../lib/env/script.ts";

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

// A bad line is the user's input error (USAGE, exit 2), never ENV_FORMAT: that shares exit 3 with
// ENV_CRC, whose remedy (zb env init --force) would wipe the boot state for a typo.
test.each([
  { name: "a name starting with '=' (empty)", script: "ok 1\n=bad\n", message: "cannot parse script line 2: the variable name is empty" },
  { name: "an indented '=' line", script: "# c\n  =x\n", message: "cannot parse script line 2: the variable name is empty" },
  { name: "a NUL in the name", script: "a\0b=1\n", message: "cannot parse script line 1: the variable name contains NUL" },
  { name: "a NUL in the value", script: "a 1\nb x\0y\n", message: "cannot parse script line 2: the value contains NUL" },
])("$name: USAGE naming the line", ({ script, message }) => {
  expect(() => parseScript(script)).toThrow(expect.objectContaining({ code: "USAGE", message }));
});

test.each([
  { change: { name: "a", value: "1" }, why: null },
  { change: { name: "a", value: null }, why: null },
  { change: { name: "", value: "x" }, why: "the variable name is empty" },
  { change: { name: "a=b", value: "c" }, why: "the variable name contains '='" },
  { change: { name: "a=b", value: null }, why: "the variable name contains '='" },
  { change: { name: "a\0", value: "1" }, why: "the variable name contains NUL" },
  { change: { name: "a", value: "1\0" }, why: "the value contains NUL" },
])("changeProblem($change) → $why", ({ change, why }) => {
  expect(changeProblem(change)).toBe(why);
});
