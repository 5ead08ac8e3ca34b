/**
 * What PiBoot takes for a bootable folder: the firmware ignores an os_prefix
 * under which it finds no kernel or no device tree (Pi docs, config.txt
 * "os_prefix"; ../shared/reference/envspec.md), so an enclave or a slot to try
 * needs both.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PiBoot } from "../../../lib/bootloader/piboot.ts";
import { HostSys } from "../../../lib/sys/sys.ts";

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
  { before: [], kernel: undefined, after: `no kernel (${DEFAULTS})` },
  { before: ["kernel8.img"], kernel: undefined, after: "no device tree (.dtb file)" },
  { before: ["kernel8.img", "bcm2711-rpi-4-b.dtb/"], kernel: undefined, after: "no device tree (.dtb file)" },
  { before: ["kernel8.img", "overlays/", "bcm2711-rpi-4-b.dtbo"], kernel: undefined, after: "no device tree (.dtb file)" },
  { before: ["bcm2711-rpi-4-b.dtb"], kernel: undefined, after: `no kernel (${DEFAULTS})` },
  { before: ["kernel8.img", "bcm2711-rpi-4-b.dtb"], kernel: undefined, after: null },
  { before: ["kernel_2712.img", "bcm2712-rpi-5-b.dtb"], kernel: undefined, after: null },
  { before: ["kernel8.img", "bcm2711-rpi-4-b.dtb"], kernel: "vmlinuz", after: "no kernel (vmlinuz)" },
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
