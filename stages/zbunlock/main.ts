/**
 * zbunlock: the initramfs half of the boot state machine (rows T* and N* of
 * lib/bootstate/machine.ts). It reads the kernel command line and the env,
 * makes the one transition for this boot and commits it; then either the
 * boot goes on or zbunlock reboots the machine itself. When the boot goes on
 * and the initramfs carries credentials (/zb/credentials), zbunlock unseals
 * the slot's LUKS keys with the HSM and opens root (and data) as
 * /dev/mapper/zb-root (zb-data); a failed unlock is a second transition
 * (rows U1–U5), which reboots to retry, roll back or recover, or stops
 * when nothing else can boot (U4).
 *
 * The boot partition: --boot DIR when the initramfs script mounted it,
 * otherwise zbunlock mounts zb.boot=DEV from the cmdline (default
 * /dev/mmcblk0p1, the Pi's SD card) as vfat on /run/zb/boot.
 */
import { onlyThese, parseArgs, type ParsedArgs } from "../../lib/cli/args.ts";
import { runTransition } from "../../lib/bootstate/commit.ts";
import { EEPROM_HINT, readBootloaderFacts, trybootProblem } from "../../lib/bootloader/eeprom.ts";
import { bootedFrom, readPlatform, type Platform } from "../../lib/bootloader/platform.ts";
import type { LoadedCredentials } from "../../lib/luks/credmeta.ts";
import { CODES, ioError, ZbError } from "../../lib/errors.ts";
import { HostSys, type Sys } from "../../lib/sys/sys.ts";
import { recordPendingReboot } from "../../lib/sys/reboot.ts";
import { jitOff, runWithJit, tieToParent } from "../../lib/sys/jit.ts";
import { FFI_BACKENDS } from "../../lib/hsm/types.ts";
import { loadBackend } from "../../lib/hsm/open.ts";
import { BOOT_OPTIONS, BOOT_OPTIONS_HELP, host, rebooter, type RebooterOptions } from "../common.ts";
import { err, out } from "../output.ts";
import { report } from "../zb/boot.ts";
import { HSM_OPTIONS } from "../zb/hsm.ts";
import { credentialBackend, credentialsOnce, lockAfterFailureStep, secondsParam, unknownParamWarnings, unlockStep } from "./unlock.ts";
import { awaitGo, DEFAULT_GO_WAIT_S, reportExitTo } from "./prestart.ts";
import { givenBoot, mountBoot, type BootMount } from "./bootmount.ts";
import { RunDocument, unrecordedStep } from "./json.ts";

export const USAGE = `usage: zbunlock [--boot DIR] [--root DIR] [--dry-run] [--no-unlock] [--lock-only] [--no-reboot] [--json]
                [--credentials DIR] [--go-file FILE] [--status-fd N] [HSM options: --config FILE,
                --tpm ADDR, --pin-file FILE, … as \`zb hsm --help\` lists them]
       zb unlock [...]

Runs in the initramfs of an OS slot: updates the boot state (kernel_status,
boot counters, rollback, recovery) for this boot and commits it. Then either
the boot goes on, or zbunlock reboots the machine (normally, or with
"0 tryboot" to re-arm a try). When the boot goes on, it unseals this slot's
LUKS keys (credentials in DIR/zb/credentials, default /zb/credentials) with
the HSM of /etc/zb/hsm.conf, waiting up to zb.hsm_wait=SECONDS (cmdline) or
its wait= for the HSM and the devices, and opens /dev/mapper/zb-root (and
zb-data). A failed unlock reboots: to retry, to the other slot, or to
recovery (docs/boot-flow.md rows U1–U5); it stops (exit status of the
failure) when the keys cannot work and nothing else can boot (U4).

  --dry-run      print the transition this boot would make; change nothing
  --no-unlock    only the boot state, no unlock
  --credentials DIR  the credentials are in DIR/zb/credentials (default: the
                 --root DIR, normally /)
  --go-file FILE load, then wait until FILE exists before doing anything (the
                 initramfs starts zbunlock early this way; up to
                 zb.prestart_wait=SECONDS, default ${DEFAULT_GO_WAIT_S}, then exit 24 having done nothing)
  --lock-only    lock this slot's sealed keys (tpm2: extend the lock PCR), stop
                 any cryptsetup still working on zb-root/zb-data and close them,
                 then exit; no boot state, no unlock (local-top runs it before a
                 panic). Exit 22 when a volume stays open, 21 when the HSM
                 is there but the keys could not be locked (the script then
                 reboots instead of a shell). Not for a running system: it
                 kills any cryptsetup naming zb-root/zb-data, closes an
                 unmounted zb-data, and exits 22 for the mounted root
  --status-fd N  also write "exited STATUS" to descriptor N as the process
                 exits, before the runtime's teardown (the initramfs script
                 waits for that line)
${BOOT_OPTIONS_HELP}
Without --boot, zbunlock mounts zb.boot=DEV from the kernel command line
(default /dev/mmcblk0p1) as vfat on /run/zb/boot, waiting up to
zb.boot_wait=SECONDS (default 10) for the device to appear.

Exit status: 0 boot on (root unlocked, or no credentials); 12 a reboot is
needed (--no-reboot, or it could not be started: its argument is then in
/run/zb/reboot-param, which local-top/zb reboots with); others:
docs/exit-codes.md.`;

