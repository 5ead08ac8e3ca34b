/**
 * The real thing: Debian's mkinitramfs (initramfs-tools-core) with the real
 * hook-functions, our hook and local-top script in a temp -d confdir, the
 * x64 build as ZB_BINARY, against an installed Debian kernel's modules, then
 * unmkinitramfs to look inside. The host's own kernel (a VM kernel) ships no
 * /lib/modules, so a Debian kernel package provides the module tree.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const REPO = resolve(import.meta.dir, "../..");
const BIN = join(REPO, "dist/zb-x64");
const HSM_CONF = "backend=tpm2\ntpm2.device=/dev/tpmrm0\n";

let t = "";
let root = "";
let kernel = "";
let build = { code: null as number | null, err: "" };

/** A kernel version with a module tree, modules.dep, dm-crypt and a /boot/config (mkinitramfs reads it). */
function findKernel(): string {
  const dir = "/lib/modules";
  const found = (existsSync(dir) ? readdirSync(dir) : []).filter(
    (v) => existsSync(join(dir, v, "modules.dep")) && existsSync(`/boot/config-${v}`) &&
      readdirSync(join(dir, v, "kernel/drivers/md")).some((f) => f.startsWith("dm-crypt.ko")),
  );
  if (found.length === 0) throw new Error("no kernel module tree with dm-crypt under /lib/modules: install one, e.g. apt-get install linux-image-cloud-amd64");
  return found.sort().at(-1)!;
}

