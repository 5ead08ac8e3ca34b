/**
 * Does a boot folder (`slot-b/`, `zboot/`) hold what the firmware needs to
 * boot from it? The firmware ignores an `os_prefix` under which it finds no
 * kernel or no device tree (Pi docs, config.txt "os_prefix"), so a switch to
 * such a folder boots nothing, or something else.
 *
 * The answer decides automatic rows (N7, U2, B2, R1: rules.ts usable(),
 * switchable()), and a folder wrongly judged unbootable sends a healthy
 * device to recovery or refuses a rollback, while one wrongly judged bootable
 * only restores what zb did before it looked. So the rule is lenient: a
 * folder counts as unbootable only when
 *
 *   - it is not there (no folder by that name, letter case aside), or
 *   - it holds no file that could be the kernel: no name any `kernel=` line
 *     of the reference config (or a file it `include`s) gives, whatever its
 *     model filter (`[pi3]`, `[pi5]`, …), an absolute name (`kernel=/vmlinuz`:
 *     os_prefix does not apply) looked up from the boot partition's top, and
 *     none of the firmware's default names, or
 *   - it holds no `.dtb` file and no `device_tree=` line names a file that
 *     is there.
 *
 * Names compare without letter case: the boot partition is FAT.
 */
import { posix } from "node:path";
import type { Sys } from "../sys/sys.ts";

/** The firmware's kernel file names when config.txt names none (Pi docs, config.txt "kernel"). */
const DEFAULT_KERNELS: readonly string[] = ["kernel8.img", "kernel_2712.img", "kernel7l.img", "kernel7.img", "kernel.img"];

/** How deep `include` lines are followed (the firmware's own limit is not documented; a loop must end). */
const MAX_INCLUDE_DEPTH = 8;

/** The file names a config gives, any section. */
interface ConfiguredNames {
  kernels: string[];
  deviceTrees: string[];
}

/**
 * Every `kernel=` and `device_tree=` value of a config text and the files its
 * `include` lines name (relative to the boot partition's top, as the firmware
 * reads them), whatever section they are in: which section applies depends on
 * the board, and any of them may be the one.
 * @param bootDir the boot partition's top
 * @param text the reference config's text
 * @returns the names in file order, duplicates removed (letter case aside)
 * @throws {ZbError} IO when an included file cannot be read
 * @example configuredNames(sys, "/boot", "[pi4]\nkernel=vmlinuz\n") // { kernels: ["vmlinuz"], deviceTrees: [] }
 */
function configuredNames(sys: Sys, bootDir: string, text: string): ConfiguredNames {
  const names: ConfiguredNames = { kernels: [], deviceTrees: [] };
  const seen = new Set<string>();
  const scan = (body: string, depth: number) => {
    for (const raw of body.split("\n")) {
      const line = raw.trim();
      const setting = /^(kernel|device_tree)\s*=\s*(\S+)$/.exec(line);
      if (setting) {
        const list = setting[1] === "kernel" ? names.kernels : names.deviceTrees;
        if (!list.some((n) => n.toLowerCase() === setting[2]!.toLowerCase())) list.push(setting[2]!);
        continue;
      }
      const include = /^include\s+(\S+)$/.exec(line);
      if (!include || depth >= MAX_INCLUDE_DEPTH) continue;
      const found = findFile(sys, bootDir, include[1]!.replace(/^\/+/, ""));
      if (found === null || seen.has(found)) continue; // a missing include is skipped, as the firmware does
      seen.add(found);
      scan(sys.readText(found), depth + 1);
    }
  };
  scan(text, 0);
  return names;
}

/**
 * What keeps the firmware from booting under `prefix`, by the lenient rule
 * above, or null when nothing does (a text that reads after "holds").
 * @param bootDir the boot partition's top
 * @param prefix a folder prefix with its trailing slash (`slot-b/`, `zboot/`)
 * @param reference the reference config's text ("" when there is none)
 * @throws {ZbError} IO when the folder or the config's includes cannot be read
 * @example missingUnder(sys, "/boot", "slot-b/", "") // "no kernel (kernel8.img, …)" or null
 */
export function missingUnder(sys: Sys, bootDir: string, prefix: string, reference: string): string | null {
  const folder = findEntry(sys, bootDir, prefix.replace(/\/+$/, ""));
  if (folder === null || sys.stat(folder)?.kind !== "dir") return "nothing (there is no such folder)";
  const names = configuredNames(sys, bootDir, reference);
  const candidates = [...names.kernels, ...DEFAULT_KERNELS.filter((d) => !names.kernels.some((k) => k.toLowerCase() === d))];
  if (!candidates.some((n) => resolve(sys, bootDir, prefix, n) !== null)) return `no kernel (${candidates.join(", ")})`;
  const hasDtb = sys.listDir(folder).some((n) => n.toLowerCase().endsWith(".dtb") && sys.stat(posix.join(folder, n))?.kind === "file");
  if (hasDtb || names.deviceTrees.some((n) => resolve(sys, bootDir, prefix, n) !== null)) return null;
  return names.deviceTrees.length === 0 ? "no device tree (.dtb file)" : `no device tree (.dtb file, or ${names.deviceTrees.join(", ")})`;
}

/** The file a configured name means under `prefix` (an absolute name from the top), or null. */
function resolve(sys: Sys, bootDir: string, prefix: string, name: string): string | null {
  return findFile(sys, bootDir, name.startsWith("/") ? name.replace(/^\/+/, "") : prefix + name);
}

/** A regular file at `rel` under `top`, letter case aside, or null. */
function findFile(sys: Sys, top: string, rel: string): string | null {
  const path = findEntry(sys, top, rel);
  return path !== null && sys.stat(path)?.kind === "file" ? path : null;
}

/**
 * The entry at `rel` under `top`, each part matched without letter case (the
 * exact spelling first), or null when a part is missing or `rel` leaves `top`.
 */
function findEntry(sys: Sys, top: string, rel: string): string | null {
  const norm = posix.normalize(rel);
  if (norm === ".." || norm.startsWith("../")) return null;
  let at = top;
  for (const part of norm.split("/").filter((p) => p !== "" && p !== ".")) {
    if (sys.stat(at)?.kind !== "dir") return null;
    const entries = sys.listDir(at);
    const hit = entries.includes(part) ? part : entries.find((e) => e.toLowerCase() === part.toLowerCase());
    if (hit === undefined) return null;
    at = posix.join(at, hit);
  }
  return at;
}
