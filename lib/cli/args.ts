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
  /**
   * {@link parseGetopt} only: no abbreviation selects it, only its full
   * name. For an option zb adds to a tool's own set, which must not make an
   * abbreviation the tool takes ambiguous.
   */
  noAbbrev?: boolean;
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
 * @example parseArgs(["-c", "fw.config", "zb_slot"], { config: { short: "c", value: true } }, "zb env print").values.get("config") // "fw.config"
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
 * Parse argv as glibc's getopt_long does for libubootenv's fw_printenv and
 * fw_setenv, which the personalities replace in scripts: an unknown option,
 * a value given to a flag (`--no-header=1`) and a missing value are warned
 * about in glibc's words and skipped, and the command goes on (libubootenv's
 * option switch has no default branch: `fw_printenv -x NAME` warns and
 * prints NAME, exit 0). Short options group (`-nc FILE`), a long name may be
 * cut to a unique prefix (`--conf FILE`), options mix with arguments, `--`
 * ends them, and the last of a repeated option wins.
 * @param how.what the command, for messages (`fw_printenv`)
 * @param how.prog the name glibc's warnings start with: argv[0] as typed
 * @param how.warn gets each warning, one line without its newline
 * @throws {ZbError} USAGE for an empty value, which no option of zb can use (as {@link parseArgs})
 * @example parseGetopt(["-x", "zb_slot"], specs, { what: "fw_printenv", prog: "fw_printenv", warn: console.error }).positional // ["zb_slot"]
 */
export function parseGetopt(argv: readonly string[], specs: OptionSpecs, how: { what: string; prog: string; warn: (warning: string) => void }): ParsedArgs {
  const { what, prog, warn } = how;
  const byShort = new Map<string, string>();
  for (const [long, s] of Object.entries(specs)) if (s.short) byShort.set(s.short, long);
  const out: ParsedArgs = { flags: new Set(), values: new Map(), multi: new Map(), positional: [] };
  const take = (name: string, value: string | undefined): void => {
    if (value === undefined) out.flags.add(name);
    else if (value === "") throw usage(what, `option --${name} needs a value, not an empty one`);
    else {
      out.values.set(name, value);
      if (specs[name]!.multiple) out.multi.set(name, [...(out.multi.get(name) ?? []), value]);
    }
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      out.positional.push(...argv.slice(i + 1));
      break;
    }
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      const typed = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      const name = longName(specs, typed, arg, prog, warn);
      if (name === null) continue;
      if (!specs[name]!.value) {
        if (eq < 0) take(name, undefined);
        else warn(`${prog}: option '--${name}' doesn't allow an argument`);
      } else if (eq >= 0) take(name, arg.slice(eq + 1));
      else if (i + 1 < argv.length) take(name, argv[++i]);
      else warn(`${prog}: option '--${name}' requires an argument`);
      continue;
    }
    if (!arg.startsWith("-") || arg === "-") {
      out.positional.push(arg);
      continue;
    }
    // A group of short options; one that takes a value takes the rest of the group, or the next argument.
    for (let j = 1; j < arg.length; j++) {
      const name = byShort.get(arg[j]!);
      if (name === undefined) {
        warn(`${prog}: invalid option -- '${arg[j]}'`);
        continue;
      }
      if (!specs[name]!.value) {
        take(name, undefined);
        continue;
      }
      if (j + 1 < arg.length) take(name, arg.slice(j + 1));
      else if (i + 1 < argv.length) take(name, argv[++i]);
      else warn(`${prog}: option requires an argument -- '${arg[j]}'`);
      break;
    }
  }
  return out;
}

/** The long option `typed` names: itself, or the one option it is a prefix of; null (warned) when none or several. */
function longName(specs: OptionSpecs, typed: string, arg: string, prog: string, warn: (warning: string) => void): string | null {
  if (typed in specs) return typed;
  const matches = typed === "" ? [] : Object.keys(specs).filter((n) => n.startsWith(typed) && !specs[n]!.noAbbrev);
  if (matches.length === 1) return matches[0]!;
  if (matches.length === 0) warn(`${prog}: unrecognized option '${arg}'`);
  else warn(`${prog}: option '${arg}' is ambiguous; possibilities:${matches.map((m) => ` '--${m}'`).join("")}`);
  return null;
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
