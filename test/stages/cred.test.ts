/**
 * `zb cred create` through dist/zb-x64: what it leaves on disk when it
 * fails after claiming its output, and the mode of the archive it writes
 * (the other cred rows are in test/stages/hsm.test.ts).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const BIN = resolve(import.meta.dir, "../../dist/zb-x64");
let dir = "";

function zb(argv: string[]) {
  const p = Bun.spawnSync([BIN, ...argv], { env: { ...process.env, ZB_NO_REBOOT: "1" } });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}
const soft = () => ["--config", join(dir, "none.conf"), "--soft-enable", "--soft-key-file", join(dir, "soft.key")];
const image = (name: string) => {
  const p = join(dir, name);
  writeFileSync(p, new Uint8Array(16 << 20));
  return p;
};
const isLuks = (p: string) => Bun.spawnSync(["cryptsetup", "isLuks", p]).exitCode === 0;

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  dir = mkdtempSync(join(tmpdir(), "zb-credcli-"));
  writeFileSync(join(dir, "none.conf"), "# no settings: the rows give theirs as flags\n");
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("zb cred create", () => {
  test("the archive is created 0600, like `zb hsm seal -o` blobs", () => {
    const r = zb(["cred", "create", "--slot", "a", "--root", image("mode-root.img"), "--format", "--backend", "soft", ...soft(), "-o", join(dir, "mode.cpio")]);
    expect(r.code).toBe(0);
    expect(statSync(join(dir, "mode.cpio")).mode & 0o777).toBe(0o600);
  });

  // The backend is opened after -o is claimed: its CONFIG error must remove the claimed file
  // again (a re-run would fail with "file exists"), before any disk is formatted.
  const rows: { name: string; before: (runningData: string) => string[]; after: { code: number; err: RegExp } }[] = [
    {
      name: "pkcs11 without a module",
      before: () => ["--backend", "pkcs11"],
      after: { code: 8, err: /cannot use the pkcs11 backend: no module configured/ },
    },
    {
      name: "pkcs11 without a module, after the data key was unsealed from the running slot's credentials",
      before: (runningData) => ["--data", runningData, "--data-key-from", join(dir, "running.cpio"), "--backend", "pkcs11"],
      after: { code: 8, err: /cannot use the pkcs11 backend: no module configured/ },
    },
  ];
  test.each(rows)("$name → exit $after.code, no archive left, nothing formatted; a re-run with a working backend succeeds", ({ before, after }) => {
    const data = image("running-data.img");
    rmSync(join(dir, "running.cpio"), { force: true });
    const running = zb(["cred", "create", "--slot", "b", "--root", image("running-root.img"), "--format", "--data", data, "--format-data", "--backend", "soft", ...soft(), "-o", join(dir, "running.cpio")]);
    expect(running.code).toBe(0);
    const root = image("cfg-root.img");
    const out = join(dir, "cfg.cpio");
    rmSync(out, { force: true });
    const argv = before(data);
    const r = zb(["cred", "create", "--slot", "a", "--root", root, "--format", ...argv, ...soft(), "-o", out]);
    expect([r.code, r.err]).toEqual([after.code, expect.stringMatching(after.err)]);
    expect({ archive: existsSync(out), rootFormatted: isLuks(root) }).toEqual({ archive: false, rootFormatted: false });
    const again = zb(["cred", "create", "--slot", "a", "--root", root, "--format", ...argv.slice(0, -2), "--backend", "soft", ...soft(), "-o", out]);
    expect([again.code, again.err.match(/zb: cannot .*/)?.[0] ?? null]).toEqual([0, null]);
  });
});
