/**
 * initramfs-hooks/hooks/zb in a fake initramfs-tools environment: the hook
 * sources test/initramfs-hooks/fake-hook-functions.sh (through
 * ZB_HOOK_FUNCTIONS), which logs every copy_exec/copy_file/manual_add_modules/
 * force_load call and creates the files under DESTDIR. A library named
 * without a folder is looked for under ZB_LIBROOT ($T/root, standing for /),
 * on the machine a fake `uname -m` names. Each row is an /etc/zb before and
 * what the hook put into the initramfs after.
 */
import { afterAll, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const HOOK = resolve(import.meta.dir, "../../initramfs-hooks/hooks/zb");
const FAKE = resolve(import.meta.dir, "fake-hook-functions.sh");
const PIN = "246813579";

/** What every configuration gets (the hook's lists, written out). */
const BASE_MODULES = [
  "af_alg", "algif_skcipher", "xts", "ecb", "aes", "aes-ce-blk", "aes-neon-blk", "aes-neon-bs",
  "adiantum", "nhpoly1305", "nhpoly1305-neon", "chacha_generic", "chacha-neon", "poly1305_generic",
  "tpm_tis_core", "tpm_tis", "tpm_tis_spi", "tpm_tis_i2c", "tpm_tis_i2c_cr50", "tpm_i2c_infineon", "i2c-gpio", "i2c-bcm2835", "spi-bcm2835",
  "vfat", "nls_cp437", "nls_ascii", "nls_utf8", "dm-mod", "dm-crypt",
];
const BASE_TREE = ["conf/modules", "sbin/cryptsetup", "usr/bin/zb", "usr/bin/zbunlock -> zb"];
/** Where zbunlock on arm64 looks for a library named without a folder, in order (lib/sys/dlopen.ts). */
const AARCH64_DIRS = "/lib/aarch64-linux-gnu, /usr/lib/aarch64-linux-gnu, /lib, /usr/lib, /lib64, /usr/lib64, /usr/local/lib";

const roots: string[] = [];
afterAll(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});

interface Before {
  /** /etc/zb/initramfs.conf; "$T" is the temp root. null: no file. */
  initramfsConf: string | null;
  /** /etc/zb/hsm.conf; null: no file. */
  hsmConf: string | null;
  /** Files in /etc/zb/trust. */
  trust: readonly string[];
}

/** What the hook put into DESTDIR; "$T" is the temp root. */
interface After {
  tree: readonly string[];
  /** Modules beyond BASE_MODULES. */
  extraModules: readonly string[];
  loaded: readonly string[];
  err: string;
}

interface Run {
  code: number | null;
  /** The copy_exec calls, "SOURCE [TARGET]". */
  execs: string[];
  out: string;
  err: string;
  /** Files under DESTDIR, "path -> target" for links. */
  tree: string[];
  /** Every module name handed to manual_add_modules. */
  modules: string[];
  /** ${DESTDIR}/conf/modules, the modules init loads at boot. */
  loaded: string[];
}

/** A temp root with the fake binary, PKCS#11 module, Zymkey library and a PIN file. */
function makeRoot(): string {
  const t = mkdtempSync(join(tmpdir(), "zb-hook-"));
  roots.push(t);
  for (const d of ["etc/trust", "dest", "bin", "lib", "secret", "root", "fakebin"]) mkdirSync(join(t, d), { recursive: true });
  writeFileSync(join(t, "bin/zb"), "#!/bin/sh\n", { mode: 0o755 });
  writeFileSync(join(t, "lib/libfake-pkcs11.so"), "pkcs11 module\n");
  writeFileSync(join(t, "lib/libzk_app_utils.so"), "zymkey library\n");
  writeFileSync(join(t, "secret/pin"), PIN + "\n", { mode: 0o600 });
  return t;
}

