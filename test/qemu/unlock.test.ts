/**
 * The QEMU aarch64 unlock scenarios (qemu/unlock.sh all): swtpm is the
 * guest's TPM behind tpm-tis-device (tpm_tis.ko built for the guest kernel),
 * the LUKS2 root on the virtio disk was formatted by `zb cred create` with its
 * key sealed to that TPM, and zbunlock unlocks it in the initramfs. One run of
 * the script provisions once and boots three times; each test checks one boot
 * from the script's verdict and, independently, from the guest console and the
 * env the guest left on the disk. Never skipped: a missing binary or host tool
 * is a failure with a message that says what to do.
 */
import { expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { ROOT, runScript, tail, type ScriptRun } from "./script.ts";

const WORK = resolve(ROOT, "qemu/.work/unlock");
/** Three boots of 8–15 s under TCG plus packing and provisioning; each boot is bounded by ZB_QEMU_TIMEOUT. */
const SCRIPT_MS = 240_000;
const BOOT_TIMEOUT_S = "60";

type Run = ScriptRun;



let run: Promise<Run> | undefined;
/** The first test starts the script; the others reuse its result. */
function once(): Promise<Run> {
  for (const bin of ["dist/zb-arm64", "dist/zb-x64"]) {
    if (!existsSync(resolve(ROOT, bin))) throw new Error(`${bin} is missing: run \`node_modules/.bin/bun build.ts\` first`);
  }
  run ??= runScript("unlock.sh", ["all"], { ZB_NO_REBOOT: "1", ZB_QEMU_TIMEOUT: process.env.ZB_QEMU_TIMEOUT ?? BOOT_TIMEOUT_S }, SCRIPT_MS);
  return run;
}

function consoleOf(scenario: string): string {
  const log = resolve(WORK, scenario, "console.log");
  return existsSync(log) ? readFileSync(log, "utf8").replace(/\r/g, "") : "";
}

/** The script's verdict for one scenario, with everything needed to debug a failure. */
async function verdict(scenario: string): Promise<Run> {
  const r = await once();
  if (!r.out.split("\n").includes(`ZB-UNLOCK-OK ${scenario}`)) {
    const how = r.code === null ? `was killed (${r.signal ?? "?"}; limit ${SCRIPT_MS / 1000} s)` : `exited ${r.code}`;
    throw new Error(
      `qemu/unlock.sh all ${how} without ZB-UNLOCK-OK ${scenario}\n` +
        `---- transcript (stdout tail) ----\n${tail(r.out, 80)}\n` +
        `---- stderr (tail) ----\n${tail(r.err, 60)}\n` +
        `---- guest console (tail of ${WORK}/${scenario}/console.log) ----\n${tail(consoleOf(scenario), 40)}`,
    );
  }
  return r;
}

/** The token the script wrote into the root's /etc/zb-marker. */
function token(out: string): string {
  const m = /marker token (zb-[0-9a-f]{24})$/m.exec(out);
  if (!m) throw new Error("unlock.sh did not print the marker token");
  return m[1]!;
}

/** A variable of the env the guest left on the disk, read by the real fw_printenv. */
function hostEnv(scenario: string, name: string): string {
  const p = spawnSync("fw_printenv", ["-c", resolve(WORK, scenario, "fw_env.config"), "-n", name], { encoding: "utf8" });
  return p.status === 0 ? p.stdout.trim() : `(fw_printenv exited ${p.status}: ${p.stderr.trim()})`;
}

test("qemu unlock: zbunlock unseals the key with the guest's TPM, opens the LUKS2 root and the guest reads the marker", async () => {
  const r = await verdict("zb");
  const c = consoleOf("zb");
  expect(c).toMatch(/tpm_tis \S+: 2\.0 TPM/);
  expect(c).toContain(`ZB-UNLOCK-MARKER ${token(r.out)}\n`);
  expect(c).not.toContain("ZB-UNLOCK-FAIL");
  expect(hostEnv("zb", "zb_mode")).toBe("run");
  expect(hostEnv("zb", "zb_boot_count_a")).toBe("1");
}, SCRIPT_MS + 10_000);

test("qemu unlock: the baseline (cryptsetup open --key-file) opens the same root; zbunlock/baseline time is printed", async () => {
  const r = await verdict("baseline");
  expect(consoleOf("baseline")).toContain(`ZB-UNLOCK-MARKER ${token(r.out)}\n`);
  // A benchmark, not an assertion on wall time: the ratio must be measured
  // and printed, whatever it is.
  expect(r.out).toMatch(/\/init -> root mounted: zbunlock [0-9.]+ s, cryptsetup --key-file [0-9.]+ s, ratio [0-9.]+/);
}, SCRIPT_MS + 10_000);

test("qemu unlock: with a fresh TPM zbunlock cannot unseal, the root stays locked and the env records the failure", async () => {
  await verdict("fresh-tpm");
  const c = consoleOf("fresh-tpm");
  expect(c).toMatch(/^ZB-UNLOCK-FAIL 12 zb unlock$/m);
  expect(c).not.toContain("ZB-UNLOCK-MARKER");
  expect(hostEnv("fresh-tpm", "zb_mode")).toBe("recover");
  expect(hostEnv("fresh-tpm", "zb_valid_a")).toBe("0");
  expect(hostEnv("fresh-tpm", "zb_log")).toContain("cannot unlock slot a");
}, SCRIPT_MS + 10_000);

test.each([
  ["11", "a shift past 10"],
  ["auto", "QEMU's adaptive shift (its clock would follow the host's speed again)"],
  ["-1", "a negative shift"],
])("qemu unlock: ZB_QEMU_ICOUNT=%s (%s) is refused before anything is built or booted", async (value) => {
  const r = await runScript("unlock.sh", ["bench", "1"], { ZB_QEMU_ICOUNT: value }, 30_000);
  expect(r.code).toBe(1);
  expect(r.err).toContain(`cannot run the unlock scenarios: ZB_QEMU_ICOUNT must be a shift of 0-10 (ns per guest instruction = 2^SHIFT), not '${value}'`);
  expect(r.out).not.toContain("=====");
});
