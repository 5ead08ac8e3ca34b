/** lib/sys/dlopen.ts: a bare library name resolves in the system folders only, never in the working directory. */
import { expect, test } from "bun:test";
import { libraryDirs, systemLibrary } from "../../../lib/sys/dlopen.ts";

const dirs = ["/lib/x", "/usr/lib/x", "/usr/lib"];
const has = (...paths: string[]) => (p: string) => paths.includes(p);

test.each([
  { name: "libz.so.1", present: ["/usr/lib/x/libz.so.1", "/usr/lib/libz.so.1"], want: "/usr/lib/x/libz.so.1" },
  { name: "libz.so.1", present: ["/usr/lib/libz.so.1"], want: "/usr/lib/libz.so.1" },
  { name: "libz.so.1", present: [`${process.cwd()}/libz.so.1`], want: null },
  { name: "/opt/zk/libzk.so", present: [], want: "/opt/zk/libzk.so" },
  { name: "./libzk.so", present: [], want: `${process.cwd()}/./libzk.so` },
])("$name with $present → $want", ({ name, present, want }) => {
  expect(systemLibrary(name, has(...present), dirs)).toBe(want);
});

test("the folders: multiarch first, then the plain ones; no relative folder", () => {
  expect(libraryDirs("arm64").slice(0, 4)).toEqual(["/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib", "/usr/lib"]);
  expect(libraryDirs("x64")[0]).toBe("/lib/x86_64-linux-gnu");
  for (const d of [...libraryDirs("x64"), ...libraryDirs("riscv64")]) expect(d.startsWith("/")).toBe(true);
});

test("libzstd.so.1 of this host is found where Debian puts it", () => {
  expect(systemLibrary("libzstd.so.1")).toMatch(/^\/(usr\/)?lib\/x86_64-linux-gnu\/libzstd\.so\.1$/);
});
