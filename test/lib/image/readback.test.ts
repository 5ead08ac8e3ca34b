/**
 * `install --read-back` against a medium that lies (test/fixtures/fakecard.py,
 * a FUSE file that keeps 1 MiB of the 2 MiB it claims and wraps the rest over
 * the start, like a fake-capacity SD card): write(2) and fdatasync succeed,
 * so the install without --read-back ends "complete" with every check passed;
 * with --read-back the medium is read past the page cache, the loss is found,
 * the install fails with TARGET_MISMATCH (exit 26) and the journal says
 * "failed". On an honest medium the read-back passes, by O_DIRECT on ext4 and
 * with the cache dropped where O_DIRECT is refused. A loop block device over
 * the card shows why the read must bypass the page cache: while the writer
 * holds the device open, a plain read returns what was written.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, constants, existsSync, fdatasyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ZbError } from "../../../lib/errors.ts";
import { install, type ProgressEvent } from "../../../lib/image/install.ts";
import type { Journal } from "../../../lib/image/journal.ts";
import type { Policy } from "../../../lib/image/reader.ts";
import { loadTrustDir } from "../../../lib/image/sign.ts";
import { fileSource } from "../../../lib/image/source.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { readBackSha256, targetHolds } from "../../../lib/image/readback.ts";
import { buildImage, KEYS, requireBinary, trustDir, variedBytes } from "./fixture.ts";

// One folder for everything; removed only after the card is unmounted.
const root = mkdtempSync(join(tmpdir(), "zb-readback-"));
const host = new HostSys();
const trust = trustDir(root, "trust", [KEYS.k1]);
const policy: Policy = { trust: loadTrustDir(host, trust) };
const MiB = 1 << 20;
const img = await buildImage(join(root, "img"), { rootfs: variedBytes(MiB + 700 * 1024 + 5, 21), boot: false });
const rootfs = img.raw.rootfs!;

// ---- the fake card ----
const card = { mnt: join(root, "card"), backing: join(root, "card.backing"), file: "" };
card.file = join(card.mnt, "card.img");
let fuse: ReturnType<typeof Bun.spawn> | null = null;

beforeAll(async () => {
  mkdirSync(card.mnt);
  writeFileSync(card.backing, new Uint8Array(MiB));
  fuse = Bun.spawn(["/usr/bin/python3", join(import.meta.dir, "../../fixtures/fakecard.py"), card.mnt, card.backing, String(2 * MiB), String(MiB)], { stderr: "pipe" });
  for (let i = 0; i < 100 && !existsSync(card.file); i++) await Bun.sleep(50);
  if (!existsSync(card.file)) throw new Error(`the fake card did not mount (needs root, /dev/fuse and python3-fusepy): ${await new Response(fuse.stderr as ReadableStream).text()}`);
});
afterAll(async () => {
  Bun.spawnSync(["umount", card.mnt]);
  await fuse?.exited;
  rmSync(root, { recursive: true, force: true });
});

let n = 0;
function job(target: string, readBack: boolean) {
  const events: ProgressEvent[] = [];
  const journal = join(root, `j${n++}.journal`);
  const run = () => install(host, fileSource(img.path), policy, { payload: "rootfs", target, journal, readBack, progress: (e) => events.push(e) });
  const state = () => (JSON.parse(readFileSync(journal, "utf8")) as Journal).state;
  return { run, state, events };
}
const sha = (b: Uint8Array) => new Bun.CryptoHasher("sha256").update(b).digest("hex");

describe("the fake card loses data that fdatasync reports as written", () => {
  test("without --read-back: every check passes and the journal says complete", async () => {
    const j = job(card.file, false);
    const r = await j.run();
    expect(r.readBack).toBeNull();
    expect(j.state()).toBe("complete");
    // What the card really holds: the 1 MiB it keeps, the rest wrapped over its start.
    expect(sha(new Uint8Array(readFileSync(card.file)).subarray(0, rootfs.length))).not.toBe(sha(rootfs));
  });

  test("with --read-back: TARGET_MISMATCH, exit 26, and the journal says failed", async () => {
    const j = job(card.file, true);
    const e = await j.run().then(() => null, (x: unknown) => x);
    expect(e).toBeInstanceOf(ZbError);
    expect((e as ZbError).code).toBe("TARGET_MISMATCH");
    expect((e as ZbError).message).toMatch(/^cannot install rootfs into .*card\.img: the medium does not hold what was written: its bytes read back have SHA-256 [0-9a-f]{64}, what was written has [0-9a-f]{64}$/);
    expect(j.state()).toBe("failed");
    // The read-back ran to the end before it judged.
    const last = j.events.filter((x) => x.type === "read-back").at(-1);
    expect(last).toMatchObject({ rawBytes: rootfs.length, rawTotal: rootfs.length });
  });

  test("after TARGET_MISMATCH, --resume without --read-back reads back again: TARGET_MISMATCH, never complete", async () => {
    const journal = join(root, `j${n++}.journal`);
    const run = (readBack: boolean, resume: boolean) =>
      install(host, fileSource(img.path), policy, { payload: "rootfs", target: card.file, journal, readBack, resume }).then(() => "ok", (e: { code?: string }) => e.code);
    const first = await run(true, false);
    const recorded = JSON.parse(readFileSync(journal, "utf8")) as Journal;
    // Before: the resume rewrote the chunks after the journal's last mark, its hash (of the bytes written) matched, "complete".
    const resumed = await run(false, true);
    expect({ first, recorded: { state: recorded.state, readBack: recorded.readBack }, resumed, state: (JSON.parse(readFileSync(journal, "utf8")) as Journal).state }).toEqual({
      first: "TARGET_MISMATCH", recorded: { state: "failed", readBack: true }, resumed: "TARGET_MISMATCH", state: "failed",
    });
  });

  test("the binary: exit 26 and the reason on stderr", () => {
    const p = Bun.spawnSync([requireBinary(), "image", "install", img.path, "--payload", "rootfs", "--to", card.file, "--journal", join(root, "cli.journal"), "--trust", trust, "--read-back"]);
    expect(p.exitCode).toBe(26);
    expect(p.stderr.toString()).toContain("the medium does not hold what was written");
    expect(p.stderr.toString()).toContain("fake-capacity");
  });
});

describe("a block device over the card (a loop device, direct I/O to the card): its page cache hides the loss", () => {
  let loop = "";
  beforeAll(() => {
    const p = Bun.spawnSync(["losetup", "--direct-io=on", "--find", "--show", card.file]);
    loop = p.stdout.toString().trim();
    if (p.exitCode !== 0 || !loop.startsWith("/dev/loop")) throw new Error(`losetup failed: ${p.stderr}`);
  });
  afterAll(() => void Bun.spawnSync(["losetup", "-d", loop]));

  test("while the writer holds it open, a plain read returns what was written; O_DIRECT and the dropped cache return what the card kept", async () => {
    const data = variedBytes(2 * MiB, 33);
    const fd = openSync(loop, constants.O_RDWR | constants.O_EXCL);
    try {
      writeSync(fd, data, 0, data.length, 0);
      fdatasyncSync(fd);
      const cached = new Uint8Array(data.length);
      readSync(fd, cached, 0, cached.length, 0);
      expect(sha(cached)).toBe(sha(data));
      const direct = await readBackSha256(loop, data.length);
      const dropped = await readBackSha256(loop, data.length, undefined, { direct: false });
      expect(direct).toMatchObject({ mode: "direct", bytes: data.length });
      expect(dropped).toMatchObject({ mode: "dropped", bytes: data.length });
      expect(direct.sha256).not.toBe(sha(data));
      expect(dropped.sha256).toBe(direct.sha256);
    } finally {
      closeSync(fd);
    }
  });

  test("install --read-back into the device: TARGET_MISMATCH, journal failed", async () => {
    const j = job(loop, true);
    const e = await j.run().then(() => null, (x: unknown) => x);
    expect((e as ZbError).code).toBe("TARGET_MISMATCH");
    expect(j.state()).toBe("failed");
  });
});

describe("an honest medium passes the read-back", () => {
  test("install --read-back into a file: read with O_DIRECT, complete, identical", async () => {
    const target = join(root, "slot.img");
    const j = job(target, true);
    const r = await j.run();
    expect(r.readBack).toBe("direct");
    expect(j.state()).toBe("complete");
    expect(sha(new Uint8Array(readFileSync(target)))).toBe(sha(rootfs));
    expect(j.events.filter((x) => x.type === "read-back").at(-1)).toMatchObject({ rawBytes: rootfs.length });
    // The read-back comes after the last write and before "done".
    expect(j.events.findIndex((x) => x.type === "read-back")).toBeGreaterThan(j.events.findLastIndex((x) => x.type === "progress"));
    expect(j.events.at(-1)!.type).toBe("done");
  });
});

describe("readBackSha256: what it returns, before → after", () => {
  const file = join(root, "odd.bin");
  const bytes = variedBytes(9 * MiB + 4097, 5); // not a multiple of any block size, three 4 MiB reads
  writeFileSync(file, bytes);
  const rows: { what: string; ask: number; direct: boolean; bytes: number; sha: string; mode: string }[] = [
    { what: "the whole file, O_DIRECT", ask: bytes.length, direct: true, bytes: bytes.length, sha: sha(bytes), mode: "direct" },
    { what: "a prefix ending inside a block", ask: 5 * MiB + 3, direct: true, bytes: 5 * MiB + 3, sha: sha(bytes.subarray(0, 5 * MiB + 3)), mode: "direct" },
    { what: "more than the file holds: short", ask: bytes.length + 10, direct: true, bytes: bytes.length, sha: sha(bytes), mode: "direct" },
    { what: "nothing", ask: 0, direct: true, bytes: 0, sha: sha(new Uint8Array(0)), mode: "direct" },
    { what: "without O_DIRECT: cache dropped first", ask: bytes.length, direct: false, bytes: bytes.length, sha: sha(bytes), mode: "dropped" },
  ];
  for (const row of rows) {
    test(row.what, async () => {
      const seen: number[] = [];
      const r = await readBackSha256(file, row.ask, (n) => seen.push(n), { direct: row.direct });
      expect(r).toEqual({ bytes: row.bytes, sha256: row.sha, mode: row.mode as "direct" });
      expect(seen.at(-1) ?? 0).toBe(row.bytes);
      expect(statSync(file).size).toBe(bytes.length);
    });
  }

  test("targetHolds with a stopped signal: the stop is thrown, not \"does not hold\" (which would restart the install at chunk 0)", async () => {
    const p = { name: "rootfs", raw: { size: bytes.length, sha256: sha(bytes) } } as unknown as Parameters<typeof targetHolds>[1];
    expect(await targetHolds(file, p)).not.toBeNull(); // it holds the payload
    const stop = new AbortController();
    const reason = new ZbError("INTERRUPTED", "cannot install rootfs: interrupted (SIGINT)");
    stop.abort(reason);
    // Before: the read-back ignored the signal and the resume answered "already installed", exit 0.
    expect(await targetHolds(file, p, stop.signal).then(() => null, (x: unknown) => x)).toBe(reason);
  });

  test("a missing file is IO", async () => {
    const e = await readBackSha256(join(root, "missing"), 10).then(() => null, (x: unknown) => x);
    expect((e as ZbError).code).toBe("IO");
    expect((e as ZbError).message).toMatch(/^cannot open .*missing to read it back: /);
  });
});
