/**
 * The bootloader interface, shaped like snapd's (bootloader/bootloader.go):
 * a small base for the state variables, plus capability interfaces a backend
 * implements when its firmware needs them. Callers probe capabilities with the
 * type guards below. piboot implements all of them now; U-Boot (the firmware
 * reads the env itself through a boot script) and autoboot.txt A/B (one boot
 * partition per slot) come later behind the same interface.
 */
import type { Vars } from "../env/codec.ts";
import type { Change } from "../env/script.ts";
import type { BootState, Slot } from "../bootstate/state.ts";

/** Every backend: where the boot state variables live. */
export interface Bootloader {
  readonly name: string;
  /** True when this backend's files are on the boot partition. */
  present(): boolean;
  readVars(): Vars;
  /**
   * One atomic write of many changes; nothing is written when nothing changes.
   * @param from the Vars this backend's readVars() just returned, when
   *   `changes` were computed from them: the write may build on that read
   *   instead of reading the env again
   */
  writeVars(changes: readonly Change[], from?: Vars): void;
  /** Hold the env lock other env tools share until the release is called (re-entrant); optional. */
  lock?(): () => void;
}

/**
 * The firmware cannot run scripts and only reads generated files (snapd's
 * NotScriptableBootloader): the state is translated into them.
 */
export interface GeneratedConfig {
  /** Write the normal-boot configuration for a state (committed slot or the enclave). */
  writeConfig(state: BootState): void;
  /** Write the one-shot configuration for a state's pending try (or the enclave). */
  writeTryboot(state: BootState): void;
  removeTryboot(): void;
  /** Is a recovery enclave there to boot into (recover and install modes)? */
  hasEnclave(): boolean;
  /**
   * Does a slot's folder hold what the firmware needs to boot it (before
   * switching to it)? When the folder cannot be read: true, and `warn` says why.
   */
  slotBootable(slot: Slot, warn?: (message: string) => void): boolean;
}

/** The firmware learns a one-shot choice from the reboot argument (snapd's RebootBootloader). */
export interface RebootArgs {
  /** The argument for reboot(2) RESTART2, or null for a plain restart. */
  rebootArgument(tryboot: boolean): string | null;
}

export function hasGeneratedConfig(b: Bootloader): b is Bootloader & GeneratedConfig {
  return typeof (b as Partial<GeneratedConfig>).writeConfig === "function";
}

export function hasRebootArgs(b: Bootloader): b is Bootloader & RebootArgs {
  return typeof (b as Partial<RebootArgs>).rebootArgument === "function";
}