function setUp(t: string, before: Before): void {
  const fill = (s: string) => s.replaceAll("$T", t);
  if (before.initramfsConf !== null) writeFileSync(join(t, "etc/initramfs.conf"), fill(before.initramfsConf));
  if (before.hsmConf !== null) writeFileSync(join(t, "etc/hsm.conf"), fill(before.hsmConf));
  // A name starting "private" gets a PEM private key (a mistake the hook must catch).
  for (const k of before.trust) writeFileSync(join(t, "etc/trust", k), k.startsWith("private") ? "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n" : `key ${k}\n`);
}

function listTree(dir: string, prefix = ""): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).sort().flatMap((name) => {
    const path = join(dir, name);
    const rel = prefix + name;
    const st = lstatSync(path);
    if (st.isSymbolicLink()) return [`${rel} -> ${readlinkSync(path)}`];
    if (st.isDirectory()) return listTree(path, rel + "/");
    return [rel];
  });
}

function runHook(t: string, opts: { args?: string[]; destdir?: boolean; verbose?: boolean; machine?: string } = {}): Run {
  const log = join(t, "log");
  // The machine the library folders are chosen for (Debian's multiarch folders), aarch64 unless a row says otherwise.
  writeFileSync(join(t, "fakebin/uname"), `#!/bin/sh\necho ${opts.machine ?? "aarch64"}\n`, { mode: 0o755 });
  const env: Record<string, string> = {
    PATH: `${t}/fakebin:/usr/sbin:/usr/bin:/sbin:/bin`,
    ZB_HOOK_FUNCTIONS: FAKE,
    ZB_CONFDIR: join(t, "etc"),
    ZB_LIBROOT: join(t, "root"),
    ZB_FAKE_LOG: log,
    verbose: opts.verbose ? "y" : "n",
    version: "6.1.0-test",
  };
  if (opts.destdir !== false) env.DESTDIR = join(t, "dest");
  const p = Bun.spawnSync(["sh", HOOK, ...(opts.args ?? [])], { env, stdin: "ignore" });
  const calls = existsSync(log) ? readFileSync(log, "utf8").split("\n").filter(Boolean) : [];
  const modules = calls.filter((c) => c.startsWith("manual_add_modules ")).flatMap((c) => c.split(" ").slice(1));
  const loadedFile = join(t, "dest/conf/modules");
  return {
    code: p.exitCode,
    execs: calls.filter((c) => c.startsWith("copy_exec ")).map((c) => c.slice("copy_exec ".length)),
    out: p.stdout.toString(),
    err: p.stderr.toString(),
    tree: listTree(join(t, "dest")),
    modules,
    loaded: existsSync(loadedFile) ? readFileSync(loadedFile, "utf8").split("\n").filter(Boolean) : [],
  };
}

/** Every regular file under dir, for the "nothing secret" check. */
function allContents(dir: string): string {
  return listTree(dir).filter((f) => !f.includes(" -> ")).map((f) => readFileSync(join(dir, f), "utf8")).join("\n");
}

const rel = (t: string, p: string) => p.replaceAll("$T", t.slice(1));

