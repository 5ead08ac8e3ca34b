/**
 * The publisher side (lib/image/create.ts, spool.ts, writer.ts) when things
 * go wrong around it: temp and spool files beside the output are created
 * O_EXCL|O_NOFOLLOW (a link planted under their names is never followed), a
 * full disk is IO "cannot write OUT: no space left on device" with every temp
 * file removed, for `createImage` (spool or archive) and `resignImage` alike;
 * --chunk-size is checked naming the flag, and an image with more chunks than
 * the manifest can list is refused before anything is compressed; more
 * signatures than a reader takes (16) are refused before any file is made,
 * by create and by sign (in place too); progress knows each payload's size
 * up front; a create stopped by its AbortSignal removes its temp files; a
 * boot folder holding a --key file, any PEM private key or the --rootfs file
 * is refused before anything is written (it would be published in the image);
 * an input (rootfs, key, the image to sign) that is one of the output's temp
 * files, which are deleted first, is refused and stays.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createImage, resignImage, type CreateOptions, type CreateProgress } from "../../../lib/image/create.ts";
import { privateKeyFromSecret } from "../../../lib/image/keys.ts";
import { openImage } from "../../../lib/image/reader.ts";
import { keySigner } from "../../../lib/image/sign.ts";
import { fileSource } from "../../../lib/image/source.ts";
import { ZbError } from "../../../lib/errors.ts";
import { buildImage, CREATED, keyFile, KEYS, MIN_CHUNK, sha256, tmpfsMounts, variedBytes } from "./fixture.ts";

const root = mkdtempSync(join(tmpdir(), "zb-create-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const smallDisk = tmpfsMounts();
let seq = 0;
const fresh = () => {
  const d = join(root, `c${seq++}`);
  mkdirSync(d);
  return d;
};
/** 3 MiB that zstd cannot shrink: the spool and the archive are each about that size. */
const noise = variedBytes(3 << 20, 77, 1);
const rootfs = join(root, "rootfs.img");
writeFileSync(rootfs, noise);
const img = await buildImage(join(root, "img"), { rootfs: noise, boot: false, chunkSize: 1 << 20 });
const opts = (output: string, more: Partial<CreateOptions> = {}): CreateOptions => ({
  compatible: "pi4", version: "1", serial: 1, created: CREATED, chunkSize: 1 << 20, output, signers: [keySigner(KEYS.k1)],
  payloads: [{ name: "rootfs", kind: "rootfs", encoding: "zstd", from: { file: rootfs } }], ...more,
});
const failure = async (p: Promise<unknown>) => {
  const e = (await p.then(() => null, (x: unknown) => x)) as { code?: string; message?: string; hint?: string } | null;
  return e && { code: e.code, message: e.message };
};

describe("a full disk: IO naming the output, and no temp file stays", () => {
  test.each([
    { when: "create: the spool does not fit (1 MiB disk)", size: "1m", run: (out: string) => createImage(opts(out)) },
    { when: "create: the spool fits, the archive does not (5 MiB disk)", size: "5m", run: (out: string) => createImage(opts(out)) },
    { when: "sign: the re-signed copy does not fit (1 MiB disk)", size: "1m", run: (out: string) => resignImage(fileSource(img.path), [keySigner(KEYS.k2)], out, { unverified: true }) },
  ])("$when", async ({ size, run }) => {
    const disk = smallDisk(`size=${size}`);
    const out = join(disk, "o.zbi");
    expect(await failure(run(out))).toEqual({ code: "IO", message: `cannot write ${out}: no space left on device` });
    expect(readdirSync(disk)).toEqual([]);
  });
});