const DEFAULT_BOOT_DEVICE = "/dev/mmcblk0p1";
/** How long zbunlock waits for the boot device node to appear (zb.boot_wait=). */
const DEFAULT_BOOT_WAIT_S = 10;

export async function zbunlockMain(argv: string[]): Promise<number> {
  const args = parseArgs(argv, { ...BOOT_OPTIONS, ...HSM_OPTIONS, "dry-run": {}, "no-unlock": {}, "lock-only": {}, credentials: { value: true }, "go-file": { value: true }, "status-fd": { value: true } }, "zbunlock");
  if (args.flags.has("help")) {
    out(USAGE + "\n");
    return 0;
  }
  // The child of rerunWithJit, before anything acts: it dies with the zbunlock
  // that started it, and stops here if that one is gone already (lib/sys/jit.ts).
  // Any other zbunlock (tpm2, soft: no child) only looks up the variable; one
  // without the JIT is never such a child and ignores a stray one.
  tieToParent();
  // zbunlock takes no arguments: `zb unlock status` (a typo for `zb status`) must not count a boot.
  onlyThese(args, null, 0, "zbunlock");
  const statusFd = args.values.get("status-fd");
  if (statusFd !== undefined) reportExitTo(statusFd);
  const root = args.values.get("root") ?? "/";
  const sys = new HostSys();
  const creds = credentialsOnce(sys, args.values.get("credentials") ?? root);
  if (args.flags.has("lock-only")) {
    // Not a boot: it has no document to print, and its exit status is all the boot script reads.
    if (args.flags.has("json")) throw new ZbError("USAGE", "cannot run zbunlock --lock-only with --json: it prints nothing on stdout, its exit status is the answer", { hint: "leave out --json; `zbunlock --json` reports a boot" });
    // The boot script's last step before initramfs-tools' panic: lock the keys and close the
    // volumes even when the zbunlock that ran was killed (its cryptsetup may live on) or lost
    // its status. Touches no boot state; only tpm2 keys have a lock PCR, and it needs no JIT.
    // Not 0 while a volume is (or may become) open (22), or the keys stay unsealable by an HSM
    // that answers (21): the script then reboots instead of a shell.
    return await lockAfterFailureStep(args, sys, root, creds);
  }
  // Started without the JIT (the initramfs script does so for a faster start,
  // lib/sys/jit.ts): a backend that is a C library needs it back, so the whole
  // run happens in a child with the JIT on, before any state is touched (a
  // --go-file is passed on: the child waits for it).
  const unlocks = !args.flags.has("no-unlock") && !args.flags.has("dry-run");
  const backend = unlocks ? credentialBackend(creds) : null;
  if (jitOff() && backend !== null && FFI_BACKENDS.has(backend)) {
    const status = rerunWithJit(withoutStatusFd(argv), backend);
    // A child that was killed could not clean up: its cryptsetup, given the key, may live on
    // and open the root later. One that failed by itself did so already; this finds nothing then.
    if (actedAndFailed(status)) await lockAfterFailureStep(args, sys, root, creds);
    return status;
  }
  const p = readPlatform(sys, root);
  for (const line of unknownParamWarnings(p)) err(`${line}\n`);
  const goFile = args.values.get("go-file");
  if (goFile !== undefined) {
    // Started early (stages/zbunlock/prestart.ts): evaluate the HSM backend
    // and warm up its cryptography while waiting for the go, and, when the
    // go is there first, while the boot partition mounts (both waits leave
    // the thread free; under QEMU's TCG the warm-up is 0.10–0.13 s, which
    // was on the boot's path whenever zbunlock became ready after the
    // disks). Not awaited: a warm-up that fails changes nothing, since the
    // unseal runs the same code and reports its own errors. Nothing above
    // touched a device, the HSM or the env.
    if (backend !== null) loadBackend(backend).catch(() => undefined);
    const waited = await awaitGo(goFile, secondsParam(p, "zb.prestart_wait") ?? DEFAULT_GO_WAIT_S);
    if (!args.flags.has("json")) out(`zbunlock: started early, going on after ${waited.toFixed(2)} s\n`);
  }
  // From here on zbunlock acts. When the boot ends without the unlock
  // (a failure, or a reboot it could not make), the slot's keys are locked
  // and its volumes closed all the same: initramfs-tools' panic may leave a
  // shell on the console. The status stays the failure's either way.
  let status: number | undefined;
  const doc = new RunDocument(args.flags.has("json"));
  try {
    status = await act(args, sys, root, p, creds, doc);
    return status;
  } finally {
    // A run that threw: its document (the boot is counted) before the failure line stages/run.ts prints.
    doc.flush();
    // Also when the credentials are there but cannot be read (backend null): a blob in them may still unseal.
    if (unlocks && actedAndFailed(status) && (backend !== null || unreadable(creds))) await lockAfterFailureStep(args, sys, root, creds);
  }
}

