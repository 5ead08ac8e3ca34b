/**
 * What PiBoot takes for a bootable folder: the firmware ignores an os_prefix
 * under which it finds no kernel or no device tree (Pi docs, config.txt
 * "os_prefix"; ../shared/reference/envspec.md), so an enclave or a slot to try
 * needs both.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PiBoot } from "../../../lib/bootloader/piboot.ts";
import { ioError, ZbError } from "../../../lib/errors.ts";
import { HostSys, type Sys } from "../../../lib/sys/sys.ts";

const top = mkdtempSync(join(tmpdir(), "zb-piboot-"));
afterAll(() => rmSync(top, { recursive: true, force: true }));

let n = 0;
/** A boot partition whose zboot/ holds `files` (a name ending in / is a folder); `kernel` is the reference config's kernel= line. */
function bootWith(files: readonly string[], kernel?: string): PiBoot {
  const boot = join(top, String(n++));
  mkdirSync(join(boot, "zb"), { recursive: true });
  writeFileSync(join(boot, "zb/config.txt"), kernel ? `kernel=${kernel}\n` : "arm_64bit=1\n");
  for (const f of files) {
    if (f.endsWith("/")) mkdirSync(join(boot, "zboot", f), { recursive: true });
    else {
      mkdirSync(join(boot, "zboot"), { recursive: true });
      writeFileSync(join(boot, "zboot", f), f);
    }
  }
  return new PiBoot(new HostSys(), boot);
}

const DEFAULTS = "kernel8.img, kernel_2712.img, kernel7l.img, kernel7.img, kernel.img";

test.each([
  { before: [], kernel: undefined, after: "nothing (there is no such folder)" },
  { before: ["overlays/"], kernel: undefined, after: `no kernel (${DEFAULTS})` },
  { before: ["kernel8.img"], kernel: undefined, after: "no device tree (.dtb file)" },
  { before: ["kernel8.img", "bcm2711-rpi-4-b.dtb/"], kernel: undefined, after: "no device tree (.dtb file)" },
  { before: ["kernel8.img", "overlays/", "bcm2711-rpi-4-b.dtbo"], kernel: undefined, after: "no device tree (.dtb file)" },
  { before: ["bcm2711-rpi-4-b.dtb"], kernel: undefined, after: `no kernel (${DEFAULTS})` },
  { before: ["kernel8.img", "bcm2711-rpi-4-b.dtb"], kernel: undefined, after: null },
  { before: ["kernel_2712.img", "bcm2712-rpi-5-b.dtb"], kernel: undefined, after: null },
  { before: ["kernel8.img", "bcm2711-rpi-4-b.dtb"], kernel: "vmlinuz", after: null }, // a default name is there: the firmware may well take it
  { before: ["bcm2711-rpi-4-b.dtb"], kernel: "vmlinuz", after: `no kernel (vmlinuz, ${DEFAULTS})` },
  { before: ["vmlinuz", "bcm2710-rpi-3-b.dtb"], kernel: "vmlinuz", after: null },
])("zboot/ holding $before (kernel=$kernel) → missing: $after", ({ before, kernel, after }) => {
  const b = bootWith(before, kernel);
  expect(b.missingIn("zboot/")).toBe(after);
  expect(b.hasEnclave()).toBe(after === null);
});

test("slotBootable: slot-X/ needs a kernel and a .dtb file, like zboot/", () => {
  const b = bootWith([], "vmlinuz");
  const put = (rel: string) => {
    mkdirSync(join(b.bootDir, rel, ".."), { recursive: true });
    writeFileSync(join(b.bootDir, rel), rel);
  };
  expect([b.slotBootable("a"), b.slotBootable("b")]).toEqual([false, false]); // no folders at all
  put("slot-a/vmlinuz");
  put("slot-b/vmlinuz");
  put("slot-a/bcm2711-rpi-4-b.dtb");
  expect([b.slotBootable("a"), b.slotBootable("b")]).toEqual([true, false]);
  put("slot-b/bcm2712-rpi-5-b.dtb");
  expect(b.slotBootable("b")).toBe(true);
});

/** A boot partition holding `files` (relative to its top; a name ending in / is a folder) and `config` as zb/config.txt. */
function device(config: string, files: readonly string[]): PiBoot {
  const boot = join(top, String(n++));
  mkdirSync(join(boot, "zb"), { recursive: true });
  writeFileSync(join(boot, "zb/config.txt"), config);
  for (const f of files) {
    if (f.endsWith("/")) mkdirSync(join(boot, f), { recursive: true });
    else {
      mkdirSync(join(boot, f, ".."), { recursive: true });
      writeFileSync(join(boot, f), f);
    }
  }
  return new PiBoot(new HostSys(), boot);
}

const PI4 = ["slot-b/kernel8.img", "slot-b/bcm2711-rpi-4-b.dtb"];

