/**
 * Entry point of the multi-call binary: dispatch on basename(argv[0]), or on
 * the first argument when called as `zb`/`zbcli` (`zb unlock`, `zb recover`).
 */
import { basename } from "node:path";
import { runStage } from "./run.ts";
import { zbMain } from "./zb/main.ts";
import { zbunlockMain } from "./zbunlock/main.ts";
import { zbootMain } from "./zboot/main.ts";
import { fwenvMain } from "./fwenv/main.ts";

/** Role names recognised in argv[0]; anything else behaves as `zb`. */
const byName: Record<string, (argv: string[]) => Promise<number> | number> = {
  zbunlock: zbunlockMain,
  zboot: zbootMain,
  fw_printenv: (argv) => fwenvMain("fw_printenv", argv),
  fw_setenv: (argv) => fwenvMain("fw_setenv", argv),
};

/** Subcommands of `zb` that are whole roles. */
const byRole: Record<string, (argv: string[]) => Promise<number> | number> = {
  unlock: zbunlockMain,
  recover: zbootMain,
};

// A compiled Bun binary reports its own path in argv[0] only through
// process.argv0 when started via a symlink; argv[1] is the virtual script path.
const invoked = basename(process.argv0 || process.argv[0] || "zb");
const rest = process.argv.slice(2);

void runStage(() => {
  const named = byName[invoked];
  if (named) return named(rest);
  const role = rest[0] !== undefined ? byRole[rest[0]] : undefined;
  if (role) return role(rest.slice(1));
  return zbMain(rest);
});
