/**
 * The unlock flow's decisions, with an in-memory HSM and opener that satisfy
 * the real interfaces (the real backends and cryptsetup are tested in
 * test/lib/hsm and test/lib/luks, the whole path in test/qemu/unlock.test.ts).
 */
import { describe, expect, test } from "bun:test";
import { ZbError } from "../../../lib/errors.ts";
import { encodeBlob } from "../../../lib/hsm/blob.ts";
import type { Hsm, SealedData, UnsealResult } from "../../../lib/hsm/types.ts";
import { lockableKeys, lockKeys, unlockSlot, type SlotCredentials, type UnlockEnv } from "../../../lib/unlock/unlock.ts";

const ROOT_UUID = "11111111-2222-3333-4444-555555555555";
const DATA_UUID = "66666666-7777-8888-9999-000000000000";

interface Script {
  /** unseal() answers, in order; the last repeats. "throw": it throws ZbError CONFIG (the soft backend, not enabled). */
  unseal?: (UnsealResult["kind"] | "throw")[];
  /** findDevice() finds the device from this call on. */
  deviceFrom?: number;
  /** findDevice() throws this (two devices carry the UUID). */
  deviceThrows?: ZbError;
  /** open() throws this for the given volume name (an Error that is not a ZbError: a backend's bug). */
  openFails?: { name: string; error: Error };
  /** close() fails. */
  closeFails?: boolean;
  /** lock(): absent = the backend has none; "throw" = it fails (HSM_FAILED); "absent"/"malformed": HSM_ABSENT/CRED_INVALID. */
  lock?: "ok" | "throw" | "absent" | "malformed";
  deadlineMs?: number;
  /** The opener can be started before the key (as cryptsetup can); "throw": starting it fails (no cryptsetup). */
  prepare?: "yes" | "throw";
}

function world(s: Script) {
  let clock = 0;
  let unseals = 0;
  let finds = 0;
  const opened: string[] = [];
  const closed: string[] = [];
  const keysSeen: Uint8Array[] = [];
  const log: string[] = [];
  const locked: unknown[] = [];
  /** What happened, in order: unseal, prepare/cancel/open of prepared openers, plain opens. */
  const events: string[] = [];
  const hsm: Hsm = {
    name: "soft",
    // unlockSlot never probes: the unseal says whether the HSM is there.
    probe: async () => {
      throw new Error("unlockSlot must not probe");
    },
    seal: async () => ({}),
    unseal: async (d: SealedData): Promise<UnsealResult> => {
      const list = s.unseal ?? ["ok"];
      const kind = list[Math.min(unseals++, list.length - 1)]!;
      events.push(`unseal ${d.v}: ${kind}`);
      if (kind === "throw") throw new ZbError("CONFIG", "cannot use the soft HSM backend: it is not enabled");
      if (kind === "ok") return { kind, secret: new TextEncoder().encode(`key-of-${d.v}`) };
      return { kind, why: `test ${kind}` };
    },
    close: async () => undefined,
    ...(s.lock ? {
      lock: async (d: SealedData) => {
        if (s.lock === "throw") throw new ZbError("HSM_FAILED", "cannot extend PCR 15: test");
        if (s.lock === "absent") throw new ZbError("HSM_ABSENT", "no TPM: test");
        if (s.lock === "malformed") throw new ZbError("CRED_INVALID", "bad sealed data: test");
        locked.push(d.lockPcr);
        return d.lockPcr !== undefined;
      },
    } : {}),
  };
  const open = async (device: string, name: string, key: Uint8Array) => {
    keysSeen.push(key);
    if (s.openFails?.name === name) throw s.openFails.error;
    opened.push(`${name}<-${device}:${new TextDecoder().decode(key)}`);
  };
  const env: UnlockEnv = {
    hsm,
    luks: {
      open: async (device, name, key) => {
        events.push(`open ${name}`);
        await open(device, name, key);
      },
      close: async (name) => {
        if (s.closeFails) throw new ZbError("LUKS_FAILED", `cannot close ${name}: device busy`);
        closed.push(name);
      },
      ...(s.prepare ? {
        prepareOpen: (device: string, name: string) => {
          if (s.prepare === "throw") throw new ZbError("LUKS_FAILED", `cannot open ${device} as ${name}: cannot run cryptsetup: not found`);
          events.push(`prepare ${name}`);
          let done = false;
          return {
            open: async (key: Uint8Array) => {
              if (done) throw new Error("prepared open used twice");
              done = true;
              events.push(`prepared open ${name}`);
              await open(device, name, key);
            },
            cancel: async () => {
              if (done) return;
              done = true;
              events.push(`cancel ${name}`);
            },
          };
        },
      } : {}),
    },
    findDevice: (uuid) => {
      // deviceThrows: every call before deviceFrom throws it (two devices carry the UUID), then the device is found.
      if (s.deviceThrows && finds < (s.deviceFrom ?? Infinity)) {
        finds++;
        throw s.deviceThrows;
      }
      return finds++ >= (s.deviceFrom ?? 0) ? `/dev/${uuid === ROOT_UUID ? "vda2" : "vda4"}` : null;
    },
    wrongKey: (e) => /No key available/.test(e.message),
    deadline: s.deadlineMs ?? 1000,
    now: () => clock,
    sleep: async (ms) => void (clock += ms),
    log: (l) => void log.push(l),
    whileWaiting: () => void events.push("while waiting"),
  };
  return { env, opened, closed, keysSeen, log, locked, events, unseals: () => unseals };
}

