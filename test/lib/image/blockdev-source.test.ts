/**
 * An image on a block device (written raw to a USB stick, `dd if=x.zbi
 * of=/dev/sdX`), read through a read-only loop device (losetup -r) over a
 * file that holds the image and then what the stick held before: zeros, or
 * old data. The device is read with seeks as a file is (a `--resume` opens
 * it at the payload's offset), and its archive ends with the end-of-archive
 * blocks, not at the device's end — for install, verify and sign alike; a
 * regular file with the same tail is still refused.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resignImage } from "../../../lib/image/create.ts";
import { install } from "../../../lib/image/install.ts";
import { keySigner, loadTrustDir, type TrustStore } from "../../../lib/image/sign.ts";
import { fileSource } from "../../../lib/image/source.ts";
import { verifyImage } from "../../../lib/image/verify.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { buildImage, KEYS, MIN_CHUNK, sha256, trustDir, variedBytes } from "./fixture.ts";

const root = mkdtempSync(join(tmpdir(), "zb-blockdev-"));
const loops: string[] = [];
afterAll(() => {
  loops.forEach((l) => Bun.spawnSync(["losetup", "-d", l]));
  rmSync(root, { recursive: true, force: true });
});
const host = new HostSys();
const trust: TrustStore = loadTrustDir(host, trustDir(root, "trust", [KEYS.k1]));
const img = await buildImage(join(root, "img"), { rootfs: variedBytes(20 * MIN_CHUNK + 17, 43), chunkSize: MIN_CHUNK });
const raw = img.raw.rootfs!;
let seq = 0;

/** The image and then `tail`, as a read-only loop device. */
function stick(tail: Uint8Array, bytes = img.bytes): string {
  const file = join(root, `stick${seq++}.img`);
  writeFileSync(file, Buffer.concat([bytes, tail]));
  const r = Bun.spawnSync(["losetup", "-r", "--find", "--show", file], { stderr: "pipe" });
  const dev = r.stdout.toString().trim();
  if (r.exitCode !== 0 || !dev.startsWith("/dev/loop")) throw new Error(`losetup failed: ${r.stderr}`);
  loops.push(dev);
  return dev;
}
const OLD_DATA = variedBytes(1 << 20, 7, 1);
const ZEROS = new Uint8Array(1 << 20);
const outcome = (p: Promise<unknown>) => p.then(() => "ok", (e: { code?: string; message?: string }) => `${e.code}: ${e.message}`);

describe("an image on a block device larger than the image", () => {
  test("the image's length is a whole number of 512-byte sectors (what a loop device shows of a file)", () => {
    expect(img.bytes.length % 512).toBe(0);
  });

  test("open at an offset reads the image from there (a --resume seeks on a device as on a file)", async () => {
    const dev = stick(ZEROS);
    const parts: Uint8Array[] = [];
    for await (const p of await fileSource(dev).open(1000)) parts.push(p);
    const got = Buffer.concat(parts);
    expect(Buffer.from(got.subarray(0, img.bytes.length - 1000)).equals(Buffer.from(img.bytes.subarray(1000)))).toBe(true);
  });

  test.each([
    { tail: "1 MiB of zeros", bytes: ZEROS },
    { tail: "1 MiB of old data", bytes: OLD_DATA },
  ])("followed by $tail: install and verify end at the archive's end blocks", async ({ bytes }) => {
    const dev = stick(bytes);
    const target = join(root, `slot${seq++}.img`);
    const installed = await outcome(install(host, fileSource(dev), { trust }, { payload: "rootfs", target, journal: `${target}.j` }));
    const verified = await outcome(verifyImage(fileSource(dev), { trust }, { deep: true }));
    expect({ installed, verified, target: sha256(new Uint8Array(readFileSync(target))) }).toEqual({ installed: "ok", verified: "ok", target: sha256(raw) });
  });

  test.each([
    { tail: "1 MiB of zeros", bytes: ZEROS },
    { tail: "1 MiB of old data", bytes: OLD_DATA },
  ])("followed by $tail: sign reads it as install does, and the signed copy verifies with the new key alone", async ({ bytes }) => {
    const dev = stick(bytes);
    const out = join(root, `signed${seq++}.zbi`);
    const signed = await outcome(resignImage(fileSource(dev), [keySigner(KEYS.other)], out, { policy: { trust } }));
    const byOther = loadTrustDir(host, trustDir(root, `trust${seq++}`, [KEYS.other]));
    const verified = signed === "ok" ? await outcome(verifyImage(fileSource(out), { trust: byOther }, { deep: true })) : "not signed";
    expect({ signed, verified }).toEqual({ signed: "ok", verified: "ok" });
  });

  test("--resume from the device: the journal's chunks are kept, the rest read from the payload's offset; complete", async () => {
    const dev = stick(OLD_DATA);
    const target = join(root, `slot${seq++}.img`);
    const journal = `${target}.j`;
    await install(host, fileSource(img.path), { trust }, { payload: "rootfs", target, journal });
    const j = JSON.parse(readFileSync(journal, "utf8")) as { dataOffset: number };
    // As a run cut after 5 chunks leaves it: the rest of the target not yet written.
    const t = new Uint8Array(readFileSync(target));
    t.fill(0, 5 * MIN_CHUNK);
    writeFileSync(target, t);
    writeFileSync(journal, JSON.stringify({ ...j, state: "failed", chunksDone: 5, error: "cut" }));
    const r = await outcome(install(host, fileSource(dev), { trust }, { payload: "rootfs", target, journal, resume: true }));
    expect({ r, target: sha256(new Uint8Array(readFileSync(target))), journal: JSON.parse(readFileSync(journal, "utf8")).state }).toEqual({ r: "ok", target: sha256(raw), journal: "complete" });
  });

  test("data in the end-of-archive blocks: IMG_FORMAT, as from a file", async () => {
    const bad = new Uint8Array(img.bytes);
    bad[bad.length - 700] = 1;
    const dev = stick(ZEROS, bad);
    const target = join(root, `slot${seq++}.img`);
    expect(await outcome(install(host, fileSource(dev), { trust }, { payload: "rootfs", target, journal: `${target}.j` }))).toBe("IMG_FORMAT: cannot read the image: data follows the last payload");
  });

  test("a regular file with the same tail is still refused (its end is the image's end)", async () => {
    const file = join(root, `tail${seq++}.zbi`);
    writeFileSync(file, Buffer.concat([img.bytes, ZEROS]));
    const target = join(root, `slot${seq++}.img`);
    expect(await outcome(install(host, fileSource(file), { trust }, { payload: "rootfs", target, journal: `${target}.j` }))).toMatch(/^IMG_FORMAT: .*more than 65536 bytes of zeros follow the last payload/);
  });
});
