/** Rendering and reading the Pi firmware's files: reference before → generated after. */
import { describe, expect, test } from "bun:test";
import { GENERATED_HEADER, GENERATED_NOTE, prefixTarget, readSelection, renderCmdline, renderConfig, rendersFrom } from "../../../lib/bootloader/piconfig.ts";

describe("renderConfig", () => {
  test.each([
    {
      name: "user lines kept after zb's two lines",
      reference: "kernel=vmlinuz\ninitramfs initrd.img followkernel\ndtparam=audio=on\n",
      after: [GENERATED_HEADER, ...GENERATED_NOTE, "os_prefix=slot-a/", "cmdline=cmdline.txt", "kernel=vmlinuz", "initramfs initrd.img followkernel", "dtparam=audio=on"],
    },
    {
      name: "the user's os_prefix and cmdline lines are commented out, also under filters",
      reference: "os_prefix=old/\n[pi4]\ncmdline=other.txt\n  os_prefix = x/\n[all]\n",
      after: [GENERATED_HEADER, ...GENERATED_NOTE, "os_prefix=slot-a/", "cmdline=cmdline.txt", "# zb: os_prefix=old/", "[pi4]", "# zb: cmdline=other.txt", "# zb: os_prefix = x/", "[all]"],
    },
    {
      name: "CRLF reference, no trailing newline",
      reference: "kernel=k\r\narm_64bit=1",
      after: [GENERATED_HEADER, ...GENERATED_NOTE, "os_prefix=slot-a/", "cmdline=cmdline.txt", "kernel=k", "arm_64bit=1"],
    },
    {
      name: "rendering a generated file again does not stack headers",
      reference: renderConfig("kernel=k\n", "slot-b/", "x.txt"),
      after: [GENERATED_HEADER, ...GENERATED_NOTE, "os_prefix=slot-a/", "cmdline=cmdline.txt", "# zb: os_prefix=slot-b/", "# zb: cmdline=x.txt", "kernel=k"],
    },
  ])("$name", ({ reference, after }) => {
    expect(renderConfig(reference, "slot-a/", "cmdline.txt")).toBe(after.join("\n") + "\n");
  });

  test("the header says when an edit of zb/config.txt arrives, each line within config.txt's 80 characters", () => {
    const text = renderConfig("kernel=k\n", "slot-a/", "cmdline.txt");
    expect(text).toContain("# An edit there reaches this file when zb next writes it: an update's try\n");
    expect(text.split("\n").every((l) => l.length <= 80)).toBe(true);
  });

  test("rendersFrom: a generated file lags behind an edited reference; an older zb's header alone does not count", () => {
    const text = renderConfig("kernel=k\n", "slot-b/", "cmdline.txt");
    expect(rendersFrom(text, "kernel=k\n")).toBe(true);
    expect(rendersFrom(text, "kernel=k\ndtoverlay=uart5\n")).toBe(false);
    const older = text.split("\n").filter((l) => !GENERATED_NOTE.includes(l)).join("\n");
    expect(rendersFrom(older, "kernel=k\n")).toBe(true);
  });

  test("the firmware reads back what was rendered", () => {
    const text = renderConfig("os_prefix=old/\nkernel=k\n", "slot-b/", "cmdline-try.txt");
    expect(readSelection(text)).toEqual({ osPrefix: "slot-b/", cmdline: "cmdline-try.txt" });
  });
});

test.each([
  { name: "normal", ref: "console=serial0,115200 root=/dev/mapper/root rootwait\n", slot: "a", try: false, after: "console=serial0,115200 root=/dev/mapper/root rootwait zb.slot=a\n" },
  { name: "try variant carries snapd's marker, and panic=10 so a try that panics resets the board", ref: "quiet\n", slot: "b", try: true, after: "quiet zb.slot=b kernel_status=trying panic=10\n" },
  { name: "try variant keeps the reference's own panic=", ref: "quiet panic=-1\n", slot: "b", try: true, after: "quiet panic=-1 zb.slot=b kernel_status=trying\n" },
  { name: "the normal variant gets no panic= of zb's", ref: "quiet\n", slot: "b", try: false, after: "quiet zb.slot=b\n" },
  { name: "zb's own parameters in the reference are replaced", ref: "quiet zb.slot=b kernel_status=try  splash\nsecond line ignored\n", slot: "a", try: false, after: "quiet splash zb.slot=a\n" },
])("renderCmdline: $name", ({ ref, slot, try: t, after }) => {
  expect(renderCmdline(ref, slot, t)).toBe(after);
});

test.each([
  { prefix: "slot-a/", target: "a" },
  { prefix: "/slot-b/", target: "b" },
  { prefix: "zboot/", target: "zboot" },
  { prefix: "slot-a", target: null },
  { prefix: "slot-c/", target: null },
  { prefix: "", target: null },
])("prefixTarget($prefix) = $target", ({ prefix, target }) => {
  expect(prefixTarget(prefix)).toBe(target as never);
});
