/**
 * Credentials: meta.json schema rows (before: a change to a valid meta,
 * after: the CRED_INVALID reason), packing checked with GNU `cpio -i`,
 * readCredentials on the extracted tree (as the kernel leaves it at boot),
 * and appendCredentials on a real zstd-compressed initramfs made by
 * `cpio -o -H newc | zstd`: the original part still decompresses with
 * `zstd -dc` to the original archive, and `cpio -i` on the bytes from the
 * reported offset extracts the credentials. Power cuts at every write and
 * fsync leave the old or the new initramfs, never a mix; a write that fails
 * (a full partition) leaves the old one and no temp copy. Padding of any
 * length after the credentials is skipped with bounded reads.
 */
import { describe, expect, test } from "bun:test";
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ioError, ZbError } from "../../../lib/errors.ts";
import { encodeBlob } from "../../../lib/hsm/blob.ts";
import { readCpio, writeCpio, type CpioInput } from "../../../lib/luks/cpio.ts";
import { appendCredentials, checkAppendable } from "../../../lib/luks/credappend.ts";
import { credentialTail, findAppendedCredentials, packCredentials, readCredentials, unpackCredentials } from "../../../lib/luks/credentials.ts";
import { encodeMeta, parseMeta, type CredentialMeta, type Credentials } from "../../../lib/luks/credmeta.ts";
import { HostSys, type WriteOptions } from "../../../lib/sys/sys.ts";
import { CuttingSys, cutPoints, PowerCut } from "../../fakes/powercut.ts";
import { tempDirs } from "../../tempdirs.ts";

const host = new HostSys();
const tempDir = tempDirs("zb-cred-");

const META: CredentialMeta = {
  format: "zb-credentials/1",
  slot: "b",
  backend: "soft",
  created: "2024-05-01T12:00:00.000Z",
  root: { uuid: "11111111-2222-4333-8444-555555555555", name: "zb-root" },
  data: { uuid: "66666666-7777-4888-9999-aaaaaaaaaaaa", name: "zb-data" },
};
const blob = (tag: string) => encodeBlob({ backend: "soft", data: { ct: Buffer.from(`sealed ${tag}`).toString("base64"), v: 1 } });
const CREDS: Credentials = { meta: META, root: blob("root"), data: blob("data") };

function errorOf(f: () => unknown): ZbError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(ZbError);
    return e as ZbError;
  }
  throw new Error("expected a ZbError, got none");
}

describe("meta.json before (a change to a valid meta) / after (CRED_INVALID reason)", () => {
  const rows: { name: string; before: (m: Record<string, any>) => void; after: RegExp }[] = [
    { name: "format", before: (m) => (m.format = "zb-credentials/2"), after: /format is "zb-credentials\/2"/ },
    { name: "slot", before: (m) => (m.slot = "c"), after: /slot is "c"/ },
    { name: "backend", before: (m) => (m.backend = "yubikey"), after: /backend "yubikey" is not one of tpm2, pkcs11, zymkey, soft/ },
    { name: "created not UTC", before: (m) => (m.created = "2024-05-01T12:00:00+02:00"), after: /created .* is not an ISO 8601 UTC time/ },
    { name: "created not a date", before: (m) => (m.created = "2024-13-45T99:00:00Z"), after: /not an ISO 8601 UTC time/ },
    { name: "unknown field", before: (m) => (m.extra = 1), after: /meta.json has an unknown field "extra"/ },
    { name: "root missing", before: (m) => delete m.root, after: /meta.json root is not a JSON object/ },
    { name: "root uuid upper-case", before: (m) => (m.root.uuid = "ABCDEF01-2222-4333-8444-555555555555"), after: /root.uuid .* is not a lower-case LUKS UUID/ },
    { name: "root name", before: (m) => (m.root.name = "zb-data"), after: /root.name is "zb-data", expected "zb-root"/ },
    { name: "data name", before: (m) => (m.data.name = "data"), after: /data.name is "data", expected "zb-data"/ },
    { name: "data extra field", before: (m) => (m.data.key = "secret"), after: /meta.json data has an unknown field "key"/ },
    { name: "same UUID twice", before: (m) => (m.data.uuid = m.root.uuid), after: /same UUID/ },
  ];
  test.each(rows)("$name", ({ before, after }) => {
    const m = JSON.parse(JSON.stringify(META));
    before(m);
    const e = errorOf(() => parseMeta(Buffer.from(JSON.stringify(m))));
    expect([e.code, e.message]).toEqual(["CRED_INVALID", expect.stringMatching(/^cannot read credentials: /)]);
    expect(e.message).toMatch(after);
  });

  test("valid meta round-trips through encodeMeta/parseMeta, with and without data", () => {
    expect(parseMeta(encodeMeta(META))).toEqual(META);
    const { data: _, ...noData } = META;
    expect(parseMeta(encodeMeta(noData))).toEqual(noData);
    expect(new TextDecoder().decode(encodeMeta(META))).toBe(
      `{\n  "format": "zb-credentials/1",\n  "slot": "b",\n  "backend": "soft",\n  "created": "2024-05-01T12:00:00.000Z",\n` +
        `  "root": {\n    "uuid": "11111111-2222-4333-8444-555555555555",\n    "name": "zb-root"\n  },\n` +
        `  "data": {\n    "uuid": "66666666-7777-4888-9999-aaaaaaaaaaaa",\n    "name": "zb-data"\n  }\n}\n`,
    );
  });

  test("not JSON, too large", () => {
    expect(errorOf(() => parseMeta(Buffer.from("{"))).message).toMatch(/meta.json is not JSON/);
    expect(errorOf(() => parseMeta(new Uint8Array(20000).fill(32))).message).toMatch(/larger than 16384 bytes/);
  });
});

