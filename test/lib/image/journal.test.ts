/**
 * The install journal's reader (lib/image/journal.ts): a journal zb did not
 * write is IO "not a zb journal" for a --resume, never a crash later; a
 * fresh install replaces an empty file or anything shaped like a journal,
 * and refuses (USAGE) to replace other content. `dataOffset`, where the
 * last run found the payload's data, must be a place a payload's data can
 * start: a multiple of 512, at least 3584 (three one-block entries and the
 * payload's header).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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

describe("what is at the journal path: a fresh install needs nothing of it, a --resume needs a journal", () => {
  const trust = loadTrustDir(host, trustDir(root, "trust-fresh", [KEYS.k1]));
  const imgP = buildImage(join(root, "img-fresh"), { rootfs: variedBytes(130 * 1024, 5), boot: false });
  const other = JSON.stringify({ ...base, target: "/elsewhere", dataOffset: 4096 });
  const nothingToResume = (j: string, fresh: string) => `there is nothing to resume from: remove ${j} ${fresh} (the install then starts from chunk 0)`;
  // Before: every row but the well-formed journal of another image failed "cannot read install journal J: JSON Parse error: …" (IO), with or without --resume.
  test.each([
    { name: "an empty file (mktemp, `: > J`)", content: "", resume: false, want: { code: "ok" } },
    { name: "another image's journal", content: other, resume: false, want: { code: "ok" } },
    { name: "a journal-shaped file zb would not read (dataOffset 100)", content: JSON.stringify({ ...base, dataOffset: 100 }), resume: false, want: { code: "ok" } },
    { name: "text that is not JSON", content: "rootfs-b\n", resume: false, want: { code: "USAGE", message: "cannot use J as the install journal: it is not a zb journal (not JSON), and an install replaces its journal", hint: "give --journal a new file or a journal's path; remove J first if it is a broken journal" } },
    { name: "JSON that is no object", content: "[1,2]", resume: false, want: { code: "USAGE", message: "cannot use J as the install journal: it is not a zb journal (not a JSON object), and an install replaces its journal" } },
    { name: "100 KiB (a file system image given by mistake)", content: "x".repeat(100 << 10), resume: false, want: { code: "USAGE", message: "cannot use J as the install journal: it is not a zb journal (102400 bytes; a journal is a few hundred), and an install replaces its journal" } },
    { name: "an empty file, --resume", content: "", resume: true, want: { code: "IO", message: "cannot read install journal J: it is empty", hint: nothingToResume("J", "or install without --resume") } },
    { name: "text that is not JSON, --resume", content: "{\"version\":1,\"ima", resume: true, want: { code: "IO", message: "cannot read install journal J: it is not a zb journal (not JSON)", hint: nothingToResume("J", "and install again") } },
    { name: "a journal-shaped file zb would not read, --resume", content: JSON.stringify({ ...base, dataOffset: 100 }), resume: true, want: { code: "IO", message: "cannot read install journal J: it is not a zb journal", hint: nothingToResume("J", "or install without --resume") } },
  ])("$name → $want.code", async ({ content, resume, want }) => {
    const img = await imgP;
    const dir = join(root, `fresh${n++}`);
    mkdirSync(dir);
    const target = join(dir, "slot.img");
    const journal = join(dir, "J");
    writeFileSync(journal, content);
    const e = await install(host, fileSource(img.path), { trust }, { payload: "rootfs", target, journal, resume }).then(() => null, (x: { code?: string; message?: string; hint?: string }) => x);
    const got = e ? { code: e.code, message: e.message?.replaceAll(journal, "J"), hint: e.hint?.replaceAll(journal, "J") } : { code: "ok" };
    const expected = { ...want, ...(want.code !== "ok" && !("hint" in want) ? { hint: expect.any(String) } : {}) };
    expect({
      ...got,
      journal: e ? readFileSync(journal, "utf8") === content : JSON.parse(readFileSync(journal, "utf8")).state,
      target: existsSync(target) ? sha256(new Uint8Array(readFileSync(target))) === sha256(img.raw.rootfs!) : "none",
    }).toEqual({ ...expected, journal: want.code === "ok" ? "complete" : true, target: want.code === "ok" ? true : "none" });
  });
});
