/** /etc/zb/hsm.conf: text before → values after, and the refusals. */
import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { defaultHsmConfig, MAX_HSM_CONFIG_BYTES, parseHsmConfig, parsePcrs, readHsmConfig } from "../../../lib/hsm/config.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { tempDirs } from "../../tempdirs.ts";

describe("parseHsmConfig", () => {
  const ROWS: { text: string; after: (c: ReturnType<typeof defaultHsmConfig>) => void }[] = [
    { text: "", after: () => undefined },
    { text: "# only a comment\n\n", after: () => undefined },
    { text: "backend = tpm2\ntpm2.device = swtpm:host=127.0.0.1,port=2321\ntpm2.pcrs = sha256:7,0", after: (c) => { c.backend = "tpm2"; c.tpm2.device = "swtpm:host=127.0.0.1,port=2321"; c.tpm2.pcrs = [0, 7]; } },
    { text: "tpm2.lock-pcr = 15", after: (c) => { c.tpm2.lockPcr = 15; } },
    { text: "tpm2.lock-pcr =", after: () => undefined },
    { text: "backend=pkcs11\npkcs11.module=/usr/lib/libx.so # the module\npkcs11.token=zb\npkcs11.key-label=zb-luks\npkcs11.key-id=0A\npkcs11.pin-file=/etc/zb/pin\npkcs11.oaep=sha1", after: (c) => { c.backend = "pkcs11"; c.pkcs11 = { module: "/usr/lib/libx.so", token: "zb", tokenSerial: null, keyLabel: "zb-luks", keyId: "0a", pinFile: "/etc/zb/pin", oaep: "sha1" }; } },
    { text: "pkcs11.token=zb\npkcs11.token-serial=4f3a9c2e11d0b7a1", after: (c) => { c.pkcs11.token = "zb"; c.pkcs11.tokenSerial = "4f3a9c2e11d0b7a1"; } },
    { text: "backend=zymkey\nzymkey.library=/opt/zk/libzk_app_utils.so\nwait=2.5", after: (c) => { c.backend = "zymkey"; c.zymkey.library = "/opt/zk/libzk_app_utils.so"; c.waitSeconds = 2.5; } },
    { text: "backend=soft\nsoft.enable=yes\nsoft.key-file=/var/lib/zb/soft.key", after: (c) => { c.backend = "soft"; c.soft = { enabled: true, keyFile: "/var/lib/zb/soft.key" }; } },
    { text: "soft.enable=no", after: () => undefined },
    { text: "tpm2.pcrs=", after: () => undefined },
  ];
  test.each(ROWS)("%#: $text", ({ text, after }) => {
    const want = defaultHsmConfig();
    after(want);
    expect(parseHsmConfig(text, "hsm.conf")).toEqual(want);
  });

  const BAD: [string, RegExp][] = [
    ["backend = tpm3", /hsm.conf:1: unknown backend "tpm3"/],
    ["\n\nbakend = tpm2", /hsm.conf:3: unknown key "bakend"/],
    ["backend", /expected key = value/],
    ["tpm2.pcrs = 24", /PCR "24" is not 0…23/],
    ["tpm2.pcrs = sha1:7", /PCR "sha1:7"/],
    ["wait = -1", /wait must be seconds/],
    ["tpm2.lock-pcr = 7,15", /tpm2.lock-pcr is one PCR/],
    ["tpm2.lock-pcr = 30", /PCR "30" is not 0…23/],
    ["wait = 9999", /wait must be seconds/],
    ["soft.enable = maybe", /soft.enable must be yes or no/],
    ["pkcs11.oaep = md5", /pkcs11.oaep must be sha256, sha1 or auto/],
    ["pkcs11.key-id = xyz", /pkcs11.key-id must be hex bytes/],
    ["pkcs11.token-serial = 0123456789abcdef0", /pkcs11.token-serial must be the token's serial number: at most 16/],
    ["pkcs11.token-serial = 12 34", /pkcs11.token-serial must be/],
    ["tpm2.device =", /tpm2.device is empty/],
    ["backend = soft\n# later\nbackend = tpm2", /hsm.conf:3: backend is set again \(first on line 1\)/],
  ];
  test.each(BAD)("refuses %j", (text, why) => {
    expect(() => parseHsmConfig(text, "hsm.conf")).toThrow(expect.objectContaining({ code: "CONFIG", message: expect.stringMatching(why) }));
  });
});

test.each([
  ["0,7", [0, 7]],
  ["sha256:7,0,7", [0, 7]],
  ["", []],
  ["23", [23]],
] as [string, number[]][])("parsePcrs(%j) → %j", (text, want) => {
  expect(parsePcrs(text)).toEqual(want);
});

/**
 * The file is read up to MAX_HSM_CONFIG_BYTES: `--config /dev/zero` or a
 * disk is refused (CONFIG, as any bad hsm.conf), not read until memory runs
 * out; a file of exactly the limit is still read.
 */
describe("readHsmConfig", () => {
  const tempDir = tempDirs("zb-hsmconf-");
  test.each([
    { name: "exactly the limit: read", size: MAX_HSM_CONFIG_BYTES, refused: false },
    { name: "one byte more: CONFIG", size: MAX_HSM_CONFIG_BYTES + 1, refused: true },
  ])("a backend line padded with comments, $name", ({ size, refused }) => {
    const path = join(tempDir(), "hsm.conf");
    const line = "backend = tpm2\n";
    writeFileSync(path, line + "#".repeat(size - line.length - 1) + "\n");
    const read = () => readHsmConfig(new HostSys(), path);
    if (!refused) expect(read().backend).toBe("tpm2");
    else expect(read).toThrow(expect.objectContaining({ code: "CONFIG", message: `cannot read the HSM config ${path}: larger than 65536 bytes (is it the right file?)` }));
  });

  test("/dev/zero: CONFIG, and the read ends", () => {
    expect(() => readHsmConfig(new HostSys(), "/dev/zero")).toThrow(expect.objectContaining({ code: "CONFIG", message: expect.stringContaining("larger than 65536 bytes") }));
  });
});
