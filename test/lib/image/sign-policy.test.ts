/**
 * lib/image/sign.ts, what makes an image's signatures acceptable: the
 * signatures codec as rows, the policy (distinct trusted keys with a valid
 * signature) as rows, and the trust directory (loadTrustDir). The signatures
 * themselves (vectors, openssl interop): sign.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { mkdirSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ZbError } from "../../../lib/errors.ts";
import { encodePrivatePem, encodePublicPem, type PrivateKey } from "../../../lib/image/keys.ts";
import { checkSignatures, decodeSignatures, encodeSignatures, loadTrustDir, type Signature, type TrustStore } from "../../../lib/image/sign.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { tempDirs } from "../../tempdirs.ts";
import { EC, EC_SIG, ED, ED_SIG, flipBit, MSG, thrown, toHex, UNTRUSTED, UNTRUSTED_SIG, utf8, VEC } from "./sign-fixture.ts";

const work = tempDirs("zb-sign-")();

/** The digit before "=" plus one: its unused low bits become non-zero (RFC 4648 §3.5). */
function bumpLastDigit(b64: string): string {
  const ABC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const at = b64.indexOf("=") - 1;
  if (at < 0) throw new Error("test setup: needs padding");
  return b64.slice(0, at) + ABC[ABC.indexOf(b64[at]!) + 1] + b64.slice(at + 1);
}

