/**
 * writeFileAtomic's order of operations, as a recording Sys sees it: temp
 * file written and synced, renamed over the target, the renamed file synced
 * (on vfat that writes its directory entry: lib/sys/atomic.ts), then the folder.
 */
import { expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic } from "../../../lib/sys/atomic.ts";
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
