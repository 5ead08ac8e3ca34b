/**
 * Entry point of the multi-call binary: dispatch on basename(argv[0]), or on
 * the first argument when called as `zb`/`zbcli` (`zb unlock`, `zb recover`).
 *
 * Each role is loaded with require() when it runs, so the bundler evaluates
 * only that role's modules: zbunlock, which starts on every boot, does not
 * evaluate the image tools, curves and tar code of `zb` (natively ~15 → ~10 ms
 * for `zbunlock --help` without the JIT; docs/boot-flow.md, "Process environment").
 */
import { basename } from "node:path";
import { checkUtf8 } from "./argv.ts";
import { runStage } from "./run.ts";

type Role = (argv: string[]) => Promise<number> | number;
const zbunlock: Role = (argv) => (require("./zbunlock/main.ts") as typeof import("./zbunlock/main.ts")).zbunlockMain(argv);
const zboot: Role = (argv) => (require("./zboot/main.ts") as typeof import("./zboot/main.ts")).zbootMain(argv);
// argv[0] as typed: getopt's warnings start with it, as libubootenv's do.
const fwenv = (tool: "fw_printenv" | "fw_setenv"): Role => (argv) => (require("./fwenv/main.ts") as typeof import("./fwenv/main.ts")).fwenvMain(tool, argv, process.argv0 || tool);

/** Role names recognised in argv[0]; anything else behaves as `zb`. */
const byName: Record<string, Role> = {
  zbunlock,
  zboot,
  fw_printenv: fwenv("fw_printenv"),
  fw_setenv: fwenv("fw_setenv"),
};

/** Subcommands of `zb` that are whole roles. */
const byRole: Record<string, Role> = {
  unlock: zbunlock,
  recover: zboot,
};

// A compiled Bun binary reports its own path in argv[0] only through
// process.argv0 when started via a symlink; argv[1] is the virtual script path.
const invoked = basename(process.argv0 || process.argv[0] || "zb");
const rest = process.argv.slice(2);

void runStage(() => {
  checkUtf8(byName[invoked] ? invoked : "zb", rest);
  const named = byName[invoked];
  if (named) return named(rest);
  const role = rest[0] !== undefined ? byRole[rest[0]] : undefined;
  if (role) return role(rest.slice(1));
  return (require("./zb/main.ts") as typeof import("./zb/main.ts")).zbMain(rest);
});