describe("signatures codec", () => {
  const idA = "a".repeat(64);
  const idB = "0".repeat(63) + "1";
  const sig64 = new Uint8Array(64).fill(7);
  const sigs: Signature[] = [
    { alg: "ed25519", keyId: idA, sig: sig64 },
    { alg: "p256", keyId: idB, sig: Uint8Array.of(0x30, 6, 2, 1, 1, 2, 1, 1) },
  ];
  const canonical =
    `{"signatures":[{"alg":"p256","keyid":"${idB}","sig":"MAYCAQECAQE="},` + `{"alg":"ed25519","keyid":"${idA}","sig":"${Buffer.from(sig64).toString("base64")}"}]}`;

  test("encode: sorted by keyid, sorted keys, no whitespace, padded base64", () => {
    expect(new TextDecoder().decode(encodeSignatures(sigs))).toBe(canonical);
    expect(toHex(encodeSignatures([...sigs].reverse()))).toBe(toHex(encodeSignatures(sigs)));
  });

  test("decode(encode(x)) is x in keyid order; an empty list round-trips", () => {
    expect(decodeSignatures(encodeSignatures(sigs), { maxCount: 4 })).toEqual([sigs[1]!, sigs[0]!]);
    expect(decodeSignatures(utf8(`{"signatures":[]}`), { maxCount: 4 })).toEqual([]);
  });

  test.each([
    { name: "duplicate keyid", sigs: [sigs[0]!, { ...sigs[0]!, sig: new Uint8Array(64) }], why: /two signatures by key/ },
    { name: "uppercase keyid", sigs: [{ ...sigs[0]!, keyId: idA.toUpperCase() }], why: /bad key id/ },
  ])("encode refuses $name (INTERNAL)", ({ sigs, why }) => {
    const e = thrown(() => encodeSignatures(sigs));
    expect(e.code).toBe("INTERNAL");
    expect(e.message).toMatch(why);
  });

  const three: Signature[] = ["1", "2", "3"].map((d) => ({ alg: "p256", keyId: d.repeat(64), sig: sigs[1]!.sig }));
  const entry = (o: Record<string, unknown>) => JSON.stringify({ signatures: [{ alg: "ed25519", keyid: idA, sig: Buffer.from(sig64).toString("base64"), ...o }] });
  const rows: { name: string; text: string | Uint8Array; max?: number; why: RegExp }[] = [
    { name: "not JSON", text: "{signatures:[]}", why: /not UTF-8 JSON/ },
    { name: "not UTF-8", text: Uint8Array.of(0x7b, 0xff, 0x7d), why: /not UTF-8 JSON/ },
    { name: "a top-level array", text: "[]", why: /the document is not an object/ },
    { name: "an extra top-level key", text: `{"signatures":[],"x":1}`, why: /exactly the keys signatures; found signatures, x/ },
    { name: "signatures not an array", text: `{"signatures":{}}`, why: /"signatures" is not an array/ },
    { name: "an entry that is a string", text: `{"signatures":["x"]}`, why: /signature 0 is not an object/ },
    { name: "an extra entry key", text: entry({ comment: "x" }), why: /exactly the keys alg, keyid, sig; found alg, comment, keyid, sig/ },
    { name: "a missing entry key", text: `{"signatures":[{"alg":"ed25519","keyid":"${idA}"}]}`, why: /found alg, keyid$/ },
    { name: "unknown algorithm", text: entry({ alg: "rsa-pss" }), why: /unknown algorithm "rsa-pss"/ },
    { name: "algorithm in capitals", text: entry({ alg: "Ed25519" }), why: /unknown algorithm "Ed25519"/ },
    { name: "keyid uppercase", text: entry({ keyid: idA.toUpperCase() }), why: /keyid must be 64 lowercase hex/ },
    { name: "keyid short", text: entry({ keyid: "abc" }), why: /keyid must be 64 lowercase hex/ },
    { name: "keyid a number", text: entry({ keyid: 1 }), why: /keyid must be 64 lowercase hex/ },
    { name: "sig not base64", text: entry({ sig: "***" }), why: /sig is not base64/ },
    { name: "sig base64url", text: entry({ sig: "-_-_" }), why: /sig is not base64/ },
    { name: "sig unpadded", text: entry({ sig: Buffer.from(sig64).toString("base64").replace(/=+$/, "") }), why: /sig is not base64/ },
    { name: "sig with non-zero padding bits", text: entry({ sig: bumpLastDigit(Buffer.from(sig64).toString("base64")) }), why: /not canonical base64/ },
    { name: "ed25519 sig of 63 bytes", text: entry({ sig: Buffer.alloc(63).toString("base64") }), why: /Ed25519 signature is 64 bytes, got 63/ },
    { name: "p256 sig of 73 bytes", text: entry({ alg: "p256", sig: Buffer.alloc(73).toString("base64") }), why: /P-256 DER signature is 8\.\.72 bytes, got 73/ },
    { name: "p256 sig of 7 bytes", text: entry({ alg: "p256", sig: Buffer.alloc(7).toString("base64") }), why: /got 7/ },
    { name: "more entries than maxCount", text: encodeSignatures(three), max: 2, why: /3 signatures, more than the limit of 2/ },
    { name: "oversized input", text: `{"signatures":[]}` + " ".repeat(400), max: 1, why: /too large for 1 signatures/ },
    { name: "the same keyid twice", text: `{"signatures":[${entry({}).slice(15, -2)},${entry({}).slice(15, -2)}]}`, why: /signed twice/ },
    { name: "whitespace", text: canonical.replace(":[", ": ["), why: /not in canonical form/ },
    { name: "entries not sorted by keyid", text: new TextDecoder().decode(encodeSignatures(sigs)).replace(/\[(\{.*?\}),(\{.*\})\]/, "[$2,$1]"), why: /not in canonical form/ },
    { name: "entry keys not sorted", text: `{"signatures":[{"keyid":"${idA}","alg":"ed25519","sig":"${Buffer.from(sig64).toString("base64")}"}]}`, why: /not in canonical form/ },
    { name: "a JSON key twice", text: `{"signatures":[],"signatures":[]}`, why: /not in canonical form/ },
    { name: "a trailing newline", text: `{"signatures":[]}\n`, why: /not in canonical form/ },
  ];
  test.each(rows)("decode refuses $name (IMG_FORMAT)", ({ text, max, why }) => {
    const bytes = typeof text === "string" ? utf8(text) : text;
    const e = thrown(() => decodeSignatures(bytes, { maxCount: max ?? 8 }));
    expect(e.code).toBe("IMG_FORMAT");
    expect(e.message).toStartWith("cannot read image signatures: ");
    expect(e.message).toMatch(why);
  });
});

