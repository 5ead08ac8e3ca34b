/** The shared getopt_long-style parser. */
import { expect, test } from "bun:test";
import { parseArgs } from "../../../lib/cli/args.ts";

const SPECS = { config: { short: "c", value: true }, json: {}, "no-header": { short: "n" } };

test.each([
  { argv: ["-c", "f", "a"], values: { config: "f" }, flags: [], positional: ["a"] },
  { argv: ["--config=f", "--json", "a", "b"], values: { config: "f" }, flags: ["json"], positional: ["a", "b"] },
  { argv: ["-cf", "-n", "x"], values: { config: "f" }, flags: ["no-header"], positional: ["x"] },
  { argv: ["a", "--", "-n", "--json"], values: {}, flags: [], positional: ["a", "-n", "--json"] },
  { argv: ["-"], values: {}, flags: [], positional: ["-"] },
])("$argv", ({ argv, values, flags, positional }) => {
  const r = parseArgs(argv, SPECS, "zb t");
  expect(Object.fromEntries(r.values)).toEqual(values);
  expect([...r.flags]).toEqual([...flags]);
  expect(r.positional).toEqual([...positional]);
});

test.each([
  { argv: ["--nope"], why: "unknown option --nope" },
  { argv: ["-x"], why: "unknown option -x" },
  { argv: ["-c"], why: "option --config needs a value" },
  { argv: ["--json=1"], why: "option --json takes no value" },
])("rejects $argv: $why", ({ argv, why }) => {
  expect(() => parseArgs(argv, SPECS, "zb t")).toThrow(expect.objectContaining({ code: "USAGE", message: `cannot run zb t: ${why}` }));
});
