/**
 * The piboot backend: the Raspberry Pi firmware boots without U-Boot and
 * never writes anything, so zb keeps the state in its env pair and translates
 * it into the files the firmware reads (snapd's piboot design, seeds/004):
 *
 *   <boot>/zb/config.txt      the user's reference config (their lines kept)
 *   <boot>/zb/cmdline.txt     the user's reference kernel command line
 *   <boot>/config.txt         generated: os_prefix=slot-X/ (or zboot/ in recover mode)
 *   <boot>/tryboot.txt        generated while a try is pending: os_prefix=slot-Y/,
 *                             cmdline=cmdline-try.txt (or zboot/ to install)
 *   <boot>/slot-X/cmdline.txt      reference + zb.slot=X
 *   <boot>/slot-X/cmdline-try.txt  reference + zb.slot=X kernel_status=trying
 *
 * All generated files are replaced atomically (lib/sys/atomic.ts).
 */
import { join } from "node:path";
import { ZbError } from "../errors.ts";
import type { Vars } from "../env/codec.ts";
import type { Change } from "../env/script.ts";
import { defaultConfig } from "../env/config.ts";
import { EnvStore, type EnvState } from "../env/store.ts";
import { removeFileDurably, writeFileAtomic } from "../sys/atomic.ts";
import type { Sys } from "../sys/sys.ts";
import type { BootState, Slot } from "../bootstate/state.ts";
import { missingUnder } from "./pifolder.ts";
import { prefixTarget, readSelection, renderCmdline, renderConfig, rendersFrom, type ConfigSelection } from "./piconfig.ts";
import type { Bootloader, GeneratedConfig, RebootArgs } from "./types.ts";

export const REFERENCE_CONFIG = "zb/config.txt";
export const REFERENCE_CMDLINE = "zb/cmdline.txt";
export const TRY_CMDLINE = "cmdline-try.txt";

export class PiBoot implements Bootloader, GeneratedConfig, RebootArgs {
  readonly name = "piboot";
  readonly store: EnvStore;

  constructor(
    private readonly sys: Sys,
    readonly bootDir: string,
    store?: EnvStore,
  ) {
    this.store = store ?? new EnvStore(sys, defaultConfig(bootDir));
  }

  lock(): () => void {
    return this.store.lock();
  }

  present(): boolean {
    return this.sys.stat(this.path(REFERENCE_CONFIG)) !== null;
  }

  /** The last read, for a write computed from it (writeVars' `from`). */
  private lastRead: EnvState | null = null;

  readVars(): Vars {
    this.lastRead = this.store.read();
    return this.lastRead.vars;
  }

  writeVars(changes: readonly Change[], from?: Vars): void {
    // Only the very object the last read returned counts; anything else reads again.
    const basis = from !== undefined && this.lastRead?.vars === from ? this.lastRead : undefined;
    this.lastRead = null;
    this.store.update(changes, basis);
  }

  writeConfig(state: BootState): void {
    if (state.mode === "recover") return this.writeSelection("config.txt", "zboot/", "cmdline.txt", null);
    this.writeSelection("config.txt", `slot-${state.committed}/`, "cmdline.txt", state.committed);
  }

  writeTryboot(state: BootState): void {
    if (state.mode === "install") return this.writeSelection("tryboot.txt", "zboot/", "cmdline.txt", null);
    if (!state.trySlot) throw new ZbError("INTERNAL", "internal error: tryboot.txt requested with no try pending");
    this.writeSelection("tryboot.txt", `slot-${state.trySlot}/`, TRY_CMDLINE, state.trySlot);
  }

  removeTryboot(): void {
    removeFileDurably(this.sys, this.path("tryboot.txt"));
  }

  /**
   * zboot/ holds what the firmware needs to boot from it ({@link missingIn}).
   * The firmware ignores an os_prefix under which it finds no kernel or no
   * .dtb file (Pi docs, config.txt "os_prefix"), so a config.txt pointing at
   * an empty zboot/ boots nothing.
   */
  hasEnclave(): boolean {
    return this.missingIn("zboot/") === null;
  }

  /**
   * slot-X/ holds what the firmware needs to boot it ({@link missingIn}): a
   * rollback or hand-over to a slot without it would boot nothing. A folder
   * zb cannot read (a failing card, a corrupt FAT directory) counts as
   * bootable, as every slot did before zb looked: the answer decides
   * automatic rows at every boot, and an IO error here must not stop them all.
   * @param warn told why, when the folder could not be read
   * @throws {ZbError} never IO; anything else is a bug
   */
  slotBootable(slot: Slot, warn?: (message: string) => void): boolean {
    try {
      return this.missingIn(`slot-${slot}/`) === null;
    } catch (e) {
      if (!(e instanceof ZbError) || e.code !== "IO") throw e;
      warn?.(`cannot tell whether slot-${slot}/ holds a kernel and a .dtb file (${e.message}): taking slot ${slot} as bootable`);
      return true;
    }
  }

