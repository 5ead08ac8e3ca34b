/**
 * zbunlock's boot partition: the one given with --boot, or the device it
 * mounts itself (zb.boot=, zb.boot_wait=), released while cryptsetup opens
 * the root with the key, and mounted again when a failure must be recorded.
 */
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ZbError } from "../../lib/errors.ts";
import { err } from "../output.ts";

const MOUNT_POINT = "/run/zb/boot";

/**
 * The boot partition for one run: where it is, and the mount zbunlock made
 * (none when it was given with --boot or mounted before zbunlock started).
 */
export interface BootMount {
  readonly dir: string;
  /** Start unmounting it in the background (a mount of zbunlock's own). */
  release(): void;
  /** Mounted again, if release() unmounted it. @throws {ZbError} IO */
  ensure(): Promise<void>;
  /** Unmounted, if zbunlock mounted it; never throws (a warning at worst). */
  close(): Promise<void>;
}

/** A boot partition zbunlock did not mount (--boot DIR, or mounted before it started): nothing to release or close. */
export function givenBoot(dir: string): BootMount {
  return { dir, release: () => undefined, ensure: async () => undefined, close: async () => undefined };
}

/**
 * Mount the boot partition (vfat) on <root>/run/zb/boot unless it is mounted
 * there already, waiting up to `waitS` seconds for the device node.
 * Asynchronous, so that what zbunlock started before (the HSM backend's
 * warm-up, main.ts) goes on while `mount` runs.
 * @throws {ZbError} IO when the device does not appear or will not mount
 */
export async function mountBoot(root: string, device: string, waitS: number): Promise<BootMount> {
  const mountPoint = join(root, MOUNT_POINT);
  const mounts = existsSync(join(root, "proc/mounts")) ? readFileSync(join(root, "proc/mounts"), "utf8") : "";
  if (mounts.split("\n").some((l) => l.split(" ")[1] === mountPoint)) return givenBoot(mountPoint);
  // The boot medium may be probed after the initramfs starts (USB, a slow
  // SD card): wait for its node like the kernel's rootwait/rootdelay do.
  const deadline = performance.now() + waitS * 1000;
  while (!existsSync(device)) {
    if (performance.now() >= deadline) {
      throw new ZbError("IO", `cannot mount the boot partition: ${device} did not appear within ${waitS} s`, {
        hint: "set zb.boot=DEVICE (and zb.boot_wait=SECONDS) on the kernel command line, or pass --boot DIR",
      });
    }
    await Bun.sleep(50);
  }
  mkdirSync(mountPoint, { recursive: true });
  const mount = async () => {
    const failed = await runTool(["mount", "-t", "vfat", device, mountPoint]);
    if (failed !== null) {
      throw new ZbError("IO", `cannot mount the boot partition ${device} on ${mountPoint}: ${failed}`, {
        hint: "set zb.boot=DEVICE on the kernel command line, or pass --boot DIR",
      });
    }
  };
  await mount();
  let mounted = true;
  let unmounting: Promise<void> | null = null;
  const warn = (why: string) => err(`zbunlock: warning: cannot unmount the boot partition ${mountPoint}: ${why}\n`);
  /** Never rejects: the boot goes on either way (what was written is synced by the umount or by the reboot). */
  const unmount = async () => {
    try {
      const failed = await runTool(["umount", mountPoint]);
      if (failed === null) mounted = false;
      else warn(failed);
    } catch (e) {
      warn((e as Error).message); // no umount to run
    }
  };
  return {
    dir: mountPoint,
    release() {
      if (mounted && !unmounting) unmounting = unmount();
    },
    async ensure() {
      if (unmounting) await unmounting;
      unmounting = null;
      if (!mounted) {
        await mount();
        mounted = true;
      }
    },
    async close() {
      if (unmounting) await unmounting;
      unmounting = null;
      if (mounted) await unmount();
    },
  };
}

/**
 * Run `mount` or `umount` without blocking the event loop.
 * @returns null when it succeeded, else why not (its stderr, or its exit status)
 * @throws when it cannot be started (not installed)
 */
async function runTool(argv: string[]): Promise<string | null> {
  const p = Bun.spawn(argv, { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
  const [code, text] = [await p.exited, await new Response(p.stderr).text()];
  return code === 0 ? null : text.trim() || `exit ${code}`;
}
