/**
 * Every small input a command reads whole, given something that is no small
 * file — /dev/zero, a FIFO or pipe fed forever, an 8 GiB sparse file — is
 * refused with the error and exit status that fit it, and the command ends:
 * it reads one byte past its limit (lib/sys/bounded.ts), not until memory
 * runs out (before: 4.9 GB RSS after 10 s for `zb env print -c /dev/zero`,
 * or ENOMEM as exit 5).
 *
 * Through dist/zb-x64 as users run it. Each run has a generous time limit
 * (a run that never ends fails the row; nothing asserts speed) and a 1 GiB
 * data limit (prlimit --data): a regression then fails fast with ENOMEM
 * instead of taking gigabytes from a shared machine. That limit also keeps
 * the JIT off, so bun:ffi and the env lock are not there: every row must fail
 * before a lock, which is where an input should be read anyway.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { withTempVarLock } from "../fakes/envlock.ts";
import { encode } from "../../lib/env/codec.ts";

const BIN = resolve(import.meta.dir, "../../dist/zb-x64");
const RUN_LIMIT_MS = 60_000;
let dir = "";
let prlimit = "";

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  prlimit = Bun.which("prlimit") ?? "";
  if (!prlimit) throw new Error("prlimit (util-linux) is missing: it bounds the memory a regression could take");
  dir = mkdtempSync(join(tmpdir(), "zb-bounded-"));
  for (const n of ["fw_printenv", "fw_setenv"]) Bun.spawnSync(["ln", "-s", BIN, join(dir, n)]);
  // A valid single env, its config, a config whose env is unreadable, and a config naming /dev/zero as the env.
  writeFileSync(join(dir, "uboot.env"), encode(new Map([["zb_slot", "a"]]), { size: 0x1000, redundant: false }));
  writeFileSync(join(dir, "fw.config"), `${join(dir, "uboot.env")} 0x0 0x1000\n`);
  writeFileSync(join(dir, "broken.env"), new Uint8Array(0x1000).fill(7));
  writeFileSync(join(dir, "broken.config"), `${join(dir, "broken.env")} 0x0 0x1000\n`);
  writeFileSync(join(dir, "zero-env.config"), "/dev/zero 0x0 0x4000\n/dev/zero 0x4000 0x4000\n");
  writeFileSync(join(dir, "none.conf"), "# no settings\n");
  const fd = openSync(join(dir, "sparse"), "w");
  ftruncateSync(fd, 8 * 1024 ** 3);
  closeSync(fd);
  expect(Bun.spawnSync(["mkfifo", join(dir, "fifo")]).exitCode).toBe(0);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** How the input reaches the command: a path (/dev/zero, the sparse file, a FIFO `yes` writes into), or stdin (/dev/zero, a pipe from `yes`). */
type Feed = "path" | "fifo" | "stdin-zero" | "stdin-pipe";

interface Row {
  name: string;
  tool?: "zb" | "fw_printenv" | "fw_setenv";
  /** `$D` is the temp folder. */
  argv: string[];
  feed?: Feed;
  code: number;
  err: string | RegExp;
}

