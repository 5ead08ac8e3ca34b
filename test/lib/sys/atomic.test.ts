/**
 * writeFileAtomic's order of operations, as a recording Sys sees it: temp
 * file written and synced, renamed over the target, the renamed file synced
 * (on vfat that writes its directory entry: lib/sys/atomic.ts), then the folder.
 */
import { expect, test } from "bun:test";
import { chmodSync, linkSync, mkdirSync, readFileSync, realpathSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { resolveFile, writeFileAtomic } from "../../../lib/sys/atomic.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { CuttingSys } from "../../fakes/powercut.ts";
import { tempDirs } from "../../tempdirs.ts";

const tempDir = tempDirs("zb-atomic-");

test.each([
  { name: "a new file", exists: false },
  { name: "replacing a file", exists: true },
])("$name: write temp, fsync temp, rename, fsync the file under its name, fsync the folder", ({ exists }) => {
  const dir = tempDir();
  const path = join(dir, "config.txt");
  if (exists) writeFileSync(path, "old\n");
  const sys = new CuttingSys(new HostSys(), { never: true });
  writeFileAtomic(sys, path, "new\n");
  const tmp = join(dir, ".config.txt.zb-new");
  expect(sys.ops.filter((o) => o.kind !== "unlink").map(({ kind, path }) => `${kind} ${path}`)).toEqual([
    `write ${tmp}`, `fsync ${tmp}`, `rename ${path}`, `fsync ${path}`, `fsync ${dir}`,
  ]);
  expect(readFileSync(path, "utf8")).toBe("new\n");
});

// The env store replaces a file keeping its mode (lib/env/store.ts); without
// `sameAs` every other caller gets today's new file (0644 less the umask).
test.each([
  { name: "default: a 0600 file becomes 0644 less the umask", before: 0o600, sameAs: false, after: 0o644 & ~process.umask() },
  { name: "sameAs a 0600 file: stays 0600", before: 0o600, sameAs: true, after: 0o600 },
  { name: "sameAs a 0755 file: stays 0755 (the umask does not apply)", before: 0o755, sameAs: true, after: 0o755 },
])("mode, $name", ({ before, sameAs, after }) => {
  const path = join(tempDir(), "file");
  writeFileSync(path, "old\n");
  chmodSync(path, before);
  const host = new HostSys();
  writeFileAtomic(host, path, "new\n", sameAs ? { sameAs: host.stat(path)! } : undefined);
  expect(statSync(path).mode & 0o7777).toBe(after);
  expect(readFileSync(path, "utf8")).toBe("new\n");
});

test.each([
  { name: "a plain file: itself, one link", make: (d: string) => writeFileSync(join(d, "f"), ""), path: "f", resolved: "f", links: 1 },
  { name: "a symlink: its target", make: (d: string) => (mkdirSync(join(d, "real")), writeFileSync(join(d, "real/f"), ""), symlinkSync("real/f", join(d, "f"))), path: "f", resolved: "real/f", links: 1 },
  { name: "a hard-linked file: two links", make: (d: string) => (writeFileSync(join(d, "f"), ""), linkSync(join(d, "f"), join(d, "g"))), path: "f", resolved: "f", links: 2 },
  { name: "missing: null", make: () => undefined, path: "f", resolved: null, links: 0 },
])("resolveFile: $name", ({ make, path, resolved, links }) => {
  const dir = realpathSync(tempDir());
  make(dir);
  expect(resolveFile(new HostSys(), join(dir, path))).toEqual(resolved === null ? null : { path: join(dir, resolved), links });
});
