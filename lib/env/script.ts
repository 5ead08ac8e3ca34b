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
 */
import { ZbError } from "../errors.ts";
import { checkName, checkValue } from "./codec.ts";

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
 * @throws {ZbError} ENV_FORMAT for an invalid name
 */
export function parseScript(text: string): Change[] {
  const changes: Change[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.replace(/\r$/, "").replace(/^[ \t]+/, "");
    if (line === "" || line.startsWith("#")) return;
    const m = /^([^=\s]*)(?:=|[ \t]+|$)(.*)$/.exec(line)!;
    const name = m[1]!;
    const value = m[2]!;
    try {
      checkName(name);
      if (value !== "") checkValue(name, value);
    } catch (e) {
      throw new ZbError("ENV_FORMAT", `cannot parse script line ${i + 1}: ${(e as Error).message}`);
    }
    changes.push({ name, value: value === "" ? null : value });
  });
  return changes;
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
