/** Can the bootloader do tryboot? The device-tree facts, read under a temp root, and the verdict. */
import { afterAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bootloaderInEeprom, readBootloaderFacts, requireTryboot, TRYBOOT_MIN_BUILD, trybootProblem } from "../../../lib/bootloader/eeprom.ts";
import { HostSys } from "../../../lib/sys/sys.ts";

const roots: string[] = [];
afterAll(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});

/** A root whose device tree holds what is given (the firmware writes model NUL-terminated, the timestamp as a BE cell). */
function rootWith(model: string | null, build: number | null): string {
  const root = mkdtempSync(join(tmpdir(), "zb-eeprom-"));
  roots.push(root);
  mkdirSync(join(root, "proc/device-tree/chosen/bootloader"), { recursive: true });
  if (model !== null) writeFileSync(join(root, "proc/device-tree/model"), `${model}\0`);
  if (build !== null) {
    const cell = new Uint8Array(4);
    new DataView(cell.buffer).setUint32(0, build, false);
    writeFileSync(join(root, "proc/device-tree/chosen/bootloader/build-timestamp"), cell);
  }
  return root;
}

const PI4 = "Raspberry Pi 4 Model B Rev 1.4";
/** pieeprom-2020-09-03: no tryboot. */
const OLD = 1599135103;

test.each([
  { model: PI4, eeprom: true },
  { model: "Raspberry Pi 400 Rev 1.0", eeprom: true },
  { model: "Raspberry Pi Compute Module 4 Rev 1.0", eeprom: true },
  { model: "Raspberry Pi Compute Module 4S Rev 1.0", eeprom: false },
  { model: "Raspberry Pi 5 Model B Rev 1.0", eeprom: false },
  { model: "Raspberry Pi 3 Model B Plus Rev 1.3", eeprom: false },
  { model: "linux,dummy-virt", eeprom: false },
])("bootloaderInEeprom($model) = $eeprom", ({ model, eeprom }) => {
  expect(bootloaderInEeprom(model)).toBe(eeprom);
});

test.each([
  { name: "a Pi 4 with a 2020-09-03 EEPROM: refused", model: PI4, build: OLD, refused: true },
  { name: "a Pi 400 one second before the 2021-03-18 build: refused", model: "Raspberry Pi 400 Rev 1.0", build: TRYBOOT_MIN_BUILD - 1, refused: true },
  { name: "a CM4 with the 2021-03-18 build: fine", model: "Raspberry Pi Compute Module 4 Rev 1.0", build: TRYBOOT_MIN_BUILD, refused: false },
  { name: "a Pi 4 with a 2024 build: fine", model: PI4, build: 1733580000, refused: false },
  { name: "a Pi 5 (tryboot in every build), whatever the timestamp: fine", model: "Raspberry Pi 5 Model B Rev 1.0", build: OLD, refused: false },
  { name: "a Pi 4 without the build-timestamp node: nothing tells, not refused", model: PI4, build: null, refused: false },
  { name: "no model node (QEMU, a test rig): not checked", model: null, build: OLD, refused: false },
])("$name", ({ model, build, refused }) => {
  const root = rootWith(model, build);
  const facts = readBootloaderFacts(new HostSys(), root);
  expect(facts).toEqual({ model, buildTimestamp: build });
  expect(trybootProblem(facts) !== null).toBe(refused);
  const check = () => requireTryboot(new HostSys(), root, "arm a try");
  if (refused) {
    expect(check).toThrow(
      expect.objectContaining({
        code: "STATE_REFUSED",
        message: expect.stringMatching(/^cannot arm a try: the bootloader in the EEPROM of this .* was built \d{4}-\d\d-\d\d, before tryboot \(2021-03-18\)/),
        hint: expect.stringContaining("rpi-eeprom-update"),
      }),
    );
  } else {
    expect(check).not.toThrow();
  }
});

test("the build date in the message is the timestamp's UTC day", () => {
  expect(trybootProblem({ model: PI4, buildTimestamp: OLD })).toContain("was built 2020-09-03,");
});
