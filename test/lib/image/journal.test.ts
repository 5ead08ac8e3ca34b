/**
 * The install journal's reader (lib/image/journal.ts): a journal zb did not
 * write is IO "not a zb journal", never a crash later. `dataOffset`, where a
 * seeking resume opens the image, must be a place a payload's data can
 * start: a multiple of 512, at least 3584 (three one-block entries and the
 * payload's header).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { install } from "../../../lib/image/install.ts";
import { readJournal } from "../../../lib/image/journal.ts";
import { loadTrustDir } from "../../../lib/image/sign.ts";
import { fileSource } from "../../../lib/image/source.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { buildImage, KEYS, listTar, outcome, sha256, trustDir, variedBytes } from "./fixture.ts";

const root = mkdtempSync(join(tmpdir(), "zb-journal-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const host = new HostSys();
const base = { version: 1, image: "a".repeat(64), payload: "rootfs", target: "/dev/x", state: "writing", chunksDone: 1 };
let n = 0;
const verdict = (j: unknown) => {
  const path = join(root, `j${n++}`);
  writeFileSync(path, JSON.stringify(j));
  return outcome(async () => readJournal(host, path));
};

describe("readJournal: dataOffset", () => {
  const rows = [
    { dataOffset: null, code: "ok" },
    { dataOffset: 3584, code: "ok" },
    { dataOffset: 3584 + 512 * 1000, code: "ok" },
    { dataOffset: 2 ** 40, code: "ok" },
    { dataOffset: 100, code: "IO" },
    { dataOffset: 0, code: "IO" },
    { dataOffset: -512, code: "IO" },
    { dataOffset: 1536, code: "IO" },
    { dataOffset: 3072, code: "IO" },
    { dataOffset: 3585, code: "IO" },
    { dataOffset: 4096.5, code: "IO" },
    { dataOffset: "4096", code: "IO" },
    { dataOffset: 2 ** 53, code: "IO" },
  ];
  test("a multiple of 512, at least 3584, or null; anything else is not a zb journal (IO)", async () => {
    const got = [];
    for (const r of rows) got.push([r.dataOffset, await verdict({ ...base, dataOffset: r.dataOffset })]);
    expect(got).toEqual(rows.map((r) => [r.dataOffset, r.code]));
  });
});

test("install --resume with a journal that says dataOffset 100: IO naming the journal, no RangeError, the target untouched", async () => {
  const img = await buildImage(join(root, "img"), { rootfs: variedBytes(200 * 1024, 3), boot: false });
  const target = join(root, "slot.img");
  const before = variedBytes(200 * 1024, 4);
  writeFileSync(target, before);
  const journal = `${target}.zb-journal`;
  const m = listTar(img.bytes)[1]!;
  const image = sha256(img.bytes.slice(m.dataAt, m.dataAt + m.size));
  writeFileSync(journal, JSON.stringify({ ...base, image, target, dataOffset: 100 }));
  const policy = { trust: loadTrustDir(host, trustDir(root, "trust", [KEYS.k1])) };
  const e = (await install(host, fileSource(img.path), policy, { payload: "rootfs", target, journal, resume: true }).catch((x: unknown) => x)) as { code?: string; message?: string };
  expect({ code: e.code, message: e.message }).toEqual({ code: "IO", message: `cannot read install journal ${journal}: it is not a zb journal` });
  expect(sha256(new Uint8Array(await Bun.file(target).arrayBuffer()))).toBe(sha256(before));
});