describe("temp and spool files: a link planted under their name is replaced, never followed", () => {
  test.each([
    { name: "create: .OUT.zb-new and .OUT.rootfs.zb-spool", temps: [".o.zbi.zb-new", ".o.zbi.rootfs.zb-spool"], run: (out: string) => createImage(opts(out)) },
    { name: "sign: .OUT.zb-new", temps: [".o.zbi.zb-new"], run: (out: string) => resignImage(fileSource(img.path), [keySigner(KEYS.k2)], out, { unverified: true }) },
  ])("$name", async ({ temps, run }) => {
    const d = fresh();
    const victims = temps.map((t, i) => {
      const victim = join(d, `victim${i}.txt`);
      writeFileSync(victim, `precious ${i}\n`);
      symlinkSync(victim, join(d, t));
      return victim;
    });
    await run(join(d, "o.zbi"));
    expect(victims.map((v) => readFileSync(v, "utf8"))).toEqual(temps.map((_, i) => `precious ${i}\n`));
    expect(lstatSync(join(d, "o.zbi")).isFile()).toBe(true);
    expect(readdirSync(d).sort()).toEqual(["o.zbi", ...victims.map((_, i) => `victim${i}.txt`)].sort());
  });

  test("a stale temp file (a killed run's) is replaced; a folder in its place is IO, and nothing is written", async () => {
    const d = fresh();
    writeFileSync(join(d, ".o.zbi.zb-new"), "stale");
    await createImage(opts(join(d, "o.zbi")));
    expect(existsSync(join(d, ".o.zbi.zb-new"))).toBe(false);
    const e = fresh();
    mkdirSync(join(e, ".o.zbi.rootfs.zb-spool"));
    expect((await failure(createImage(opts(join(e, "o.zbi")))))?.code).toBe("IO");
    expect(readdirSync(e)).toEqual([".o.zbi.rootfs.zb-spool"]);
  });
});

describe("stopped by its signal (the stage aborts it on SIGINT or SIGTERM): the reason is thrown, no temp file stays, an older image at the output stays", () => {
  // 3 MiB in 1 MiB chunks: progress after each; after the last, the archive is written from the spool.
  test.each([
    { when: "while compressing (after chunk 1 of 3: the spool exists)", at: 1 << 20 },
    { when: "while writing the archive (after the last chunk)", at: 3 << 20 },
  ])("$when", async ({ at }) => {
    const d = fresh();
    const out = join(d, "o.zbi");
    writeFileSync(out, readFileSync(img.path));
    const stop = new AbortController();
    const reason = new ZbError("INTERRUPTED", `cannot create ${out}: interrupted (SIGINT)`);
    const e = await createImage(opts(out, { signal: stop.signal, progress: (p) => void (p.rawBytes === at && stop.abort(reason)) })).catch((x: unknown) => x);
    expect({ e: e === reason, files: readdirSync(d), old: sha256(new Uint8Array(readFileSync(out))) }).toEqual({ e: true, files: ["o.zbi"], old: sha256(img.bytes) });
  });
});