describe("the hook copies", () => {
  const rows: { name: string; before: Before; after: After }[] = [
    {
      name: "tpm2: binary, zbunlock link, cryptsetup, modules, trust keys and hsm.conf; other files in trust/ stay",
      before: { initramfsConf: "ZB_BINARY=$T/bin/zb\n", hsmConf: "backend=tpm2\ntpm2.device=/dev/tpmrm0\n", trust: ["a.pub", "b.pub", "c.pem", "notes.txt"] },
      after: { tree: [...BASE_TREE, "etc/zb/hsm.conf", "etc/zb/trust/a.pub", "etc/zb/trust/b.pub", "etc/zb/trust/c.pem"], extraModules: [], loaded: ["dm-mod", "dm-crypt"], err: "" },
    },
    {
      name: "no hsm.conf, no trust keys: binary, cryptsetup and modules only",
      before: { initramfsConf: "ZB_BINARY=$T/bin/zb\n", hsmConf: null, trust: [] },
      after: { tree: BASE_TREE, extraModules: [], loaded: ["dm-mod", "dm-crypt"], err: "" },
    },
    {
      name: "ZB_EXTRA_MODULES in initramfs.conf: added to the module list",
      before: { initramfsConf: 'ZB_BINARY=$T/bin/zb\nZB_EXTRA_MODULES="spi-bcm2835 mmc_block"\n', hsmConf: "backend=tpm2\n", trust: [] },
      after: { tree: [...BASE_TREE, "etc/zb/hsm.conf"], extraModules: ["spi-bcm2835", "mmc_block"], loaded: ["dm-mod", "dm-crypt"], err: "" },
    },
    {
      name: "pkcs11: the module at its own path; the PIN file skipped with a warning",
      before: {
        initramfsConf: "ZB_BINARY=$T/bin/zb\n",
        hsmConf: "backend=pkcs11\npkcs11.module=$T/lib/libfake-pkcs11.so\npkcs11.token=zb\npkcs11.pin-file=$T/secret/pin\n",
        trust: ["a.pub"],
      },
      after: {
        tree: [...BASE_TREE, "$T/lib/libfake-pkcs11.so", "etc/zb/hsm.conf", "etc/zb/trust/a.pub"],
        extraModules: [],
        loaded: ["dm-mod", "dm-crypt"],
        err: "W: zb: not copying pkcs11.pin-file=$T/secret/pin into the initramfs: it would be readable by anyone with the boot medium; zbunlock will ask for the PIN on the console\n",
      },
    },
    {
      name: "pkcs11 with comments after the values (as lib/hsm/config.ts reads them): the module is still copied",
      before: {
        initramfsConf: "ZB_BINARY=$T/bin/zb\n",
        hsmConf: "backend = pkcs11   # the token on USB\npkcs11.module=$T/lib/libfake-pkcs11.so# a comment right after\npkcs11.token=zb\n",
        trust: [],
      },
      after: { tree: [...BASE_TREE, "$T/lib/libfake-pkcs11.so", "etc/zb/hsm.conf"], extraModules: [], loaded: ["dm-mod", "dm-crypt"], err: "" },
    },
    {
      // Before: the values kept the CR, `case` matched nothing, and the module was left out with exit 0.
      name: "pkcs11 in a file saved with CRLF line ends (lib/hsm/config.ts trims the CR): the module is still copied",
      before: { initramfsConf: "ZB_BINARY=$T/bin/zb\n", hsmConf: "backend = pkcs11\r\npkcs11.module = $T/lib/libfake-pkcs11.so\r\npkcs11.token = zb\r\n", trust: [] },
      after: { tree: [...BASE_TREE, "$T/lib/libfake-pkcs11.so", "etc/zb/hsm.conf"], extraModules: [], loaded: ["dm-mod", "dm-crypt"], err: "" },
    },
    {
      name: "zymkey: I2C modules, i2c-dev loaded at boot, the configured library",
      before: { initramfsConf: "ZB_BINARY=$T/bin/zb\n", hsmConf: "backend=zymkey\nzymkey.library=$T/lib/libzk_app_utils.so\n", trust: [] },
      after: {
        tree: [...BASE_TREE, "$T/lib/libzk_app_utils.so", "etc/zb/hsm.conf"],
        extraModules: ["i2c-bcm2835", "i2c-bcm2708", "i2c-dev"],
        loaded: ["dm-mod", "dm-crypt", "i2c-dev"],
        err: "",
      },
    },
    {
      name: "soft: nothing more, and a warning that its key file stays on the host",
      before: { initramfsConf: "ZB_BINARY=$T/bin/zb\n", hsmConf: "backend=soft\nsoft.enable=yes\nsoft.key-file=$T/secret/pin\n", trust: [] },
      after: {
        tree: [...BASE_TREE, "etc/zb/hsm.conf"],
        extraModules: [],
        loaded: ["dm-mod", "dm-crypt"],
        err: "W: zb: backend=soft: not copying soft.key-file into the initramfs; zbunlock cannot unseal there (soft is for development only)\n",
      },
    },
  ];
  test.each(rows)("$name", ({ before, after }) => {
    const t = makeRoot();
    setUp(t, before);
    const r = runHook(t);
    expect(r.err).toBe(after.err.replaceAll("$T", t));
    expect(r.code).toBe(0);
    expect(r.tree).toEqual([...after.tree].map((p) => rel(t, p)).sort());
    expect([...r.modules].sort()).toEqual([...BASE_MODULES, ...after.extraModules].sort());
    expect(r.loaded).toEqual([...after.loaded]);
    expect(r.out).toBe("");
    expect(allContents(join(t, "dest"))).not.toContain(PIN);
    // hsm.conf arrives whole, but for a pkcs11.pin-file line: the file stays behind, and zbunlock asks on the console.
    if (before.hsmConf !== null) {
      const copied = readFileSync(join(t, "dest/etc/zb/hsm.conf"), "utf8");
      expect(copied).toBe(before.hsmConf.replaceAll("$T", t).replace(/^pkcs11\.pin-file=.*\n/m, ""));
    }
  });
});

