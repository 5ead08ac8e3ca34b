/**
 * The fw_printenv / fw_setenv personalities: drop-ins for Debian's
 * libubootenv-tool 0.3.2, so scripts written for it keep working.
 *
 * Matched (measured against libubootenv-tool 0.3.2, see docs/env.md):
 *   - output `name=value` sorted; `-n` values only; a missing NAME prints
 *     `NAME=` (or an empty line with -n) and still exits 0
 *   - fw_setenv NAME VALUE [NAME VALUE…] sets pairs; a trailing NAME deletes
 *   - -c CONFIG (default /etc/fw_env.config), -f DEFENV (default
 *     /etc/u-boot-initial-env), -s SCRIPT
 *   - exit 247 when the config file is missing, 234 when it is malformed or
 *     names a missing file, 243 when no copy is valid and there is no default
 *     env; messages as libubootenv prints them
 * Deliberate differences: scripts also accept U-Boot's `name value` and bare
 * `name` (delete) lines, leading blanks are not part of a name, and a script
 * that changes nothing writes nothing.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "../../lib/cli/args.ts";
import { byteOrder, fromBytes, toBytes, type Vars } from "../../lib/env/codec.ts";
import { DEFAULT_FW_ENV_CONFIG } from "../../lib/env/config.ts";
import { applyChanges, parseScript, type Change } from "../../lib/env/script.ts";
import { openStore, type EnvStore } from "../../lib/env/store.ts";
import { ZbError } from "../../lib/errors.ts";
import { HostSys } from "../../lib/sys/sys.ts";
import { VERSION } from "../version.ts";
import { readInput } from "../input.ts";
import { out, err } from "../output.ts";

type Tool = "fw_printenv" | "fw_setenv";

/** libubootenv's exit statuses: its negative errno returned from main. */
const EXIT = { configMissing: 247, configInvalid: 234, envUnreadable: 243 } as const;
const DEFAULT_ENV_FILE = "/etc/u-boot-initial-env";

const SPECS = {
  config: { short: "c", value: true },
  defenv: { short: "f", value: true },
  script: { short: "s", value: true },
  namespace: { short: "m", value: true },
  "no-header": { short: "n" },
  help: { short: "h" },
  version: { short: "V" },
};

export function fwenvMain(tool: Tool, argv: string[]): number {
  const args = parseArgs(argv, SPECS, tool);
  if (args.flags.has("version")) return done(`${VERSION}\n`);
  if (args.flags.has("help")) return done(usage(tool));
  if (args.values.has("namespace")) throw new ZbError("USAGE", `cannot run ${tool}: YAML namespaces (-m) are not supported`);
  const configFile = args.values.get("config") ?? DEFAULT_FW_ENV_CONFIG;
  const sys = new HostSys();
  if (!sys.stat(configFile)) return fail("Configuration file wrong or corrupted", EXIT.configMissing);
  let store: EnvStore;
  try {
    store = openStore(sys, { configFile });
    for (const c of store.config.copies) if (!sys.stat(c.path)) throw new ZbError("CONFIG", `missing ${c.path}`);
  } catch (e) {
    if (e instanceof ZbError && (e.code === "CONFIG" || e.code === "IO")) return fail("Configuration file wrong or corrupted", EXIT.configInvalid);
    throw e;
  }
  // fw_setenv holds the env lock from its read to its write, as libubootenv
  // does: deciding on the default env outside it could overwrite an env another
  // writer has just repaired.
  const release = tool === "fw_setenv" ? store.lock() : () => undefined;
  try {
    return readAndAct(tool, store, args);
  } finally {
    release();
  }
}

function readAndAct(tool: Tool, store: EnvStore, args: ReturnType<typeof parseArgs>): number {
  let vars: Vars;
  let usedDefault = false;
  try {
    vars = store.read().vars;
  } catch (e) {
    if (!(e instanceof ZbError) || !["ENV_CRC", "ENV_FORMAT", "IO"].includes(e.code)) throw e;
    err("Cannot read environment, using default\n");
    const def = readDefault(args.values.get("defenv") ?? DEFAULT_ENV_FILE);
    if (!def) return fail("Cannot read default environment from file", EXIT.envUnreadable);
    vars = def;
    usedDefault = true;
  }
  const names = args.positional.map(toBytes);
  if (tool === "fw_printenv") return printVars(vars, names, args.flags.has("no-header"));
  const script = args.values.get("script");
  const changes = script !== undefined ? parseScript(readInput(script)) : pairs(names);
  if (usedDefault) store.create(applyChanges(vars, changes), { force: true });
  else store.update(changes);
  return 0;
}

/** `-n` drops the names only of variables asked for by name; the whole env prints as `name=value` (libubootenv 0.3.2). */
function printVars(vars: Vars, names: string[], noHeader: boolean): number {
  const shown = names.length > 0 ? names : [...vars.keys()].sort(byteOrder);
  const bare = noHeader && names.length > 0;
  const text = shown.map((n) => (bare ? "" : `${n}=`) + (vars.get(n) ?? "") + "\n").join("");
  out(fromBytes(text));
  return 0;
}

/** `a 1 b '' c` → set a to 1, set b to empty, delete c (libubootenv 0.3.2). */
function pairs(names: string[]): Change[] {
  const changes: Change[] = [];
  for (let i = 0; i < names.length; i += 2) changes.push({ name: names[i]!, value: names[i + 1] ?? null });
  return changes;
}

/** The default env file: `name=value` lines, as libuboot_load_file reads them. */
function readDefault(path: string): Vars | null {
  let text: string;
  try {
    text = readFileSync(path).toString("latin1");
  } catch {
    return null;
  }
  return applyChanges(new Map(), parseScript(text));
}

function usage(tool: Tool): string {
  const set = tool === "fw_setenv";
  return `Usage ${tool} [OPTION]${set ? " [NAME [VALUE]]…" : " [NAME]…"}
 -h, --help                       : print this help
 -c, --config <filename>          : configuration file (by default: ${DEFAULT_FW_ENV_CONFIG})
 -f, --defenv <filename>          : default environment if no one found (by default: ${DEFAULT_ENV_FILE})
 -V, --version                    : print version and exit
${set ? " -s, --script <filename>          : read variables to be set from a script (name=value or name value lines)\n" : " -n, --no-header                  : do not print variable name\n"}(zb's ${tool}; see \`zb env --help\` for the native command)
`;
}

function done(text: string): number {
  out(text);
  return 0;
}

function fail(message: string, status: number): number {
  err(message + "\n");
  return status;
}
