/**
 * `zb cred create` through dist/zb-x64: what it leaves on disk when it
 * fails after claiming its output, the mode of the archive it writes, and
 * the volumes it refuses before touching any (a LUKS1 data volume, a root on
 * a loop device over the data image; the other cred rows are in
 * test/stages/hsm.test.ts).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, linkSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";

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
const sha = (p: string) => new Bun.CryptoHasher("sha256").update(readFileSync(p)).digest("hex");
const loops: string[] = [];
afterAll(() => loops.forEach((l) => Bun.spawnSync(["losetup", "-d", l])));

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

describe("zb cred create refuses volumes before touching any: before (the data volume) / after (exit, message; nothing formatted, no archive)", () => {
  /** Slot b's credentials with a fresh data volume, as the running slot would hold them. */
  function running(tag: string): { data: string; cred: string } {
    const [data, cred] = [image(`${tag}-data.img`), join(dir, `${tag}-running.cpio`)];
    const r = zb(["cred", "create", "--slot", "b", "--root", image(`${tag}-rb.img`), "--format", "--data", data, "--format-data", "--backend", "soft", ...soft(), "-o", cred]);
    expect(r.code).toBe(0);
    return { data, cred };
  }
  const rows: { name: string; tag: string; before: (v: { data: string; cred: string }) => { root: string; data: string }; after: { code: number; err: RegExp } }[] = [
    {
      name: "the data volume was remade as LUKS1 (same key, by another tool)",
      tag: "l1",
      before: ({ data, cred }) => {
        // The data key, unsealed the way the running slot would, goes straight from zb to cryptsetup (no file).
        const blob = Bun.spawnSync(["cpio", "-i", "--quiet", "--to-stdout", "zb/credentials/data.sealed"], { stdin: readFileSync(cred) }).stdout;
        const key = Bun.spawnSync([BIN, "hsm", "unseal", "-", "-o", "-", ...soft()], { stdin: blob, env: { ...process.env, ZB_NO_REBOOT: "1" } }).stdout;
        expect(key.length).toBe(32);
        const f = Bun.spawnSync(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks1", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file=-", data], { stdin: key, stderr: "pipe" });
        expect(f.exitCode).toBe(0);
        return { root: image("l1-ra.img"), data };
      },
      after: { code: 22, err: /zb: cannot enrol the data volume .*l1-data\.img: it is a LUKS1 volume; zb needs LUKS2\n.*cryptsetup convert --type luks2 .*l1-data\.img/ },
    },
    {
      name: "the root given is a loop device on the data image",
      tag: "lo",
      before: ({ data }) => {
        const r = Bun.spawnSync(["losetup", "--find", "--show", data], { stderr: "pipe" });
        const loop = r.stdout.toString().trim();
        if (r.exitCode !== 0 || !loop.startsWith("/dev/loop")) throw new Error(`losetup failed: ${r.stderr}`);
        loops.push(loop);
        return { root: loop, data };
      },
      after: { code: 2, err: /zb: cannot enrol slot a: root and data are the same device \(\/dev\/loop\d+ and .*lo-data\.img overlap: loop\d+ is a loop device on .*lo-data\.img\)/ },
    },
    {
      name: "the root given is a loop device on the data image by a name since unlinked (the binary asks the kernel which file)",
      tag: "ul",
      before: ({ data }) => {
        const gone = join(dirname(data), "gone.img");
        linkSync(data, gone);
        const r = Bun.spawnSync(["losetup", "--find", "--show", gone], { stderr: "pipe" });
        rmSync(gone);
        const loop = r.stdout.toString().trim();
        if (r.exitCode !== 0 || !loop.startsWith("/dev/loop")) throw new Error(`losetup failed: ${r.stderr}`);
        loops.push(loop);
        return { root: loop, data };
      },
      after: { code: 2, err: /zb: cannot enrol slot a: root and data are the same device \(\/dev\/loop\d+ and .*ul-data\.img overlap: loop\d+ is a loop device on .*gone\.img \(deleted\)\)/ },
    },
  ];
  test.each(rows)("$name → exit $after.code", ({ tag, before, after }) => {
    const v = running(tag);
    const { root, data } = before(v);
    const sums = { root: sha(root), data: sha(data) };
    const out = join(dir, "refused.cpio");
    rmSync(out, { force: true });
    const r = zb(["cred", "create", "--slot", "a", "--root", root, "--format", "--data", data, "--data-key-from", v.cred, "--backend", "soft", ...soft(), "-o", out]);
    expect([r.code, r.err]).toEqual([after.code, expect.stringMatching(after.err)]);
    expect({ archive: existsSync(out), root: sha(root), data: sha(data) }).toEqual({ archive: false, ...sums });
  });
});

describe("zb cred create: flag combinations are refused before anything is read, unsealed or created", () => {
  // A --data-key-from that does not exist would fail as IO (or, with a PIN, prompt) if it were read first.
  test.each([
    { name: "--format-data and --data-key-from together", flags: ["--data", "DATA", "--format-data", "--data-key-from", "MISSING"], why: "with --data give exactly one of --format-data and --data-key-from" },
    { name: "--data without either", flags: ["--data", "DATA"], why: "with --data give exactly one of --format-data and --data-key-from" },
    { name: "--data-key-from without --data", flags: ["--data-key-from", "MISSING"], why: "--format-data and --data-key-from need --data DEVICE" },
  ])("$name: USAGE (exit 2), no archive", ({ flags, why }) => {
    const out = join(dir, "flags.cpio");
    const argv = flags.map((f) => (f === "DATA" ? image("flags-data.img") : f === "MISSING" ? join(dir, "no-such.cpio") : f));
    const r = zb(["cred", "create", "--slot", "a", "--root", image("flags-root.img"), "--format", ...argv, "--backend", "soft", ...soft(), "-o", out]);
    expect([r.code, r.err]).toEqual([2, expect.stringContaining(`cannot create credentials: ${why}`)]);
    expect(existsSync(out)).toBe(false);
    expect(isLuks(join(dir, "flags-root.img"))).toBe(false);
  });
});
