/** LUKS headers found by UUID: real headers from cryptsetup, in a temp /sys + /dev tree. */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findLuksDevice, luksUuidOf } from "../../../lib/unlock/devices.ts";
import { HostSys } from "../../../lib/sys/sys.ts";

const dir = mkdtempSync(join(tmpdir(), "zb-devices-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A LUKS1/LUKS2 header made by the real cryptsetup; returns its first 4 KiB and the UUID cryptsetup reports. */
function realHeader(type: "luks1" | "luks2"): { head: Uint8Array; uuid: string } {
  const img = join(dir, `${type}.img`);
  writeFileSync(img, new Uint8Array(16 << 20));
  const key = new Uint8Array(32).fill(7);
  const f = Bun.spawnSync(["cryptsetup", "luksFormat", "--batch-mode", "--type", type, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file=-", img], { stdin: key, stderr: "pipe" });
  expect(f.exitCode).toBe(0);
  const u = Bun.spawnSync(["cryptsetup", "luksUUID", img], { stderr: "pipe" });
  expect(u.exitCode).toBe(0);
  return { head: new Uint8Array(readFileSync(img)).subarray(0, 4096), uuid: u.stdout.toString().trim() };
}

describe("luksUuidOf", () => {
  test.each(["luks1", "luks2"] as const)("%s header → the UUID cryptsetup luksUUID prints", (type) => {
    const { head, uuid } = realHeader(type);
    expect(uuid).toMatch(/^[0-9a-f-]{36}$/);
    expect(luksUuidOf(head)).toBe(uuid);
  });
  test.each([
    ["zeros", new Uint8Array(4096)],
    ["too short", new Uint8Array([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe])],
    ["magic but garbage UUID", (() => { const b = new Uint8Array(4096); b.set([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]); b.set(new TextEncoder().encode("not a uuid!"), 168); return b; })()],
  ])("%s → null", (_n, head) => {
    expect(luksUuidOf(head)).toBeNull();
  });
});

test("findLuksDevice scans /sys/class/block and reads /dev nodes", () => {
  const root = join(dir, "root");
  mkdirSync(join(root, "sys/class/block/vda1"), { recursive: true });
  mkdirSync(join(root, "sys/class/block/vda2"), { recursive: true });
  mkdirSync(join(root, "sys/class/block/vda3"), { recursive: true });
  mkdirSync(join(root, "dev"), { recursive: true });
  const { head, uuid } = realHeader("luks2");
  writeFileSync(join(root, "dev/vda1"), new Uint8Array(4096));
  writeFileSync(join(root, "dev/vda2"), head);
  // vda3 has no /dev node (not created yet): skipped, not an error
  const sys = new HostSys();
  expect(findLuksDevice(sys, root, uuid)).toBe(join(root, "dev/vda2"));
  expect(findLuksDevice(sys, root, uuid.toUpperCase())).toBe(join(root, "dev/vda2"));
  expect(findLuksDevice(sys, root, "00000000-0000-0000-0000-000000000000")).toBeNull();
  expect(findLuksDevice(sys, join(dir, "nothing"), uuid)).toBeNull();
});

test("findLuksDevice: two devices with the UUID (a copy of the disk) are refused; a RAID member held by its array is skipped", () => {
  const root = join(dir, "root-dup");
  for (const d of ["sda2", "sdb1", "md0", "sdc1"]) mkdirSync(join(root, "sys/class/block", d), { recursive: true });
  mkdirSync(join(root, "dev"), { recursive: true });
  const { head, uuid } = realHeader("luks2");
  const sys = new HostSys();
  // Before: only the array and its member carry the header; the member is held by md0.
  writeFileSync(join(root, "dev/md0"), head);
  writeFileSync(join(root, "dev/sdc1"), head);
  mkdirSync(join(root, "sys/class/block/sdc1/holders/md0"), { recursive: true });
  expect(findLuksDevice(sys, root, uuid)).toBe(join(root, "dev/md0"));
  // After: a dd copy on another disk, whose name sorts first.
  writeFileSync(join(root, "dev/sda2"), head);
  expect(() => findLuksDevice(sys, root, uuid)).toThrow(`cannot choose the device with LUKS UUID ${uuid}: 2 devices carry it (${join(root, "dev/md0")}, ${join(root, "dev/sda2")})`);
});
