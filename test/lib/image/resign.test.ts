/**
 * `resignImage` checks the signatures an image has before it adds one
 * (lib/image/create.ts): with a policy, an image that fails it — a manifest
 * edited since it was signed, signers not trusted, too few of them, another
 * product, a serial below the floor — is refused with verify's error code
 * before any file is made, in place too; `{ unverified: true }` is the
 * explicit way round, and signs whatever it is given.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resignImage } from "../../../lib/image/create.ts";
import type { Policy } from "../../../lib/image/reader.ts";
import { keySigner, loadTrustDir } from "../../../lib/image/sign.ts";
import { fileSource } from "../../../lib/image/source.ts";
import { verifyImage } from "../../../lib/image/verify.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { buildImage, KEYS, MIN_CHUNK, sha256, trustDir, variedBytes, withEditedSerial } from "./fixture.ts";

const root = mkdtempSync(join(tmpdir(), "zb-resign-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const host = new HostSys();
const byK1 = loadTrustDir(host, trustDir(root, "trust-k1", [KEYS.k1]));
const byK2 = loadTrustDir(host, trustDir(root, "trust-k2", [KEYS.k2]));
const byOther = loadTrustDir(host, trustDir(root, "trust-other", [KEYS.other]));
// Signed by k1 alone; compatible "pi4", serial 5.
const img = await buildImage(join(root, "img"), { rootfs: variedBytes(3 * MIN_CHUNK + 5, 71), boot: false, signers: [KEYS.k1] });

/** The image with its manifest edited in place: serial 5 → 9. */
const edited = () => withEditedSerial(img.bytes, 5, 9);

let seq = 0;
type Check = { policy: Policy } | { unverified: true };

describe("sign checks the image's signatures first: refused as verify refuses it, nothing written", () => {
  test.each<{ name: string; image: "signed" | "edited"; check: Check; inPlace?: boolean; code: string; message?: RegExp }>([
    { name: "signed by a trusted key", image: "signed", check: { policy: { trust: byK1 } }, code: "ok" },
    { name: "its manifest edited since it was signed", image: "edited", check: { policy: { trust: byK1 } }, code: "SIG_INVALID", message: /^cannot verify image signatures: found 0 of the 1 trusted signatures required \(signature by key [0-9a-f]{16}… \(.*trust-k1\/key0\.pem\) does not verify\)$/ },
    { name: "the same, signed in place", image: "edited", check: { policy: { trust: byK1 } }, inPlace: true, code: "SIG_INVALID" },
    { name: "signed by a key the trust folder lacks", image: "signed", check: { policy: { trust: byK2 } }, code: "SIG_INVALID", message: /is not trusted/ },
    { name: "two trusted signatures required, one there", image: "signed", check: { policy: { trust: byK1, required: 2 } }, code: "SIG_INVALID", message: /found 1 of the 2 trusted signatures required/ },
    { name: "for another product", image: "signed", check: { policy: { trust: byK1, compatible: "pi5" } }, code: "IMG_INCOMPATIBLE" },
    { name: "below the serial floor", image: "signed", check: { policy: { trust: byK1, serialFloor: 6 } }, code: "ROLLBACK_REFUSED" },
    { name: "edited, { unverified: true }: signed as it is (why it is not the default)", image: "edited", check: { unverified: true }, code: "ok" },
  ])("$name → $code", async ({ image, check, inPlace, code, message }) => {
    const dir = join(root, `case${seq++}`);
    mkdirSync(dir);
    const input = join(dir, "in.zbi");
    const bytes = image === "signed" ? img.bytes : edited();
    writeFileSync(input, bytes);
    const output = inPlace ? input : join(dir, "out.zbi");
    const e = await resignImage(fileSource(input), [keySigner(KEYS.other)], output, check).then(() => null, (x: { code?: string; message?: string; hint?: string }) => x);
    const files = readdirSync(dir).sort();
    expect({
      code: e?.code ?? "ok",
      message: message ? message.test(e?.message ?? "") : true,
      hint: e?.code === "SIG_INVALID" ? e.hint : undefined,
      files,
      input: sha256(new Uint8Array(readFileSync(input))) === sha256(bytes),
    }).toEqual({
      code,
      message: true,
      hint: code === "SIG_INVALID" ? expect.stringMatching(/^zb image sign adds to signatures that verify: give --trust/) : undefined,
      files: code === "ok" && !inPlace ? ["in.zbi", "out.zbi"] : ["in.zbi"],
      input: true,
    });
    // What a device trusting only the new key makes of the result: the edit verifies. The check prevents exactly that.
    if (code === "ok") expect(await verifyImage(fileSource(output), { trust: byOther }).then(() => "verifies", (x: { code?: string }) => x.code)).toBe("verifies");
  });
});
