/**
 * initramfs-hooks/scripts/local-top/zb with the real scripts/functions of
 * initramfs-tools-core (its log_* output and panic=), under dash, busybox sh
 * and klibc's sh (local-top-harness.ts); and its exit-status names against
 * docs/exit-codes.md.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { CMDLINE, EXIT_CODES, LOCK, REAL_FUNCTIONS, SCRIPT, SHELLS, ZB, removeRoots, run } from "./local-top-harness.ts";

afterAll(removeRoots);

describe.each(SHELLS)("with the real scripts/functions, under %s", (shellName) => {
  const shell = shellName.split(" ");
  // init exports quiet and panic; panic=-1 makes panic() reboot at once.
  const env = { quiet: "n", panic: "-1" };

  test("exit 0: Begin … done, Success", () => {
    const r = run(shell, { functions: REAL_FUNCTIONS, cmdline: CMDLINE, status: 0, reboot: "return", env });
    expect(r.out).toBe("Begin: zb: running zbunlock ... done.\nSuccess: zb: the root is open at /dev/mapper/zb-root\n");
    expect(r.calls).toEqual([ZB]);
    expect(r.code).toBe(0);
  });

  test("exit 21: Failure, then panic= reboots with reboot -f", () => {
    const r = run(shell, { functions: REAL_FUNCTIONS, cmdline: CMDLINE, status: 21, reboot: "return", env });
    expect(r.out).toBe(
      "Begin: zb: running zbunlock ... Failure: zb: zbunlock failed (exit 21)\n" +
        "zbunlock failed (exit 21, HSM_FAILED): the root is not open; the messages above say why\n" +
        "Rebooting automatically due to panic= boot argument\n",
    );
    expect(r.calls).toEqual([ZB, LOCK, "reboot -f"]);
  });
});
test("every exit status the script names has that name in docs/exit-codes.md", () => {
  const named = [...readFileSync(SCRIPT, "utf8").matchAll(/^\t(\d+)\) echo ([A-Z_]+) ;;$/gm)].map((m) => [m[1], m[2]]);
  const documented = new Set([...readFileSync(EXIT_CODES, "utf8").matchAll(/^\| (\d+) \| `([A-Z_]+)` \|/gm)].map((m) => `${m[1]} ${m[2]}`));
  expect(named.length).toBe(16);
  for (const [code, name] of named) expect(documented.has(`${code} ${name}`)).toBe(true);
});