function sh(argv: string[], env: Record<string, string> = {}) {
  const p = Bun.spawnSync(argv, { env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", ...env }, stdin: "ignore" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  kernel = findKernel();
  t = mkdtempSync(join(tmpdir(), "zb-mkinitramfs-"));
  const conf = join(t, "initramfs-tools");
  for (const d of ["initramfs-tools/hooks", "initramfs-tools/scripts/local-top", "initramfs-tools/scripts/init-top", "etc-zb/trust", "tmp", "x"]) mkdirSync(join(t, d), { recursive: true });
  // MODULES=list: only what hooks and the modules file ask for, so the
  // image shows what our hook added; level 1 keeps the 100 MB binary quick.
  writeFileSync(join(conf, "initramfs.conf"), "MODULES=list\nBUSYBOX=n\nKEYMAP=n\nCOMPRESS=zstd\nCOMPRESSLEVEL=1\nFSTYPE=auto\nRUNSIZE=10%\n");
  writeFileSync(join(conf, "modules"), "");
  expect(sh(["cp", "-p", join(REPO, "initramfs-hooks/hooks/zb"), join(conf, "hooks/zb")]).code).toBe(0);
  for (const f of ["local-top/zb", "init-top/prestart-zb", "zb-functions"]) {
    expect(sh(["cp", "-p", join(REPO, "initramfs-hooks/scripts", f), join(conf, "scripts", f)]).code).toBe(0);
  }
  writeFileSync(join(t, "etc-zb/initramfs.conf"), `ZB_BINARY=${BIN}\n`);
  writeFileSync(join(t, "etc-zb/hsm.conf"), HSM_CONF);
  writeFileSync(join(t, "etc-zb/trust/test.pub"), "a public key\n");
  const image = join(t, "initrd.img");
  const env = { ZB_CONFDIR: join(t, "etc-zb"), TMPDIR: join(t, "tmp") };
  const mk = sh(["mkinitramfs", "-d", conf, "-o", image, kernel], env);
  build = { code: mk.code, err: mk.err };
  expect(sh(["unmkinitramfs", image, join(t, "x")]).code).toBe(0);
  // With an early (microcode) archive in front, the main one lands in main/.
  root = existsSync(join(t, "x/main")) ? join(t, "x/main") : join(t, "x");
});

afterAll(() => {
  if (t) rmSync(t, { recursive: true, force: true });
});

const modules = () => `usr/lib/modules/${kernel}/kernel`;

test("mkinitramfs succeeds, the hook printing no error", () => {
  expect(build.err).not.toContain("E: zb");
  expect(build.code).toBe(0);
});

test("this kernel lacks aes-ce-blk (arm64 only), which the hook names: a missing module does not fail the build", () => {
  expect(sh(["modprobe", `--set-version=${kernel}`, "--show-depends", "aes-ce-blk"]).code).not.toBe(0);
  expect(build.code).toBe(0);
});

describe("the image holds", () => {
  test.each([
    { path: "usr/bin/zb", is: "the x64 build, byte for byte", check: (p: string) => expect(readFileSync(p).equals(readFileSync(BIN))).toBe(true) },
    { path: "usr/bin/zbunlock", is: "a link to zb", check: (p: string) => expect(readlinkSync(p)).toBe("zb") },
    { path: "usr/sbin/cryptsetup", is: "an executable", check: (p: string) => expect(statSync(p).mode & 0o111).toBe(0o111) },
    { path: "etc/zb/hsm.conf", is: "the host's hsm.conf", check: (p: string) => expect(readFileSync(p, "utf8")).toBe(HSM_CONF) },
    { path: "etc/zb/trust/test.pub", is: "the trust key", check: (p: string) => expect(readFileSync(p, "utf8")).toBe("a public key\n") },
    { path: "scripts/local-top/zb", is: "our boot script", check: (p: string) => expect(readFileSync(p, "utf8")).toBe(readFileSync(join(REPO, "initramfs-hooks/scripts/local-top/zb"), "utf8")) },
    { path: "scripts/local-top/ORDER", is: "an order that runs it", check: (p: string) => expect(readFileSync(p, "utf8")).toContain('/scripts/local-top/zb "$@"\n') },
    { path: "scripts/zb-functions", is: "the helpers both boot scripts source", check: (p: string) => expect(readFileSync(p, "utf8")).toBe(readFileSync(join(REPO, "initramfs-hooks/scripts/zb-functions"), "utf8")) },
    { path: "scripts/init-top/prestart-zb", is: "the prestart script", check: (p: string) => expect(statSync(p).mode & 0o111).toBe(0o111) },
    {
      path: "scripts/init-top/ORDER",
      is: "an order that runs prestart-zb before udev starts udevd (by name: tsort)",
      check: (p: string) => {
        const order = [...readFileSync(p, "utf8").matchAll(/^\/scripts\/init-top\/(\S+) "\$@"$/gm)].map((m) => m[1]);
        expect(order).toContain("udev");
        expect(order.indexOf("prestart-zb")).toBeGreaterThanOrEqual(0);
        expect(order.indexOf("prestart-zb")).toBeLessThan(order.indexOf("udev"));
      },
    },
    { path: "conf/modules", is: "dm-mod and dm-crypt, loaded at boot", check: (p: string) => expect(readFileSync(p, "utf8").split("\n")).toEqual(expect.arrayContaining(["dm-mod", "dm-crypt"])) },
  ])("$path: $is", ({ path, check }) => {
    expect(lstatSync(join(root, path))).toBeTruthy();
    check(join(root, path));
  });

  test.each(["drivers/md/dm-crypt.ko", "drivers/md/dm-mod.ko", "crypto/af_alg.ko", "crypto/algif_skcipher.ko", "crypto/xts.ko", "fs/fat/vfat.ko", "fs/nls/nls_cp437.ko"])(
    "the module %s",
    (ko) => {
      expect(existsSync(join(root, modules(), ko))).toBe(true);
    },
  );

  test("every shared library ldd lists for zb and cryptsetup (copy_exec)", () => {
    const libs = ["/usr/sbin/cryptsetup", BIN].flatMap((b) => [...sh(["ldd", b]).out.matchAll(/(\/\S+) \(0x/g)].map((m) => m[1]!));
    expect(libs.length).toBeGreaterThan(3);
    // The image is usr-merged: /lib/x.so is usr/lib/x.so inside.
    for (const lib of libs) expect(existsSync(join(root, lib.replace(/^\/(lib|lib64)\//, "/usr/$1/")))).toBe(true);
  });
});
