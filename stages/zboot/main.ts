/**
 * zboot: the recovery enclave. Filled by later issues (image install,
 * recovery); until then it only prints its usage and exits with the usage
 * status.
 */
import { ZbError } from "../../lib/errors.ts";
import { out, err } from "../output.ts";

export const USAGE = `usage: zboot [--boot DIR] [--root DIR] [--image FILE|URL]
       zb recover [...]

The recovery enclave: finds a signed image (USB drive, HTTPS endpoint or a
console prompt), verifies it, installs it into the inactive slot with fresh
keys, switches to it and reboots.

This build does not implement the recovery stage yet.`;

export function zbootMain(argv: string[]): number {
  if (argv.includes("--help") || argv.includes("-h")) {
    out(USAGE + "\n");
    return 0;
  }
  err(USAGE + "\n");
  throw new ZbError("USAGE", "cannot recover: the recovery stage is not implemented in this build");
}
