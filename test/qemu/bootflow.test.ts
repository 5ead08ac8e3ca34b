/**
 * The boot-flow scenarios on the emulated Pi (qemu/bootflow.sh): the firmware
 * emulator (qemu/firmware.ts) boots dist/zb-arm64's initramfs from config.txt
 * or tryboot.txt on a partitioned FAT disk, zbunlock runs in every initramfs,
 * and the host checks the boot sequence and the final env with fw_printenv
 * and `zb status --json`. Never skipped: a missing binary or host tool fails.
 */
import { expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { ROOT, runScript, tail } from "./script.ts";

/** Several boots of about 8 s each; the script bounds each boot (ZB_QEMU_TIMEOUT, 120 s). */
const SCRIPT_MS = 580_000;



async function scenario(name: string): Promise<void> {
  for (const bin of ["dist/zb-arm64", "dist/zb-x64"]) {
    if (!existsSync(resolve(ROOT, bin))) throw new Error(`${bin} is missing: run \`node_modules/.bin/bun build.ts\` first`);
  }
  const { code, signal, out, err } = await runScript("bootflow.sh", [name], { ZB_QEMU_TIMEOUT: process.env.ZB_QEMU_TIMEOUT ?? "120" }, SCRIPT_MS);
  const ok = code === 0 && out.split("\n").includes(`ZB-BOOTFLOW-OK ${name}`);
  if (!ok) {
    const how = code === null ? `was killed (${signal ?? "?"}; limit ${SCRIPT_MS / 1000} s)` : `exited ${code}`;
    // bootflow.sh prints the console tail on failure; if it was killed
    // before it could, read the emulator's console log directly.
    const log = resolve(ROOT, `qemu/.work/bootflow/${name}/fw/console.log`);
    const consoleTail = existsSync(log) ? tail(readFileSync(log, "utf8"), 40) : "(no console log)";
    throw new Error(
      `qemu/bootflow.sh ${name} ${how} without ZB-BOOTFLOW-OK\n` +
        `---- transcript (stdout tail) ----\n${tail(out, 120)}\n` +
        `---- stderr (tail) ----\n${tail(err, 60)}\n` +
        `---- guest console (tail of ${log}) ----\n${consoleTail}`,
    );
  }
  expect(out).toContain(`ZB-BOOTFLOW-OK ${name}`);
}

test("emulated Pi: a try of slot b boots from tryboot.txt, zbunlock makes it trying, zb mark-good commits it", async () => {
  await scenario("try-commit");
}, 600_000);

test("emulated Pi: a try whose initrd is garbage panics; zbunlock re-arms it zb_try_left times, then records the failure and stays on a", async () => {
  await scenario("try-broken-initrd");
}, 600_000);