describe("the command line's values, checked before compressing", () => {
  test.each([0, 1000, 65535, 98304, 128 << 20])("--chunk-size %p: USAGE naming the flag", async (chunkSize) => {
    const d = fresh();
    expect(await failure(createImage(opts(join(d, "o.zbi"), { chunkSize })))).toEqual({
      code: "USAGE", message: `cannot create an image: --chunk-size ${chunkSize} is not a power of two from 65536 (64 KiB) to 67108864 (64 MiB)`,
    });
  });

  // Before: "cannot create an image: version must be 1 to 64 characters matching /^[\x21-\x7e]+$/" (a regex, the field's manifest name).
  test.each([
    { name: "--version with a space", more: { version: "1.2 beta" }, message: '--version "1.2 beta" must be 1 to 64 printable ASCII characters without spaces' },
    { name: "--version of 65 characters", more: { version: "v".repeat(65) }, message: "--version (65 characters) must be 1 to 64 printable ASCII characters without spaces" },
    { name: "--version with a non-ASCII letter", more: { version: "1.2-ß" }, message: '--version "1.2-ß" must be 1 to 64 printable ASCII characters without spaces' },
    { name: "--compatible with a space", more: { compatible: "acme pi" }, message: '--compatible "acme pi" must be 1 to 128 characters, each an ASCII letter, a digit or one of . _ + -' },
    { name: "--compatible empty", more: { compatible: "" }, message: '--compatible "" must be 1 to 128 characters, each an ASCII letter, a digit or one of . _ + -' },
    { name: "--serial negative", more: { serial: -1 }, message: "--serial must be an integer from 0 to 9007199254740991" },
  ])("$name: USAGE naming the flag, in words (no regex)", async ({ more, message }) => {
    const d = fresh();
    const e = await failure(createImage(opts(join(d, "o.zbi"), more)));
    expect({ ...e, files: readdirSync(d) }).toEqual({ code: "USAGE", message: `cannot create an image: ${message}`, files: [] });
    expect(e?.message).not.toMatch(/matching|\/\^|\$\//);
  });
});

describe("more chunks than a 4 MiB manifest can list: USAGE from the sizes alone, before a chunk is compressed or a file made", () => {
  // Sparse rootfs files: refused from their size before a byte is read. The first chunk encoded stops the run
  // (its signal), so an input that gets past the check is seen at once, not after gigabytes of spool.
  const K64 = 64 << 10;
  const over = { hint: "give --chunk-size 131072 (it fits) or larger, up to 67108864" };
  test.each([
    // Before: 26 s, a 2.9 GB spool, then "46400 chunks of 65536 bytes do not fit in the manifest (at most 4194304 bytes, ~48210 chunks)".
    { name: "none, 2900 MiB in 64 KiB chunks (46 400 chunks)", size: 2900 * 2 ** 20, encoding: "none", chunkSize: K64,
      message: "46400 chunks of 65536 bytes need a manifest of 4222790 bytes, more than its limit of 4194304", ...over },
    // At the limit: 46 086 chunks of 64 KiB and a last one whose size has 2 digits make a manifest of 4 MiB exactly, 3 digits 1 byte more.
    { name: "none, 46 086 chunks of 64 KiB and 100 bytes: 1 byte too many", size: 46086 * K64 + 100, encoding: "none", chunkSize: K64,
      message: "46087 chunks of 65536 bytes need a manifest of 4194305 bytes, more than its limit of 4194304", ...over },
    { name: "none, 46 086 chunks of 64 KiB and 99 bytes: fits, compressing starts", size: 46086 * K64 + 99, encoding: "none", chunkSize: K64, message: null, hint: undefined },
    // Before: refused too, as "~48210 chunks", more than the count it refused.
    { name: "zstd, 4 GiB in 64 KiB chunks (65 536 chunks), each counted at its largest frame", size: 4 * 2 ** 30, encoding: "zstd", chunkSize: K64,
      message: "65536 chunks of 65536 bytes need a manifest of up to 5964166 bytes (a zstd chunk counted at its largest), more than its limit of 4194304", ...over },
    { name: "zstd, 3 TiB in 64 MiB chunks: no chunk size fits", size: 3 * 2 ** 40, encoding: "zstd", chunkSize: 64 << 20,
      message: "49152 chunks of 67108864 bytes need a manifest of up to 4620687 bytes (a zstd chunk counted at its largest), more than its limit of 4194304",
      hint: "even --chunk-size 67108864 does not make the manifest fit: make the payloads smaller" },
  ] as const)("$name", async ({ size, encoding, chunkSize, message, hint }) => {
    const d = fresh();
    const sparse = join(d, "sparse.img");
    closeSync(openSync(sparse, "w"));
    truncateSync(sparse, size);
    const stop = new AbortController();
    const started = new ZbError("INTERRUPTED", "stopped at the first chunk");
    let encoded = 0;
    const e = (await createImage({
      ...opts(join(d, "o.zbi"), { chunkSize, payloads: [{ name: "rootfs", kind: "rootfs", encoding, from: { file: sparse } }] }),
      signal: stop.signal, progress: () => void (encoded++, stop.abort(started)),
    }).catch((x: unknown) => x)) as { code?: string; message?: string; hint?: string };
    expect({ code: e.code, message: e.message, hint: e.hint, encoded, files: readdirSync(d) }).toEqual(message === null
      ? { code: "INTERRUPTED", message: started.message, hint: undefined, encoded: 1, files: ["sparse.img"] }
      : { code: "USAGE", message: `cannot create an image: ${message}`, hint, encoded: 0, files: ["sparse.img"] });
  });
});

test("progress: each payload's size is known before its first chunk, and the totals add up", async () => {
  const d = fresh();
  const boot = join(d, "boot");
  // A long path and a non-ASCII name: tar-stream gives both a pax header, which the total counts.
  mkdirSync(join(boot, "overlays", "d".repeat(90)), { recursive: true });
  writeFileSync(join(boot, "overlays", "d".repeat(90), "f".repeat(60)), "long\n");
  writeFileSync(join(boot, "grüße.txt"), "non-ascii\n");
  writeFileSync(join(boot, "kernel8.img"), variedBytes(300_000, 5));
  const events: CreateProgress[] = [];
  const m = await createImage(opts(join(d, "o.zbi"), {
    chunkSize: MIN_CHUNK, progress: (e) => events.push({ ...e }),
    payloads: [{ name: "boot", kind: "boot", encoding: "zstd", from: { dir: boot } }, { name: "rootfs", kind: "rootfs", encoding: "zstd", from: { file: rootfs } }],
  }));
  const size = Object.fromEntries(m.payloads.map((p) => [p.name, p.raw.size]));
  const all = size.boot! + size.rootfs!;
  const last = (name: string) => events.filter((e) => e.payload === name).at(-1)!;
  expect({ boot: last("boot"), rootfs: last("rootfs") }).toEqual({
    boot: { payload: "boot", rawBytes: size.boot!, rawTotal: size.boot!, allBytes: size.boot!, allTotal: all },
    rootfs: { payload: "rootfs", rawBytes: size.rootfs!, rawTotal: size.rootfs!, allBytes: all, allTotal: all },
  });
  expect(events.every((e) => e.rawTotal === size[e.payload] && e.allTotal === all && e.rawBytes <= e.rawTotal)).toBe(true);
  expect(sha256(new Uint8Array(readFileSync(rootfs)))).toBe(m.payloads[1]!.raw.sha256);
});

describe("more signatures than a reader takes (16): USAGE before any file is made", () => {
  /** `n` distinct Ed25519 keys (none of them k1, which the image of `img` carries). */
  const manyKeys = (n: number, from = 100) => Array.from({ length: n }, (_, i) => keySigner(privateKeyFromSecret("ed25519", new Uint8Array(32).fill(from + i))));
  /** Whether the image at `path` opens for a reader, and with how many signatures. */
  const readable = async (path: string) => {
    return await openImage(await fileSource(path).open(0), { unverified: true }).then((i) => (i.close(), i.header.signatures.length), (e: { code?: string }) => e.code);
  };
  const TOO_MANY = (what: string, n: number) => `cannot ${what}: ${n} signatures, more than the 16 an image can carry (readers refuse more)`;

  type After = { error: { code: string; message: string } | null; files: string[]; opens: number | string | null };
  test.each<{ keys: number; after: After }>([
    { keys: 16, after: { error: null, files: ["o.zbi"], opens: 16 } },
    { keys: 17, after: { error: { code: "USAGE", message: TOO_MANY("create OUT", 17) }, files: [], opens: null } },
    { keys: 40, after: { error: { code: "USAGE", message: TOO_MANY("create OUT", 40) }, files: [], opens: null } },
  ])("create with $keys keys", async ({ keys, after }) => {
    const d = fresh();
    const out = join(d, "o.zbi");
    // The same key given twice counts once.
    const signers = [...manyKeys(keys), ...manyKeys(2)];
    const error = await failure(createImage(opts(out, { signers })));
    const files = readdirSync(d);
    expect({ error: error && { ...error, message: error.message?.replace(out, "OUT") }, files, opens: files.length ? await readable(out) : null }).toEqual(after);
  });

  test.each([
    { image: "2 signatures", adds: "14 keys", keys: 14, after: { error: null, opens: 16 } },
    { image: "2 signatures", adds: "15 keys", keys: 15, after: { error: { code: "USAGE", message: TOO_MANY("sign OUT", 17) }, opens: 2 } },
    { image: "2 signatures", adds: "16 keys, in place", keys: 16, inPlace: true, after: { error: { code: "USAGE", message: TOO_MANY("sign OUT", 18) }, opens: 2 } },
    { image: "2 signatures", adds: "15 keys, one of them k2 (replaced, not added)", keys: 14, k2: true, after: { error: null, opens: 16 } },
  ])("sign an image of $image with $adds", async ({ keys, k2, inPlace, after }) => {
    const d = fresh();
    const path = join(d, "in.zbi");
    writeFileSync(path, img.bytes);
    const out = inPlace ? path : join(d, "o.zbi");
    const signers = [...manyKeys(keys), ...(k2 ? [keySigner(KEYS.k2)] : [])];
    const error = await failure(resignImage(fileSource(path), signers, out, { unverified: true }));
    const refused = error !== null;
    expect({
      error: error && { ...error, message: error.message?.replace(out, "OUT") },
      opens: await readable(refused ? path : out),
      input: sha256(new Uint8Array(readFileSync(path))) === sha256(img.bytes),
      files: readdirSync(d).sort(),
    }).toEqual({ ...after, input: true, files: refused || inPlace ? ["in.zbi"] : ["in.zbi", "o.zbi"] });
  });
});

describe("a boot folder is published in every image: one holding a private key or the rootfs file is USAGE, nothing written", () => {
  const PEM_BODY = "MC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n";
  type Row = { name: string; put: (boot: string, d: string) => Promise<{ key: string; rootfs?: string }>; error: string | null };
  test.each<Row>([
    {
      name: "the --key file itself",
      put: async (boot) => ({ key: await keyFile(boot, "release.key", KEYS.k1) }),
      error: "the boot folder BOOT holds the signing key BOOT/release.key (it would be published in every image)",
    },
    {
      name: "a hard link to the --key file (another name, the same inode)",
      put: async (boot, d) => {
        const key = await keyFile(d, "k.pem", KEYS.k1);
        linkSync(key, join(boot, "cmdline.txt.bak"));
        return { key };
      },
      error: "the boot folder BOOT holds the signing key BOOT/cmdline.txt.bak (--key D/k.pem) (it would be published in every image)",
    },
    ...[
      ["PKCS#8", "-----BEGIN PRIVATE KEY-----\n"],
      ["SEC1", "-----BEGIN EC PRIVATE KEY-----\n"],
      ["encrypted PKCS#8", "-----BEGIN ENCRYPTED PRIVATE KEY-----\n"],
      ["OpenSSH, after a UTF-8 BOM and a blank line", "\uFEFF\n-----BEGIN OPENSSH PRIVATE KEY-----\n"],
      ["openssl pkcs12 -nodes output, Bag Attributes first", "Bag Attributes\n    localKeyId: 4A 1F 93 0C 77 2B 18 D5 60 9E 51 3D A2 C4 7F 01 66 E8 2B 90\n    friendlyName: release signing key for the 2026 product line\nKey Attributes: <No Attributes>\n-----BEGIN PRIVATE KEY-----\n"],
      ["a comment above the key, CRLF lines", "# release key, do not copy\r\n\r\n-----BEGIN EC PRIVATE KEY-----\r\n"],
    ].map(([kind, head]) => ({
      name: `a private key that is no --key (${kind})`,
      put: async (boot: string, d: string) => {
        mkdirSync(join(boot, "overlays"));
        writeFileSync(join(boot, "overlays/old.pem"), head + PEM_BODY);
        return { key: await keyFile(d, "k.pem", KEYS.k1) };
      },
      error: "the boot folder BOOT holds a private key, BOOT/overlays/old.pem (it would be published in every image)",
    })),
    {
      name: "the --rootfs file",
      put: async (boot, d) => {
        writeFileSync(join(boot, "rootfs.img"), noise.subarray(0, 100_000));
        return { key: await keyFile(d, "k.pem", KEYS.k1), rootfs: join(boot, "rootfs.img") };
      },
      error: "the boot folder BOOT holds the rootfs file BOOT/rootfs.img (it would be packed into the boot payload too)",
    },
    {
      name: "public keys, text that mentions a private key mid-line, binary files and text past 4 KiB (accepted)",
      put: async (boot, d) => {
        writeFileSync(join(boot, "release.pub"), "-----BEGIN PUBLIC KEY-----\n" + PEM_BODY);
        writeFileSync(join(boot, "README"), "Never put a -----BEGIN PRIVATE KEY----- file here.\n");
        // A binary file (a NUL byte early on) holding the label at a line start: firmware strings, no key.
        writeFileSync(join(boot, "fixup.dat"), Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0, 0, 0, 0]), Buffer.from("\n-----BEGIN PRIVATE KEY-----\n")]));
        // A key beyond the first 4 KiB of a text file is not looked for (a boot folder holds hundreds of files).
        writeFileSync(join(boot, "notes.txt"), "x".repeat(4096) + "\n-----BEGIN PRIVATE KEY-----\n" + PEM_BODY);
        return { key: await keyFile(d, "k.pem", KEYS.k1) };
      },
      error: null,
    },
  ])("$name", async ({ put, error }) => {
    const d = fresh();
    const boot = join(d, "boot");
    mkdirSync(boot);
    writeFileSync(join(boot, "kernel8.img"), "kernel");
    const { key, rootfs: file } = await put(boot, d);
    const payloads: CreateOptions["payloads"] = [{ name: "boot", kind: "boot", encoding: "zstd", from: { dir: boot } }];
    if (file) payloads.push({ name: "rootfs", kind: "rootfs", encoding: "zstd", from: { file } });
    const before = readdirSync(d).sort();
    const e = await failure(createImage(opts(join(d, "o.zbi"), { payloads, keyFiles: [key] })));
    const words = (m: string) => m.replaceAll(boot, "BOOT").replaceAll(d, "D");
    expect({ error: e && { code: e.code, message: words(e.message ?? "") }, written: readdirSync(d).filter((f) => !before.includes(f)) }).toEqual(
      error === null ? { error: null, written: ["o.zbi"] } : { error: { code: "USAGE", message: `cannot create an image: ${error}` }, written: [] },
    );
  });
});