test("pkcs11.module=libsofthsm2.so, a name without a folder: found where zbunlock looks for it, copied to the same folder", () => {
  const t = makeRoot();
  setUp(t, { initramfsConf: "ZB_BINARY=$T/bin/zb\n", hsmConf: "backend=pkcs11\npkcs11.module=libsofthsm2.so\n", trust: [] });
  const where = "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so";
  const found = "/usr/lib/aarch64-linux-gnu/libsofthsm2.so";
  for (const f of [where, found]) {
    mkdirSync(join(t, "root", f, ".."), { recursive: true });
    writeFileSync(join(t, "root", f), `module in ${f}\n`);
  }
  const r = runHook(t);
  expect(r.err).toBe("");
  expect(r.code).toBe(0);
  expect(r.execs.filter((c) => c.includes("softhsm2"))).toEqual([`${t}/root${found} ${found}`]);
  expect(readFileSync(join(t, "dest", found), "utf8")).toBe(`module in ${found}\n`);
});

describe("a Zymkey library named without a folder: found where zbunlock looks for it, copied to the same folder", () => {
  const rows: { name: string; library: string | null; machine?: string; files: string[]; copied: string | null; err: string }[] = [
    {
      name: "zymkey.library=libzk_app_utils.so in /usr/lib/aarch64-linux-gnu",
      library: "libzk_app_utils.so", files: ["/usr/lib/aarch64-linux-gnu/libzk_app_utils.so"],
      copied: "/usr/lib/aarch64-linux-gnu/libzk_app_utils.so", err: "",
    },
    {
      name: "no zymkey.library (the default name), the library in /usr/lib",
      library: null, files: ["/usr/lib/libzk_app_utils.so"],
      copied: "/usr/lib/libzk_app_utils.so", err: "",
    },
    {
      name: "in /usr/local/lib and /lib/aarch64-linux-gnu: the multiarch folder, searched first",
      library: "libzk_app_utils.so", files: ["/usr/local/lib/libzk_app_utils.so", "/lib/aarch64-linux-gnu/libzk_app_utils.so"],
      copied: "/lib/aarch64-linux-gnu/libzk_app_utils.so", err: "",
    },
    {
      name: "on x86_64 (uname -m): its own multiarch folder",
      library: "libzk_app_utils.so.1", machine: "x86_64", files: ["/usr/lib/x86_64-linux-gnu/libzk_app_utils.so.1"],
      copied: "/usr/lib/x86_64-linux-gnu/libzk_app_utils.so.1", err: "",
    },
    {
      name: "only in another architecture's folder (x86_64 on aarch64) → refused, nothing copied",
      library: "libzk_app_utils.so", files: ["/usr/lib/x86_64-linux-gnu/libzk_app_utils.so"],
      copied: null,
      err: `E: zb: cannot add the Zymkey library to the initramfs: libzk_app_utils.so is in none of the folders zbunlock looks in (${AARCH64_DIRS}); install it there, or give its absolute path\n`,
    },
    {
      name: "only in /opt/zymbit/lib (the loader may know it through ld.so.conf; zbunlock does not look there) → refused",
      library: "libzk_app_utils.so", files: ["/opt/zymbit/lib/libzk_app_utils.so"],
      copied: null,
      err: `E: zb: cannot add the Zymkey library to the initramfs: libzk_app_utils.so is in none of the folders zbunlock looks in (${AARCH64_DIRS}); install it there, or give its absolute path\n`,
    },
    {
      name: "a relative path (it would depend on zbunlock's working directory) → refused",
      library: "usr/lib/libzk_app_utils.so", files: ["/usr/lib/libzk_app_utils.so"],
      copied: null,
      err: "E: zb: cannot add the Zymkey library to the initramfs: usr/lib/libzk_app_utils.so is a relative path; give an absolute path or a library name without a folder\n",
    },
  ];
  test.each(rows)("$name", ({ library, machine, files, copied, err }) => {
    const t = makeRoot();
    setUp(t, { initramfsConf: "ZB_BINARY=$T/bin/zb\n", hsmConf: `backend=zymkey\n${library === null ? "" : `zymkey.library=${library}\n`}`, trust: [] });
    for (const f of files) {
      mkdirSync(join(t, "root", f, ".."), { recursive: true });
      writeFileSync(join(t, "root", f), `zymkey library in ${f}\n`);
    }
    const r = runHook(t, machine ? { machine } : {});
    expect(r.err).toBe(err);
    expect(r.code).toBe(copied === null ? 1 : 0);
    const zymkey = r.execs.filter((c) => c.includes("libzk_app_utils"));
    if (copied === null) {
      expect(zymkey).toEqual([]);
      return;
    }
    // From the folder it was found in, to the same folder in the initramfs, where the same search finds it at boot.
    expect(zymkey).toEqual([`${t}/root${copied} ${copied}`]);
    expect(readFileSync(join(t, "dest", copied), "utf8")).toBe(`zymkey library in ${copied}\n`);
    expect(r.tree).toEqual([...BASE_TREE, copied.slice(1), "etc/zb/hsm.conf"].sort());
  });
});