const ROWS: Row[] = [
  { name: "zb env print -c /dev/zero", argv: ["env", "print", "-c", "/dev/zero"], code: 8, err: "zb: cannot read env config /dev/zero: larger than 65536 bytes (is it the right file?)\n" },
  { name: "zb env print -c a FIFO fed forever", argv: ["env", "print", "-c", "$D/fifo"], feed: "fifo", code: 8, err: /^zb: cannot read env config .*\/fifo: larger than 65536 bytes \(is it the right file\?\)\n$/ },
  { name: "zb env print -c an 8 GiB sparse file", argv: ["env", "print", "-c", "$D/sparse"], code: 8, err: /larger than 65536 bytes/ },
  { name: "zb env set --script /dev/zero", argv: ["env", "set", "-c", "$D/fw.config", "--script", "/dev/zero"], code: 2, err: "zb: cannot read script /dev/zero: larger than 16777216 bytes (is it the right file?)\n" },
  { name: "zb env set --script - from /dev/zero", argv: ["env", "set", "-c", "$D/fw.config", "--script", "-"], feed: "stdin-zero", code: 2, err: "zb: cannot read script from stdin: larger than 16777216 bytes (is it the right file?)\n" },
  { name: "zb env set --script - from a pipe fed forever", argv: ["env", "set", "-c", "$D/fw.config", "--script", "-"], feed: "stdin-pipe", code: 2, err: /script from stdin: larger than 16777216 bytes/ },
  { name: "zb env init --script an 8 GiB sparse file", argv: ["env", "init", "-c", "$D/fw.config", "--force", "--script", "$D/sparse"], code: 2, err: /cannot read script .*\/sparse: larger than 16777216 bytes/ },
  { name: "zb env print -c a config whose env copies are /dev/zero (read by their size)", argv: ["env", "print", "-c", "$D/zero-env.config"], code: 3, err: /both copies are invalid/ },
  { name: "zb hsm probe --config /dev/zero", argv: ["hsm", "probe", "--config", "/dev/zero"], code: 8, err: "zb: cannot read the HSM config /dev/zero: larger than 65536 bytes (is it the right file?)\n" },
  { name: "zb hsm probe --config a FIFO fed forever", argv: ["hsm", "probe", "--config", "$D/fifo"], feed: "fifo", code: 8, err: /the HSM config .*\/fifo: larger than 65536 bytes/ },
  { name: "zb hsm unseal /dev/zero", argv: ["hsm", "unseal", "/dev/zero", "-o", "-", "--soft-enable", "--config", "$D/none.conf"], code: 23, err: "zb: cannot read /dev/zero: larger than 65536 bytes (is it the right file?)\n" },
  { name: "zb hsm unseal an 8 GiB sparse file", argv: ["hsm", "unseal", "$D/sparse", "-o", "-", "--config", "$D/none.conf"], code: 23, err: /\/sparse: larger than 65536 bytes/ },
  { name: "zb hsm unseal - from a pipe fed forever", argv: ["hsm", "unseal", "-", "-o", "-", "--config", "$D/none.conf"], feed: "stdin-pipe", code: 23, err: "zb: cannot read the sealed blob on stdin: larger than 65536 bytes (is it the right file?)\n" },
  { name: "zb hsm seal, the secret from /dev/zero (nothing left behind)", argv: ["hsm", "seal", "--backend", "soft", "--soft-enable", "--config", "$D/none.conf", "-o", "$D/never.sealed"], feed: "stdin-zero", code: 2, err: /cannot read the secret on stdin: larger than 4096 bytes/ },
  { name: "zb key id /dev/zero", argv: ["key", "id", "/dev/zero"], code: 18, err: "zb: cannot read key /dev/zero: larger than 65536 bytes (is it the right file?)\n" },
  // The personalities keep libubootenv's status and words for a bad config (234) and an unreadable default env (243).
  { name: "fw_printenv -c /dev/zero", tool: "fw_printenv", argv: ["-c", "/dev/zero"], code: 234, err: "Configuration file wrong or corrupted\n" },
  { name: "fw_printenv -c a FIFO fed forever", tool: "fw_printenv", argv: ["-c", "$D/fifo"], feed: "fifo", code: 234, err: "Configuration file wrong or corrupted\n" },
  { name: "fw_printenv -f /dev/zero as the default env of an unreadable env", tool: "fw_printenv", argv: ["-c", "$D/broken.config", "-f", "/dev/zero"], code: 243, err: "Cannot read environment, using default\nCannot read default environment from file\n" },
  { name: "fw_setenv -s /dev/zero", tool: "fw_setenv", argv: ["-c", "$D/fw.config", "-s", "/dev/zero"], code: 2, err: "zb: cannot read script /dev/zero: larger than 16777216 bytes (is it the right file?)\n" },
  { name: "fw_setenv -s - from a pipe fed forever", tool: "fw_setenv", argv: ["-c", "$D/fw.config", "-s", "-"], feed: "stdin-pipe", code: 2, err: /script from stdin: larger than 16777216 bytes/ },
];

function runRow(row: Row): { code: number | null; err: string } {
  const exe = row.tool && row.tool !== "zb" ? join(dir, row.tool) : BIN;
  const argv = row.argv.map((a) => a.replace("$D", dir));
  const cmd = [prlimit, "--data=1073741824", exe, ...argv];
  // The shell feeds stdin; `exec` keeps zb its child, so the time limit's kill reaches it.
  const shell = row.feed === "stdin-zero" ? 'exec "$@" < /dev/zero' : row.feed === "stdin-pipe" ? 'yes | "$@"' : 'exec "$@"';
  let writer: ReturnType<typeof Bun.spawn> | undefined;
  if (row.feed === "fifo") writer = Bun.spawn(["sh", "-c", 'exec yes > "$0"', join(dir, "fifo")], { stdout: "ignore", stderr: "ignore" });
  try {
    const p = Bun.spawnSync(withTempVarLock(["sh", "-c", shell, "sh", ...cmd]), { stdin: "ignore", stdout: "ignore", stderr: "pipe", timeout: RUN_LIMIT_MS, env: { ...process.env, ZB_NO_REBOOT: "1" } });
    return { code: p.exitCode, err: p.stderr.toString() };
  } finally {
    writer?.kill();
  }
}

describe("a bounded read of every small input", () => {
  test.each(ROWS)("$name → exit $code", (row) => {
    const envBefore = readFileSync(join(dir, "uboot.env"));
    const r = runRow(row);
    if (typeof row.err === "string") expect(r.err).toBe(row.err);
    else expect(r.err).toMatch(row.err);
    expect(r.code).toBe(row.code);
    expect(readFileSync(join(dir, "uboot.env"))).toEqual(envBefore);
    expect(existsSync(join(dir, "never.sealed"))).toBe(false);
  });
});