describe("an input that is one of the output's temp files (deleted before they are written): USAGE, the input stays, nothing written", () => {
  type Row = { name: string; run: (d: string) => Promise<unknown>; temp: string; input: string; message: string };
  const rootfsAt = (d: string, name: string) => {
    writeFileSync(join(d, name), noise.subarray(0, 200_000));
    return [{ name: "rootfs", kind: "rootfs", encoding: "zstd", from: { file: join(d, name) } }] as CreateOptions["payloads"];
  };
  const copyImage = (d: string, name: string) => {
    writeFileSync(join(d, name), img.bytes);
    return fileSource(join(d, name));
  };
  const TEMP = "a temp file of this output, which zb deletes before writing it";
  test.each<Row>([
    {
      name: "create: the rootfs file named .OUT.rootfs.zb-spool (read back as the empty spool before)",
      run: (d) => createImage(opts(join(d, "o.zbi"), { payloads: rootfsAt(d, ".o.zbi.rootfs.zb-spool") })),
      temp: ".o.zbi.rootfs.zb-spool", input: ".o.zbi.rootfs.zb-spool",
      message: `cannot create D/o.zbi: the rootfs file D/.o.zbi.rootfs.zb-spool has the name of ${TEMP}`,
    },
    {
      name: "create: the rootfs file named .OUT.zb-new",
      run: (d) => createImage(opts(join(d, "o.zbi"), { payloads: rootfsAt(d, ".o.zbi.zb-new") })),
      temp: ".o.zbi.zb-new", input: ".o.zbi.zb-new",
      message: `cannot create D/o.zbi: the rootfs file D/.o.zbi.zb-new has the name of ${TEMP}`,
    },
    {
      name: "create: the rootfs given as a link to .OUT.rootfs.zb-spool, through a linked folder",
      run: (d) => {
        const payloads = rootfsAt(d, ".o.zbi.rootfs.zb-spool");
        symlinkSync(d, join(d, "here"));
        symlinkSync(join(d, "here/.o.zbi.rootfs.zb-spool"), join(d, "r.img"));
        return createImage(opts(join(d, "o.zbi"), { payloads: [{ ...payloads[0]!, from: { file: join(d, "r.img") } }] }));
      },
      temp: ".o.zbi.rootfs.zb-spool", input: ".o.zbi.rootfs.zb-spool",
      message: `cannot create D/o.zbi: the rootfs file D/r.img is D/.o.zbi.rootfs.zb-spool, ${TEMP}`,
    },
    {
      name: "create: a hard link to the rootfs named .OUT.rootfs.zb-spool",
      run: (d) => {
        const payloads = rootfsAt(d, "r.img");
        linkSync(join(d, "r.img"), join(d, ".o.zbi.rootfs.zb-spool"));
        return createImage(opts(join(d, "o.zbi"), { payloads }));
      },
      temp: ".o.zbi.rootfs.zb-spool", input: "r.img",
      message: `cannot create D/o.zbi: the rootfs file D/r.img is D/.o.zbi.rootfs.zb-spool, ${TEMP}`,
    },
    {
      name: "create: the signing key named .OUT.zb-new",
      run: async (d) => createImage(opts(join(d, "o.zbi"), { keyFiles: [await keyFile(d, ".o.zbi.zb-new", KEYS.k1)] })),
      temp: ".o.zbi.zb-new", input: ".o.zbi.zb-new",
      message: `cannot create D/o.zbi: the signing key D/.o.zbi.zb-new has the name of ${TEMP}`,
    },
    {
      name: "sign: the input image named .OUT.zb-new (deleted before)",
      run: (d) => resignImage(copyImage(d, ".o.zbi.zb-new"), [keySigner(KEYS.k2)], join(d, "o.zbi"), { unverified: true }),
      temp: ".o.zbi.zb-new", input: ".o.zbi.zb-new",
      message: `cannot sign D/o.zbi: the input image D/.o.zbi.zb-new has the name of ${TEMP}`,
    },
    {
      name: "sign: the signing key named .OUT.zb-new",
      run: async (d) => resignImage(copyImage(d, "in.zbi"), [keySigner(KEYS.k2)], join(d, "o.zbi"), { unverified: true }, { keyFiles: [await keyFile(d, ".o.zbi.zb-new", KEYS.k2)] }),
      temp: ".o.zbi.zb-new", input: ".o.zbi.zb-new",
      message: `cannot sign D/o.zbi: the signing key D/.o.zbi.zb-new has the name of ${TEMP}`,
    },
  ])("$name", async ({ run, temp, input, message }) => {
    const d = fresh();
    const e = (await run(d).then(() => null, (x: unknown) => x)) as { code?: string; message?: string; hint?: string } | null;
    const files = readdirSync(d);
    expect({ code: e?.code, message: e?.message?.replaceAll(d, "D"), hint: e?.hint?.replaceAll(d, "D"), input: files.includes(input) && statSync(join(d, input)).size > 0, output: files.includes("o.zbi") }).toEqual({
      code: "USAGE", message, hint: `rename D/${temp}, or write the image to another path`, input: true, output: false,
    });
  });
});
