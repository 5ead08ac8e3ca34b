/**
 * `zb` / `zbcli`: the command line of the running OS and of the publishing
 * machine. Each command lives in its own file; this one only dispatches.
 */
import { ZbError } from "../../lib/errors.ts";
import { bootMain } from "./boot.ts";
import { credMain } from "./cred.ts";
import { envMain } from "./env.ts";
import { hsmMain } from "./hsm.ts";
import { imageMain } from "./image.ts";
import { keyMain } from "./key.ts";
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

Run \`zb <command> --help\` for a command's options.
The same binary answers as zbunlock, zboot, zbcli, fw_printenv and fw_setenv
when called through a link of that name.`;

export async function zbMain(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "env":
      return envMain(rest);
    case "image":
      return imageMain(rest);
    case "key":
      return keyMain(rest);
    case "hsm":
      return hsmMain(rest);
    case "cred":
      return credMain(rest);
    case "status":
    case "mark-good":
    case "mark-bad":
    case "rollback":
    case "reboot":
    case "init":
      return bootMain(command, rest);
    case "version":
    case "--version":
      out(`zb ${VERSION}\n`);
      return 0;
    case "help":
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
