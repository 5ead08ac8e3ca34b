/**
 * The lock PCR against a real swtpm: a blob sealed with `lockPcr` unseals
 * while the PCR is at zero (a fresh boot), and no more once lock() extended
 * it; a restart of the TPM (a reboot: TPM2_Startup(CLEAR)) resets it. A seal
 * made after the lock (PCR already extended) still binds to zero.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeFileSync } from "node:fs";
import { LOCK_BUSY_WAITS_MS, LOCKABLE_PCRS, Tpm2Hsm } from "../../../../lib/hsm/tpm2/index.ts";
import { connect, connectError } from "../../../../lib/hsm/tpm2/transport.ts";
import { startSwtpm, type Swtpm } from "../../../peers/swtpm.ts";

const state = mkdtempSync(join(tmpdir(), "zb-lockpcr-"));
let tpm: Swtpm;
const secret = crypto.getRandomValues(new Uint8Array(32));

beforeAll(async () => {
  tpm = await startSwtpm({ stateDir: state });
});
afterAll(async () => {
  await tpm.stop();
  rmSync(state, { recursive: true, force: true });
});

/** A reboot of the TPM: same NV state (storage key), PCRs back to their reset values. */
async function reboot(): Promise<void> {
  await tpm.stop();
  tpm = await startSwtpm({ stateDir: state });
}

test("sealed with lockPcr 15: unseals at boot, denied after lock(), again after a reboot", async () => {
  const hsm = new Tpm2Hsm({ device: tpm.address });
  const data = await hsm.seal(secret, { pcrs: [7], lockPcr: 15 });
  expect([data.pcrs, data.lockPcr]).toEqual([[7, 15], 15]);
  expect(await hsm.unseal(data)).toEqual({ kind: "ok", secret });
  expect(await hsm.lock(data)).toBe(true);
  const after = await hsm.unseal(data);
  expect(after.kind).toBe("denied");
  // The extend is visible from outside, with tpm2-tools.
  expect(tpm.toolsOk(["tpm2_pcrread", "sha256:15"])).not.toContain("0x0000000000000000000000000000000000000000000000000000000000000000");
  // Sealing now (PCR 15 extended) still binds to the boot value, zeros.
  const later = await hsm.seal(secret, { lockPcr: 15 });
  expect((await hsm.unseal(later)).kind).toBe("denied");
  await hsm.close();
  await reboot();
  const fresh = new Tpm2Hsm({ device: tpm.address });
  expect(await fresh.unseal(data)).toEqual({ kind: "ok", secret });
  expect(await fresh.unseal(later)).toEqual({ kind: "ok", secret });
  await fresh.close();
});

test("lock() of a blob without a lock PCR does nothing", async () => {
  const hsm = new Tpm2Hsm({ device: tpm.address });
  const data = await hsm.seal(secret, { pcrs: [7] });
  expect(data.lockPcr).toBeUndefined();
  expect(await hsm.lock(data)).toBe(false);
  expect(await hsm.unseal(data)).toEqual({ kind: "ok", secret });
  await hsm.close();
});

test.each([[17], [22], [24]])("PCR %d cannot be the lock PCR (not zero after a reset)", async (pcr) => {
  expect(LOCKABLE_PCRS).not.toContain(pcr);
  const hsm = new Tpm2Hsm({ device: tpm.address });
  await expect(hsm.seal(secret, { lockPcr: pcr })).rejects.toMatchObject({ code: "USAGE" });
  await hsm.close();
});

test.each([[16], [23]])("PCR %d cannot be the lock PCR: software resets it (tpm2_pcrreset), which would undo the lock", async (pcr) => {
  expect(LOCKABLE_PCRS).not.toContain(pcr);
  const hsm = new Tpm2Hsm({ device: tpm.address });
  await expect(hsm.seal(secret, { lockPcr: pcr })).rejects.toMatchObject({ code: "USAGE", message: expect.stringContaining("16 and 23 can be reset by software") });
  // Sealed data claiming it anyway (bound at zero, as a lock would be) is refused as malformed.
  const data = await hsm.seal(secret, { pcrs: [7, pcr] });
  const r = await hsm.unseal({ ...data, lockPcr: pcr });
  expect(r.kind === "ok" ? "ok" : `${r.kind}: ${r.why}`).toContain(`lockPcr ${pcr} can be reset without a reboot`);
  await hsm.close();
});

