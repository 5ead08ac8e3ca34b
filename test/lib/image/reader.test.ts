/**
 * The direct (read(2)) payload path of lib/image/reader.ts lets the event
 * loop run every 32 MiB: a signal handler (Ctrl-C during `zb image verify`
 * or `install` of a file) runs there, so the command stops mid-payload
 * instead of after it. The stream path waits on the event loop by itself.
 * Refused inputs; an image opened for its header alone reads no payload.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openImage, openUnverified } from "../../../lib/image/reader.ts";
import { loadTrustDir } from "../../../lib/image/sign.ts";
import { fileSource } from "../../../lib/image/source.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { buildImage, KEYS, trustDir, variedBytes } from "./fixture.ts";

const root = mkdtempSync(join(tmpdir(), "zb-reader-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

test("a 40 MiB payload read directly: a callback queued on the event loop runs after 32 of its 40 chunks, not after the last", async () => {
  // Before: it ran only once all 40 chunks were read (a direct read never waits on the event loop).
  const img = await buildImage(join(root, "img"), { rootfs: variedBytes(40 << 20, 7, 1), boot: false, encoding: "none", chunkSize: 1 << 20, signers: [KEYS.k1] });
  const source = fileSource(img.path);
  const open = await openImage(await source.open(0), { policy: { trust: loadTrustDir(new HostSys(), trustDir(root, "trust", [KEYS.k1])) } }, source.direct!());
  try {
    const entry = (await open.nextPayload())!;
    let chunks = 0;
    const ran: number[] = [];
    setImmediate(() => ran.push(chunks));
    for await (const _ of entry.data) chunks++;
    expect({ ranAfter: ran, chunks }).toEqual({ ranAfter: [32], chunks: 40 });
  } finally {
    open.close();
  }
});

// Before: both said `the archive ends where "zbi-format" should follow`, as if an image had been cut short;
// then more zeros than the tail bound (a zeroed disk) said "more than 65536 bytes of zeros follow the last payload",
// and a stream of zeros, read to its first block, "only 512 zero bytes" whatever followed.
test.each([
  { name: "an empty file (/dev/null)", bytes: 0, message: "cannot read the image: it is empty (0 bytes)" },
  { name: "a zeroed file", bytes: 1024, message: "cannot read the image: it is not a zb image: it holds no entry, only zeros" },
  { name: "more zeros than the tail bound (a zeroed disk)", bytes: 200_000, message: "cannot read the image: it is not a zb image: it holds no entry, only zeros" },
])("$name is refused as what it is, from the file and from a stream", async ({ bytes, message }) => {
  const path = join(root, `zeros-${bytes}.zbi`);
  writeFileSync(path, new Uint8Array(bytes));
  const fromFile = await openUnverified(fileSource(path)).then(() => null, (e: unknown) => e);
  async function* stream() {
    if (bytes > 0) yield new Uint8Array(bytes);
  }
  const fromStream = await openImage(stream(), { unverified: true }).then(() => null, (e: unknown) => e);
  for (const e of [fromFile, fromStream]) expect(e).toMatchObject({ code: "IMG_FORMAT", message });
});

// Before: a second payload path through tar-stream, which no command used (openSource always gives a payload reader).
test("an image opened without a payload reader (image info) is its header alone: asking for a payload is INTERNAL", async () => {
  const img = await buildImage(join(root, "header-only"), { rootfs: variedBytes(100_000, 3), signers: [KEYS.k1] });
  const open = await openImage(await fileSource(img.path).open(0), { unverified: true });
  try {
    const e = await open.nextPayload().then(() => null, (x: unknown) => x);
    expect({ payloads: open.header.manifest.payloads.map((p) => p.name), e }).toEqual({
      payloads: ["boot", "rootfs"], e: expect.objectContaining({ code: "INTERNAL", message: "internal error: the payloads of an image opened without a payload reader were asked for" }),
    });
  } finally {
    open.close();
  }
});
