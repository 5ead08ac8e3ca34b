/**
 * Change lists for `zb env set --script` and `fw_setenv -s`: many changes
 * applied in one write.
 *
 * Accepted line forms (a superset of both tools, unambiguous because a name
 * can never contain '='):
 *   name value…   U-Boot's fw_setenv: the value is the rest of the line
 *   name=value…   libubootenv 0.3.x
 *   name          delete (U-Boot); `name=` and `name ` with no value delete too
 *   # comment     and blank lines are skipped
 * Leading blanks are skipped (libubootenv keeps them in the name, which U-Boot
 * could never read back as a variable; we do not copy that).
 *
 * A bad name or value in a script, or in a NAME on the command line, is the
 * user's input error (USAGE, exit 2), not a malformed env: ENV_FORMAT shares
 * exit 3 with ENV_CRC, whose remedy is recreating the env (`zb env init
 * --force`), and a script reacting to 3 that way would wipe the boot state
 * for a typo.
 */
import { ZbError } from "../errors.ts";
import { checkName, checkValue } from "./codec.ts";
import { MAX_ENV_SIZE } from "./config.ts";

/**
 * Largest script read (`--script`, `fw_setenv -s`, fw_setenv's default env
 * file): 16 MiB, the largest env zb takes ({@link MAX_ENV_SIZE}); what one
 * script sets must fit one env, and the Pi's is 16 KiB. A larger input is
 * no script (`--script /dev/zero`, a partition) and is refused once these
 * bytes are past instead of read until memory runs out.
 */
export const MAX_SCRIPT_BYTES = MAX_ENV_SIZE;

/**
 * One change: set a value (possibly empty), or delete (value null). Scripts
 * never produce empty values (`name=` deletes there); fw_setenv's `NAME ''`
 * stores one, as libubootenv 0.3.2 does.
 */
export interface Change {
  name: string;
  value: string | null;
}

/**
 * Parse a script given as a byte string (latin1, one char per byte).
 * @throws {ZbError} USAGE for a line with an invalid name or value, naming the line
 * @example parseScript("bootdelay 3\nold\n") // [{name: "bootdelay", value: "3"}, {name: "old", value: null}]
 */
export function parseScript(text: string): Change[] {
  const changes: Change[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.replace(/\r$/, "").replace(/^[ \t]+/, "");
    if (line === "" || line.startsWith("#")) return;
    const m = /^([^=\s]*)(?:=|[ \t]+|$)(.*)$/.exec(line)!;
    const change = { name: m[1]!, value: m[2] === "" ? null : m[2]! };
    const bad = changeProblem(change);
    if (bad !== null) throw new ZbError("USAGE", `cannot parse script line ${i + 1}: ${bad}`);
    changes.push(change);
  });
  return changes;
}

/**
 * Why a change the user typed cannot be stored, or null when it can: an
 * empty name, a name with `=` or NUL, a value with NUL (docs/env.md,
 * "Binary format"). For the command line and scripts, which report it as
 * USAGE; {@link applyChanges} still refuses such a change (ENV_FORMAT).
 * @example changeProblem({ name: "a=b", value: "c" }) // "the variable name contains '='"
 */
export function changeProblem(c: Change): string | null {
  if (c.name === "") return "the variable name is empty";
  if (c.name.includes("=")) return "the variable name contains '='";
  if (c.name.includes("\0")) return "the variable name contains NUL";
  if (c.value?.includes("\0")) return "the value contains NUL";
  return null;
}

/**
 * Apply changes to a copy of `vars`; a later change to the same name wins.
 * @throws {ZbError} ENV_FORMAT for an invalid name or value
 */
export function applyChanges(vars: ReadonlyMap<string, string>, changes: readonly Change[]): Map<string, string> {
  const out = new Map(vars);
  for (const c of changes) {
    checkName(c.name);
    if (c.value === null) out.delete(c.name);
    else {
      checkValue(c.name, c.value);
      out.set(c.name, c.value);
    }
  }
  return out;
}