describe("packCredentials", () => {
  test("GNU cpio -i extracts zb/credentials with modes 0755/0700/0400 and the exact bytes", () => {
    const out = tempDir();
    const p = Bun.spawnSync(["cpio", "-i", "-d", "--quiet"], { cwd: out, stdin: packCredentials(CREDS), stderr: "pipe" });
    expect(p.exitCode).toBe(0);
    const mode = (rel: string) => statSync(join(out, rel)).mode & 0o7777;
    expect([mode("zb"), mode("zb/credentials"), mode("zb/credentials/meta.json"), mode("zb/credentials/root.sealed"), mode("zb/credentials/data.sealed")]).toEqual([0o755, 0o700, 0o400, 0o400, 0o400]);
    expect(readFileSync(join(out, "zb/credentials/root.sealed"))).toEqual(Buffer.from(CREDS.root));
    expect(readFileSync(join(out, "zb/credentials/data.sealed"))).toEqual(Buffer.from(CREDS.data!));
    expect(parseMeta(readFileSync(join(out, "zb/credentials/meta.json")))).toEqual(META);
    expect(readCredentials(host, out)).toMatchObject({ meta: META, rootBlob: { backend: "soft" }, dataBlob: { backend: "soft" } });
  });

  test("is reproducible and round-trips through unpackCredentials", () => {
    expect(Buffer.from(packCredentials(CREDS)).equals(Buffer.from(packCredentials(CREDS)))).toBe(true);
    const back = unpackCredentials(packCredentials(CREDS));
    expect([back.meta, Buffer.from(back.root).toString(), Buffer.from(back.data!).toString()]).toEqual([META, Buffer.from(CREDS.root).toString(), Buffer.from(CREDS.data!).toString()]);
  });

  const { data: _d, ...metaNoData } = META;
  const rows: { name: string; before: () => Credentials; after: RegExp }[] = [
    { name: "data blob without meta.data", before: () => ({ meta: metaNoData, root: CREDS.root, data: CREDS.data! }), after: /data.sealed is present but meta.json names no data volume/ },
    { name: "meta.data without data blob", before: () => ({ meta: META, root: CREDS.root }), after: /meta.json names a data volume but data.sealed is missing/ },
    { name: "blob of another backend", before: () => ({ ...CREDS, root: encodeBlob({ backend: "tpm2", data: {} }) }), after: /root.sealed was sealed by tpm2, meta.json says soft/ },
    { name: "blob not an envelope", before: () => ({ ...CREDS, data: Buffer.from("{}") }), after: /cannot read data.sealed: format is undefined/ },
  ];
  test.each(rows)("refuses: $name", ({ before, after }) => {
    const e = errorOf(() => packCredentials(before()));
    expect([e.code, e.message]).toEqual(["CRED_INVALID", expect.stringMatching(after)]);
  });
});