describe("policy: DISTINCT trusted keys with a valid signature", () => {
  const A = ED; // trusted ed25519
  const B = EC; // trusted p256
  const C = UNTRUSTED;
  const trust: TrustStore = {
    keys: new Map([A, B].map((k) => [k.publicKey.id, k.publicKey])),
    sources: new Map([[A.publicKey.id, "/trust/a.pem"], [B.publicKey.id, "/trust/b.pem"]]),
  };
  const sA = ED_SIG;
  const sB = EC_SIG;
  const sC = UNTRUSTED_SIG;
  const short = (k: PrivateKey) => `${k.publicKey.id.slice(0, 16)}…`;
  type Row = { name: string; sigs: Signature[]; required?: number; signers?: string[]; ignored?: [string, string][]; error?: RegExp };
  const rows: Row[] = [
    { name: "1 trusted valid → ok", sigs: [sA], signers: [A.publicKey.id], ignored: [] },
    { name: "no signatures → refused", sigs: [], error: /^cannot verify image signatures: found 0 of the 1 trusted signatures required \(the image has no signatures\)$/ },
    { name: "only an untrusted (valid) signature → refused", sigs: [sC], error: new RegExp(`found 0 of the 1 trusted signatures required \\(key ${short(C)} is not trusted\\)$`) },
    { name: "untrusted valid ignored next to a trusted one", sigs: [sC, sA], signers: [A.publicKey.id], ignored: [[C.publicKey.id, "untrusted"]] },
    { name: "2 required, one key signing twice → refused", sigs: [sA, sA], required: 2, error: new RegExp(`found 1 of the 2 trusted signatures required .*key ${short(A)} signed more than once`) },
    { name: "2 required, two keys → ok", sigs: [sB, sA], required: 2, signers: [B.publicKey.id, A.publicKey.id], ignored: [] },
    { name: "wrong alg for a trusted key id → invalid", sigs: [{ ...sB, keyId: A.publicKey.id }], error: new RegExp(`found 0 of the 1 .*signature by key ${short(A)} \\(/trust/a.pem\\) does not verify`) },
    { name: "right alg, other key's bytes → invalid", sigs: [{ ...sC, keyId: A.publicKey.id }], error: /found 0 of the 1 .*does not verify/ },
    { name: "flipped bit → invalid", sigs: [{ ...sB, sig: flipBit(sB.sig, sB.sig.length - 2) }], error: /found 0 of the 1 .*does not verify/ },
    { name: "an invalid one does not spoil a valid one", sigs: [{ ...sA, sig: flipBit(sA.sig) }, sA], signers: [A.publicKey.id], ignored: [[A.publicKey.id, "invalid"]] },
    { name: "valid + duplicate → ok, duplicate reported", sigs: [sA, sA], signers: [A.publicKey.id], ignored: [[A.publicKey.id, "duplicate"]] },
    { name: "3 required of 2 trusted keys → refused and says so", sigs: [sA, sB], required: 3, error: /found 2 of the 3 trusted signatures required \(only 2 key\(s\) are trusted\)/ },
  ];
  test.each(rows)("$name", ({ sigs, required, signers, ignored, error }) => {
    if (error) {
      const e = thrown(() => checkSignatures(MSG, sigs, trust, required));
      expect(e.code).toBe("SIG_INVALID");
      expect(e.message).toMatch(error);
      return;
    }
    const r = checkSignatures(MSG, sigs, trust, required);
    expect(r.trustedSigners).toEqual(signers!);
    expect(r.ignored.map((i) => [i.keyId, i.why])).toEqual(ignored!);
  });

  test("the signature covers the exact message bytes", () => {
    expect(thrown(() => checkSignatures(flipBit(MSG), [sA, sB], trust)).code).toBe("SIG_INVALID");
  });

  test.each([0, -1, 1.5, NaN])("required = %p is a bug (INTERNAL)", (required) => {
    expect(thrown(() => checkSignatures(MSG, [sA], trust, required)).code).toBe("INTERNAL");
  });
});