/** Credentials that are there but cannot be read as a whole (credentialBackend then says null, as for none). */
function unreadable(creds: () => LoadedCredentials | null): boolean {
  try {
    creds();
    return false;
  } catch {
    return true;
  }
}

/**
 * Does a run that ended with `status` (undefined: it threw) need the step
 * before a shell? Not after 0, and not after NOT_STARTED (24): a zbunlock
 * that gave up waiting for the go, or found its parent gone, did nothing,
 * so nothing of its can be open. Without the JIT such a run never reaches
 * the step (awaitGo throws before it); the JIT parent sees only the child's
 * status, and decides by this.
 */
function actedAndFailed(status: number | undefined): boolean {
  return status !== 0 && status !== CODES.NOT_STARTED;
}

/**
 * Failures of the boot state itself: the boot partition cannot be mounted,
 * the env cannot be read or written (both copies bad, a read-only or worn
 * FAT, no room), a variable zb does not understand, or a bug in a transition.
 * The unlock needs none of it (the credentials are in this initramfs), so
 * zbunlock boots the slot the firmware chose without recording it, loudly,
 * rather than leave the device at an initramfs shell on every boot.
 */
const UNRECORDED: ReadonlySet<string> = new Set(["IO", "ENV_CRC", "ENV_FORMAT", "ENV_NOSPACE", "STATE_INVALID", "CONFIG", "INTERNAL"]);

/** The boot transition and, when the boot goes on, the unlock; the exit status. */
async function act(args: ParsedArgs, sys: HostSys, root: string, p: Platform, creds: () => LoadedCredentials | null, doc: RunDocument): Promise<number> {
  // Before mounting anything: a kernel not booted through zb's config stops here.
  const booted = bootedFrom(p);
  const given = args.values.get("boot");
  let mount: BootMount;
  try {
    mount = given !== undefined ? givenBoot(given) : await mountBoot(root, p.params.get("zb.boot") ?? DEFAULT_BOOT_DEVICE, secondsParam(p, "zb.boot_wait") ?? DEFAULT_BOOT_WAIT_S);
  } catch (e) {
    return await unrecorded(e, args, sys, root, p, creds, booted, doc);
  }
  try {
    return await actOn(args, root, p, creds, booted, mount, doc);
  } catch (e) {
    // Only a failure of the boot transition itself: a failed unlock step returns its outcome, it does not throw.
    if (!(e instanceof StateFailure)) throw e;
    return await unrecorded(e.failure, args, sys, root, p, creds, booted, doc);
  } finally {
    // initramfs-tools moves /run into the root it boots, submounts and all: a boot partition
    // left mounted here would stay mounted, read-write, under /run/zb/boot in the running system.
    await mount.close();
  }
}

