/**
 * shellcheck on the two initramfs-tools scripts, as POSIX sh: mkinitramfs
 * runs the hook with /bin/sh (dash on Debian) and the initramfs runs the
 * boot script with busybox sh. Also checks the executable bit, without
 * which mkinitramfs skips a script silently (hook-functions,
 * set_initlist()). And shellcheck on every other script of the repository:
 * the QEMU harness, CI and the golden-vector generators.
 */
import { expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const REPO = resolve(import.meta.dir, "../..");
const HOOKS = join(REPO, "initramfs-hooks");

function shellcheck(path: string, dialect: string) {
  const p = Bun.spawnSync(["shellcheck", "--shell", dialect, "--format", "gcc", path], { stdin: "ignore" });
  return { code: p.exitCode, out: p.stdout.toString() + p.stderr.toString() };
}

test.each([
  { file: "initramfs-hooks/hooks/zb", dialect: "sh" },
  { file: "test/initramfs-hooks/fake-hook-functions.sh", dialect: "sh" },
  { file: "test/initramfs-hooks/fake-functions.sh", dialect: "sh" },
])("shellcheck -s $dialect $file: no findings", ({ file, dialect }) => {
  expect(shellcheck(join(REPO, file), dialect)).toEqual({ code: 0, out: "" });
});

// The boot scripts source /scripts/zb-functions; -x from the repository
// root follows their `source=` directives to the file in the tree.
test.each(
  ["initramfs-hooks/scripts/local-top/zb", "initramfs-hooks/scripts/init-top/prestart-zb", "initramfs-hooks/scripts/zb-functions"].flatMap((file) =>
    ["sh", "dash"].map((dialect) => ({ file, dialect })),
  ),
)("shellcheck -x -s $dialect $file: no findings", ({ file, dialect }) => {
  const p = Bun.spawnSync(["shellcheck", "-x", "--shell", dialect, "--format", "gcc", file], { cwd: REPO, stdin: "ignore" });
  expect({ code: p.exitCode, out: p.stdout.toString() + p.stderr.toString() }).toEqual({ code: 0, out: "" });
});

// The harness, CI and golden-vector generator scripts: bash, except the guests' /init scripts (busybox
// sh, checked as POSIX sh). -x follows their `. qemu/checks.sh`-style
// sources, which are relative to the repository root.
const SCRIPTS = [
  ...[".ci/setup", ".ci/test", ".ci/run"].map((file) => ({ file, dialect: "bash" })),
  ...[...new Bun.Glob("qemu/*.sh").scanSync(REPO)].sort().map((file) => ({ file, dialect: "bash" })),
  ...[...new Bun.Glob("test/vectors/*/gen.sh").scanSync(REPO)].sort().map((file) => ({ file, dialect: "bash" })),
  ...[...new Bun.Glob("qemu/guest/*.sh").scanSync(REPO)].sort().map((file) => ({ file, dialect: "sh" })),
];

test("the script list found the harness (qemu/unlock.sh, qemu/guest/init-unlock.sh)", () => {
  expect(SCRIPTS.map((s) => s.file)).toEqual(expect.arrayContaining(["qemu/unlock.sh", "qemu/guest/init-unlock.sh", ".ci/run"]));
});

test.each(SCRIPTS)("shellcheck -x -s $dialect $file: no findings", ({ file, dialect }) => {
  const p = Bun.spawnSync(["shellcheck", "-x", "--shell", dialect, "--format", "gcc", file], { cwd: REPO, stdin: "ignore" });
  expect({ code: p.exitCode, out: p.stdout.toString() + p.stderr.toString() }).toEqual({ code: 0, out: "" });
});

test("shellcheck does report a finding (the check above can fail)", () => {
  const dir = mkdtempSync(join(tmpdir(), "zb-shellcheck-"));
  try {
    const bad = join(dir, "bad");
    writeFileSync(bad, '#!/bin/sh\nlocal x=1\nrm -rf $1/\n');
    const r = shellcheck(bad, "sh");
    expect(r.code).toBe(1);
    expect(r.out).toContain("SC3043");
    expect(r.out).toContain("SC2086");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.each(["hooks/zb", "scripts/local-top/zb", "scripts/init-top/prestart-zb"])("%s is executable", (file) => {
  expect(statSync(join(HOOKS, file)).mode & 0o111).toBe(0o111);
});
