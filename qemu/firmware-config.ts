/**
 * The part of the Raspberry Pi firmware's boot-file selection that the QEMU
 * emulator (qemu/firmware.ts) needs, as pure functions: parse config.txt /
 * tryboot.txt, and resolve the kernel, initramfs and cmdline file names under
 * os_prefix. Rules (raspberrypi/documentation config_txt/boot.adoc,
 * conditional.adoc, bootflow-eeprom.adoc):
 *
 * - One `name=value` per line, no spaces around `=`; a later value overrides an
 *   earlier one. `#` starts a comment only at the beginning of a line.
 * - `initramfs NAME followkernel|ADDRESS` takes no `=`.
 * - `[filter]` lines make the following lines conditional until the next
 *   filter. Filters of the same kind replace each other, filters of different
 *   kinds must all hold, `[all]` clears them. Supported: `[all]`, `[none]`
 *   (never holds), `[tryboot]` (holds while the tryboot flag is set) and model
 *   filters such as `[pi4]`/`[cm5]`, which always hold: the emulated board is
 *   "any Pi". Anything else (`include`, `[gpio…]`, `[EDID=…]`, serial-number
 *   filters …) is rejected rather than guessed.
 * - `os_prefix` is prepended to the kernel, initramfs and cmdline names; names
 *   starting with `/` bypass it. Defaults: kernel8.img (64-bit Pi 4) and
 *   cmdline.txt; no initramfs unless one is named.
 */

export interface BootFiles {
  /** Raw value of os_prefix ("" when unset). */
  osPrefix: string;
  /** FAT paths (no leading slash) of the files the firmware would load. */
  kernel: string;
  initramfs: string | null;
  cmdline: string;
  /** Every setting that applied, last value wins (for the report). */
  settings: Record<string, string>;
}

export class ConfigError extends Error {}

/** Model filters that always hold on the emulated board. */
const MODEL = /^(pi[0-9]+[a-z+]*|cm[0-9]+[a-z]*|pi0w|pi02|board-type=0x[0-9a-f]+)$/i;

/**
 * The settings of a config.txt that apply on this boot. `file` names the
 * file in messages; `tryboot` is the firmware's tryboot flag.
 */
export function parseConfig(text: string, file: string, tryboot: boolean): Record<string, string> {
  const settings: Record<string, string> = {};
  // Conditions in force, by kind; the section applies when all of them hold.
  let conditions = new Map<string, boolean>();
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, i) => {
    const where = `${file}:${i + 1}`;
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const filter = /^\[(.*)\]$/.exec(line);
    if (filter) {
      const name = (filter[1] ?? "").trim();
      if (name.toLowerCase() === "all") conditions = new Map();
      else if (name.toLowerCase() === "none") conditions.set("none", false);
      else if (name.toLowerCase() === "tryboot") conditions.set("tryboot", tryboot);
      else if (MODEL.test(name)) conditions.set("model", true);
      else throw new ConfigError(`${where}: the emulator does not support the filter [${name}]`);
      return;
    }
    const applies = [...conditions.values()].every(Boolean);
    const initramfs = /^initramfs\s+(\S+)(?:\s+(\S+))?$/.exec(line);
    if (initramfs) {
      if (applies) settings.initramfs = initramfs[1] ?? "";
      return;
    }
    if (/^include(\s|=)/.test(line)) throw new ConfigError(`${where}: the emulator does not support include`);
    const eq = line.indexOf("=");
    if (eq <= 0) throw new ConfigError(`${where}: cannot parse '${line}' (neither name=value, [filter] nor initramfs)`);
    const name = line.slice(0, eq);
    const value = line.slice(eq + 1);
    if (/\s/.test(name) || /^\s/.test(value)) {
      throw new ConfigError(`${where}: spaces around '=' in '${line}' (the firmware does not ignore them)`);
    }
    if (name === "initramfs") {
      throw new ConfigError(`${where}: 'initramfs=' is not a firmware setting; write 'initramfs FILE followkernel'`);
    }
    if (applies) settings[name] = value;
  });
  return settings;
}

