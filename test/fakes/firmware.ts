/**
 * A Raspberry Pi firmware simulator: the rules of raspberrypi/documentation
 * (config_txt/boot.adoc, bootflow-eeprom.adoc) applied to a boot folder.
 *  - the tryboot flag is one-shot and volatile: set by reboot(2) with an
 *    argument containing " tryboot" (drivers/firmware/raspberrypi.c), cleared
 *    on every reset and lost on power loss;
 *  - with the flag, tryboot.txt is read instead of config.txt (config.txt if
 *    tryboot.txt is missing);
 *  - os_prefix is prepended to the kernel, initramfs and cmdline file;
 *    `cmdline=` names the cmdline file; its first line is the command line;
 *  - the real firmware ignores a prefix under which the kernel is missing; the
 *    simulator fails instead, so a test never passes by accident.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { prefixTarget, readSelection } from "../../lib/bootloader/piconfig.ts";

export interface FirmwareBoot {
  /** The config file the firmware read. */
  file: "config.txt" | "tryboot.txt";
  prefix: string;
  target: "a" | "b" | "zboot";
  cmdline: string;
}

export class PiFirmware {
  private tryFlag = false;

  constructor(readonly bootDir: string) {}

  /** Reset or power-on: choose the config, clear the flag. */
  boot(): FirmwareBoot {
    const useTry = this.tryFlag && existsSync(join(this.bootDir, "tryboot.txt"));
    this.tryFlag = false;
    const file = useTry ? "tryboot.txt" : "config.txt";
    const text = readFileSync(join(this.bootDir, file), "utf8");
    const sel = readSelection(text);
    const kernel = /^\s*kernel\s*=\s*(\S+)/m.exec(text)?.[1] ?? "kernel8.img";
    const target = prefixTarget(sel.osPrefix);
    if (!target) throw new Error(`firmware: ${file} has os_prefix ${JSON.stringify(sel.osPrefix)}, not a zb folder`);
    if (!existsSync(join(this.bootDir, sel.osPrefix, kernel))) throw new Error(`firmware: no kernel ${sel.osPrefix}${kernel}`);
    const cmdline = readFileSync(join(this.bootDir, sel.osPrefix, sel.cmdline), "utf8").split("\n")[0]!.trim();
    return { file, prefix: sel.osPrefix, target, cmdline };
  }

  /** The kernel's reboot notifier passed the argument on. */
  reboot(argument: string | null): void {
    this.tryFlag = argument !== null && argument.includes(" tryboot");
  }

  /** Power loss: the volatile flag is gone. */
  powerCut(): void {
    this.tryFlag = false;
  }

  get armed(): boolean {
    return this.tryFlag;
  }
}
