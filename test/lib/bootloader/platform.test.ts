/** /proc/cmdline and the Pi firmware's device-tree notes, read under a temp root. */
import { afterAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bootedFrom, parseCmdline, readPlatform } from "../../../lib/bootloader/platform.ts";
import { renderCmdline } from "../../../lib/bootloader/piconfig.ts";
import { HostSys } from "../../../lib/sys/sys.ts";

const root = mkdtempSync(join(tmpdir(), "zb-root-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

test.each([
  { cmdline: "console=ttyAMA0 zb.slot=b kernel_status=trying quiet", params: { console: "ttyAMA0", "zb.slot": "b", kernel_status: "trying", quiet: "" } },
  { cmdline: 'a=1 a=2 dyndbg="file x.c +p"', params: { a: "2", dyndbg: "file x.c +p" } },
])("parseCmdline($cmdline)", ({ cmdline, params }) => {
  expect(Object.fromEntries(parseCmdline(cmdline))).toEqual(params);
});

test("reads /proc/cmdline and the device tree under the root", () => {
  mkdirSync(join(root, "proc/device-tree/chosen/bootloader"), { recursive: true });
  writeFileSync(join(root, "proc/cmdline"), "root=/dev/mmcblk0p2 zb.slot=a\n");
  writeFileSync(join(root, "proc/device-tree/chosen/bootloader/tryboot"), new Uint8Array([0, 0, 0, 1]));
  writeFileSync(join(root, "proc/device-tree/chosen/bootloader/partition"), new Uint8Array([0, 0, 0, 1]));
  const p = readPlatform(new HostSys(), root);
  expect(p).toMatchObject({ cmdline: "root=/dev/mmcblk0p2 zb.slot=a", dtTryboot: true, dtPartition: 1 });
  expect(bootedFrom(p)).toEqual({ slot: "a", tryboot: false });
});

test.each([
  { cmdline: "quiet", why: /no zb.slot=/ },
  { cmdline: "zb.slot=c", why: /zb.slot=c/ },
])("bootedFrom refuses $cmdline", ({ cmdline, why }) => {
  expect(() => bootedFrom({ cmdline, params: parseCmdline(cmdline), dtTryboot: null, dtPartition: null })).toThrow(
    expect.objectContaining({ code: "STATE_REFUSED", message: expect.stringMatching(why) }),
  );
});

// zb appends zb.slot= (and kernel_status=) to the user's line: whatever that line holds
// (init arguments after "--", a stray quote), zbunlock must find them again.
test.each([
  "console=serial0 root=/dev/mapper/zb-root rootwait -- single",
  'console=serial0 root=/dev/mmcblk0p2 foo="bar rootwait',
])("the slot zb wrote into %p is read back", (reference) => {
  for (const [slot, tryboot] of [["a", false], ["b", true]] as const) {
    const cmdline = renderCmdline(reference, slot, tryboot);
    expect(bootedFrom({ cmdline, params: parseCmdline(cmdline), dtTryboot: null, dtPartition: null })).toEqual({ slot, tryboot });
  }
});
