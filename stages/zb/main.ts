/**
 * `zb` / `zbcli`: the command line of the running OS and of the publishing
 * machine. Each command lives in its own file; this one only dispatches.
 *
 * The command files are loaded with require() when their command runs: the
 * bundler then evaluates a module on first use instead of at start-up, so
 * `zb env print` does not pay for the image tools' curves and tar code
 * (start-up figures: docs/boot-flow.md, "Process environment").
 */
import { ZbError } from "../../lib/errors.ts";
import { VERSION } from "../version.ts";
import { out, err } from "../output.ts";

export const USAGE = `usage: zb <command> [options]

Commands:
  status                   committed and booted slot, try state, counters, events
  mark-good                confirm the booted slot (commits a try)
  mark-bad [booted|other]  give up on a slot
  rollback                 boot the other slot from the next boot on
  reboot [--try SLOT | --recover]  reboot, try a slot once, or enter the enclave
  init --slot a|b          take over a boot partition (env, config.txt, cmdlines)
  image create|sign|info|verify|install   signed images (.zbi)
  key gen|id               image signing keys
  hsm probe|seal|unseal    HSM backends: diagnostics and sealing (tpm2, pkcs11, zymkey, soft)
  cred create|show         a slot's credentials: fresh LUKS key, sealed, for its initramfs
  env print [NAME…]        print the boot environment (fw_printenv compatible)
  env set NAME [VALUE]     set or delete a variable; --script FILE for many in one write
  env init                 create the environment (redundant pair by default)
  unlock                   the initramfs stage (same as zbunlock)
  recover                  the recovery enclave (same as zboot)
  version                  print the version

Run \`zb <command> --help\` or \`zb help <command>\` for a command's options.
The same binary answers as zbunlock, zboot, zbcli, fw_printenv and fw_setenv
when called through a link of that name.`;

const VERSION_USAGE = "usage: zb version\n\nPrint the version of this binary as `zb X.Y.Z` (also `zb --version`).";

export async function zbMain(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "env":
      return (require("./env.ts") as typeof import("./env.ts")).envMain(rest);
    case "image":
      return (require("./image.ts") as typeof import("./image.ts")).imageMain(rest);
    case "key":
      return (require("./key.ts") as typeof import("./key.ts")).keyMain(rest);
    case "hsm":
      return (require("./hsm.ts") as typeof import("./hsm.ts")).hsmMain(rest);
    case "cred":
      return (require("./cred.ts") as typeof import("./cred.ts")).credMain(rest);
    case "status":
    case "mark-good":
    case "mark-bad":
    case "rollback":
    case "reboot":
    case "init":
      return (require("./boot.ts") as typeof import("./boot.ts")).bootMain(command, rest);
    case "version":
    case "--version":
      // `zb version --help` (and `zb help version`) is help, not the version a script would parse.
      if (command === "version" && (rest[0] === "--help" || rest[0] === "-h")) {
        out(`${VERSION_USAGE}\n`);
        return 0;
      }
      out(`zb ${VERSION}\n`);
      return 0;
    case "help":
      // `zb help image` is `zb image --help`, as git and systemctl do it.
      if (rest[0] !== undefined && rest[0] !== "help") return helpOn(rest[0]);
      out(USAGE + "\n");
      return 0;
    case "--help":
    case "-h":
      out(USAGE + "\n");
      return 0;
    case undefined:
      err(USAGE + "\n");
      throw new ZbError("USAGE", "cannot run zb: no command given");
    default:
      throw new ZbError("USAGE", `cannot run zb: unknown command ${JSON.stringify(command)}`, { hint: "see `zb --help`" });
  }
}

/** A command's own help; the two whole roles (`zb unlock`, `zb recover`) answer for themselves. */
async function helpOn(topic: string): Promise<number> {
  if (topic === "unlock") return (require("../zbunlock/main.ts") as typeof import("../zbunlock/main.ts")).zbunlockMain(["--help"]);
  if (topic === "recover") return (require("../zboot/main.ts") as typeof import("../zboot/main.ts")).zbootMain(["--help"]);
  return zbMain([topic, "--help"]);
}