describe("readCredentials at boot (the unpacked initramfs)", () => {
  function lay(files: Record<string, string | Uint8Array>): string {
    const root = tempDir();
    mkdirSync(join(root, "zb/credentials"), { recursive: true });
    for (const [rel, content] of Object.entries(files)) writeFileSync(join(root, "zb/credentials", rel), content);
    return root;
  }
  const rows: { name: string; before: Record<string, string | Uint8Array>; after: RegExp }[] = [
    { name: "nothing there", before: {}, after: /meta.json does not exist/ },
    { name: "root.sealed missing", before: { "meta.json": encodeMeta(META) }, after: /root.sealed does not exist/ },
    { name: "data.sealed missing", before: { "meta.json": encodeMeta(META), "root.sealed": CREDS.root }, after: /data.sealed is missing/ },
    { name: "root.sealed garbage", before: { "meta.json": encodeMeta(META), "root.sealed": "x", "data.sealed": CREDS.data! }, after: /cannot read root.sealed: not JSON/ },
    { name: "root.sealed too large", before: { "meta.json": encodeMeta(META), "root.sealed": new Uint8Array(70000), "data.sealed": CREDS.data! }, after: /larger than 65536 bytes/ },
  ];
  test.each(rows)("$name", ({ before, after }) => {
    const e = errorOf(() => readCredentials(host, lay(before)));
    expect([e.code, e.message]).toEqual(["CRED_INVALID", expect.stringMatching(after)]);
  });

  test("a missing meta.json comes with a hint on how to enrol", () => {
    expect(errorOf(() => readCredentials(host, tempDir())).hint).toMatch(/zb cred create/);
  });

  test("complete credentials read, blobs decoded", () => {
    const c = readCredentials(host, lay({ "meta.json": encodeMeta(META), "root.sealed": CREDS.root, "data.sealed": CREDS.data! }));
    expect([c.meta.slot, c.rootBlob.data.v, c.dataBlob?.data.ct]).toEqual(["b", 1, Buffer.from("sealed data").toString("base64")]);
  });
});

/** A real initramfs: a small tree through `cpio -o -H newc | zstd -19`, or uncompressed. */
function makeInitramfs(dir: string, compress: boolean): { path: string; bytes: Uint8Array; cpio: Uint8Array } {
  const tree = join(dir, "tree");
  mkdirSync(join(tree, "bin"), { recursive: true });
  writeFileSync(join(tree, "init"), "#!/bin/sh\nexec /bin/zbunlock\n");
  // Grow the binary until the zstd output is not a multiple of 4, so appending must pad.
  for (let n = 3001; ; n++) {
    writeFileSync(join(tree, "bin/zbunlock"), Uint8Array.from({ length: n }, (_, i) => (i * 13 + (i >> 7)) & 0xff));
    const cpio = Bun.spawnSync(["cpio", "-o", "-H", "newc", "--quiet"], { cwd: tree, stdin: Buffer.from("init\nbin\nbin/zbunlock\n") });
    expect(cpio.exitCode).toBe(0);
    let bytes = new Uint8Array(cpio.stdout);
    if (compress) {
      const z = Bun.spawnSync(["zstd", "-19", "-q", "-c"], { stdin: bytes });
      expect(z.exitCode).toBe(0);
      bytes = new Uint8Array(z.stdout);
      if (bytes.length % 4 === 0) continue;
    }
    const path = join(dir, "initramfs");
    writeFileSync(path, bytes);
    return { path, bytes, cpio: new Uint8Array(cpio.stdout) };
  }
}

