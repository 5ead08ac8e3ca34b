/** fw_env.config parsing (libubootenv legacy format) and zb's default location. */
import { describe, expect, test } from "bun:test";
import { defaultConfig, layoutOf, MAX_ENV_SIZE, parseCInteger, parseFwEnvConfig, parseHex, rangesOverlap } from "../../../lib/env/config.ts";

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
    // What libubootenv 0.3.2 reads (fw_printenv -c on each text, /tmp checks): its
    // sscanf("%ms %lli %lx %lx %lx %d") stops at a `#` and keeps what it converted,
    // and it stops reading the file once it has two copies.
    {
      name: "a # comment after the fields",
      text: "/boot/uboot.env 0x0 0x4000 # comment\n",
      copies: [{ path: "/boot/uboot.env", offset: 0, size: 0x4000 }],
      redundant: false,
    },
    {
      name: "a # comment after the sector size, and one glued to the size",
      text: "/dev/mtd0 0x0 0x4000 0x1000 # erase block\n/dev/mtd1 0x0 0x4000#second\n",
      copies: [
        { path: "/dev/mtd0", offset: 0, size: 0x4000, sectorSize: 0x1000 },
        { path: "/dev/mtd1", offset: 0, size: 0x4000 },
      ],
      redundant: true,
    },
    {
      name: "a # inside the device name is part of it (%ms reads up to a blank)",
      text: "/boot/env#1 0 100\n",
      copies: [{ path: "/boot/env#1", offset: 0, size: 0x100 }],
      redundant: false,
    },
    {
      name: "three copies: the third line is never read",
      text: "a 0 100\nb 0 100\nc 0 100\n",
      copies: [
        { path: "a", offset: 0, size: 0x100 },
        { path: "b", offset: 0, size: 0x100 },
      ],
      redundant: true,
    },
    {
      name: "whatever follows the second copy is never read",
      text: "a 0 100\nb 0 100\ntotal garbage\n",
      copies: [
        { path: "a", offset: 0, size: 0x100 },
        { path: "b", offset: 0, size: 0x100 },
      ],
      redundant: true,
    },
    {
      name: "env size at the 16 MiB bound",
      text: "a 0 0x1000000\n",
      copies: [{ path: "a", offset: 0, size: MAX_ENV_SIZE }],
      redundant: false,
    },
    {
      name: "two copies back to back in one file",
      text: "disk.img 0x0 0x4000\ndisk.img 0x4000 0x4000\n",
      copies: [
        { path: "disk.img", offset: 0, size: 0x4000 },
        { path: "disk.img", offset: 0x4000, size: 0x4000 },
      ],
      redundant: true,
    },
    {
      name: "one from the start, one from the end: placed by the store (needs the device size)",
      text: "/dev/sda 0x0 0x4000\n/dev/sda -0x4000 0x4000\n",
      copies: [
        { path: "/dev/sda", offset: 0, size: 0x4000 },
        { path: "/dev/sda", offset: -0x4000, size: 0x4000 },
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
    { name: "sizes differ", text: "a 0 100\nb 0 200\n", why: /differ in size/ },
    { name: "missing size", text: "a 0\n", why: /expected: device offset size/ },
    { name: "offset not a number", text: "a zero 100\n", why: /offset "zero"/ },
    { name: "size not hex", text: "a 0 0x10g\n", why: /env size "0x10g"/ },
    { name: "size too small", text: "a 0 4\n", why: /at least 8/ },
    { name: "only a comment after the offset", text: "a 0 # 4000\n", why: /expected: device offset size/ },
    // U-Boot envs are KiB; zb holds every copy in memory (0xffffffffff crashed with "Out of memory").
    { name: "env size absurd (1 TiB)", text: "a 0 0xffffffffff\n", why: /env size 0xffffffffff is larger than 16 MiB/ },
    { name: "env size one byte over 16 MiB", text: "a 0 1000001\n", why: /larger than 16 MiB/ },
    // A save writes the inactive copy: over the same bytes it overwrites the only good env.
    { name: "both copies at the same bytes", text: "a.env 0 4000\na.env 0 4000\n", why: /copies overlap in a\.env: \[0x0, 0x4000\) and \[0x0, 0x4000\)/ },
    { name: "the second copy starts inside the first", text: "img 0x1000 4000\nimg 0x4fff 4000\n", why: /copies overlap in img/ },
    { name: "one file by two spellings", text: "/boot/./zb/a.env 0 100\n/boot/zb//a.env 80 100\n", why: /copies overlap in \/boot\/zb\/a\.env/ },
    { name: "both counted from the end, overlapping", text: "/dev/sda -0x8000 0x4000\n/dev/sda -0x6000 0x4000\n", why: /\[-0x8000, -0x4000\) and \[-0x6000, -0x2000\)/ },
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

test.each([
  { name: "same range", a: [0, 0x100], b: [0, 0x100], overlap: true },
  { name: "b starts on a's last byte", a: [0, 0x100], b: [0xff, 0x100], overlap: true },
  { name: "b ends on a's first byte", a: [0x100, 0x100], b: [1, 0x100], overlap: true },
  { name: "back to back", a: [0, 0x100], b: [0x100, 0x100], overlap: false },
  { name: "b before a", a: [0x200, 0x100], b: [0, 0x100], overlap: false },
  { name: "both from the end, apart", a: [-0x200, 0x100], b: [-0x100, 0x100], overlap: false },
])("rangesOverlap: $name → $overlap", ({ a, b, overlap }) => {
  expect(rangesOverlap({ offset: a[0]!, size: a[1]! }, { offset: b[0]!, size: b[1]! })).toBe(overlap);
});

test("default location: zb/zb.env + zb/zb.env.redund, 16 KiB each, redundant", () => {
  const c = defaultConfig("/mnt/boot");
  expect(c.copies.map((l) => l.path)).toEqual(["/mnt/boot/zb/zb.env", "/mnt/boot/zb/zb.env.redund"]);
  expect(layoutOf(c)).toEqual({ size: 0x4000, redundant: true });
});
