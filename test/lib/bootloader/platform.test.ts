/** /proc/cmdline and the Pi firmware's device-tree notes, read under a temp root. */
import { afterAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bootedFrom, parseCmdline, readPlatform } from "../../../lib/bootloader/platform.ts";
import { HostSys } from "../../../lib/sys/sys.ts";

const root = mkdtempSync(join(tmpdir(), "zb-root-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

test.each([
  { cmdline: "console=ttyAMA0 zb.slot=b kernel_status=trying quiet", params: { console: "ttyAMA0", "zb.slot": "b", kernel_status: "trying", quiet: "" } },
  { cmdline: 'a=1 a=2 dyndbg="file x.c +p"', params: { a: "2", dyndbg: "file x.c +p" } },
  // An open quote runs to the end, as in the kernel: no zb.slot here.
  { cmdline: 'quiet foo="bar zb.slot=a', params: { quiet: "", foo: "bar zb.slot=a" } },
  // After "--" the words are init's, not parameters.
  { cmdline: "zb.slot=b -- zb.slot=a single", params: { "zb.slot": "b" } },
  { cmdline: '  x=""  "y=1 2"\tz ', params: { x: "", y: "1 2", z: "" } },
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