describe("appendCredentials on a real initramfs", () => {
  test("zstd initramfs: padded to 4, archive at the reported offset; zstd -dc and cpio -i read both parts", () => {
    const dir = tempDir();
    const ird = makeInitramfs(dir, true);
    expect(ird.bytes.length % 4).not.toBe(0); // the padding path is exercised
    const { offset, replaced } = appendCredentials(host, ird.path, packCredentials(CREDS));
    const after = new Uint8Array(readFileSync(ird.path));
    expect([offset % 4, offset - ird.bytes.length < 4, replaced]).toEqual([0, true, false]);
    expect(Buffer.from(after.subarray(0, ird.bytes.length)).equals(Buffer.from(ird.bytes))).toBe(true);
    expect(after.subarray(ird.bytes.length, offset).every((b) => b === 0)).toBe(true);

    const firstPart = join(dir, "first.zst");
    writeFileSync(firstPart, after.subarray(0, ird.bytes.length));
    const z = Bun.spawnSync(["zstd", "-dc", firstPart]);
    expect([z.exitCode, Buffer.from(z.stdout).equals(Buffer.from(ird.cpio))]).toEqual([0, true]);

    const out = tempDir();
    const x = Bun.spawnSync(["cpio", "-i", "-d", "--quiet"], { cwd: out, stdin: after.subarray(offset), stderr: "pipe" });
    expect(x.exitCode).toBe(0);
    expect(readCredentials(host, out).meta).toEqual(META);

    const found = findAppendedCredentials(after)!;
    expect([found.offset, found.credentials.meta]).toEqual([offset, META]);
  });

  test("uncompressed initramfs: the kernel's view (all archives in order) has the credentials last", () => {
    const dir = tempDir();
    const ird = makeInitramfs(dir, false);
    const { offset } = appendCredentials(host, ird.path, packCredentials(CREDS));
    const archives = readCpio(new Uint8Array(readFileSync(ird.path)));
    expect(archives.map((a) => a.entries.map((e) => e.name))).toEqual([
      ["init", "bin", "bin/zbunlock"],
      ["zb", "zb/credentials", "zb/credentials/meta.json", "zb/credentials/root.sealed", "zb/credentials/data.sealed"],
    ]);
    expect(archives[1]!.offset).toBe(offset);
  });

  test("appending again replaces the earlier credentials (one archive, the new one)", () => {
    const dir = tempDir();
    const ird = makeInitramfs(dir, true);
    const first = appendCredentials(host, ird.path, packCredentials(CREDS));
    const { data: _, ...metaA } = { ...META, slot: "a" as const, created: "2024-06-01T00:00:00.000Z" };
    const second = appendCredentials(host, ird.path, packCredentials({ meta: metaA, root: blob("root2") }));
    const after = new Uint8Array(readFileSync(ird.path));
    expect([second.offset, second.replaced]).toEqual([first.offset, true]);
    expect(after.length).toBe(second.offset + packCredentials({ meta: metaA, root: blob("root2") }).length);
    const found = findAppendedCredentials(after)!;
    expect([found.credentials.meta, found.credentials.data]).toEqual([metaA, undefined]);
    expect(Buffer.from(after).indexOf("sealed data")).toBe(-1);
    expect(Buffer.from(after).indexOf(Buffer.from("sealed data").toString("base64"))).toBe(-1);
  });

  // A file bigger than the tail that is read (260 KiB), so the tail starts inside it.
  const bigInitramfs = (dir: string, size: number) => {
    const path = join(dir, "initramfs");
    writeFileSync(path, Uint8Array.from({ length: size }, (_, i) => ((i * 2654435761) >>> 13) & 0xff | 1));
    return path;
  };
  const noData = (): Credentials => ({ meta: { ...META, data: undefined } as unknown as CredentialMeta, root: blob("root2") });
  const padding: { name: string; before: { size: number; pad: Uint8Array }; after: { replaced: true } }[] = [
    { name: "1 NUL after the credentials (the file size is not a multiple of 4)", before: { size: 300_001, pad: new Uint8Array(1) }, after: { replaced: true } },
    { name: "3 NULs after the credentials", before: { size: 300_002, pad: new Uint8Array(3) }, after: { replaced: true } },
    { name: "8 KiB of NULs after the credentials", before: { size: 300_003, pad: new Uint8Array(8192) }, after: { replaced: true } },
    { name: "300 KiB of NULs after the credentials (more than the tail read)", before: { size: 300_001, pad: new Uint8Array(300 * 1024) }, after: { replaced: true } },
    { name: "5 MiB of NULs after the credentials", before: { size: 300_002, pad: new Uint8Array(5 << 20) }, after: { replaced: true } },
  ];
  test.each(padding)("a tool padded the initramfs: $name → found and replaced, one set of credentials", ({ before, after }) => {
    const path = bigInitramfs(tempDir(), before.size);
    const first = appendCredentials(host, path, packCredentials(CREDS));
    appendFileSync(path, before.pad);
    const size = statSync(path).size;
    const reads: number[] = [];
    const counting = Object.assign(Object.create(host) as HostSys, { readAt: (p: string, o: number, n: number) => (reads.push(n), host.readAt(p, o, n)) });
    const tail = credentialTail(counting, path, size);
    expect(tail.start % 4).toBe(0);
    expect(Math.max(...reads)).toBeLessThanOrEqual(264 * 1024); // bounded, however long the padding
    expect(tail.start + findAppendedCredentials(tail.bytes)!.offset).toBe(first.offset); // what `zb cred show` reads
    const second = appendCredentials(host, path, packCredentials(noData()));
    expect({ replaced: second.replaced }).toEqual(after);
    const bytes = Buffer.from(readFileSync(path));
    expect([second.offset, bytes.length]).toEqual([first.offset, first.offset + packCredentials(noData()).length]);
    // The old data.sealed is gone: the kernel cannot unpack it next to the new credentials.
    expect(bytes.indexOf(Buffer.from("sealed data").toString("base64"))).toBe(-1);
  });

  test("credentials followed by other data: append and checkAppendable refuse, the file is left alone", () => {
    const path = bigInitramfs(tempDir(), 300_000);
    const first = appendCredentials(host, path, packCredentials(CREDS));
    appendFileSync(path, Buffer.from("a signature some tool appended\n"));
    const before = readFileSync(path);
    for (const f of [() => appendCredentials(host, path, packCredentials(noData())), () => checkAppendable(host, path)]) {
      const e = errorOf(f);
      expect([e.code, e.message]).toEqual(["CRED_INVALID", `cannot append credentials to ${path}: the credentials at byte ${first.offset} are followed by data zb does not recognise (from byte ${first.offset + packCredentials(CREDS).length}); appending more would make the kernel unpack both`]);
      expect(e.hint).toMatch(/rebuild the initramfs/);
    }
    expect(readFileSync(path).equals(before)).toBe(true);
  });

  test("refuses an archive that is not credentials, and leaves the file alone", () => {
    const dir = tempDir();
    const ird = makeInitramfs(dir, true);
    const e = errorOf(() => appendCredentials(host, ird.path, writeCpio([{ name: "etc/passwd", kind: "file", mode: 0o644, data: Buffer.from("root::0:0::/:/bin/sh\n") }])));
    expect([e.code, e.message]).toEqual(["CRED_INVALID", expect.stringMatching(/unexpected entry "etc\/passwd"/)]);
    expect(Buffer.from(readFileSync(ird.path)).equals(Buffer.from(ird.bytes))).toBe(true);
  });

  test("a file of NULs only: an empty tail, no credentials", () => {
    const path = join(tempDir(), "zeros");
    writeFileSync(path, new Uint8Array(200_000));
    const tail = credentialTail(host, path, 200_000);
    expect([tail.start, tail.bytes.length, findAppendedCredentials(tail.bytes)]).toEqual([0, 4096, null]);
  });

  test("a missing initramfs is IO", () => {
    expect(errorOf(() => appendCredentials(host, join(tempDir(), "none"), packCredentials(CREDS))).code).toBe("IO");
  });
});

