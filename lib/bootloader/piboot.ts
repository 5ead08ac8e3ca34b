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
import { readSelection, renderCmdline, renderConfig, type ConfigSelection } from "./piconfig.ts";
import type { Bootloader, GeneratedConfig, RebootArgs } from "./types.ts";

export const REFERENCE_CONFIG = "zb/config.txt";
export const REFERENCE_CMDLINE = "zb/cmdline.txt";
export const TRY_CMDLINE = "cmdline-try.txt";
/** The firmware's kernel file names when config.txt names none (Pi docs, config.txt "kernel"). */
const DEFAULT_KERNELS = ["kernel8.img", "kernel_2712.img", "kernel7l.img", "kernel7.img", "kernel.img"];

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
   * rollback or hand-over to a slot without it would boot nothing.
   */
  slotBootable(slot: Slot): boolean {
    return this.missingIn(`slot-${slot}/`) === null;
  }

  /**
   * What keeps the firmware from booting under `prefix` (`slot-b/`, `zboot/`),
   * for messages, or null when nothing does: the kernel (the reference
   * config's `kernel=` if it names one, else one of the firmware's default
   * names: kernel8.img on 64-bit Pi 3/4, kernel_2712.img on Pi 5,
   * kernel7l.img, kernel7.img, kernel.img) and a device tree (`*.dtb`: which
   * one the firmware picks depends on the board, so any counts).
   */
  missingIn(prefix: string): string | null {
    if (this.kernelIn(prefix) === null) return `no kernel (${this.kernelNames().join(", ")})`;
    const dir = this.path(prefix);
    const dtb = this.sys.stat(dir)?.kind === "dir" && this.sys.listDir(dir).some((n) => n.endsWith(".dtb") && this.sys.stat(this.path(`${prefix}${n}`))?.kind === "file");
    return dtb ? null : "no device tree (.dtb file)";
  }

  /**
   * The kernel file the firmware would load under `prefix` (`slot-b/`,
   * `zboot/`), or null when there is none: the names are the reference
   * config's `kernel=` lines, else the firmware's defaults.
   */
  kernelIn(prefix: string): string | null {
    return this.kernelNames().find((n) => this.sys.stat(this.path(`${prefix}${n}`))?.kind === "file") ?? null;
  }

  /** The kernel names the firmware would look for under a prefix (for messages). */
  kernelNames(): string[] {
    const ref = this.sys.stat(this.path(REFERENCE_CONFIG)) ? this.sys.readText(this.path(REFERENCE_CONFIG)) : "";
    const named = [...ref.matchAll(/^\s*kernel\s*=\s*(\S+)\s*$/gm)].map((m) => m[1]!);
    return named.length > 0 ? named : DEFAULT_KERNELS;
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
