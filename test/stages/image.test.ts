/**
 * The image commands end to end through dist/zb-x64, and the format read
 * by other tools: GNU tar lists and extracts a .zbi, openssl verifies its
 * signatures over the extracted manifest.json, zstd decompresses a payload.
 * Edges: a second install into a file being written (exit 25), a --resume of
 * the same image re-signed since (its payloads moved), a block device node
 * made with mknod under another name (a loop device's), a --to under /dev
 * that does not exist (exit 5, nothing created there), more than 16
 * signatures (exit 2, nothing written), images from FIFOs, an image followed
 * by /dev/zero (exit 13), a closed, write-only or terminal stdin (exit 5), key files
 * that are no files (exit 18), a boot subfolder that cannot be entered (exit 5), key
 * files and their folder fsynced by `key gen` (seen with strace), a signing key
 * that group or others may read (a warning on stderr, exit 0).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, chownSync, existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync, copyFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { tmpfsMounts, variedBytes, withEditedSerial } from "../lib/image/fixture.ts";

const BIN = resolve(import.meta.dir, "../../dist/zb-x64");
let dir = "";
const zb = (...args: string[]) => {
  const p = Bun.spawnSync([BIN, ...args], { cwd: dir });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
};
const sh = (cmd: string[]) => Bun.spawnSync(cmd, { cwd: dir });
const sha256 = (path: string) => new Bun.CryptoHasher("sha256").update(readFileSync(path)).digest("hex");
/** An image with its manifest edited in place (serial 7 → 9): `verify --trust` refuses it. */
const editedManifest = (image: Buffer) => withEditedSerial(image, 7, 9);

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  dir = mkdtempSync(join(tmpdir(), "zb-imgcli-"));
  mkdirSync(join(dir, "boot/overlays"), { recursive: true });
  mkdirSync(join(dir, "trust"));
  writeFileSync(join(dir, "boot/vmlinuz"), "kernel image ".repeat(5000));
  writeFileSync(join(dir, "boot/overlays/README"), "overlays\n");
  // A rootfs of varied, compressible content: ~1.3 MiB, 21 chunks of 64 KiB.
  const raw = new Uint8Array(1_300_000);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 7 + (i >> 9)) % 251 < 40 ? (i * 131) & 0xff : 0x41 + (i % 26);
  writeFileSync(join(dir, "rootfs.img"), raw);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("publish and install", () => {
  test("key gen writes a 0600 private key and its public half", () => {
    for (const [name, alg] of [["ed", "ed25519"], ["ec", "p256"]] as const) {
      const r = zb("key", "gen", "--alg", alg, "-o", name);
      expect(r.code).toBe(0);
      expect(r.out).toMatch(new RegExp(`^[0-9a-f]{64}  ${alg}  ${name}.pub\\n$`));
      expect(Bun.spawnSync(["stat", "-c", "%a", join(dir, name)]).stdout.toString().trim()).toBe("600");
    }
    expect(zb("key", "gen", "--alg", "ed25519", "-o", "ed").code).toBe(2); // never overwrites
    copyFileSync(join(dir, "ed.pub"), join(dir, "trust/ed.pub"));
  });

  test("key gen makes both files and their folder durable before it reports the key (strace: fsync of each, then of the folder)", () => {
    mkdirSync(join(dir, "keys"));
    const log = join(dir, "keygen.strace");
    const p = Bun.spawnSync(["strace", "-f", "-y", "-e", "trace=fsync,fdatasync", "-o", log, BIN, "key", "gen", "--alg", "ed25519", "-o", "keys/durable"], { cwd: dir });
    expect(p.exitCode).toBe(0);
    const synced = [...readFileSync(log, "utf8").matchAll(/f(?:data)?sync\(\d+<([^>]+)>\) = 0/g)].map((m) => m[1]);
    expect(synced).toEqual([join(dir, "keys/durable"), join(dir, "keys/durable.pub"), join(dir, "keys")]);
  });

  test.each([
    { mode: "0640", warned: true },
    { mode: "0604", warned: true },
    { mode: "0600", warned: false },
  ])("a signing key of mode $mode (warned $warned): signs, exit 0, stderr warns only when group or others may read it", ({ mode, warned }) => {
    const key = `loose-${mode}`;
    copyFileSync(join(dir, "ed"), join(dir, key));
    chmodSync(join(dir, key), parseInt(mode, 8));
    const r = zb("image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "rootfs.img", "--key", key, "-o", `${key}.zbi`);
    expect({ code: r.code, err: r.err }).toEqual({ code: 0, err: warned ? `zb: warning: private key ${key} is readable by other users (chmod 600 it)\n` : "" });
  });

  test("create, then info", () => {
    const r = zb("image", "create", "--compatible", "acme-pi4", "--version", "1.0", "--serial", "7", "--rootfs", "rootfs.img", "--boot", "boot", "--key", "ed", "--chunk-size", "65536", "-o", "a.zbi");
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const info = JSON.parse(zb("image", "info", "a.zbi", "--json").out);
    expect(info.manifest).toMatchObject({ compatible: "acme-pi4", serial: 7, chunkSize: 65536 });
    expect(info.manifest.payloads.map((p: { name: string }) => p.name)).toEqual(["boot", "rootfs"]);
    expect(info.manifest.payloads[1].chunks.length).toBe(20);
  });

  test("GNU tar sees the entries in order; openssl verifies both signature kinds over manifest.json", () => {
    expect(zb("image", "sign", "a.zbi", "--trust", "trust", "--key", "ec", "-o", "b.zbi").code).toBe(0);
    expect(sh(["tar", "-tf", "b.zbi"]).stdout.toString()).toBe("zbi-format\nmanifest.json\nsignatures.json\nboot\nrootfs\n");
    mkdirSync(join(dir, "x"));
    expect(sh(["tar", "-xf", "b.zbi", "-C", "x"]).exitCode).toBe(0);
    const sigs = JSON.parse(readFileSync(join(dir, "x/signatures.json"), "utf8")).signatures as { alg: string; sig: string }[];
    expect(sigs.map((s) => s.alg).sort()).toEqual(["ed25519", "p256"]);
    for (const s of sigs) {
      writeFileSync(join(dir, `x/${s.alg}.sig`), Buffer.from(s.sig, "base64"));
      const cmd = s.alg === "ed25519"
        ? ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "ed.pub", "-rawin", "-in", "x/manifest.json", "-sigfile", `x/${s.alg}.sig`]
        : ["openssl", "dgst", "-sha256", "-verify", "ec.pub", "-signature", `x/${s.alg}.sig`, "x/manifest.json"];
      const p = sh(cmd);
      expect(`${s.alg}: ${p.stdout.toString().trim()}`).toMatch(/Verified OK|Signature Verified Successfully/);
    }
    // The rootfs entry is a plain zstd stream of the raw image.
    expect(sh(["sh", "-c", "zstd -dc x/rootfs | cmp - rootfs.img"]).exitCode).toBe(0);
  });

  test("every --json document of the image and key commands has exactly the fields docs/json.md lists, of their types: key gen, key id, create, sign, info, verify (plain, --deep), install", () => {
    // A field renamed, dropped or added without docs/json.md fails here: each row is the whole document.
    const hex64 = expect.stringMatching(/^[0-9a-f]{64}$/);
    const json = (...argv: string[]) => {
      const p = zb(...argv);
      expect({ argv, code: p.code, err: p.err }).toEqual({ argv, code: 0, err: "" });
      return JSON.parse(p.out.trim().split("\n").at(-1) ?? "null") as Record<string, unknown>; // the result line (info: the document, parsed whole below)
    };
    const keyGen = json("key", "gen", "--alg", "ed25519", "-o", "jk", "--json");
    expect(keyGen).toEqual({ alg: "ed25519", id: hex64, private: "jk", public: "jk.pub" });
    expect(json("key", "id", "jk.pub", "--json")).toEqual({ alg: "ed25519", id: keyGen.id });
    const ed = json("key", "id", "ed.pub", "--json").id;
    const ec = json("key", "id", "ec.pub", "--json").id;
    const rawSize = readFileSync(join(dir, "rootfs.img")).length;
    const manifest = {
      format: 1, compatible: "c", version: "1", serial: 1, created: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/), chunkSize: 65536,
      payloads: [{
        name: "rootfs", kind: "rootfs", encoding: "zstd", stored: { size: expect.any(Number), sha256: hex64 }, raw: { size: rawSize, sha256: sha256(join(dir, "rootfs.img")) },
        chunks: expect.arrayContaining([{ size: expect.any(Number), sha256: hex64 }]),
      }],
    };
    const created = json("image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "rootfs.img", "--key", "ed", "--chunk-size", "65536", "-o", "j.zbi", "--json");
    expect(created).toEqual({ type: "result", ok: true, output: "j.zbi", manifest });
    const m = created.manifest as { payloads: { stored: { size: number }; chunks: unknown[] }[] };
    const signatures = [{ alg: "ed25519", keyId: ed }, { alg: "p256", keyId: ec }];
    expect(json("image", "sign", "j.zbi", "--trust", "trust", "--key", "ec", "-o", "js.zbi", "--json")).toEqual({ type: "result", ok: true, output: "js.zbi", signatures });
    // sign lists the image's signatures, then the new one; the image holds them in key id order.
    const stored = [...signatures].sort((x, y) => (String(x.keyId) < String(y.keyId) ? -1 : 1));
    expect(JSON.parse(zb("image", "info", "js.zbi", "--json").out)).toEqual({ manifest: created.manifest, signatures: stored });
    for (const deep of [false, true]) {
      expect(json("image", "verify", "js.zbi", "--trust", "trust", "--json", ...(deep ? ["--deep"] : []))).toEqual({
        type: "result", ok: true, compatible: "c", version: "1", serial: 1, signedBy: [ed], // only the trusted signer: trust/ holds ed.pub
        payloads: [{ name: "rootfs", chunks: m.payloads[0]!.chunks.length, storedBytes: m.payloads[0]!.stored.size, rawChecked: deep }], seconds: expect.any(Number),
      });
    }
    expect(json("image", "install", "js.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "j.out", "--json")).toEqual({
      type: "result", ok: true, payload: "rootfs", target: "j.out", rawSize, rawSha256: sha256(join(dir, "rootfs.img")), chunks: m.payloads[0]!.chunks.length,
      resumedFrom: 0, alreadyInstalled: false, readBack: null, seconds: expect.any(Number),
    });
  });

  test("--resume of a complete install: \"already installed\" alone (no \"resumed at chunk\"); --json keeps resumedFrom, the chunk count", () => {
    const args = ["image", "install", "js.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "k.out"];
    expect(zb(...args).code).toBe(0);
    const again = zb(...args, "--resume");
    const json = JSON.parse(zb(...args, "--resume", "--json").out) as Record<string, unknown>;
    expect({ code: again.code, out: again.out, json: { already: json.alreadyInstalled, from: json.resumedFrom, chunks: json.chunks } }).toEqual({
      code: 0, out: "zb image install: rootfs → k.out: already installed\n", json: { already: true, from: json.chunks, chunks: expect.any(Number) },
    });
  });

  test.each([
    { name: "trusted and compatible", args: ["--compatible", "acme-pi4", "--serial-floor", "7"], code: 0, err: /^$/ },
    { name: "another product", args: ["--compatible", "acme-pi5"], code: 15, err: /it is for "acme-pi4", this device is "acme-pi5"/ },
    { name: "below the anti-rollback floor", args: ["--serial-floor", "8"], code: 16, err: /serial 7 is below the anti-rollback floor 8/ },
    { name: "two signatures required, one trusted", args: ["--required", "2"], code: 14, err: /found 1 of the 2 trusted signatures required/ },
  ])("verify: $name → exit $code", ({ args, code, err }) => {
    const r = zb("image", "verify", "b.zbi", "--trust", "trust", ...args);
    expect(r.err).toMatch(err);
    expect(r.code).toBe(code);
  });

  test("a flipped payload byte: verify exits 17 naming the chunk", () => {
    const bytes = readFileSync(join(dir, "b.zbi"));
    const at = bytes.length - 1024 * 40;
    bytes[at]! ^= 1;
    writeFileSync(join(dir, "bad.zbi"), bytes);
    const r = zb("image", "verify", "bad.zbi", "--trust", "trust");
    expect(r.code).toBe(17);
    expect(r.err).toMatch(/rootfs: chunk \d+ .* does not match its signed SHA-256/);
  });

  test("install with JSON progress: start, progress…, done, result; byte-identical", () => {
    const r = zb("image", "install", "b.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "slot.img", "--progress=json");
    expect(r.code).toBe(0);
    const events = r.out.trim().split("\n").map((l) => JSON.parse(l));
    expect(events.map((e) => e.type)).toEqual(["start", ...Array(20).fill("progress"), "done", "result"]);
    expect(readFileSync(join(dir, "slot.img")).equals(readFileSync(join(dir, "rootfs.img")))).toBe(true);
    expect(JSON.parse(readFileSync(join(dir, "slot.img.zb-journal"), "utf8"))).toMatchObject({ state: "complete", chunksDone: 20 });
  });

  // Each is refused with its exit status and a plain message (no stack trace), and changes no file.
  test.each([
    { name: "create -o the signing key", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "rootfs.img", "--key", "ed", "-o", "ed"], code: 2, err: /cannot write the image to ed: the file exists and is not a zb image/ },
    { name: "sign -o a trusted public key", argv: ["image", "sign", "a.zbi", "--trust", "trust", "--key", "ed", "-o", "trust/ed.pub"], code: 2, err: /cannot write the image to trust\/ed.pub: the file exists and is not a zb image/ },
    { name: "sign -o - (stdout)", argv: ["image", "sign", "a.zbi", "--trust", "trust", "--key", "ed", "-o", "-"], code: 2, err: /cannot write an image to stdout/ },
    { name: "create -o into a missing folder", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "rootfs.img", "--key", "ed", "-o", "nodir/x.zbi"], code: 5, err: /^zb: cannot create nodir\/x.zbi: no such file or directory\n$/ },
    { name: "create --level 99", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "rootfs.img", "--key", "ed", "--level", "99", "-o", "l.zbi"], code: 2, err: /--level 99 is not a zstd level from 1 to 22/ },
    // Before: "cannot create an image: compatible must be 1 to 128 characters matching /^[A-Za-z0-9._+-]+$/" (and version alike).
    { name: "create --compatible with a space", argv: ["image", "create", "--compatible", "acme pi", "--version", "1", "--serial", "1", "--rootfs", "rootfs.img", "--key", "ed", "-o", "l.zbi"], code: 2, err: /^zb: cannot create an image: --compatible "acme pi" must be 1 to 128 characters, each an ASCII letter, a digit or one of \. _ \+ -\n$/ },
    { name: "create --version with a space", argv: ["image", "create", "--compatible", "c", "--version", "1.2 beta", "--serial", "1", "--rootfs", "rootfs.img", "--key", "ed", "-o", "l.zbi"], code: 2, err: /^zb: cannot create an image: --version "1\.2 beta" must be 1 to 64 printable ASCII characters without spaces\n$/ },
    // Before: 26 s and a 2.9 GB spool, then "46400 chunks of 65536 bytes do not fit in the manifest (at most 4194304 bytes, ~48210 chunks)".
    { name: "create of a 2900 MiB rootfs in 64 KiB chunks, --encoding none: refused before compressing", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "big.img", "--key", "ed", "-o", "l.zbi", "--chunk-size", "65536", "--encoding", "none"], code: 2, err: /^zb: cannot create an image: 46400 chunks of 65536 bytes need a manifest of 4222788 bytes, more than its limit of 4194304\nzb: hint: give --chunk-size 131072 \(it fits\) or larger, up to 67108864\n$/ },
    { name: "create --chunk-size 1000", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "rootfs.img", "--key", "ed", "--chunk-size", "1000", "-o", "l.zbi"], code: 2, err: /^zb: cannot create an image: --chunk-size 1000 is not a power of two from 65536 \(64 KiB\) to 67108864 \(64 MiB\)\n$/ },
    { name: "create --chunk-size 0 (names the flag, not the manifest field)", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "rootfs.img", "--key", "ed", "--chunk-size", "0", "-o", "l.zbi"], code: 2, err: /^zb: cannot create an image: --chunk-size 0 is not a power of two/ },
    { name: "install --to a file in a missing folder: the target's folder is named, not the journal's", argv: ["image", "install", "a.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "/nonexist/t.img"], code: 5, err: /^zb: cannot create the target \/nonexist\/t.img: the folder \/nonexist does not exist\n$/ },
    { name: "verify of two images", argv: ["image", "verify", "a.zbi", "b.zbi", "--trust", "trust"], code: 2, err: /unexpected argument "b.zbi"/ },
    { name: "verify --required 0", argv: ["image", "verify", "a.zbi", "--trust", "trust", "--required", "0"], code: 2, err: /--required 0/ },
    { name: "info with a verify option", argv: ["image", "info", "a.zbi", "--trust", "trust"], code: 2, err: /option --trust does not apply here/ },
    { name: "install --to given twice", argv: ["image", "install", "a.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "z1.img", "--to", "z2.img"], code: 2, err: /option --to is given twice \("z1.img" and "z2.img"\)/ },
    { name: "install --progress=bogus", argv: ["image", "install", "a.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "z1.img", "--progress=bogus"], code: 2, err: /--progress=bogus: it is bar, json or none/ },
    { name: "key gen --alg twice", argv: ["key", "gen", "--alg", "ed25519", "--alg", "p256", "-o", "k2"], code: 2, err: /option --alg is given twice/ },
    { name: "key gen over a dangling .pub link", argv: ["key", "gen", "--alg", "ed25519", "-o", "dl"], code: 2, err: /dl.pub exists already/ },
    { name: "sign --key with a public key (0644): said plainly, no warning about its mode", argv: ["image", "sign", "a.zbi", "--trust", "trust", "--key", "ed.pub", "-o", "l.zbi"], code: 18, err: /^zb: cannot [^\n]*ed\.pub[^\n]*\n(zb: hint: [^\n]*\n)?$/ },
    { name: "create from a boot folder with a file name that is not UTF-8", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--boot", "latin1", "--key", "ed", "-o", "l.zbi"], code: 2, err: /its name is not UTF-8/ },
    // Before: an image that installed nothing, signed (exit 0).
    { name: "create --rootfs of an empty file", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "empty.img", "--key", "ed", "-o", "l.zbi"], code: 2, err: /^zb: cannot create an image: the rootfs file empty.img is empty \(0 bytes\): the image would install nothing\nzb: hint: / },
    // Before: an image whose boot payload put no file into the slot folder (exit 0).
    { name: "create --boot of a folder with no file (only an empty subfolder)", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--boot", "emptyboot", "--key", "ed", "-o", "l.zbi"], code: 2, err: /^zb: cannot create an image: the boot folder emptyboot holds no file: the slot would get no kernel\nzb: hint: / },
    // Before: --level was ignored (exit 0).
    { name: "create --encoding none --level 19", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "rootfs.img", "--encoding", "none", "--level", "19", "--key", "ed", "-o", "l.zbi"], code: 2, err: /^zb: cannot create an image: --level 19 is a zstd level, and --encoding none compresses nothing\n/ },
    // Before: sign added a signature to whatever it was given (exit 0).
    { name: "sign with neither --trust nor --no-verify", argv: ["image", "sign", "a.zbi", "--key", "ec", "-o", "l.zbi"], code: 2, err: /^zb: cannot run zb image sign: give --trust DIR to check the signatures the image has before adding to them \(or --no-verify to skip that check\)\n/ },
    { name: "sign --no-verify --trust", argv: ["image", "sign", "a.zbi", "--no-verify", "--trust", "trust", "--key", "ec", "-o", "l.zbi"], code: 2, err: /--no-verify checks nothing, so --trust has no use/ },
    { name: "sign of an image whose manifest was edited (verify: 14)", argv: ["image", "sign", "edited.zbi", "--trust", "trust", "--key", "ec", "-o", "l.zbi"], code: 14, err: /^zb: cannot verify image signatures: found 0 of the 1 trusted signatures required/ },
    // Before: exit 0, the private key in the boot payload of a signed image (and the rootfs packed twice).
    { name: "create --boot of a folder holding the --key file", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--boot", "keyboot", "--key", "keyboot/ed", "-o", "l.zbi"], code: 2, err: /^zb: cannot create an image: the boot folder keyboot holds the signing key keyboot\/ed \(it would be published in every image\)\nzb: hint: move keyboot\/ed out of keyboot\n$/ },
    { name: "create --boot of a folder holding a hard link to the --key file", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--boot", "keyboot", "--key", "ed", "-o", "l.zbi"], code: 2, err: /^zb: cannot create an image: the boot folder keyboot holds the signing key keyboot\/ed \(--key ed\) \(it would be published in every image\)\n/ },
    { name: "create --boot of a folder holding a private key that is no --key", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--boot", "pemboot", "--key", "ed", "-o", "l.zbi"], code: 2, err: /^zb: cannot create an image: the boot folder pemboot holds a private key, pemboot\/overlays\/ec\.pem \(it would be published in every image\)\n/ },
    { name: "create --rootfs of a file inside the --boot folder", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--boot", "rootboot", "--rootfs", "rootboot/rootfs.img", "--key", "ed", "-o", "l.zbi"], code: 2, err: /^zb: cannot create an image: the boot folder rootboot holds the rootfs file rootboot\/rootfs.img \(it would be packed into the boot payload too\)\n/ },
    // Before: exit 0; create deleted the rootfs and signed an image of an empty one (0 → 0 bytes), sign deleted its input.
    { name: "create --rootfs of a file named as the output's spool file", argv: ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "tmpname/.l.zbi.rootfs.zb-spool", "--key", "ed", "-o", "tmpname/l.zbi"], code: 2, err: /^zb: cannot create tmpname\/l.zbi: the rootfs file tmpname\/.l.zbi.rootfs.zb-spool has the name of a temp file of this output, which zb deletes before writing it\nzb: hint: rename tmpname\/.l.zbi.rootfs.zb-spool, or write the image to another path\n$/ },
    { name: "sign of an image named as the output's temp file", argv: ["image", "sign", "tmpname/.l.zbi.zb-new", "--trust", "trust", "--key", "ec", "-o", "tmpname/l.zbi"], code: 2, err: /^zb: cannot sign tmpname\/l.zbi: the input image tmpname\/.l.zbi.zb-new has the name of a temp file of this output, which zb deletes before writing it\n/ },
  ])("$name → exit $code, nothing changed", ({ argv, code, err }) => {
    if (!existsSync(join(dir, "latin1"))) {
      mkdirSync(join(dir, "latin1"));
      writeFileSync(Buffer.concat([Buffer.from(join(dir, "latin1/")), Buffer.from([0xe9, 0x74, 0xe9])]), "x");
      symlinkSync(join(dir, "nowhere.pub"), join(dir, "dl.pub"));
      writeFileSync(join(dir, "empty.img"), "");
      writeFileSync(join(dir, "big.img"), "");
      truncateSync(join(dir, "big.img"), 2900 * 2 ** 20); // sparse
      mkdirSync(join(dir, "emptyboot/overlays"), { recursive: true });
      writeFileSync(join(dir, "edited.zbi"), editedManifest(readFileSync(join(dir, "a.zbi"))));
      for (const b of ["keyboot", "pemboot/overlays", "rootboot"]) mkdirSync(join(dir, b), { recursive: true });
      for (const b of ["keyboot", "pemboot", "rootboot"]) writeFileSync(join(dir, b, "vmlinuz"), "kernel");
      linkSync(join(dir, "ed"), join(dir, "keyboot/ed"));
      copyFileSync(join(dir, "ec"), join(dir, "pemboot/overlays/ec.pem"));
      linkSync(join(dir, "rootfs.img"), join(dir, "rootboot/rootfs.img"));
      mkdirSync(join(dir, "tmpname"));
      copyFileSync(join(dir, "rootfs.img"), join(dir, "tmpname/.l.zbi.rootfs.zb-spool"));
      copyFileSync(join(dir, "a.zbi"), join(dir, "tmpname/.l.zbi.zb-new"));
    }
    const snapshot = () => Object.fromEntries(["ed", "trust/ed.pub", "a.zbi", "rootfs.img", "tmpname/.l.zbi.rootfs.zb-spool", "tmpname/.l.zbi.zb-new"].map((f) => [f, sha256(join(dir, f))]));
    const before = snapshot();
    const r = zb(...argv);
    expect(r.err).toMatch(err);
    expect(r.err).not.toContain("    at ");
    expect(r.code).toBe(code);
    expect(snapshot()).toEqual(before);
    for (const f of ["l.zbi", "tmpname/l.zbi", "z1.img", "z2.img", "k2", "dl", "nowhere.pub"]) expect(existsSync(join(dir, f))).toBe(false);
  });

  test("--json: a failure ends stdout with a result line naming the code", () => {
    const r = zb("image", "verify", "a.zbi", "--trust", "trust", "--required", "2", "--json");
    expect(r.code).toBe(14);
    expect(JSON.parse(r.out.trim().split("\n").at(-1)!)).toMatchObject({ type: "result", ok: false, code: "SIG_INVALID", exit: 14 });
    const i = zb("image", "install", "bad.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "slot-bad.img", "--progress=json");
    expect(i.code).toBe(17);
    const events = i.out.trim().split("\n").map((l) => JSON.parse(l));
    expect(events.at(-1)).toMatchObject({ type: "result", ok: false, code: "PAYLOAD_CORRUPT", exit: 17 });
    expect(events[0].type).toBe("start");
  });

  test("create --progress=json: each event gives the payload's raw size up front (rawTotal), the last reaches it", () => {
    const r = zb("image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "rootfs.img", "--boot", "boot", "--key", "ed", "--chunk-size", "65536", "--progress=json", "-o", "p.zbi");
    expect(r.code).toBe(0);
    const lines = r.out.trim().split("\n").map((l) => JSON.parse(l) as { type: string; payload: string; rawBytes: number; rawTotal: number; ok?: boolean; output?: string });
    // The stream is newline-delimited JSON to its end: the last line is the result.
    expect(lines.at(-1)).toMatchObject({ type: "result", ok: true, output: "p.zbi" });
    const events = lines.slice(0, -1);
    const size = Object.fromEntries((JSON.parse(zb("image", "info", "p.zbi", "--json").out).manifest.payloads as { name: string; raw: { size: number } }[]).map((p) => [p.name, p.raw.size]));
    expect(events.every((e) => e.type === "progress" && e.rawTotal === size[e.payload] && e.rawBytes <= e.rawTotal)).toBe(true);
    expect(["boot", "rootfs"].map((n) => events.filter((e) => e.payload === n).at(-1))).toEqual(["boot", "rootfs"].map((n) => ({ type: "progress", payload: n, rawBytes: size[n]!, rawTotal: size[n]! })));
  });

  test("install from stdin, and the boot payload", () => {
    const p = Bun.spawnSync(["sh", "-c", `${BIN} image install - --trust trust --payload boot --to boot.tar < b.zbi`], { cwd: dir });
    expect(p.exitCode).toBe(0);
    expect(sh(["tar", "-tf", "boot.tar"]).stdout.toString()).toBe("overlays/\noverlays/README\nvmlinuz\n");
  });
});

describe("edges of the engine, end to end", () => {
  test("create from a --boot folder with a subfolder that can be listed but not entered: IO naming the entry (before: exit 70, a stack trace)", async () => {
    const { encodePrivatePem, privateKeyFromSecret } = await import("../../lib/image/keys.ts");
    // As root, zb runs as nobody (root enters any folder); the binary is copied in, the clone may sit where nobody cannot go.
    const asRoot = process.getuid?.() === 0;
    const d = mkdtempSync(join(tmpdir(), "zb-imgcli-noexec-"));
    try {
      chmodSync(d, 0o755);
      mkdirSync(join(d, "boot/sub"), { recursive: true });
      writeFileSync(join(d, "boot/kernel8.img"), "kernel");
      writeFileSync(join(d, "boot/sub/f.dtb"), "dtb");
      writeFileSync(join(d, "k"), encodePrivatePem(privateKeyFromSecret("ed25519", new Uint8Array(32).fill(9))), { mode: 0o600 });
      if (asRoot) {
        copyFileSync(BIN, join(d, "zb"));
        for (const f of ["", "boot", "boot/kernel8.img", "boot/sub", "boot/sub/f.dtb", "k"]) chownSync(join(d, f), 65534, 65534);
      }
      chmodSync(join(d, "boot/sub"), 0o444); // readdir works, lstat of its entries does not
      const argv = ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--boot", "boot", "--key", "k", "-o", "o.zbi"];
      const p = Bun.spawnSync(asRoot ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "./zb", ...argv] : [BIN, ...argv], { cwd: d });
      expect({ code: p.exitCode, err: p.stderr.toString(), files: readdirSync(d).sort() }).toEqual({
        code: 5, err: "zb: cannot read boot folder entry boot/sub/f.dtb: permission denied\n", files: ["boot", "k", ...(asRoot ? ["zb"] : [])],
      });
    } finally {
      chmodSync(join(d, "boot/sub"), 0o755);
      rmSync(d, { recursive: true, force: true });
    }
  });

  const rootfsSha = () => sha256(join(dir, "rootfs.img"));

  test("two installs into one file: the second, while the first writes, exits 25 and touches nothing; the first completes", async () => {
    const image = readFileSync(join(dir, "a.zbi"));
    const journal = join(dir, "cc.out.zb-journal");
    // The first reads the image from a pipe that stalls half-way (a slow download).
    const first = Bun.spawn([BIN, "image", "install", "-", "--trust", "trust", "--payload", "rootfs", "--to", "cc.out"], { cwd: dir, stdin: "pipe", stdout: "pipe", stderr: "pipe" });
    first.stdin.write(image.subarray(0, image.length >> 1));
    await first.stdin.flush();
    const started = () => existsSync(journal) && JSON.parse(readFileSync(journal, "utf8")).dataOffset !== null;
    for (let i = 0; i < 1000 && !started(); i++) await Bun.sleep(10);
    const journalThen = readFileSync(journal, "utf8");
    const second = zb("image", "install", "a.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "cc.out");
    const journalAfter = readFileSync(journal, "utf8");
    first.stdin.write(image.subarray(image.length >> 1));
    await first.stdin.end();
    expect({
      second: { code: second.code, err: second.err.split("\n")[0], journal: journalAfter === journalThen },
      first: await first.exited, target: sha256(join(dir, "cc.out")) === rootfsSha(), state: JSON.parse(readFileSync(journal, "utf8")).state,
    }).toEqual({
      second: { code: 25, err: `zb: cannot install into cc.out: another install is writing it`, journal: true },
      first: 0, target: true, state: "complete",
    });
  });

  test("--resume of the same image re-signed since (sign keeps the manifest, the payloads move): continues at the journal's chunk, byte-identical", () => {
    expect(zb("key", "gen", "--alg", "ed25519", "-o", "rs3").code).toBe(0);
    // Two more signatures: the signatures entry grows past a block, so every payload starts later.
    expect(zb("image", "sign", "a.zbi", "--trust", "trust", "--key", "ec", "--key", "rs3", "-o", "resigned.zbi").code).toBe(0);
    const rootfsBlock = (image: string) => /^block (\d+): .* rootfs$/m.exec(sh(["tar", "--block-number", "-tvf", image]).stdout.toString())?.[1];
    expect(Number(rootfsBlock("resigned.zbi"))).toBeGreaterThan(Number(rootfsBlock("a.zbi")));
    expect(zb("image", "install", "a.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "rs.img").code).toBe(0);
    // What a power cut after chunk 10 was made durable leaves behind: 10 chunks on the target, the journal at 10.
    const journal = join(dir, "rs.img.zb-journal");
    writeFileSync(journal, JSON.stringify({ ...JSON.parse(readFileSync(journal, "utf8")), state: "writing", chunksDone: 10 }));
    writeFileSync(join(dir, "rs.img"), readFileSync(join(dir, "rs.img")).subarray(0, 10 * 65536));
    const r = zb("image", "install", "resigned.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "rs.img", "--resume", "--json");
    expect({ code: r.code, err: r.err, resumedFrom: r.code === 0 ? JSON.parse(r.out).resumedFrom : null }).toEqual({ code: 0, err: "", resumedFrom: 10 });
    expect(sha256(join(dir, "rs.img"))).toBe(rootfsSha());
    expect(JSON.parse(readFileSync(journal, "utf8")).state).toBe("complete");
  });

  test("a block device whose node is not the kernel's name (mknod, a container's --device=/dev/sdb3:/dev/slot-b): installed, exit 0", () => {
    writeFileSync(join(dir, "slot-b.backing"), new Uint8Array(2 << 20));
    const r = sh(["losetup", "--find", "--show", "slot-b.backing"]);
    const loop = r.stdout.toString().trim();
    expect({ exit: r.exitCode, loop: loop.startsWith("/dev/loop") }).toEqual({ exit: 0, loop: true });
    try {
      // stat(1): the device's major and minor in hex.
      const [major, minor] = sh(["stat", "-c", "%t %T", loop]).stdout.toString().trim().split(" ").map((x) => String(parseInt(x, 16)));
      expect(sh(["mknod", "slot-b", "b", major!, minor!]).exitCode).toBe(0);
      const run = zb("image", "install", "a.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "slot-b", "--journal", "slot-b.zb-journal");
      expect({ code: run.code, err: run.err }).toEqual({ code: 0, err: "" });
      const raw = readFileSync(join(dir, "rootfs.img"));
      expect(Buffer.compare(readFileSync(loop).subarray(0, raw.length), raw)).toBe(0);
    } finally {
      sh(["losetup", "-d", loop]);
    }
  });

  test("--to a device that is not there (/dev/NAME, a typo for /dev/sdb3): exit 5 'no such device', nothing created in /dev", () => {
    const name = `zb-test-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
    const left = () => readdirSync("/dev").filter((n) => n.includes(name));
    try {
      const r = zb("image", "install", "a.zbi", "--trust", "trust", "--payload", "rootfs", "--to", `/dev/${name}`);
      expect({ code: r.code, err: r.err, out: r.out, left: left() }).toEqual({
        code: 5, out: "", left: [],
        err: `zb: cannot install into /dev/${name}: no such device (zb creates only file targets, never under /dev)\nzb: hint: check the device's name (lsblk lists the block devices); a file target belongs outside /dev\n`,
      });
    } finally {
      for (const n of left()) rmSync(join("/dev", n), { force: true }); // what an old zb left: the target, its journal
    }
  });

  test("more than 16 signatures: create and sign (in place too) exit 2 before writing anything", async () => {
    const { encodePrivatePem, privateKeyFromSecret } = await import("../../lib/image/keys.ts");
    const keys = Array.from({ length: 17 }, (_, i) => {
      const name = `many${i}.key`;
      writeFileSync(join(dir, name), encodePrivatePem(privateKeyFromSecret("ed25519", new Uint8Array(32).fill(200 + i))), { mode: 0o600 });
      return ["--key", name];
    });
    copyFileSync(join(dir, "a.zbi"), join(dir, "inplace.zbi")); // signed by ed alone
    const files = () => readdirSync(dir).filter((f) => f.startsWith(".") || f.startsWith("o17")).sort();
    const create = zb("image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "rootfs.img", ...keys.flat(), "-o", "o17.zbi");
    const signed = zb("image", "sign", "inplace.zbi", "--trust", "trust", ...keys.slice(0, 16).flat(), "-o", "inplace.zbi");
    expect({ create: [create.code, create.err.split("\n")[0]], sign: [signed.code, signed.err.split("\n")[0]], files: files(), same: sha256(join(dir, "inplace.zbi")) === sha256(join(dir, "a.zbi")) }).toEqual({
      create: [2, "zb: cannot create o17.zbi: 17 signatures, more than the 16 an image can carry (readers refuse more)"],
      sign: [2, "zb: cannot sign inplace.zbi: 17 signatures, more than the 16 an image can carry (readers refuse more)"],
      files: [], same: true,
    });
    // 15 new keys and ed: 16, which every reader takes.
    expect(zb("image", "sign", "inplace.zbi", "--trust", "trust", ...keys.slice(0, 15).flat(), "-o", "inplace.zbi").code).toBe(0);
    expect(JSON.parse(zb("image", "info", "inplace.zbi", "--json").out).signatures.length).toBe(16);
    expect(zb("image", "verify", "inplace.zbi", "--trust", "trust").code).toBe(0);
  });

  test("an image from a FIFO: install <(cat a.zbi), and info /dev/stdin on a pipe", () => {
    const install = Bun.spawnSync(["bash", "-c", `"$0" image install <(cat a.zbi) --trust trust --payload rootfs --to fifo.out`, BIN], { cwd: dir });
    const info = Bun.spawnSync(["bash", "-c", `cat a.zbi | "$0" image info /dev/stdin --json`, BIN], { cwd: dir });
    expect({ install: [install.exitCode, install.stderr.toString()], info: [info.exitCode, info.stderr.toString(), JSON.parse(info.stdout.toString() || "{}").manifest?.compatible] }).toEqual({
      install: [0, ""], info: [0, "", "acme-pi4"],
    });
    expect(sha256(join(dir, "fifo.out"))).toBe(rootfsSha());
  });

  test("install - < IMAGE reads stdin as that file: an install into the image itself is refused (exit 2), the image left whole", () => {
    // Before, stdin was a stream whatever it was: nothing tied it to a file, and the install wrote its payload over the image it read.
    copyFileSync(join(dir, "a.zbi"), join(dir, "self.zbi"));
    const before = sha256(join(dir, "self.zbi"));
    const r = Bun.spawnSync(["bash", "-c", `"$0" image install - --trust trust --payload rootfs --to self.zbi --journal self.journal < self.zbi`, BIN], { cwd: dir });
    expect({ code: r.exitCode, err: r.stderr.toString(), image: sha256(join(dir, "self.zbi")), journal: existsSync(join(dir, "self.journal")) }).toEqual({
      code: 2, err: expect.stringMatching(/the target \(self\.zbi\) and the image \(\/proc\/self\/fd\/0\) are the same file/), image: before, journal: false,
    });
  });

  test("an image followed by /dev/zero: exit 13, not read for ever", () => {
    // timeout(1): a reader that goes on for ever (the defect) is killed (exit 124), and cat with it (SIGPIPE).
    const r = Bun.spawnSync(["bash", "-c", `(cat a.zbi; cat /dev/zero) | timeout 60 "$0" image verify - --trust trust`, BIN], { cwd: dir });
    expect({ code: r.exitCode, err: r.stderr.toString() }).toEqual({
      code: 13, err: "zb: cannot read the image: more than 65536 bytes of zeros follow the last payload (an archive's end blocks and padding are fewer)\n",
    });
  });

  test("/dev/zero is no image, said the same by info and verify (before: info blamed zeros after 'the last payload')", () => {
    const said = ["info /dev/zero", "verify /dev/zero --trust trust"].map((c) => zb("image", ...c.split(" "))).map((r) => ({ code: r.code, err: r.err }));
    expect(said).toEqual(Array(2).fill({ code: 13, err: "zb: cannot read the image: it is not a zb image: it holds no entry, only zeros\n" }));
  });

  // Before: an archive that "ends where zbi-format should follow" (exit 13), or "EBADF: bad file descriptor, pread" (exit 5).
  test.each([
    { cmd: "install", stdin: "<&- (closed)", why: "it is closed or /dev/null, so there is no image to read" },
    { cmd: "verify", stdin: "<&- (closed)", why: "it is closed or /dev/null, so there is no image to read" },
    { cmd: "verify", stdin: "</dev/null", why: "it is closed or /dev/null, so there is no image to read" },
    { cmd: "install", stdin: "0>FILE (open for writing only)", why: "it is not open for reading" },
    { cmd: "verify", stdin: "0>FILE (open for writing only)", why: "it is not open for reading" },
  ])("$cmd - with stdin $stdin: IO (exit 5) saying so, not an image-format error; no target or journal made", ({ cmd, stdin, why }) => {
    const redirect = stdin.split(" ")[0]!.replace("FILE", "wronly.txt");
    const args = cmd === "install" ? "--payload rootfs --to nostdin.img" : "";
    const p = Bun.spawnSync(["bash", "-c", `exec "$0" image ${cmd} - --trust trust ${args} --json ${redirect}`, BIN], { cwd: dir });
    expect({ code: p.exitCode, err: p.stderr.toString().split("\n")[0], last: JSON.parse(p.stdout.toString().trim().split("\n").at(-1) ?? "{}"), made: ["nostdin.img", "nostdin.img.zb-journal"].filter((f) => existsSync(join(dir, f))) }).toEqual({
      code: 5, err: `zb: cannot read the image from stdin: ${why}`, last: expect.objectContaining({ type: "result", ok: false, code: "IO", exit: 5 }), made: [],
    });
  });

  // Before: zb waited on the terminal for an image no one types. script(1) (util-linux's bsdutils,
  // essential) gives zb a pseudo-terminal as stdin; its own stdin is a pipe left open, so nothing
  // ends the terminal's input. A zb still running after HANG_MS is killed and counted as hanging.
  const HANG_MS = 30_000;
  // The same through a path naming the terminal: /dev/stdin (and /dev/fd/0, /dev/tty) while stdin is one.
  test.each([
    { cmd: "install", src: "-", args: "--trust trust --payload rootfs --to tty.img" },
    { cmd: "verify", src: "-", args: "--trust trust" },
    { cmd: "info", src: "-", args: "" },
    { cmd: "sign", src: "-", args: "--trust trust --key ed -o tty.zbi" },
    { cmd: "install", src: "/dev/stdin", args: "--trust trust --payload rootfs --to tty.img" },
    { cmd: "verify", src: "/dev/stdin", args: "--trust trust" },
    { cmd: "info", src: "/dev/fd/0", args: "" },
    { cmd: "sign", src: "/dev/tty", args: "--trust trust --key ed -o tty.zbi" },
  ])("$cmd $src with stdin on a terminal: IO (exit 5) at once, not a wait for typed bytes; nothing made", async ({ cmd, src, args }) => {
    const line = `exec "${BIN}" image ${cmd} ${src} ${args} --json >tty.out 2>tty.err`;
    const p = Bun.spawn(["script", "-qec", line, "/dev/null"], { cwd: dir, env: { ...process.env, SHELL: "/bin/sh" }, stdin: "pipe", stdout: "ignore", stderr: "ignore" });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const hung = new Promise<"hung">((done) => (timer = setTimeout(() => done("hung"), HANG_MS)));
    const code = await Promise.race([p.exited, hung]);
    clearTimeout(timer);
    if (code === "hung") {
      p.kill("SIGKILL"); // the terminal's master closes with it: zb gets SIGHUP
      await p.exited;
    }
    p.stdin.end();
    const read = (f: string) => (existsSync(join(dir, f)) ? readFileSync(join(dir, f), "utf8") : "");
    const message = `cannot read ${src === "-" ? "the image from stdin" : `image ${src}`}: it is a terminal (pipe the image in, or give a file or URL)`;
    expect({ code, err: read("tty.err").split("\n")[0], last: JSON.parse(read("tty.out").trim().split("\n").at(-1) || "{}"), made: ["tty.img", "tty.img.zb-journal", "tty.zbi"].filter((f) => existsSync(join(dir, f))) }).toEqual({
      code: 5, err: `zb: ${message}`, last: expect.objectContaining({ type: "result", ok: false, code: "IO", exit: 5, message }), made: [],
    });
  });

  test("key files: /dev/zero is refused after 64 KiB (exit 18), a key from <(…) is read; a trust dir with a dangling .pub link fails closed", () => {
    const run = (...args: string[]) => {
      const p = Bun.spawnSync([BIN, ...args], { cwd: dir, timeout: 20_000 });
      return [p.exitCode, p.stderr.toString()];
    };
    const piped = Bun.spawnSync(["bash", "-c", `"$0" key id <(cat ed.pub)`, BIN], { cwd: dir });
    mkdirSync(join(dir, "trust-dangling"));
    copyFileSync(join(dir, "ed.pub"), join(dir, "trust-dangling/ed.pub"));
    symlinkSync(join(dir, "gone.pub"), join(dir, "trust-dangling/old.pub"));
    const dangling = zb("image", "verify", "a.zbi", "--trust", "trust-dangling");
    expect({
      zero: run("key", "id", "/dev/zero"), signZero: run("image", "sign", "a.zbi", "--trust", "trust", "--key", "/dev/zero", "-o", "z.zbi"), piped: [piped.exitCode, piped.stdout.toString()],
      dangling: [dangling.code, dangling.err.split("\n")[0]],
    }).toEqual({
      zero: [18, "zb: cannot read key /dev/zero: larger than 65536 bytes (is it the right file?)\n"],
      signZero: [18, "zb: cannot read key /dev/zero: larger than 65536 bytes (is it the right file?)\n"],
      piped: [0, zb("key", "id", "ed.pub").out],
      dangling: [18, `zb: cannot read key trust-dangling/old.pub: it does not exist (a symbolic link to nothing)`],
    });
    expect(existsSync(join(dir, "z.zbi"))).toBe(false);
  });
});

describe("the command line itself", () => {
  // Each subcommand's --help names every option it takes (stages/zb/image.ts TAKES).
  const takes = {
    create: ["--compatible", "--version", "--serial", "--rootfs", "--boot", "--key", "-o", "--encoding", "--level", "--chunk-size", "--progress", "--json"],
    sign: ["--key", "-o", "--trust", "--no-verify", "--required", "--compatible", "--serial-floor", "--json", "--timeout", "--min-speed", "--retries"],
    info: ["--json", "--timeout", "--min-speed", "--retries"],
    verify: ["--trust", "--required", "--compatible", "--serial-floor", "--deep", "--progress", "--json", "--timeout", "--min-speed", "--retries"],
    install: ["--trust", "--required", "--compatible", "--serial-floor", "--payload", "--to", "--journal", "--resume", "--read-back", "--progress", "--json", "--timeout", "--min-speed", "--retries"],
  };
  test("zb image SUB --help names every option SUB takes", () => {
    const missing = Object.entries(takes).map(([sub, options]) => {
      const r = zb("image", sub, "--help");
      return [sub, r.code, options.filter((o) => !new RegExp(`(^|[\\s\\[|])${o}[\\s=\\]]`).test(r.out))];
    });
    expect(missing).toEqual(Object.keys(takes).map((sub) => [sub, 0, []]));
  });

  // As `zb env`: no subcommand is USAGE with the usage on stderr and a `zb: cannot …` line; an
  // unknown one says so with a hint (also with --help); stdout stays empty. --help alone: usage on stdout, exit 0.
  test("zb image and zb key without a subcommand or with an unknown one: exit 2, a `zb: cannot` line, nothing on stdout", () => {
    const rows = [
      { argv: ["image"], code: 2, err: /usage:[\s\S]*zb image install[\s\S]*\nzb: cannot run zb image: no subcommand given \(create, sign, info, verify, install\)\n$/ },
      { argv: ["image", "bogus"], code: 2, err: /^zb: cannot run zb image: unknown subcommand "bogus"\nzb: hint: see `zb image --help`\n$/ },
      { argv: ["key"], code: 2, err: /usage: zb key gen[\s\S]*\nzb: cannot run zb key: no subcommand given \(gen or id\)\n$/ },
      { argv: ["key", "bogus"], code: 2, err: /^zb: cannot run zb key: unknown subcommand "bogus"\nzb: hint: see `zb key --help`\n$/ },
      { argv: ["key", "bogus", "--help"], code: 2, err: /^zb: cannot run zb key: unknown subcommand "bogus"/ },
      { argv: ["image", "--help"], code: 0, out: /^usage:\n/, err: /^$/ },
      { argv: ["key", "--help"], code: 0, out: /^usage: zb key gen/, err: /^$/ },
      { argv: ["key", "gen", "--help"], code: 0, out: /^usage: zb key gen/, err: /^$/ },
    ];
    const got = rows.map((row) => {
      const r = zb(...row.argv);
      return { argv: row.argv.join(" "), code: r.code, out: (row.out ?? /^$/).test(r.out) ? "ok" : r.out, err: row.err.test(r.err) ? "ok" : r.err };
    });
    expect(got).toEqual(rows.map((r) => ({ argv: r.argv.join(" "), code: r.code, out: "ok", err: "ok" })));
  });
});

describe("a full disk (a small tmpfs): exit 5, one plain line, nothing left behind", () => {
  const smallDisk = tmpfsMounts();
  const noise = () => {
    if (!existsSync(join(dir, "noise.img"))) writeFileSync(join(dir, "noise.img"), variedBytes(3 << 20, 9, 1));
    return "noise.img";
  };
  test.each([
    { what: "image create: the spool does not fit", size: "size=1m", argv: (d: string) => ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", noise(), "--key", "ed", "-o", `${d}/o.zbi`], says: (d: string) => `zb: cannot write ${d}/o.zbi: no space left on device\n` },
    { what: "image create: the image does not fit", size: "size=5m", argv: (d: string) => ["image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", noise(), "--key", "ed", "-o", `${d}/o.zbi`], says: (d: string) => `zb: cannot write ${d}/o.zbi: no space left on device\n` },
    { what: "image sign", size: "size=1m", argv: (d: string) => {
      if (!existsSync(join(dir, "big.zbi"))) expect(zb("image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", noise(), "--key", "ed", "-o", "big.zbi").code).toBe(0);
      return ["image", "sign", "big.zbi", "--trust", "trust", "--key", "ec", "-o", `${d}/x.zbi`];
    }, says: (d: string) => `zb: cannot write ${d}/x.zbi: no space left on device\n` },
    { what: "key gen: no room for the private key's bytes (it was created empty)", size: "size=4k", fill: 4096, argv: (d: string) => ["key", "gen", "--alg", "ed25519", "-o", `${d}/k`], says: (d: string) => `zb: cannot write key ${d}/k: no space left on device\n` },
    { what: "key gen: no inode for the .pub (the private key was written)", size: "size=1m,nr_inodes=2", argv: (d: string) => ["key", "gen", "--alg", "p256", "-o", `${d}/k`], says: (d: string) => `zb: cannot write key ${d}/k: no space left on device\n` },
  ])("$what", ({ size, fill, argv, says }) => {
    const d = smallDisk(size);
    const before = fill ? (writeFileSync(join(d, "fill"), new Uint8Array(fill)), ["fill"]) : [];
    const r = zb(...argv(d));
    expect({ code: r.code, err: r.err, left: readdirSync(d).sort() }).toEqual({ code: 5, err: says(d), left: before });
  });

  test("key gen after a full disk was freed: the retry works (no empty key left in the way)", () => {
    const d = smallDisk("size=8k");
    writeFileSync(join(d, "fill"), new Uint8Array(8192));
    expect(zb("key", "gen", "--alg", "ed25519", "-o", `${d}/k`).code).toBe(5);
    rmSync(join(d, "fill"));
    expect(zb("key", "gen", "--alg", "ed25519", "-o", `${d}/k`).code).toBe(0);
    expect(readdirSync(d).sort()).toEqual(["k", "k.pub"]);
  });
});

describe("sign checks the signatures the image has before it adds one", () => {
  // Before: `sign edited.zbi --key ec` succeeded, and the edit then verified with ec's public key alone.
  test("an image whose manifest was edited: sign --trust fails as verify does (exit, message); --no-verify signs it, and the edit verifies with the new key alone", () => {
    writeFileSync(join(dir, "edited.zbi"), editedManifest(readFileSync(join(dir, "a.zbi"))));
    mkdirSync(join(dir, "trust-ec"), { recursive: true });
    copyFileSync(join(dir, "ec.pub"), join(dir, "trust-ec/ec.pub"));
    const verify = zb("image", "verify", "edited.zbi", "--trust", "trust");
    const sign = zb("image", "sign", "edited.zbi", "--trust", "trust", "--key", "ec", "-o", "edited-signed.zbi", "--json");
    const escape = zb("image", "sign", "edited.zbi", "--no-verify", "--key", "ec", "-o", "edited-anyway.zbi");
    expect({
      verify: verify.code, sign: sign.code, same: sign.err.split("\n")[0] === verify.err.split("\n")[0],
      hint: sign.err.split("\n")[1], last: JSON.parse(sign.out.trim().split("\n").at(-1) ?? "{}").code, made: existsSync(join(dir, "edited-signed.zbi")),
      escape: escape.code, anyway: zb("image", "verify", "edited-anyway.zbi", "--trust", "trust-ec").code,
    }).toEqual({
      verify: 14, sign: 14, same: true,
      hint: "zb: hint: zb image sign adds to signatures that verify: give --trust the folder with the public keys of the keys that signed it; an image changed since it was signed must be created anew (zb image create)",
      last: "SIG_INVALID", made: false, escape: 0, anyway: 0,
    });
  });

  test("the policy options apply as in verify: --required 2 of one trusted signature is 14, --compatible of another product 15", () => {
    const rows = [
      { args: ["--required", "2"], code: 14 },
      { args: ["--compatible", "acme-pi5"], code: 15 },
      { args: ["--serial-floor", "8"], code: 16 },
      { args: ["--compatible", "acme-pi4", "--serial-floor", "7"], code: 0 },
    ];
    const got = rows.map((r) => [zb("image", "verify", "a.zbi", "--trust", "trust", ...r.args).code, zb("image", "sign", "a.zbi", "--trust", "trust", ...r.args, "--key", "ec", "-o", "policy.zbi").code]);
    expect(got).toEqual(rows.map((r) => [r.code, r.code]));
  });
});

describe("the install journal", () => {
  // Before: exit 5, "cannot read install journal emptyj: JSON Parse error: Unexpected EOF", also without --resume.
  test("an empty journal file: a fresh install writes it; --resume says it is empty, naming it, with a hint", () => {
    writeFileSync(join(dir, "emptyj"), "");
    const resume = zb("image", "install", "a.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "s7.img", "--journal", "emptyj", "--resume");
    const made = existsSync(join(dir, "s7.img"));
    const fresh = zb("image", "install", "a.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "s7.img", "--journal", "emptyj");
    expect({ resume: [resume.code, resume.err], made, fresh: fresh.code, state: JSON.parse(readFileSync(join(dir, "emptyj"), "utf8")).state, same: sha256(join(dir, "s7.img")) === sha256(join(dir, "rootfs.img")) }).toEqual({
      resume: [5, "zb: cannot read install journal emptyj: it is empty\nzb: hint: there is nothing to resume from: remove emptyj or install without --resume (the install then starts from chunk 0)\n"],
      made: false, fresh: 0, state: "complete", same: true,
    });
  });

  test("a --journal that names a file with other content: refused (exit 2), the file kept", () => {
    writeFileSync(join(dir, "notes.txt"), "not a journal\n");
    const r = zb("image", "install", "a.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "s8.img", "--journal", "notes.txt");
    expect({ code: r.code, err: r.err, kept: readFileSync(join(dir, "notes.txt"), "utf8"), made: existsSync(join(dir, "s8.img")) }).toEqual({
      code: 2,
      err: "zb: cannot use notes.txt as the install journal: it is not a zb journal (not JSON), and an install replaces its journal\nzb: hint: give --journal a new file or a journal's path; remove notes.txt first if it is a broken journal\n",
      kept: "not a journal\n", made: false,
    });
  });
});

describe("what the commands print", () => {
  test("one chunk is \"1 chunk\" (info, verify), one signature \"1 signature\" (sign)", () => {
    writeFileSync(join(dir, "small.img"), variedBytes(100_000, 3));
    expect(zb("image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "small.img", "--key", "ed", "-o", "small.zbi").code).toBe(0);
    const info = zb("image", "info", "small.zbi").out.split("\n").find((l) => l.startsWith("payload:")) ?? "";
    const verify = zb("image", "verify", "small.zbi", "--trust", "trust").out;
    const sign = zb("image", "sign", "small.zbi", "--trust", "trust", "--key", "ed", "-o", "small2.zbi").out;
    expect({ info: info.replace(/raw sha256 \w+/, "raw sha256 H").replace(/\d+ stored/, "N stored"), verify: verify.replace(/signed by \w+/, "signed by K"), sign }).toEqual({
      info: "payload:    rootfs (rootfs, zstd): 100000 bytes raw, N stored, 1 chunk, raw sha256 H",
      verify: "zb image verify: small.zbi: OK: c 1 serial 1, signed by K; rootfs 1 chunk\n",
      sign: "zb image sign: small2.zbi: 1 signature\n",
    });
  });

  // Before: "0.00/0.00 GiB 0 MB/s".
  test("the progress bar of a 100 kB install reads KiB, and shows no rate it has not measured", () => {
    const r = zb("image", "install", "small.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "small.out", "--progress=bar");
    const last = r.err.split("\r").at(-1) ?? "";
    expect({ code: r.code, last }).toEqual({ code: 0, last: expect.stringMatching(/^install rootfs \[#{30}\] 100% 97\.7\/97\.7 KiB {2,}(\d+ [kMG]B\/s)? \n$/) });
  });

  // Before: "zb: cannot read the image: is a directory" (which?), for every command.
  test.each([
    { cmd: "info", args: [] },
    { cmd: "verify", args: ["--trust", "trust"] },
    { cmd: "install", args: ["--trust", "trust", "--payload", "rootfs", "--to", "dir.img"] },
    { cmd: "sign", args: ["--trust", "trust", "--key", "ed", "-o", "dir.zbi"] },
  ])("image $cmd of a folder names it (exit 5)", ({ cmd, args }) => {
    const r = zb("image", cmd, "boot", ...args);
    expect({ code: r.code, err: r.err.split("\n")[0], made: ["dir.img", "dir.img.zb-journal", "dir.zbi"].filter((f) => existsSync(join(dir, f))) }).toEqual({
      code: 5, err: "zb: cannot read image boot: it is a directory", made: [],
    });
  });

  // Before: read as a local path, "cannot read image file:///…: no such file" (exit 5) for a file that exists.
  test.each([
    { name: "file:// of a file that exists", spec: () => `file://${join(dir, "rootfs.img")}`, shown: () => `file://${join(dir, "rootfs.img")}` },
    { name: "ftp://, its password left out", spec: () => "ftp://u:pw@127.0.0.1/x.zbi", shown: () => "ftp://127.0.0.1/x.zbi" },
    { name: "s3://, its query left out", spec: () => "s3://bucket/x.zbi?sig=s", shown: () => "s3://bucket/x.zbi?…" },
  ])("image info $name: USAGE (exit 2), only http:// and https:// are URLs zb reads", ({ spec, shown }) => {
    const r = zb("image", "info", spec());
    expect({ code: r.code, err: r.err }).toEqual({ code: 2, err: `zb: cannot read image ${shown()}: only http:// and https:// URLs are read (or a path, or - for stdin)\n` });
  });
});
