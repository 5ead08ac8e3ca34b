/**
 * zbunlock: the initramfs stage. The boot state machine (issue 3) and the
 * HSM unlock (issue 5) fill it; until then it only prints its usage and exits
 * with the usage status, so no initramfs can mistake it for a working unlock.
 */
import { ZbError } from "../../lib/errors.ts";
import { out, err } from "../output.ts";

export const USAGE = `usage: zbunlock [--dry-run] [--boot DIR] [--root DIR]
       zb unlock [...]

Runs in the initramfs of an OS slot: updates the boot state (kernel_status,
boot counters, rollback), unseals the slot's LUKS key with the HSM and opens
the root and data partitions.

This build does not implement the unlock stage yet.`;

export function zbunlockMain(argv: string[]): number {
  if (argv.includes("--help") || argv.includes("-h")) {
    out(USAGE + "\n");
    return 0;
  }
  err(USAGE + "\n");
  throw new ZbError("USAGE", "cannot unlock: the unlock stage is not implemented in this build");
}