async function actOn(args: ParsedArgs, root: string, p: Platform, creds: () => LoadedCredentials | null, booted: ReturnType<typeof bootedFrom>, mount: BootMount, doc: RunDocument): Promise<number> {
  const h = host(args, mount.dir);
  const dryRun = args.flags.has("dry-run");
  const noReboot = args.flags.has("no-reboot");
  const r = rebooter(args, "zbunlock", pendingRecorded(h.sys, root));
  let outcome: ReturnType<typeof runTransition>;
  try {
    outcome = runTransition(
      h.backend,
      { kind: "boot", booted: booted.slot, tryboot: booted.tryboot },
      {
        actor: "zbunlock",
        dryRun,
        reboot: r.reboot,
        announce: (o) => {
          report(args, "zbunlock", o, noReboot, dryRun, (d) => doc.bootStep(d));
          if (o.trace.some((id) => LOST_TRY_ROWS.has(id))) warnNoTryboot(h.sys, root);
          if (o.reboot !== null) doc.flush(); // a real reboot does not return
        },
      },
    );
  } catch (e) {
    if (!dryRun && e instanceof ZbError && UNRECORDED.has(e.code)) throw new StateFailure(e);
    throw e;
  }
  if (dryRun) return 0;
  if (outcome.proceed) {
    if (!args.flags.has("json")) out(`zbunlock: booting slot ${booted.slot}${booted.tryboot ? " (try)" : ""}\n`);
    if (args.flags.has("no-unlock")) return 0;
    // The boot is counted: the partition is not needed unless the unlock fails, so it is
    // unmounted while cryptsetup works with the key (or while the HSM is waited for), not
    // after: the unmount is a process of its own, whose start costs this thread ~0.03 s under
    // TCG, and the thread is idle then. An unseal that fails at once finds it still mounted.
    const step = await unlockStep(args, h.sys, root, p, creds, booted.slot, () => mount.release());
    if (step.outcome !== null) doc.unlocked(step.outcome);
    if (step.outcome === null || step.outcome.ok) return 0;
    const f = step.outcome;
    tell(f.error);
    try {
      await mount.ensure(); // the failure is recorded on the partition
    } catch (e) {
      // It mounted minutes ago; if it will not now, the boot is counted all the same (N9): reboot
      // unrecorded, like a failure the boot counter catches (U3), rather than stop at a shell.
      err(`zbunlock: cannot record the failed unlock: ${(e as Error).message}\n`);
      doc.failureStep(unrecordedStep(ioError("mount the boot partition", e), { reboot: true, rebootSuppressed: noReboot }));
      doc.flush();
      r.reboot(null);
      if (r.pending() !== null) return CODES.REBOOT_PENDING;
      doc.fail(f.error);
      return f.error.exit;
    }
    try {
      runTransition(
        h.backend,
        { kind: "unlock-failed", booted: booted.slot, tryboot: booted.tryboot, permanent: f.permanent, why: f.kind },
        {
          actor: "zbunlock",
          dryRun: false,
          reboot: r.reboot,
          announce: (o) => {
            report(args, "zbunlock", o, noReboot, false, (d) => doc.failureStep(d));
            if (o.reboot !== null) doc.flush();
          },
        },
      );
    } catch (e) {
      // The env cannot take the failure (a full or failing partition): the boot is counted already (N9),
      // so a plain reboot lets the boot counter take it from here, as when the partition will not mount again.
      if (!(e instanceof ZbError) || !UNRECORDED.has(e.code)) throw e;
      err(`zbunlock: cannot record the failed unlock: ${e.message}\n`);
      doc.failureStep(unrecordedStep(e, { reboot: true, rebootSuppressed: noReboot }));
      doc.flush();
      r.reboot(null);
    }
    if (r.pending() !== null) return CODES.REBOOT_PENDING;
    doc.fail(f.error);
    return f.error.exit;
  }
  if (r.pending() !== null) return CODES.REBOOT_PENDING;
  throw new ZbError("INTERNAL", "internal error: the transition neither continued nor rebooted");
}

/** A failed reboot becomes exit 12, its argument left in /run/zb/reboot-param for local-top/zb (lib/sys/reboot.ts). */
function pendingRecorded(sys: Sys, root: string): RebooterOptions {
  return { pendOnFailure: true, recordPending: (arg) => recordPendingReboot(sys, root, arg) };
}

