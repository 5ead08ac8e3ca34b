/**
 * `zb env print|set|init`: the boot environment from the command line.
 * Output of `print` is byte-for-byte what fw_printenv prints for the same env.
 */
import { parseArgs, type OptionSpecs, type ParsedArgs } from "../../lib/cli/args.ts";
import { byteOrder, fromBytes, toBytes, type Vars } from "../../lib/env/codec.ts";
import { DEFAULT_BOOT_DIR, DEFAULT_ENV_SIZE } from "../../lib/env/config.ts";
import { applyChanges, changeProblem, parseScript, type Change } from "../../lib/env/script.ts";
import { describe, openStore, type EnvState, type EnvStore, type WriteResult } from "../../lib/env/store.ts";
import { ZbError } from "../../lib/errors.ts";
import { HostSys } from "../../lib/sys/sys.ts";
import { readInput } from "../input.ts";
import { out } from "../output.ts";
import { subcommand } from "../common.ts";

const STORAGE = `Storage (one of):
  --boot DIR        zb's pair DIR/zb/zb.env + DIR/zb/zb.env.redund, 0x${DEFAULT_ENV_SIZE.toString(16)} bytes each
                    (default DIR: ${DEFAULT_BOOT_DIR})
  -c, --config FILE an fw_env.config (one line = single copy, two = redundant pair)`;

const USAGE = {
  print: `usage: zb env print [--boot DIR | -c FILE] [-n] [--json] [NAME…]

Print all variables, or the named ones, as name=value lines sorted by name.
  -n, --no-header   print values only
  --json            print {"vars": {…}, "storage": {…}} instead
A name that is not set is an error (exit 1).

${STORAGE}`,
  set: `usage: zb env set [--boot DIR | -c FILE] NAME [VALUE]
       zb env set [--boot DIR | -c FILE] --script FILE|-

Set NAME to VALUE, or delete it when VALUE is missing or empty. With --script,
apply every line of FILE (- = stdin) in one write:
  name value        set (the value is the rest of the line)
  name=value        set (libubootenv's form)
  name              delete
  # comment         ignored, as are blank lines
Nothing is written when nothing changes. In a redundant pair only the inactive
copy is written, so a power cut leaves the previous env readable.
  --json            print {"written": bool, "copy": N, "flag": N}

${STORAGE}`,
  init: `usage: zb env init [--boot DIR | -c FILE] [--script FILE|-] [--force] [--json]

Create the env (both copies of a pair), empty or from a script. Refuses to
replace a valid env unless --force.

${STORAGE}`,
};

const COMMON: OptionSpecs = {
  boot: { value: true },
  config: { short: "c", value: true },
  json: {},
  help: { short: "h" },
};

export function envMain(argv: string[]): number {
  const [first, ...rest] = argv;
  const sub = subcommand("env", first, ["print", "set", "init"], `${USAGE.print}\n\n${USAGE.set}\n\n${USAGE.init}\n`);
  if (sub === "print") return run("print", rest, { "no-header": { short: "n" } }, print);
  if (sub === "set") return run("set", rest, { script: { short: "s", value: true } }, set);
  if (sub === "init") return run("init", rest, { script: { short: "s", value: true }, force: {} }, init);
  return 0;
}

type Sub = keyof typeof USAGE;

function run(sub: Sub, argv: string[], extra: OptionSpecs, body: (store: EnvStore, args: ParsedArgs) => number): number {
  const args = parseArgs(argv, { ...COMMON, ...extra }, `zb env ${sub}`, { repeats: "refuse" });
  if (args.flags.has("help")) {
    out(USAGE[sub] + "\n");
    return 0;
  }
  const configFile = args.values.get("config");
  const bootDir = args.values.get("boot");
  if (configFile !== undefined && bootDir !== undefined) {
    throw new ZbError("USAGE", `cannot run zb env ${sub}: give either --boot or --config, not both`);
  }
  const store = openStore(new HostSys(), {
    ...(configFile === undefined ? {} : { configFile }),
    ...(bootDir === undefined ? {} : { bootDir }),
  });
  return body(store, args);
}

function print(store: EnvStore, args: ParsedArgs): number {
  const state = store.read();
  const names = args.positional.map(toBytes);
  const missing = names.filter((n) => !state.vars.has(n));
  if (missing.length > 0) {
    throw new ZbError("NOT_FOUND", `cannot print ${missing.map((n) => JSON.stringify(utf8(n))).join(", ")}: not defined in ${store.config.source}`);
  }
  const shown = names.length > 0 ? names : [...state.vars.keys()].sort(byteOrder);
  if (args.flags.has("json")) {
    const vars: Record<string, string> = {};
    for (const n of shown) vars[utf8(n)] = utf8(state.vars.get(n)!);
    writeJson({ vars, storage: storageJson(store, state) });
    return 0;
  }
  const noHeader = args.flags.has("no-header");
  const lines = shown.map((n) => (noHeader ? "" : `${n}=`) + state.vars.get(n)! + "\n");
  out(fromBytes(lines.join("")));
  return 0;
}

function set(store: EnvStore, args: ParsedArgs): number {
  const script = args.values.get("script");
  let changes: Change[];
  if (script !== undefined) {
    if (args.positional.length > 0) throw new ZbError("USAGE", "cannot run zb env set: give either --script or NAME [VALUE], not both");
    changes = parseScript(readInput(script));
  } else {
    const [name, value, ...extra] = args.positional.map(toBytes);
    if (name === undefined) throw new ZbError("USAGE", "cannot run zb env set: no variable name given", { hint: "see `zb env set --help`" });
    if (extra.length > 0) {
      throw new ZbError("USAGE", `cannot set ${utf8(name)}: more than one value given`, { hint: "quote a value that contains spaces" });
    }
    // An empty VALUE deletes, as in U-Boot's setenv and snapd.
    changes = [{ name, value: value === undefined || value === "" ? null : value }];
    const bad = changeProblem(changes[0]!);
    if (bad !== null) {
      throw new ZbError("USAGE", `cannot set ${JSON.stringify(utf8(name))}: ${bad}`, name.includes("=") ? { hint: "NAME and VALUE are two arguments: zb env set NAME VALUE" } : {});
    }
  }
  report(store.update(changes), args);
  return 0;
}

function init(store: EnvStore, args: ParsedArgs): number {
  const script = args.values.get("script");
  const vars: Vars = script === undefined ? new Map() : applyChanges(new Map(), parseScript(readInput(script)));
  report(store.create(vars, { force: args.flags.has("force") }), args);
  return 0;
}

function report(result: WriteResult, args: ParsedArgs): void {
  if (!args.flags.has("json")) return;
  writeJson({ written: result.written, copy: result.copy ?? null, flag: result.flag ?? null });
}

function storageJson(store: EnvStore, state: EnvState): object {
  return {
    source: store.config.source,
    redundant: store.layout.redundant,
    size: store.layout.size,
    copies: store.config.copies.map((c) => ({ path: c.path, offset: c.offset, name: describe(c) })),
    active: state.active,
    flag: state.flag ?? null,
    degraded: state.degraded ? state.degraded.why : null,
  };
}

function utf8(byteString: string): string {
  return Buffer.from(byteString, "latin1").toString("utf8");
}

function writeJson(value: unknown): void {
  out(JSON.stringify(value, null, 2) + "\n");
}