const blob = (v: string, backend: "soft" | "tpm2" = "soft", extra: SealedData = {}) => encodeBlob({ backend, data: { v, ...extra } });
const CREDS: SlotCredentials = {
  meta: { backend: "soft", root: { uuid: ROOT_UUID, name: "zb-root" }, data: { uuid: DATA_UUID, name: "zb-data" } },
  root: blob("root"),
  data: blob("data"),
};

describe("unlockSlot", () => {
  test("opens root then data with their own keys, and wipes both", async () => {
    const w = world({});
    const r = await unlockSlot(CREDS, w.env);
    expect(r).toEqual({ ok: true, opened: [{ name: "zb-root", device: "/dev/vda2" }, { name: "zb-data", device: "/dev/vda4" }] });
    expect(w.opened).toEqual(["zb-root<-/dev/vda2:key-of-root", "zb-data<-/dev/vda4:key-of-data"]);
    for (const k of w.keysSeen) expect(k.every((b) => b === 0)).toBe(true);
  });

  const FAILURES: { name: string; script: Script; creds?: SlotCredentials; kind: string; permanent: boolean; code: string; closed?: string[] }[] = [
    { name: "HSM never appears → absent, transient", script: { unseal: ["absent"] }, kind: "absent", permanent: false, code: "HSM_ABSENT" },
    { name: "blob for another TPM → no-match, permanent", script: { unseal: ["no-match"] }, kind: "no-match", permanent: true, code: "HSM_NO_MATCH" },
    { name: "PCRs changed → denied, permanent", script: { unseal: ["denied"] }, kind: "denied", permanent: true, code: "HSM_DENIED" },
    { name: "response integrity failed → failed, transient", script: { unseal: ["failed"] }, kind: "failed", permanent: false, code: "HSM_FAILED" },
    { name: "the backend throws (soft, not enabled; a loose PIN file) → failed, transient, its own code kept, not a LUKS failure", script: { unseal: ["throw"] }, kind: "failed", permanent: false, code: "CONFIG" },
    { name: "device never appears → device, transient", script: { deviceFrom: Infinity }, kind: "device", permanent: false, code: "LUKS_FAILED" },
    { name: "two devices carry the UUID → device, transient (nothing opened)", script: { deviceThrows: new ZbError("LUKS_FAILED", "cannot choose the device with LUKS UUID x: 2 devices carry it") }, kind: "device", permanent: false, code: "LUKS_FAILED" },
    { name: "key does not open the header → luks, permanent", script: { openFails: { name: "zb-root", error: new ZbError("LUKS_FAILED", "cannot open: No key available with this passphrase") } }, kind: "luks", permanent: true, code: "LUKS_FAILED" },
    { name: "no device-mapper → luks, transient", script: { openFails: { name: "zb-root", error: new ZbError("LUKS_FAILED", "cannot open: Cannot initialize device-mapper") } }, kind: "luks", permanent: false, code: "LUKS_FAILED" },
    { name: "data fails after root opened → root closed again", script: { openFails: { name: "zb-data", error: new ZbError("LUKS_FAILED", "cannot open: No key available with this passphrase") } }, kind: "luks", permanent: true, code: "LUKS_FAILED", closed: ["zb-root"] },
    { name: "malformed sealed key → credentials, permanent", script: {}, creds: { ...CREDS, root: new TextEncoder().encode("{]") }, kind: "credentials", permanent: true, code: "CRED_INVALID" },
    { name: "sealed by another backend → credentials, permanent", script: {}, creds: { ...CREDS, root: blob("root", "tpm2") }, kind: "credentials", permanent: true, code: "CRED_INVALID" },
  ];
  test.each(FAILURES)("$name", async (c) => {
    const w = world(c.script);
    const r = await unlockSlot(c.creds ?? CREDS, w.env);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect([r.kind, r.permanent, r.error.code]).toEqual([c.kind, c.permanent, c.code] as never);
    expect(r.error.message).toMatch(/^cannot /);
    expect(w.closed).toEqual(c.closed ?? []);
    for (const k of w.keysSeen) expect(k.every((b) => b === 0)).toBe(true);
  });

  test("an error that is not a ZbError while the data volume opens: thrown on, and the root closed first (no decrypted root for a panic shell)", async () => {
    const w = world({ openFails: { name: "zb-data", error: new TypeError("a bug in an opener") } });
    await expect(unlockSlot(CREDS, w.env)).rejects.toThrow("a bug in an opener");
    expect(w.closed).toEqual(["zb-root"]);
  });

  test("a close that fails after a failed data volume: the failure is reported, the close failure logged", async () => {
    const w = world({ openFails: { name: "zb-data", error: new ZbError("LUKS_FAILED", "cannot open: No key available with this passphrase") }, closeFails: true });
    const r = await unlockSlot(CREDS, w.env);
    expect(r.ok ? "ok" : r.error.code).toBe("LUKS_FAILED");
    expect(w.log).toContain("WARNING: cannot close zb-root after the failed unlock; it stays open: cannot close zb-root: device busy");
  });

  test("two devices with the UUID for a while (RAID members before their array): waited for like a late device, then opened", async () => {
    const w = world({ deviceThrows: new ZbError("LUKS_FAILED", "cannot choose the device with LUKS UUID x: 2 devices carry it"), deviceFrom: 3 });
    const r = await unlockSlot(CREDS, w.env);
    expect(r.ok).toBe(true);
    expect(w.log.filter((l) => l.startsWith("waiting for the device"))).toHaveLength(1);
  });

  test("waits for a late HSM and a late device within the deadline, logging once each", async () => {
    const w = world({ unseal: ["absent", "absent", "absent", "absent", "absent", "ok"], deviceFrom: 3 });
    const r = await unlockSlot({ meta: { backend: "soft", root: CREDS.meta.root }, root: CREDS.root }, w.env);
    expect(r.ok).toBe(true);
    expect(w.log.filter((l) => l.startsWith("waiting for the soft HSM"))).toHaveLength(1);
    expect(w.log.filter((l) => l.startsWith("waiting for the device"))).toHaveLength(1);
    expect(w.log).toContain("waiting for the soft HSM: test absent");
    expect(w.log).toContain("unlocked zb-root (/dev/vda2) with the soft HSM");
  });

  test("an HSM still absent at the deadline: HSM_ABSENT naming the backend's reason", async () => {
    const w = world({ unseal: ["absent"], deadlineMs: 300 });
    const r = await unlockSlot(CREDS, w.env);
    expect(r.ok ? null : [r.kind, r.error.code, r.error.message]).toEqual(["absent", "HSM_ABSENT", "cannot unlock: the soft HSM did not appear before the deadline: test absent"]);
  });

  test("an HSM that answers absent while present is retried until it unseals", async () => {
    const w = world({ unseal: ["absent", "absent", "ok"] });
    const r = await unlockSlot(CREDS, w.env);
    expect(r.ok).toBe(true);
  });

  test("after both volumes are open the blobs are locked, one extend per lock PCR", async () => {
    const w = world({ lock: "ok" });
    const r = await unlockSlot({ ...CREDS, root: blob("root", "soft", { lockPcr: 15 }), data: blob("data", "soft", { lockPcr: 15 }) }, w.env);
    expect(r.ok).toBe(true);
    expect(w.locked).toEqual([15]);
    expect(w.log.at(-1)).toMatch(/locked: PCR 15 extended/);
  });

  test("unlockSlot locks nothing when an unlock fails (zbunlock locks after its failure transition, lockableKeys below)", async () => {
    const w = world({ lock: "ok", openFails: { name: "zb-data", error: new ZbError("LUKS_FAILED", "cannot open: No key available with this passphrase") } });
    const r = await unlockSlot({ ...CREDS, root: blob("root", "soft", { lockPcr: 15 }) }, w.env);
    expect(r.ok).toBe(false);
    expect(w.locked).toEqual([]);
  });

  test("a failed lock is a loud warning, not a failed boot (the root is open)", async () => {
    const w = world({ lock: "throw" });
    const r = await unlockSlot({ ...CREDS, root: blob("root", "soft", { lockPcr: 15 }) }, w.env);
    expect(r.ok).toBe(true);
    expect(w.log.at(-1)).toMatch(/^WARNING: cannot lock the sealed keys \(cannot extend PCR 15: test\)/);
  });

  test("the deadline bounds the wait (no endless loop)", async () => {
    const w = world({ unseal: ["absent"], deadlineMs: 500 });
    await unlockSlot(CREDS, w.env);
    expect(w.unseals()).toBeLessThanOrEqual(7);
  });
});