describe("the hook refuses", () => {
  const rows: { name: string; before: Before; err: string }[] = [
    {
      name: "no initramfs.conf: the default /usr/bin/zb, absent here",
      before: { initramfsConf: null, hsmConf: "backend=tpm2\n", trust: [] },
      err: "E: zb: cannot add the zb binary to the initramfs: /usr/bin/zb does not exist\n",
    },
    {
      name: "ZB_BINARY names a missing file",
      before: { initramfsConf: "ZB_BINARY=$T/bin/nothing\n", hsmConf: null, trust: [] },
      err: "E: zb: cannot add the zb binary to the initramfs: $T/bin/nothing does not exist\n",
    },
    {
      name: "ZB_CRYPTSETUP names a missing file",
      before: { initramfsConf: "ZB_BINARY=$T/bin/zb\nZB_CRYPTSETUP=$T/bin/cryptsetup\n", hsmConf: null, trust: [] },
      err: "E: zb: cannot add cryptsetup to the initramfs: $T/bin/cryptsetup does not exist\n",
    },
    {
      name: "a private key in the trust folder (the image is readable by anyone with the boot medium)",
      before: { initramfsConf: "ZB_BINARY=$T/bin/zb\n", hsmConf: "backend=tpm2\n", trust: ["a.pub", "private.pem"] },
      err: "E: zb: cannot add $T/etc/trust/private.pem to the initramfs: it holds a private key (only public keys belong in $T/etc/trust)\n",
    },
    {
      name: "pkcs11 without pkcs11.module",
      before: { initramfsConf: "ZB_BINARY=$T/bin/zb\n", hsmConf: "backend=pkcs11\npkcs11.token=zb\n", trust: [] },
      err: "E: zb: cannot add the PKCS#11 module: $T/etc/hsm.conf has backend=pkcs11 but no pkcs11.module=\n",
    },
    {
      name: "pkcs11.module as a bare library name that is in none of the folders zbunlock searches",
      before: { initramfsConf: "ZB_BINARY=$T/bin/zb\n", hsmConf: "backend=pkcs11\npkcs11.module=libsofthsm2.so\n", trust: [] },
      err: `E: zb: cannot add the PKCS#11 module to the initramfs: libsofthsm2.so is in none of the folders zbunlock looks in (${AARCH64_DIRS}); install it there, or give its absolute path\n`,
    },
    {
      // Before: exit 0, an initramfs whose zbunlock refuses the configuration at every boot.
      name: "a backend zb does not know",
      before: { initramfsConf: "ZB_BINARY=$T/bin/zb\n", hsmConf: "backend = pkcs12\n", trust: [] },
      err: "E: zb: cannot build the initramfs: $T/etc/hsm.conf names backend=pkcs12, which zb does not know (tpm2, pkcs11, zymkey or soft)\n",
    },
    {
      name: "zymkey, blanks around '=', a commented-out line: the default library, looked for by name, absent here",
      before: { initramfsConf: "ZB_BINARY=$T/bin/zb\n", hsmConf: "# backend=pkcs11\n  backend = zymkey  \n", trust: [] },
      err: `E: zb: cannot add the Zymkey library to the initramfs: libzk_app_utils.so is in none of the folders zbunlock looks in (${AARCH64_DIRS}); install it there, or give its absolute path\n`,
    },
  ];
  test.each(rows)("$name", ({ before, err }) => {
    const t = makeRoot();
    setUp(t, before);
    const r = runHook(t);
    expect(r.err).toBe(err.replaceAll("$T", t));
    expect(r.code).toBe(1);
  });

  test("no DESTDIR: fails before copying anything", () => {
    const t = makeRoot();
    setUp(t, { initramfsConf: "ZB_BINARY=$T/bin/zb\n", hsmConf: "backend=tpm2\n", trust: ["a.pub"] });
    const r = runHook(t, { destdir: false });
    expect(r.err).toBe("E: zb: cannot add zb to the initramfs: DESTDIR is not set (run this hook through mkinitramfs)\n");
    expect(r.code).toBe(1);
    expect(existsSync(join(t, "log"))).toBe(false);
  });
});

