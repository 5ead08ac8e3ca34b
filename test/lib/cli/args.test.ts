/** The shared getopt_long-style parser. */
import { describe, expect, test } from "bun:test";
import { onlyThese, parseArgs, parseGetopt } from "../../../lib/cli/args.ts";

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

/**
 * getopt_long's leniency (the fw_printenv/fw_setenv personalities). Every
 * warning row is what glibc's getopt_long printed for libubootenv-tool 0.3.2's
 * fw_printenv (`fw_printenv -x -c fw.config NAME`: warned, NAME printed, exit 0).
 */
describe("parseGetopt", () => {
  const FW = {
    config: { short: "c", value: true },
    defenv: { short: "f", value: true },
    script: { short: "s", value: true },
    "no-header": { short: "n" },
    help: { short: "h" },
    version: { short: "V" },
  };
  const P = "fw_printenv";
  test.each([
    { argv: ["-x", "a"], values: {}, flags: [], positional: ["a"], warnings: ["fw_printenv: invalid option -- 'x'"] },
    { argv: ["--foo", "a"], values: {}, flags: [], positional: ["a"], warnings: ["fw_printenv: unrecognized option '--foo'"] },
    { argv: ["--foo=3", "a"], values: {}, flags: [], positional: ["a"], warnings: ["fw_printenv: unrecognized option '--foo=3'"] },
    { argv: ["-xn", "a"], values: {}, flags: ["no-header"], positional: ["a"], warnings: ["fw_printenv: invalid option -- 'x'"] },
    { argv: ["-nx", "a"], values: {}, flags: ["no-header"], positional: ["a"], warnings: ["fw_printenv: invalid option -- 'x'"] },
    { argv: ["-Q", "-n", "a"], values: {}, flags: ["no-header"], positional: ["a"], warnings: ["fw_printenv: invalid option -- 'Q'"] },
    { argv: ["-nc", "f", "a"], values: { config: "f" }, flags: ["no-header"], positional: ["a"], warnings: [] },
    { argv: ["-cf", "a"], values: { config: "f" }, flags: [], positional: ["a"], warnings: [] },
    { argv: ["--no-header=1", "a"], values: {}, flags: [], positional: ["a"], warnings: ["fw_printenv: option '--no-header' doesn't allow an argument"] },
    { argv: ["--version=3"], values: {}, flags: [], positional: [], warnings: ["fw_printenv: option '--version' doesn't allow an argument"] },
    { argv: ["--conf=f", "--no", "a"], values: { config: "f" }, flags: ["no-header"], positional: ["a"], warnings: [] },
    { argv: ["--vers"], values: {}, flags: ["version"], positional: [], warnings: [] },
    { argv: ["-c", "f", "a", "-c"], values: { config: "f" }, flags: [], positional: ["a"], warnings: ["fw_printenv: option requires an argument -- 'c'"] },
    { argv: ["-c", "f", "a", "--config"], values: { config: "f" }, flags: [], positional: ["a"], warnings: ["fw_printenv: option '--config' requires an argument"] },
    { argv: ["-c", "f", "a", "--conf"], values: { config: "f" }, flags: [], positional: ["a"], warnings: ["fw_printenv: option '--config' requires an argument"] },
    // A value-taking option takes the next argument even when it starts with '-'.
    { argv: ["--config", "-c", "a"], values: { config: "-c" }, flags: [], positional: ["a"], warnings: [] },
    { argv: ["-c", "a", "-c", "b"], values: { config: "b" }, flags: [], positional: [], warnings: [] },
    { argv: ["-c", "f", "--", "-n"], values: { config: "f" }, flags: [], positional: ["-n"], warnings: [] },
    { argv: ["-c", "f", "-"], values: { config: "f" }, flags: [], positional: ["-"], warnings: [] },
  ])("$argv", ({ argv, values, flags, positional, warnings }) => {
    const warned: string[] = [];
    const r = parseGetopt(argv, FW, { what: P, prog: P, warn: (w) => warned.push(w) });
    expect({ values: Object.fromEntries(r.values), flags: [...r.flags], positional: r.positional, warned }).toEqual({ values, flags: [...flags], positional: [...positional], warned: [...warnings] });
  });

  test("an ambiguous abbreviation is warned about with its possibilities; a noAbbrev option is never one of them", () => {
    const warned: string[] = [];
    const specs = { ...FW, "no-sync": {}, namespace: { short: "m", value: true, noAbbrev: true } };
    const r = parseGetopt(["--no", "--na=x", "--namespace=y"], specs, { what: P, prog: "/usr/bin/fw_printenv", warn: (w) => warned.push(w) });
    expect(warned).toEqual(["/usr/bin/fw_printenv: option '--no' is ambiguous; possibilities: '--no-header' '--no-sync'", "/usr/bin/fw_printenv: unrecognized option '--na=x'"]);
    expect(Object.fromEntries(r.values)).toEqual({ namespace: "y" });
  });

  test("an empty value is still refused (USAGE), as zb's own commands refuse it", () => {
    expect(() => parseGetopt(["-c", ""], FW, { what: P, prog: P, warn: () => undefined })).toThrow(
      expect.objectContaining({ code: "USAGE", message: "cannot run fw_printenv: option --config needs a value, not an empty one" }),
    );
  });
});