describe("findAppendedCredentials before (an initramfs) / after (what it finds)", () => {
  const creds = packCredentials(CREDS);
  const other = writeCpio([{ name: "init", kind: "file", mode: 0o755, data: Buffer.from("#!/bin/sh\n") }]);
  const mixed = writeCpio([
    { name: "init", kind: "file", mode: 0o755, data: Buffer.from("#!/bin/sh\n") },
    { name: "zb", kind: "dir", mode: 0o755 },
    { name: "zb/credentials", kind: "dir", mode: 0o700 },
    { name: "zb/credentials/meta.json", kind: "file", mode: 0o400, data: encodeMeta(META) },
  ]);
  const zstdLike = Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4, 5, 6, 7, 8);
  const rows: { name: string; before: Uint8Array[]; after: number | null }[] = [
    { name: "compressed part + credentials", before: [zstdLike, creds], after: 12 },
    { name: "plain archive + credentials + extra NULs", before: [other, creds, new Uint8Array(4096)], after: other.length },
    { name: "two credential archives: the last one", before: [other, creds, creds], after: other.length + creds.length },
    { name: "no credentials", before: [zstdLike, other], after: null },
    { name: "credentials inside another archive", before: [zstdLike, mixed], after: null },
    { name: "only compressed data", before: [zstdLike], after: null },
    { name: "credentials then something else", before: [creds, other], after: null },
  ];
  test.each(rows)("$name", ({ before, after }) => {
    expect(findAppendedCredentials(Buffer.concat(before))?.offset ?? null).toBe(after);
  });

  // The kernel creates no parent directories: files before (or without) their folders' entries are dropped at boot.
  const dirZb = { name: "zb", kind: "dir" as const, mode: 0o755 };
  const dirCred = { name: "zb/credentials", kind: "dir" as const, mode: 0o700 };
  const metaFile = { name: "zb/credentials/meta.json", kind: "file" as const, mode: 0o400, data: encodeMeta(META) };
  const rootFile = { name: "zb/credentials/root.sealed", kind: "file" as const, mode: 0o400, data: CREDS.root };
  const dataFile = { name: "zb/credentials/data.sealed", kind: "file" as const, mode: 0o400, data: CREDS.data! };
  const order: { name: string; before: CpioInput[]; after: RegExp | "ok" }[] = [
    { name: "directories, then files", before: [dirZb, dirCred, metaFile, rootFile, dataFile], after: "ok" },
    { name: "\"./\"-prefixed names, as some tools write them", before: [{ ...dirZb, name: "./zb" }, { ...dirCred, name: "./zb/credentials" }, metaFile, rootFile, dataFile], after: "ok" },
    { name: "no directory entries", before: [metaFile, rootFile, dataFile], after: /must start with the directories "zb" and "zb\/credentials", in this order, but entry 1 is "zb\/credentials\/meta.json"/ },
    { name: "no zb/credentials entry", before: [dirZb, metaFile, rootFile, dataFile], after: /but entry 2 is "zb\/credentials\/meta.json"/ },
    { name: "directories in the wrong order", before: [dirCred, dirZb, metaFile, rootFile, dataFile], after: /but entry 1 is "zb\/credentials"/ },
    { name: "a file before the directories", before: [metaFile, dirZb, dirCred, rootFile, dataFile], after: /but entry 1 is "zb\/credentials\/meta.json"/ },
    { name: "a directory again after the files", before: [dirZb, dirCred, metaFile, rootFile, dataFile, dirZb], after: /"zb" appears twice/ },
  ];
  test.each(order)("entry order: $name", ({ before, after }) => {
    const archive = writeCpio(before);
    if (after === "ok") {
      expect(unpackCredentials(archive).meta).toEqual(META);
      expect(findAppendedCredentials(Buffer.concat([zstdLike, archive]))?.offset).toBe(12);
      return;
    }
    for (const f of [() => unpackCredentials(archive), () => findAppendedCredentials(Buffer.concat([zstdLike, archive]))]) {
      const e = errorOf(f);
      expect([e.code, e.message]).toEqual(["CRED_INVALID", expect.stringMatching(after)]);
    }
  });

  test("an appended archive with a broken meta.json is reported, not ignored", () => {
    const bad = writeCpio([
      { name: "zb", kind: "dir", mode: 0o755 },
      { name: "zb/credentials", kind: "dir", mode: 0o700 },
      { name: "zb/credentials/meta.json", kind: "file", mode: 0o400, data: Buffer.from('{"format":"x"}') },
      { name: "zb/credentials/root.sealed", kind: "file", mode: 0o400, data: CREDS.root },
    ]);
    expect(errorOf(() => findAppendedCredentials(Buffer.concat([zstdLike, bad]))).message).toMatch(/format is "x"/);
  });
});