describe("the hook's protocol", () => {
  let t = "";
  beforeEach(() => {
    t = makeRoot();
    setUp(t, { initramfsConf: "ZB_BINARY=$T/bin/zb\n", hsmConf: "backend=tpm2\n", trust: ["a.pub"] });
  });

  test("prereqs prints the empty PREREQ and copies nothing", () => {
    const r = runHook(t, { args: ["prereqs"] });
    expect(r.code).toBe(0);
    expect(r.out).toBe("\n");
    expect(r.tree).toEqual([]);
    expect(existsSync(join(t, "log"))).toBe(false);
  });

  test("a second run into the same DESTDIR succeeds (copy_file says 'exists')", () => {
    expect(runHook(t).code).toBe(0);
    const again = runHook(t);
    expect(again.err).toBe("");
    expect(again.code).toBe(0);
    expect(again.tree).toEqual(["conf/modules", "etc/zb/hsm.conf", "etc/zb/trust/a.pub", "sbin/cryptsetup", "usr/bin/zb", "usr/bin/zbunlock -> zb"]);
  });

  test("verbose=y says what it added", () => {
    const r = runHook(t, { verbose: true });
    expect(r.code).toBe(0);
    expect(r.out).toBe(`zb: added ${t}/bin/zb as /usr/bin/zb, link /usr/bin/zbunlock\nzb: added cryptsetup, modules and configuration for backend tpm2\n`);
  });
});