  /**
   * What keeps the firmware from booting under `prefix` (`slot-b/`, `zboot/`),
   * for messages, or null when nothing does. Lenient (lib/bootloader/pifolder.ts):
   * only a missing folder, no file any `kernel=` line or default name could
   * mean, or no .dtb file (nor a `device_tree=` file) count. One rule for
   * the automatic fact, the enclave and `zb reboot --try`'s refusal: a
   * stricter one refused tries of healthy slots for the same reasons.
   * @throws {ZbError} IO when the folder or the reference config cannot be read
   */
  missingIn(prefix: string): string | null {
    const ref = this.path(REFERENCE_CONFIG);
    return missingUnder(this.sys, this.bootDir, prefix, this.sys.stat(ref) ? this.sys.readText(ref) : "");
  }

  rebootArgument(tryboot: boolean): string | null {
    return tryboot ? "0 tryboot" : null;
  }

  /** The slot cmdline files (both variants) for one slot; `zb init` writes them for both. */
  writeCmdlines(slot: Slot): void {
    const ref = this.reference(REFERENCE_CMDLINE);
    this.sys.mkdirp(this.path(`slot-${slot}`));
    this.writeIfChanged(`slot-${slot}/cmdline.txt`, renderCmdline(ref, slot, false));
    this.writeIfChanged(`slot-${slot}/${TRY_CMDLINE}`, renderCmdline(ref, slot, true));
  }

  /** What config.txt and tryboot.txt select now (for status and checks). */
  selections(): { config: ConfigSelection | null; tryboot: ConfigSelection | null } {
    const read = (name: string) => (this.sys.stat(this.path(name)) ? readSelection(this.sys.readText(this.path(name))) : null);
    return { config: read("config.txt"), tryboot: read("tryboot.txt") };
  }

  /**
   * The generated files the firmware reads next (config.txt, tryboot.txt and
   * the slot cmdline each selects) that no longer match what the references
   * render: an edit of zb/config.txt or zb/cmdline.txt not yet written out (zb
   * renders them only in a transition that changes what boots, and `zb init`).
   * Empty when the references are missing (not set up).
   */
  behind(): string[] {
    const [config, cmdline] = [this.path(REFERENCE_CONFIG), this.path(REFERENCE_CMDLINE)];
    if (!this.sys.stat(config) || !this.sys.stat(cmdline)) return [];
    const [refConfig, refCmdline] = [this.sys.readText(config), this.sys.readText(cmdline)];
    const out: string[] = [];
    for (const file of ["config.txt", "tryboot.txt"]) {
      if (!this.sys.stat(this.path(file))) continue;
      const text = this.sys.readText(this.path(file));
      if (!rendersFrom(text, refConfig)) out.push(file);
      const sel = readSelection(text);
      const slot = prefixTarget(sel.osPrefix);
      const slotCmdline = `slot-${slot}/${sel.cmdline}`;
      if ((slot === "a" || slot === "b") && (sel.cmdline === "cmdline.txt" || sel.cmdline === TRY_CMDLINE) && this.sys.stat(this.path(slotCmdline))) {
        if (this.sys.readText(this.path(slotCmdline)) !== renderCmdline(refCmdline, slot, sel.cmdline === TRY_CMDLINE)) out.push(slotCmdline);
      }
    }
    return out;
  }

  private writeSelection(file: string, prefix: string, cmdline: string, slot: Slot | null): void {
    if (slot) this.writeCmdlines(slot);
    this.writeIfChanged(file, renderConfig(this.reference(REFERENCE_CONFIG), prefix, cmdline));
  }

  /** Skip identical rewrites: FAT wear, and a power cut cannot hurt what is not written. */
  private writeIfChanged(rel: string, text: string): void {
    const path = this.path(rel);
    if (this.sys.stat(path) && this.sys.readText(path) === text) return;
    writeFileAtomic(this.sys, path, text);
  }

  private reference(rel: string): string {
    const path = this.path(rel);
    if (!this.sys.stat(path)) {
      throw new ZbError("IO", `cannot generate the firmware configuration: ${path} is missing`, {
        hint: "run `zb init` (it copies config.txt and cmdline.txt there)",
      });
    }
    return this.sys.readText(path);
  }

  private path(rel: string): string {
    return join(this.bootDir, rel);
  }
}