describe("an opener started before the key (cryptsetup's start overlaps the unseal)", () => {
  const wrong = new ZbError("LUKS_FAILED", "cannot open: No key available with this passphrase");
  const rows: { name: string; before: Script; after: { ok: boolean; kind?: string; permanent?: boolean; events: string[] } }[] = [
    {
      name: "unsealed: each volume's opener starts before its unseal and gets the key; the caller's own work runs while it opens",
      before: { prepare: "yes" },
      after: { ok: true, events: ["prepare zb-root", "unseal root: ok", "prepared open zb-root", "while waiting", "prepare zb-data", "unseal data: ok", "prepared open zb-data", "while waiting"] },
    },
    {
      name: "denied: the opener is cancelled, nothing opened",
      before: { prepare: "yes", unseal: ["denied"] },
      after: { ok: false, kind: "denied", permanent: true, events: ["prepare zb-root", "unseal root: denied", "cancel zb-root"] },
    },
    {
      name: "the backend throws: cancelled",
      before: { prepare: "yes", unseal: ["throw"] },
      after: { ok: false, kind: "failed", permanent: false, events: ["prepare zb-root", "unseal root: throw", "cancel zb-root"] },
    },
    {
      name: "the HSM is late: cancelled at once (the wait may outlast cryptsetup's timeout), then a plain open",
      before: { prepare: "yes", unseal: ["absent", "absent", "ok"] },
      after: {
        ok: true,
        events: ["prepare zb-root", "unseal root: absent", "cancel zb-root", "while waiting", "unseal root: absent", "while waiting", "unseal root: ok", "open zb-root", "while waiting", "prepare zb-data", "unseal data: ok", "prepared open zb-data", "while waiting"],
      },
    },
    {
      name: "the key does not open the header: luks, permanent, as with a plain open",
      before: { prepare: "yes", openFails: { name: "zb-root", error: wrong } },
      after: { ok: false, kind: "luks", permanent: true, events: ["prepare zb-root", "unseal root: ok", "prepared open zb-root", "while waiting"] },
    },
    {
      name: "the opener cannot start (no cryptsetup): luks, transient, nothing unsealed",
      before: { prepare: "throw" },
      after: { ok: false, kind: "luks", permanent: false, events: [] },
    },
  ];
  test.each(rows)("$name", async ({ before, after }) => {
    const w = world(before);
    const r = await unlockSlot(CREDS, w.env);
    expect(w.events).toEqual(after.events);
    expect(r.ok).toBe(after.ok);
    if (!r.ok) expect([r.kind, r.permanent]).toEqual([after.kind, after.permanent] as never);
    for (const k of w.keysSeen) expect(k.every((b) => b === 0)).toBe(true);
  });
});