describe("loadTrustDir", () => {
  const sys = new HostSys();
  let n = 0;
  function dir(files: Record<string, string>): string {
    const d = join(work, `trust${n++}`);
    mkdirSync(d);
    for (const [name, text] of Object.entries(files)) {
      if (text === "<dir>") mkdirSync(join(d, name));
      else if (text === "<dangling>") symlinkSync(join(d, "no-such-key.pem"), join(d, name));
      else if (text === "<fifo>") expect(Bun.spawnSync(["mkfifo", join(d, name)]).exitCode).toBe(0);
      else writeFileSync(join(d, name), text);
    }
    return d;
  }
  const pemA = encodePublicPem(ED.publicKey);
  const pemB = encodePublicPem(EC.publicKey);

  test("loads *.pem and *.pub; ignores other names, dot files and directories", () => {
    const d = dir({ "a.pem": pemA, "b.pub": pemB, "README": "not a key", ".c.pem.swp": "junk", ".hidden.pem": "junk", "sub.pem": "<dir>" });
    const t = loadTrustDir(sys, d);
    expect([...t.keys.keys()].sort()).toEqual([ED.publicKey.id, EC.publicKey.id].sort());
    expect(t.keys.get(EC.publicKey.id)).toEqual(EC.publicKey);
    expect(t.sources.get(ED.publicKey.id)).toBe(join(d, "a.pem"));
  });

  test("a key file saved with a UTF-8 byte order mark is read, as openssl reads it (before: \"not PEM text\")", () => {
    const d = dir({ "bom.pem": "\uFEFF" + pemA });
    expect(Bun.spawnSync(["openssl", "pkey", "-pubin", "-in", join(d, "bom.pem"), "-noout"]).exitCode).toBe(0);
    expect([...loadTrustDir(sys, d).keys.keys()]).toEqual([ED.publicKey.id]);
  });

  test("the same key in two files is one trusted key; the first file by name is its source", () => {
    const d = dir({ "2.pem": pemA, "1.pub": pemA });
    const t = loadTrustDir(sys, d);
    expect(t.keys.size).toBe(1);
    expect(t.sources.get(ED.publicKey.id)).toBe(join(d, "1.pub"));
  });

  const rows: { name: string; files?: Record<string, string>; path?: () => string; code: string; why: (d: string) => string | RegExp }[] = [
    { name: "a malformed file → KEY_INVALID naming it", files: { "a.pem": pemA, "bad.pem": pemA.replace("MCow", "MC*w") }, code: "KEY_INVALID", why: (d) => `cannot read key ${join(d, "bad.pem")}: PEM body is not valid base64` },
    { name: "a private key in the trust dir → KEY_INVALID with the fix", files: { "k.pem": encodePrivatePem(ED) }, code: "KEY_INVALID", why: () => /k\.pem: expected a public key.*-pubout/ },
    { name: "a dangling symlink named like a key → KEY_INVALID naming it (not skipped)", files: { "a.pem": pemA, "b.pub": "<dangling>" }, code: "KEY_INVALID", why: (d) => `cannot read key ${join(d, "b.pub")}: it does not exist (a symbolic link to nothing)` },
    { name: "a FIFO named like a key → KEY_INVALID naming it, without reading it (which would block)", files: { "a.pem": pemA, "b.pem": "<fifo>" }, code: "KEY_INVALID", why: (d) => `cannot read key ${join(d, "b.pem")}: it is not a regular file` },
    { name: "a device named like a key → KEY_INVALID", path: () => {
      const d = dir({ "a.pem": pemA });
      symlinkSync("/dev/zero", join(d, "z.pub"));
      return d;
    }, code: "KEY_INVALID", why: (d) => `cannot read key ${join(d, "z.pub")}: it is not a regular file` },
    // Before: "it does not exist (a symbolic link to nothing)": readdir gives the name with U+FFFD, a name no file has.
    { name: "a key file whose name is not UTF-8 → KEY_INVALID saying so", path: () => {
      const d = dir({ "a.pem": pemA });
      writeFileSync(Buffer.concat([Buffer.from(join(d, "k")), Buffer.from([0xff]), Buffer.from(".pem")]), pemA);
      return d;
    }, code: "KEY_INVALID", why: (d) => `cannot read key ${join(d, "k\uFFFD.pem")}: its name is not UTF-8 (zb cannot open it by that name)` },
    { name: "an empty dir → SIG_INVALID", files: {}, code: "SIG_INVALID", why: (d) => `cannot load trusted keys: no trusted keys in ${d}` },
    { name: "only non-key files → SIG_INVALID", files: { "README": "x" }, code: "SIG_INVALID", why: () => /no trusted keys in/ },
    { name: "a missing dir → IO", path: () => join(work, "nope"), code: "IO", why: () => /no such directory/ },
    { name: "a file, not a dir → IO", path: () => join(VEC, "ed25519.pub"), code: "IO", why: () => /not a directory/ },
  ];
  test.each(rows)("$name", ({ files, path, code, why }) => {
    const d = path ? path() : dir(files!);
    const e = thrown(() => loadTrustDir(sys, d));
    expect(e.code).toBe(code as ZbError["code"]);
    const w = why(d);
    if (typeof w === "string") expect(e.message).toBe(w);
    else expect(e.message).toMatch(w);
  });

  test("one file that is not a public key fails the whole load (fail closed): KEY_INVALID naming the file and the reason, a hint naming the folder and the fix", () => {
    const x = EC.publicKey.raw.subarray(1, 33);
    const compressed = new Uint8Array([EC.publicKey.raw[64]! & 1 ? 3 : 2, ...x]);
    const spki = Buffer.concat([Buffer.from("3039301306072a8648ce3d020106082a8648ce3d030107032200", "hex"), compressed]);
    const pemOf = (label: string, der: Uint8Array) => `-----BEGIN ${label}-----\n${Buffer.from(der).toString("base64").replace(/.{64}/g, "$&\n")}\n-----END ${label}-----\n`;
    const bad = [
      { file: "b-compressed.pem", text: pemOf("PUBLIC KEY", spki), why: /compressed EC point/ },
      { file: "b-cert.pem", text: pemOf("CERTIFICATE", spki), why: /"CERTIFICATE"/ },
      { file: "b-private.pub", text: encodePrivatePem(EC), why: /expected a public key/ },
      { file: "b-junk.pub", text: "ssh-ed25519 AAAA… user@host\n", why: /not PEM/ },
    ];
    const got = bad.map((b) => {
      const d = dir({ "a.pem": pemA, [b.file]: b.text });
      const e = thrown(() => loadTrustDir(sys, d));
      return { file: b.file, code: e.code, names: e.message.startsWith(`cannot read key ${join(d, b.file)}: `), why: b.why.test(e.message), hint: e.hint?.includes(`every *.pem and *.pub file in ${d} must be one SPKI "PUBLIC KEY"`) && e.hint.includes(`fix or remove ${b.file}`) };
    });
    expect(got).toEqual(bad.map((b) => ({ file: b.file, code: "KEY_INVALID", names: true, why: true, hint: true })));
  });

  test("a Sys with listDir is used for the listing", () => {
    const d = dir({ "a.pem": pemA, "b.pem": pemB });
    const listed: string[] = [];
    const fake = Object.assign(new HostSys(), {
      listDir(p: string) {
        listed.push(p);
        return readdirSync(p).filter((f) => f !== "b.pem");
      },
    });
    expect([...loadTrustDir(fake, d).keys.keys()]).toEqual([ED.publicKey.id]);
    expect(listed).toEqual([d]);
  });
});