/** FAT path of `name` under `prefix`, as the firmware builds it. */
export function underPrefix(prefix: string, name: string): string {
  return name.startsWith("/") ? name.replace(/^\/+/, "") : prefix + name;
}

/** The kernel, initramfs and cmdline file a parsed config selects. */
export function bootFiles(settings: Record<string, string>): BootFiles {
  const osPrefix = settings.os_prefix ?? "";
  if (osPrefix.startsWith("/")) throw new ConfigError(`os_prefix '${osPrefix}' starts with '/'; the firmware wants a relative folder`);
  return {
    osPrefix,
    kernel: underPrefix(osPrefix, settings.kernel ?? "kernel8.img"),
    initramfs: settings.initramfs !== undefined ? underPrefix(osPrefix, settings.initramfs) : null,
    cmdline: underPrefix(osPrefix, settings.cmdline ?? "cmdline.txt"),
    settings,
  };
}

/** The kernel command line in a cmdline file: its first line, trimmed. */
export function cmdlineOf(text: string): string {
  return (text.split(/\r?\n/)[0] ?? "").trim();
}

/** How one boot ended, read from the guest's serial console. */
export type Ending =
  | { how: "reboot"; command: string | null; tryboot: boolean; partition: number }
  | { how: "panic"; reason: string }
  | { how: "poweroff" }
  | { how: "halt" }
  | { how: "unknown" };

/**
 * The last reboot/poweroff/panic line on the console. The kernel prints
 * "reboot: Restarting system with command 'ARG'" for reboot(2) with an
 * argument (kernel/reboot.c); the Pi kernel's firmware driver sets the tryboot
 * flag when ARG contains " tryboot" (strstr in drivers/firmware/raspberrypi.c)
 * and the leading number picks the partition (0 = default). A panic with
 * panic=-1 restarts through emergency_restart(), which prints no reboot line.
 */
export function endingOf(console: string): Ending {
  let ending: Ending = { how: "unknown" };
  for (const line of consoleLines(console)) {
    const m = /reboot: Restarting system(?: with command '(.*)')?$/.exec(line);
    if (m) {
      const command = m[1] ?? null;
      const partition = command === null ? 0 : Number(/^\s*(\d+)/.exec(command)?.[1] ?? 0);
      ending = { how: "reboot", command, tryboot: command !== null && command.includes(" tryboot"), partition };
    } else if (/reboot: Power down$/.test(line)) ending = { how: "poweroff" };
    else if (/reboot: System halted$/.test(line)) ending = { how: "halt" };
    else {
      const p = /Kernel panic - not syncing: (.*)$/.exec(line);
      if (p) ending = { how: "panic", reason: (p[1] ?? "").trim() };
    }
  }
  return ending;
}

/** The kernel's "Initramfs unpacking failed: WHY" reason, or null. */
export function initramfsFailure(console: string): string | null {
  for (const line of consoleLines(console)) {
    const m = /Initramfs unpacking failed: (.*)$/.exec(line);
    if (m) return (m[1] ?? "").trim();
  }
  return null;
}

/** Console text as lines without CRs or the kernel's "[  1.234567] " stamps. */
export function consoleLines(console: string): string[] {
  return console
    .replace(/\r/g, "")
    .split("\n")
    .map((l) => l.replace(/^\[\s*\d+\.\d+\]\s?/, ""));
}

/**
 * The guest's marker lines: `ZB-…` markers and the `ZB$`/`ZB|`/`ZB#`
 * command transcript of the init scripts, plus the lines of zbunlock and
 * `zb reboot` ("zbunlock: …", "zb reboot: …"), which write straight to the
 * console because they may reboot before a pipe could pass their output on.
 */
export function markersOf(console: string): string[] {
  return consoleLines(console).filter((l) => /^(ZB[-$|#]|zbunlock: |zb [a-z-]+: )/.test(l));
}