test("a lockPcr that is not among the policy's PCRs is malformed data", async () => {
  const hsm = new Tpm2Hsm({ device: tpm.address });
  const data = await hsm.seal(secret, { pcrs: [7] });
  expect((await hsm.unseal({ ...data, lockPcr: 15 })).kind).toBe("failed");
  await hsm.close();
});

describe("how a lock fails: the device before → the lock's error after (unseal and probe unchanged)", () => {
  // What the device transport makes of open(2) failing with EBUSY: /dev/tpm0 held by another process.
  const busy = () => Promise.reject(connectError("/dev/tpm0", Object.assign(new Error("EBUSY: resource busy or locked, open '/dev/tpm0'"), { code: "EBUSY" })));
  const missing = () => Promise.reject(connectError("/dev/tpm0", Object.assign(new Error("ENOENT: no such file or directory"), { code: "ENOENT" })));
  test.each([
    { name: "held by another process (EBUSY): there, so the lock failed", connect: busy, lock: { code: "HSM_FAILED", message: expect.stringContaining("cannot extend PCR 15 after the unlock: cannot open TPM /dev/tpm0: the device is busy") }, unseal: "absent", present: false },
    { name: "no device node: absent", connect: missing, lock: { code: "HSM_ABSENT" }, unseal: "absent", present: false },
  ])("$name", async ({ connect, lock, unseal, present }) => {
    const data = await new Tpm2Hsm({ device: tpm.address }).seal(secret, { lockPcr: 15 });
    const hsm = new Tpm2Hsm({ device: "/dev/tpm0", connect });
    await expect(hsm.lock(data)).rejects.toMatchObject(lock);
    expect((await hsm.unseal(data)).kind).toBe(unseal);
    expect((await hsm.probe()).present).toBe(present);
  });

  test("a device held by another process for a while: the lock waits (LOCK_BUSY_WAITS_MS) and extends once it is free", async () => {
    const data = await new Tpm2Hsm({ device: tpm.address }).seal(secret, { lockPcr: 15 });
    const real = new Tpm2Hsm({ device: tpm.address });
    const waits: number[] = [];
    let opens = 0;
    // Busy for two opens, then the real swtpm: the holder let go.
    const hsm = new Tpm2Hsm({
      device: tpm.address,
      connect: (address) => (++opens <= 2 ? busy() : connect(address)),
      sleep: async (ms) => void waits.push(ms),
    });
    expect(await hsm.lock(data)).toBe(true);
    expect(waits).toEqual(LOCK_BUSY_WAITS_MS.slice(0, 2));
    expect((await real.unseal(data)).kind).toBe("denied");
    await reboot(); // PCR 15 back to zero for the tests after this one
  });

  test("a device held by another process all along: the lock fails after every wait (HSM_FAILED)", async () => {
    const data = await new Tpm2Hsm({ device: tpm.address }).seal(secret, { lockPcr: 15 });
    const waits: number[] = [];
    let opens = 0;
    const hsm = new Tpm2Hsm({ device: "/dev/tpm0", connect: () => (opens++, busy()), sleep: async (ms) => void waits.push(ms) });
    await expect(hsm.lock(data)).rejects.toMatchObject({ code: "HSM_FAILED" });
    expect(waits).toEqual(LOCK_BUSY_WAITS_MS);
    expect(opens).toBe(LOCK_BUSY_WAITS_MS.length + 1);
  });

  test("a device path that is no TPM (a regular file) stays CONFIG, and the file unchanged", async () => {
    const data = await new Tpm2Hsm({ device: tpm.address }).seal(secret, { lockPcr: 15 });
    const path = join(state, "hostname");
    writeFileSync(path, "zb-host\n");
    await expect(new Tpm2Hsm({ device: path }).lock(data)).rejects.toMatchObject({ code: "CONFIG", message: expect.stringContaining("it is not a character device (a regular file)") });
    expect(await Bun.file(path).text()).toBe("zb-host\n");
  });
});