/** HostSys whose `fail`-th mutating step fails as on a full partition: a write lands half its bytes first. */
class FullDiskSys extends HostSys {
  private step = 0;
  constructor(private readonly fail: { kind: "write" | "fsync" | "rename"; nth: number }) {
    super();
  }
  private due(kind: string): boolean {
    return kind === this.fail.kind && this.step++ === this.fail.nth;
  }
  override writeAt(path: string, offset: number, data: Uint8Array, opts?: WriteOptions): void {
    if (!this.due("write")) return super.writeAt(path, offset, data, opts);
    super.writeAt(path, offset, data.subarray(0, data.length >> 1), opts);
    throw ioError(`write ${path}`, Object.assign(new Error("ENOSPC"), { code: "ENOSPC" }));
  }
  override fsync(path: string): void {
    if (this.due("fsync")) throw ioError(`sync ${path}`, Object.assign(new Error("EIO"), { code: "EIO" }));
    super.fsync(path);
  }
  override rename(from: string, to: string): void {
    if (this.due("rename")) throw ioError(`rename ${from} to ${to}`, Object.assign(new Error("ENOSPC"), { code: "ENOSPC" }));
    super.rename(from, to);
  }
}

describe("appendCredentials fails before (the failing step) / after (IO, the old initramfs, no temp copy left)", () => {
  const rows: { name: string; before: { kind: "write" | "fsync" | "rename"; nth: number }; after: { code: "IO"; message: RegExp } }[] = [
    { name: "no space while copying the initramfs", before: { kind: "write", nth: 0 }, after: { code: "IO", message: /cannot write .*\.initramfs\.zb-new: no space left on device/ } },
    { name: "no space for the credentials", before: { kind: "write", nth: 1 }, after: { code: "IO", message: /cannot write .*\.initramfs\.zb-new: no space left on device/ } },
    { name: "the copy's fsync fails", before: { kind: "fsync", nth: 0 }, after: { code: "IO", message: /cannot sync .*\.initramfs\.zb-new/ } },
    { name: "the rename fails", before: { kind: "rename", nth: 0 }, after: { code: "IO", message: /cannot rename .*\.zb-new to / } },
  ];
  test.each(rows)("$name", ({ before, after }) => {
    const dir = tempDir();
    const ird = makeInitramfs(dir, true);
    const listing = readdirSync(dir).sort();
    const e = errorOf(() => appendCredentials(new FullDiskSys(before), ird.path, packCredentials(CREDS)));
    expect([e.code, e.message]).toEqual([after.code, expect.stringMatching(after.message)]);
    expect(existsSync(join(dir, ".initramfs.zb-new"))).toBe(false);
    expect(readdirSync(dir).sort()).toEqual(listing);
    expect(Buffer.from(readFileSync(ird.path)).equals(Buffer.from(ird.bytes))).toBe(true);
  });
});