/** Rows of a try that never reached its initramfs: re-armed (N1), or given up (N2). */
const LOST_TRY_ROWS: ReadonlySet<string> = new Set(["N1", "N2"]);

/**
 * A try lost before its initramfs on a Pi 4 whose EEPROM predates tryboot
 * (`zb reboot --try` refuses such a bootloader; an EEPROM rolled back since,
 * or a try armed by an older zb, still gets here): say that the bootloader,
 * not the slot, is at fault. Only a line on the console; it never fails the boot.
 */
function warnNoTryboot(sys: Sys, root: string): void {
  let problem: string | null;
  try {
    problem = trybootProblem(readBootloaderFacts(sys, root));
  } catch {
    return;
  }
  if (problem !== null) err(`zbunlock: warning: the try never reached its initramfs, and ${problem}\nzbunlock: hint: ${EEPROM_HINT}\n`);
}

/** The boot transition failed in a way the unlock does not depend on (see {@link UNRECORDED}). */
class StateFailure extends Error {
  constructor(readonly failure: ZbError) {
    super(failure.message);
  }
}

/**
 * Boot the slot the firmware chose without recording it: say so on the
 * console, then unlock as usual. No counting and no rollback protect this
 * boot; `zb status` in the running system shows the same error until the
 * boot state is repaired. An unlock that fails now cannot be recorded
 * either: its exit status goes to the initramfs script (which panics)
 * instead of a reboot that would only come back here.
 * @throws {ZbError} the original error for --dry-run, or for codes outside {@link UNRECORDED}
 */
async function unrecorded(e: unknown, args: ParsedArgs, sys: HostSys, root: string, p: Platform, creds: () => LoadedCredentials | null, booted: ReturnType<typeof bootedFrom>, doc: RunDocument): Promise<number> {
  if (args.flags.has("dry-run") || !(e instanceof ZbError) || !UNRECORDED.has(e.code)) throw e;
  tell(e, "cannot record this boot: ");
  doc.bootStep(unrecordedStep(e, { reboot: booted.tryboot, rebootSuppressed: args.flags.has("no-reboot") }));
  if (booted.tryboot) {
    // A try that cannot be recorded must not run: its mark-good could commit a slot whose try
    // already failed (T3). A plain reboot loses the one-shot tryboot flag: config.txt's slot boots.
    err("zbunlock: a try boot does not run unrecorded: rebooting into the committed slot\n");
    doc.flush();
    const r = rebooter(args, "zbunlock", pendingRecorded(sys, root));
    r.reboot(null);
    // A reboot that returned (queued, or not performed) must not let this boot go on: 12.
    return CODES.REBOOT_PENDING;
  }
  err(`zbunlock: booting slot ${booted.slot} unrecorded: no boot counting or rollback until the boot state is repaired\n`);
  if (args.flags.has("no-unlock")) return 0;
  const step = await unlockStep(args, sys, root, p, creds, booted.slot);
  if (step.outcome !== null) doc.unlocked(step.outcome);
  if (step.outcome === null || step.outcome.ok) return 0;
  tell(step.outcome.error);
  // Not recorded either (the unlock's transition stays null): the initramfs script stops on this status.
  doc.fail(step.outcome.error);
  return step.outcome.error.exit;
}

/** An error on the console, with its hint, as zbunlock's own lines. */
function tell(e: ZbError, prefix = ""): void {
  err(`zbunlock: ${prefix}${e.message}\n`);
  if (e.hint) err(`zbunlock: hint: ${e.hint}\n`);
}

/**
 * zbunlock again, with the JIT on; its exit status is ours. Tied: the
 * initramfs script knows only this process, so the child must not go on
 * once this one is gone (killed, or ended by a signal it does not handle).
 */
function rerunWithJit(argv: string[], backend: string): number {
  try {
    return runWithJit({ argv0: "zbunlock", args: argv, tied: true });
  } catch (e) {
    throw new ZbError("IO", `cannot run zbunlock with the JIT on for the ${backend} backend: ${(e as Error).message}`, { cause: e });
  }
}

/** The child does not inherit the descriptor: only this process reports its status (which is the child's). */
function withoutStatusFd(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--status-fd") i++;
    else if (!argv[i]!.startsWith("--status-fd=")) out.push(argv[i]!);
  }
  return out;
}
