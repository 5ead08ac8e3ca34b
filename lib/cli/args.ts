/**
 * A small getopt_long-style parser shared by the stages: `--name value`,
 * `--name=value`, `-x value`, boolean flags, repeated options, `--` ends
 * options. Errors are ZbError USAGE so every stage reports them alike.
 */
import { ZbError } from "../errors.ts";

/** One option: a long name, an optional short letter, and whether it takes a value. */
export interface OptionSpec {
  short?: string;
  /** Takes a value (`-c FILE`); otherwise a boolean flag. */
  value?: boolean;
  /** May be given more than once; every value is kept in `multi`. */
  multiple?: boolean;
}

export type OptionSpecs = Record<string, OptionSpec>;

/** Parsed command line: the last value of each option, and positionals in order. */
export interface ParsedArgs {
  flags: Set<string>;
  values: Map<string, string>;
  /** All values of options marked `multiple`, in order. */
  multi: Map<string, string[]>;
  positional: string[];
}

/**
 * Parse argv against `specs`.
 * @param what the command, for messages (`zb env print`)
 * @param opts.repeats "refuse": an option that takes one value may be given
 *   once (the publishing and enrolment commands); "last" (default): the last
 *   one wins, as getopt does — the fw_printenv/fw_setenv personalities keep
 *   libubootenv's behaviour, and the boot path does not fail on a repeat
 * @throws {ZbError} USAGE for an unknown option, a missing or empty value, or (repeats: "refuse") a single-value option given twice
 */
export function parseArgs(argv: readonly string[], specs: OptionSpecs, what: string, opts: { repeats?: "refuse" | "last" } = {}): ParsedArgs {
  const byShort = new Map<string, string>();
  for (const [long, s] of Object.entries(specs)) if (s.short) byShort.set(s.short, long);
  const out: ParsedArgs = { flags: new Set(), values: new Map(), multi: new Map(), positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      out.positional.push(...argv.slice(i + 1));
      break;
    }
    let name: string | undefined;
    let inline: string | undefined;
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      if (eq >= 0) inline = arg.slice(eq + 1);
      if (!(name in specs)) throw usage(what, `unknown option --${name}`);
    } else if (arg.startsWith("-") && arg.length > 1 && arg !== "-") {
      name = byShort.get(arg[1]!);
      if (name === undefined) throw usage(what, `unknown option ${arg.slice(0, 2)}`);
      if (arg.length > 2) inline = arg.slice(2);
    } else {
      out.positional.push(arg);
      continue;
    }
    const spec = specs[name]!;
    if (!spec.value) {
      if (inline !== undefined && arg.startsWith("--")) throw usage(what, `option --${name} takes no value`);
      if (inline !== undefined) throw usage(what, `unknown option ${arg}`);
      out.flags.add(name);
      continue;
    }
    const value = inline ?? argv[++i];
    if (value === undefined) throw usage(what, `option --${name} needs a value`);
    // An empty value is never a path, key or number zb can use: `--boot=` would
    // otherwise mean "the current directory" and `-c ""` a file named "".
    if (value === "") throw usage(what, `option --${name} needs a value, not an empty one`);
    // Last-one-wins would quietly drop one of two targets, keys or algorithms.
    if (opts.repeats === "refuse" && !spec.multiple && out.values.has(name)) throw usage(what, `option --${name} is given twice (${JSON.stringify(out.values.get(name))} and ${JSON.stringify(value)})`);
    out.values.set(name, value);
    if (spec.multiple) out.multi.set(name, [...(out.multi.get(name) ?? []), value]);
  }
  return out;
}

/**
 * Refuse what a subcommand that shares its option table with others does not
 * take: options it has no use for, and more positional arguments than it reads
 * (`zb image verify a.zbi b.zbi` must not check only a.zbi and say OK).
 * @param options the options it takes; null: any in its table (only the positionals are checked)
 * @throws {ZbError} USAGE
 */
export function onlyThese(args: ParsedArgs, options: readonly string[] | null, positionals: number, what: string): void {
  for (const name of options === null ? [] : [...args.flags, ...args.values.keys()]) {
    if (!options!.includes(name)) throw usage(what, `option --${name} does not apply here`);
  }
  if (args.positional.length > positionals) {
    const extra = args.positional[positionals]!;
    throw usage(what, positionals === 0 ? `unexpected argument ${JSON.stringify(extra)}` : `unexpected argument ${JSON.stringify(extra)} (it takes ${positionals === 1 ? "one" : positionals})`);
  }
}

function usage(what: string, why: string): ZbError {
  return new ZbError("USAGE", `cannot run ${what}: ${why}`, { hint: `see \`${what} --help\`` });
}