describe("power cuts during appendCredentials", () => {
  test("at every write/fsync/rename and inside every write: the old or the new initramfs, and a retry succeeds", () => {
    const dir = tempDir();
    const ird = makeInitramfs(dir, true);
    // A first append so the cut run also replaces credentials; then record the op list of the second.
    appendCredentials(host, ird.path, packCredentials(CREDS));
    const old = new Uint8Array(readFileSync(ird.path));
    const { data: _, ...metaA } = { ...META, slot: "a" as const };
    const next = packCredentials({ meta: metaA, root: blob("next") });
    const recorder = new CuttingSys(host, { never: true });
    appendCredentials(recorder, ird.path, next);
    const want = new Uint8Array(readFileSync(ird.path));
    expect(Buffer.from(want).equals(Buffer.from(old))).toBe(false);
    expect(recorder.ops.map((o) => o.kind)).toEqual(["unlink", "write", "write", "fsync", "rename", "fsync"]);

    const plans = cutPoints(recorder.ops);
    for (const plan of plans) {
      writeFileSync(ird.path, old);
      let cut = false;
      try {
        appendCredentials(new CuttingSys(host, plan), ird.path, next);
      } catch (e) {
        expect(e).toBeInstanceOf(PowerCut);
        cut = true;
      }
      const now = Buffer.from(readFileSync(ird.path));
      expect({ plan, state: now.equals(Buffer.from(old)) ? "old" : now.equals(Buffer.from(want)) ? "new" : "mixed" }).toEqual({ plan, state: expect.stringMatching(/^(old|new)$/) });
      if (cut) {
        appendCredentials(host, ird.path, next);
        expect(Buffer.from(readFileSync(ird.path)).equals(Buffer.from(want))).toBe(true);
      }
    }
    expect(plans.filter((p) => "bytes" in p).length).toBeGreaterThan(0); // torn writes were among the cuts
  });
});