describe("locking after a boot that did not unlock", () => {
  const bad = new TextEncoder().encode("not a blob");
  test.each([
    { name: "root and data name PCR 15: both", root: blob("root", "soft", { lockPcr: 15 }), data: blob("data", "soft", { lockPcr: 15 }), want: [15, 15] },
    { name: "only root names one: root", root: blob("root", "soft", { lockPcr: 15 }), data: blob("data"), want: [15] },
    { name: "no lock PCR anywhere: none (the stage opens no HSM)", root: blob("root"), data: blob("data"), want: [] },
    { name: "a malformed blob is skipped", root: bad, data: blob("data", "soft", { lockPcr: 7 }), want: [7] },
    { name: "a blob of another backend is skipped", root: blob("root", "tpm2", { lockPcr: 15 }), data: undefined, want: [] },
  ])("lockableKeys: $name", ({ root, data, want }) => {
    const { data: _, ...rest } = CREDS;
    const keys = lockableKeys({ ...rest, root, ...(data ? { data } : {}) });
    expect(keys.map((k) => k.lockPcr)).toEqual([...want]);
  });

  test("lockKeys extends each lock PCR once and says so", async () => {
    const w = world({ lock: "ok" });
    await lockKeys(lockableKeys({ ...CREDS, root: blob("root", "soft", { lockPcr: 15 }), data: blob("data", "soft", { lockPcr: 15 }) }), w.env);
    expect(w.locked).toEqual([15]);
    expect(w.log).toEqual(["locked: PCR 15 extended, the keys cannot be unsealed again until reboot"]);
  });

  test.each([
    { name: "the HSM is there but the extend fails: a failure, the keys stay unsealable", lock: "throw" as const, failed: ["HSM_FAILED"], says: "cannot extend PCR 15: test" },
    { name: "the HSM is absent: nothing can unseal, no failure", lock: "absent" as const, failed: [], says: "no TPM: test" },
    { name: "sealed data the HSM cannot use: nothing can unseal it, no failure", lock: "malformed" as const, failed: [], says: "bad sealed data: test" },
    { name: "locked", lock: "ok" as const, failed: [], says: null },
  ])("lockKeys never throws; returns the failures that leave keys unsealable: $name", async ({ lock, failed, says }) => {
    const w = world({ lock });
    const r = await lockKeys([{ v: "root", lockPcr: 15 }], w.env);
    expect(r.map((e) => (e as ZbError).code as string)).toEqual([...failed]);
    if (says !== null) expect(w.log).toEqual([`WARNING: cannot lock the sealed keys (${says}); they stay unsealable until reboot`]);
  });

  test("lockKeys with a backend without lock(): nothing done, no failure", async () => {
    const w = world({});
    expect(await lockKeys([{ v: "root", lockPcr: 15 }], w.env)).toEqual([]);
    expect(w.log).toEqual([]);
  });
});
