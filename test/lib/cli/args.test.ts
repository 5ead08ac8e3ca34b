/** The shared getopt_long-style parser. */
import { expect, test } from "bun:test";
import { onlyThese, parseArgs } from "../../../lib/cli/args.ts";

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
  { argv: ["--config="], why: "option --config needs a value, not an empty one" },
  { argv: ["-c", ""], why: "option --config needs a value, not an empty one" },
])("rejects $argv: $why", ({ argv, why }) => {
  expect(() => parseArgs(argv, SPECS, "zb t")).toThrow(expect.objectContaining({ code: "USAGE", message: `cannot run zb t: ${why}` }));
});

test.each([
  { repeats: undefined, values: { config: "b" } },
  { repeats: "last" as const, values: { config: "b" } },
])("-c a -c b with repeats $repeats: the last one wins (getopt, fw_printenv)", ({ repeats, values }) => {
  const r = parseArgs(["-c", "a", "-c", "b"], SPECS, "zb t", repeats ? { repeats } : {});
  expect(Object.fromEntries(r.values)).toEqual(values);
});

test("-c a --config=b with repeats refuse: USAGE naming both values", () => {
  expect(() => parseArgs(["-c", "a", "--config=b"], SPECS, "zb t", { repeats: "refuse" })).toThrow(
    expect.objectContaining({ code: "USAGE", message: 'cannot run zb t: option --config is given twice ("a" and "b")' }),
  );
});

test.each([
  { argv: ["--json", "x"], options: ["json"], positionals: 1, why: null },
  { argv: ["--json"], options: [], positionals: 0, why: "option --json does not apply here" },
  { argv: ["x", "y"], options: [], positionals: 1, why: 'unexpected argument "y" (it takes one)' },
  { argv: ["x"], options: [], positionals: 0, why: 'unexpected argument "x"' },
])("onlyThese $argv (options $options, $positionals positional) → $why", ({ argv, options, positionals, why }) => {
  const r = parseArgs(argv, SPECS, "zb t");
  const run = () => onlyThese(r, options, positionals, "zb t");
  if (why === null) expect(run).not.toThrow();
  else expect(run).toThrow(expect.objectContaining({ code: "USAGE", message: `cannot run zb t: ${why}` }));
});
