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

describe("findLuksDevice: a LUKS2 device whose primary header is damaged (cryptsetup opens it from the secondary)", () => {
  /** A LUKS2 image made by cryptsetup, its first `wipe` bytes zeroed; cryptsetup's luksUUID of the result, or null when it refuses. */
  function damaged(name: string, wipe: number): { bytes: Uint8Array; intact: Uint8Array; uuid: string; cryptsetupSays: string | null } {
    const img = join(dir, `${name}.img`);
    writeFileSync(img, new Uint8Array(16 << 20));
    const f = Bun.spawnSync(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file=-", img], { stdin: new Uint8Array(32).fill(7), stderr: "pipe" });
    expect(f.exitCode).toBe(0);
    const uuid = Bun.spawnSync(["cryptsetup", "luksUUID", img]).stdout.toString().trim();
    const whole = new Uint8Array(readFileSync(img));
    const intact = whole.slice(0, 1 << 20); // the same volume before the damage
    whole.fill(0, 0, wipe);
    writeFileSync(img, whole);
    const bytes = whole.subarray(0, 1 << 20); // the headers (the test's device nodes need no keyslot area)
    const u = Bun.spawnSync(["cryptsetup", "luksUUID", img], { stderr: "pipe" });
    return { bytes, intact, uuid, cryptsetupSays: u.exitCode === 0 ? u.stdout.toString().trim() : null };
  }
  function tree(name: string, devices: Record<string, Uint8Array>): string {
    const root = join(dir, name);
    mkdirSync(join(root, "dev"), { recursive: true });
    for (const [d, bytes] of Object.entries(devices)) {
      mkdirSync(join(root, "sys/class/block", d), { recursive: true });
      writeFileSync(join(root, "dev", d), bytes);
    }
    return root;
  }
  const sys = new HostSys();

  const rows: { name: string; wipe: number; after: { cryptsetup: "reads it" | "refuses"; found: boolean } }[] = [
    { name: "primary magic zeroed", wipe: 6, after: { cryptsetup: "reads it", found: true } },
    { name: "whole primary binary header zeroed", wipe: 4096, after: { cryptsetup: "reads it", found: true } },
    { name: "primary and secondary zeroed", wipe: 32768, after: { cryptsetup: "refuses", found: false } },
  ];
  test.each(rows)("$name: found exactly when cryptsetup reads it", ({ name, wipe, after }) => {
    const d = damaged(name.replace(/\W+/g, "-"), wipe);
    const root = tree(`root-${name.replace(/\W+/g, "-")}`, { vda1: new Uint8Array(64 << 10), vda2: d.bytes });
    expect({
      cryptsetup: d.cryptsetupSays === d.uuid ? "reads it" : "refuses",
      found: findLuksDevice(sys, root, d.uuid) === join(root, "dev/vda2"),
    }).toEqual(after);
  });

  test("a device with an intact primary wins over another's secondary; two secondaries are refused like two primaries", () => {
    const d = damaged("dup", 6);
    const copy = new Uint8Array(d.bytes);
    const root = tree("root-sec-dup", { sda1: d.bytes, sdb1: copy });
    expect(() => findLuksDevice(sys, root, d.uuid)).toThrow(`cannot choose the device with LUKS UUID ${d.uuid}: 2 devices carry it`);
    // The same volume twice, one copy's primary damaged: the intact primary is taken, and the damaged
    // copy's secondary is not even looked for (otherwise: "2 devices carry it").
    const root2 = tree("root-sec-intact", { sda1: d.bytes, sdc1: d.intact });
    expect(findLuksDevice(sys, root2, d.uuid)).toBe(join(root2, "dev/sdc1"));
  });
});
