/** fw_env.config parsing (libubootenv legacy format) and zb's default location. */
import { describe, expect, test } from "bun:test";
import { defaultConfig, layoutOf, parseCInteger, parseFwEnvConfig, parseHex } from "../../../lib/env/config.ts";

describe("parseFwEnvConfig", () => {
  test.each([
    {
      name: "one line = single copy",
      text: "/boot/uboot.env 0x0 0x4000\n",
      copies: [{ path: "/boot/uboot.env", offset: 0, size: 0x4000 }],
      redundant: false,
    },
    {
      name: "two lines = redundant, comments and blanks skipped",
      text: "# Pi\n\n/dev/mmcblk0 0x400000 0x4000\n  /dev/mmcblk0\t0x404000   0x4000  \n",
      copies: [
        { path: "/dev/mmcblk0", offset: 0x400000, size: 0x4000 },
        { path: "/dev/mmcblk0", offset: 0x404000, size: 0x4000 },
      ],
      redundant: true,
    },
    {
      name: "size is hex even without 0x (%lx); offset decimal (%lli)",
      text: "env 4096 4000\n",
      copies: [{ path: "env", offset: 4096, size: 0x4000 }],
      redundant: false,
    },
    {
      name: "octal offset, negative offset, sector size kept",
      text: "/dev/mtd0 010 0x100 0x1000\n/dev/sda -0x8000 0x100\n",
      copies: [
        { path: "/dev/mtd0", offset: 8, size: 0x100, sectorSize: 0x1000 },
        { path: "/dev/sda", offset: -0x8000, size: 0x100 },
      ],
      redundant: true,
    },
  ])("$name", ({ text, copies, redundant }) => {
    const c = parseFwEnvConfig(text, "fw_env.config");
    expect(c.copies).toEqual(copies as typeof c.copies);
    expect(layoutOf(c).redundant).toBe(redundant);
  });

  test.each([
    { name: "no copies", text: "# nothing\n", why: /names no env copy/ },
    { name: "three copies", text: "a 0 100\nb 0 100\nc 0 100\n", why: /at most two/ },
    { name: "sizes differ", text: "a 0 100\nb 0 200\n", why: /differ in size/ },
    { name: "missing size", text: "a 0\n", why: /expected: device offset size/ },
    { name: "offset not a number", text: "a zero 100\n", why: /offset "zero"/ },
    { name: "size not hex", text: "a 0 0x10g\n", why: /env size "0x10g"/ },
    { name: "size too small", text: "a 0 4\n", why: /at least 8/ },
  ])("rejects $name", ({ text, why }) => {
    expect(() => parseFwEnvConfig(text, "cfg")).toThrow(expect.objectContaining({ code: "CONFIG", message: expect.stringMatching(why) }));
  });
});

test.each([
  { text: "0", v: 0 },
  { text: "0x4000", v: 0x4000 },
  { text: "0X10", v: 16 },
  { text: "010", v: 8 },
  { text: "-0x8000", v: -0x8000 },
  { text: "+12", v: 12 },
  { text: "08", v: null },
  { text: "", v: null },
  { text: "12k", v: null },
])("parseCInteger($text) = $v", ({ text, v }) => {
  expect(parseCInteger(text)).toBe(v);
});

test.each([
  { text: "4000", v: 0x4000 },
  { text: "0x4000", v: 0x4000 },
  { text: "ff", v: 255 },
  { text: "-1", v: null },
  { text: "0x", v: null },
])("parseHex($text) = $v", ({ text, v }) => {
  expect(parseHex(text)).toBe(v);
});

test("default location: zb/zb.env + zb/zb.env.redund, 16 KiB each, redundant", () => {
  const c = defaultConfig("/mnt/boot");
  expect(c.copies.map((l) => l.path)).toEqual(["/mnt/boot/zb/zb.env", "/mnt/boot/zb/zb.env.redund"]);
  expect(layoutOf(c)).toEqual({ size: 0x4000, redundant: true });
});