// Lenient: a slot wrongly judged unbootable sends a healthy device to recovery
// (N7, U2, B2) or refuses its rollback; wrongly judged bootable is what zb did
// before it looked. Only a folder that cannot boot by any reading is unbootable.
test.each([
  { name: "a kernel= under [pi3] on a Pi 4 (the default name is there)", config: "[pi3]\nkernel=u-boot.bin\n[all]\narm_64bit=1\n", files: PI4, missing: null },
  { name: "kernel= under [pi4], its file there", config: "[pi4]\nkernel=vmlinuz\n", files: ["slot-b/vmlinuz", "slot-b/bcm2711-rpi-4-b.dtb"], missing: null },
  { name: "an absolute kernel=/vmlinuz (os_prefix does not apply): found at the top", config: "kernel=/vmlinuz\n", files: ["vmlinuz", "slot-b/bcm2711-rpi-4-b.dtb"], missing: null },
  { name: "an absolute kernel=/vmlinuz with no file at the top, one only under the prefix", config: "kernel=/vmlinuz\n", files: ["slot-b/vmlinuz", "slot-b/bcm2711-rpi-4-b.dtb"], missing: "no kernel (/vmlinuz, kernel8.img, kernel_2712.img, kernel7l.img, kernel7.img, kernel.img)" },
  { name: "an upper-case .DTB (FAT ignores case)", config: "", files: ["slot-b/kernel8.img", "slot-b/BCM2711-RPI-4-B.DTB"], missing: null },
  { name: "an upper-case kernel name and folder", config: "kernel=vmlinuz\n", files: ["SLOT-B/VMLINUZ", "SLOT-B/bcm2711-rpi-4-b.dtb"], missing: null },
  { name: "no .dtb, but device_tree= names a file under the prefix", config: "device_tree=board.dtb.bin\n", files: ["slot-b/kernel8.img", "slot-b/board.dtb.bin"], missing: null },
  { name: "no .dtb, device_tree= naming a file that is not there", config: "device_tree=board.dtb.bin\n", files: ["slot-b/kernel8.img"], missing: "no device tree (.dtb file, or board.dtb.bin)" },
  { name: "no .dtb, no device_tree=", config: "", files: ["slot-b/kernel8.img", "slot-b/overlays/x.dtbo"], missing: "no device tree (.dtb file)" },
  { name: "no folder at all", config: "", files: ["slot-a/kernel8.img"], missing: "nothing (there is no such folder)" },
  { name: "a file named slot-b, not a folder", config: "", files: ["slot-b", "slot-a/"], missing: "nothing (there is no such folder)" },
])("slot-b/: $name → missing: $missing", ({ config, files, missing }) => {
  const b = device(config, files);
  expect(b.missingIn("slot-b/")).toBe(missing);
  expect(b.slotBootable("b")).toBe(missing === null);
});

test("kernel= in an included file is looked for (include extra.txt naming zImage)", () => {
  const b = device("include extra.txt\n", ["slot-b/zImage", "slot-b/bcm2711-rpi-4-b.dtb"]);
  writeFileSync(join(b.bootDir, "extra.txt"), "[pi4]\nkernel=zImage\ninclude extra.txt\n"); // and an include loop ends
  expect(b.missingIn("slot-b/")).toBe(null);
});

test("a regular file named slot-b is a missing folder: unbootable, no error", () => {
  const b = device("", []);
  writeFileSync(join(b.bootDir, "slot-b"), "not a folder");
  const warnings: string[] = [];
  expect(b.slotBootable("b", (w) => warnings.push(w))).toBe(false);
  expect(warnings).toEqual([]);
});

test.each([
  { name: "slot-b is a link to itself (ELOOP on stat)", make: (boot: string) => symlinkSync("slot-b", join(boot, "slot-b")), sys: () => new HostSys(), why: /cannot stat .*slot-b: / },
  {
    name: "listing slot-b fails (a corrupt FAT directory: EIO)",
    make: (boot: string) => mkdirSync(join(boot, "slot-b")),
    sys: () => failingList("/slot-b"),
    why: /cannot list .*slot-b: input\/output error/,
  },
])("$name: slotBootable answers true (unknown, as before zb looked) and warns, never throws", ({ make, sys, why }) => {
  const boot = join(top, String(n++));
  mkdirSync(join(boot, "zb"), { recursive: true });
  writeFileSync(join(boot, "zb/config.txt"), "");
  make(boot);
  const b = new PiBoot(sys(), boot);
  const warnings: string[] = [];
  expect(b.slotBootable("b", (w) => warnings.push(w))).toBe(true);
  expect(warnings).toHaveLength(1);
  expect(warnings[0]).toMatch(why);
  expect(warnings[0]).toContain("taking slot b as bootable");
  expect(() => b.missingIn("slot-b/")).toThrow(ZbError); // the manual preflight still says what went wrong
});

/** A HostSys whose listDir of a path ending in `suffix` fails as a corrupt FAT directory does. */
function failingList(suffix: string): Sys {
  const real = new HostSys();
  return new Proxy(real, {
    get(target, prop, receiver) {
      if (prop !== "listDir") return Reflect.get(target, prop, receiver);
      return (path: string) => {
        if (path.endsWith(suffix)) throw ioError(`list ${path}`, Object.assign(new Error("EIO"), { code: "EIO" }));
        return real.listDir(path);
      };
    },
  });
}
