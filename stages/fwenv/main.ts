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
 *     env, 1 for a fw_setenv NAME with '='; messages as libubootenv prints them
 *   - options as glibc's getopt_long reads them: an unknown one is warned
 *     about and skipped (`fw_printenv -x NAME` prints NAME, exit 0)
 * Deliberate differences: scripts also accept U-Boot's `name value` and bare
 * `name` (delete) lines, leading blanks are not part of a name, a script
 * that changes nothing writes nothing, and an empty NAME or a script line
 * that U-Boot could not read back is refused (docs/env.md).
 */
import { parseGetopt, type ParsedArgs } from "../../lib/cli/args.ts";
import { asText, byteOrder, fromBytes, toBytes, type Vars } from "../../lib/env/codec.ts";
import { DEFAULT_FW_ENV_CONFIG } from "../../lib/env/config.ts";
import { applyChanges, changeProblem, MAX_SCRIPT_BYTES, parseScript, type Change } from "../../lib/env/script.ts";
import { openStore, type EnvStore } from "../../lib/env/store.ts";
import { ZbError } from "../../lib/errors.ts";
import { readFileBounded } from "../../lib/sys/bounded.ts";
import { HostSys } from "../../lib/sys/sys.ts";
import { VERSION } from "../version.ts";
import { readInput } from "../input.ts";
import { out, err } from "../output.ts";

type Tool = "fw_printenv" | "fw_setenv";

/** libubootenv's exit statuses: its negative errno returned from main. */
const EXIT = { configMissing: 247, configInvalid: 234, envUnreadable: 243, illegalName: 1 } as const;
const DEFAULT_ENV_FILE = "/etc/u-boot-initial-env";

const SPECS = {
  config: { short: "c", value: true },
  defenv: { short: "f", value: true },
  script: { short: "s", value: true },
  // Not in libubootenv 0.3.2 (added with YAML configs in 0.3.4): taken only to be refused, and
  // never by abbreviation, so `--n` stays --no-header as there.
  namespace: { short: "m", value: true, noAbbrev: true },
  "no-header": { short: "n" },
  help: { short: "h" },
  version: { short: "V" },
};

/**
 * Run `tool` on its arguments.
 * @param prog argv[0] as typed, which glibc's option warnings start with
 * @returns the exit status (libubootenv's, see EXIT); zb's own failures are thrown
 */
export function fwenvMain(tool: Tool, argv: string[], prog: string = tool): number {
  // getopt_long's leniency, as libubootenv: `fw_printenv -x NAME` warns and still prints NAME.
  const args = parseGetopt(argv, SPECS, { what: tool, prog, warn: (warning) => err(`${warning}\n`) });
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
  // A script is read before the lock: a slow one (`-s -` from a pipe) must not hold other env writers off.
  // It is parsed after the env is read, as libubootenv does: no env and no default env is 243 first.
  const script = tool === "fw_setenv" ? args.values.get("script") : undefined;
  const scriptText = script !== undefined ? readInput(script) : null;
  // fw_setenv holds the env lock from its read to its write, as libubootenv
  // does: deciding on the default env outside it could overwrite an env another
  // writer has just repaired.
  const release = tool === "fw_setenv" ? store.lock() : () => undefined;
  try {
    return readAndAct(tool, store, args, scriptText);
  } finally {
    release();
  }
}

function readAndAct(tool: Tool, store: EnvStore, args: ParsedArgs, scriptText: ReturnType<typeof readInput> | null): number {
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
  const scripted = scriptText !== null ? parseScript(scriptText) : null;
  const changes = scripted ?? pairs(names);
  // After the read, as libubootenv checks its pairs: no env and no default env is 243 first.
  const bad = scripted === null ? changes.find((c) => changeProblem(c) !== null) : undefined;
  if (bad) return fail(illegalName(bad.name), EXIT.illegalName);
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

/**
 * libubootenv 0.3.2's refusal of a NAME with '=' (exit 1, nothing written),
 * in its words; an empty NAME, which it would store as an entry U-Boot cannot
 * read, is refused the same way.
 */
function illegalName(name: string): string {
  return name === "" ? "Error: empty variable name" : `Error: illegal character '=' in variable name "${asText(name)}"`;
}

/** `a 1 b '' c` → set a to 1, set b to empty, delete c (libubootenv 0.3.2). */
function pairs(names: string[]): Change[] {
  const changes: Change[] = [];
  for (let i = 0; i < names.length; i += 2) changes.push({ name: names[i]!, value: names[i + 1] ?? null });
  return changes;
}

/**
 * The default env file: `name=value` lines, as libuboot_load_file reads
 * them, at most {@link MAX_SCRIPT_BYTES}. One that cannot be read, is larger
 * or holds a line zb cannot store is no default env (null: exit 243).
 */
function readDefault(path: string): Vars | null {
  try {
    const bytes = readFileBounded(path, { max: MAX_SCRIPT_BYTES, code: "USAGE" });
    return applyChanges(new Map(), parseScript(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1")));
  } catch (e) {
    if (e instanceof ZbError && (e.code === "IO" || e.code === "USAGE")) return null;
    throw e;
  }
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
