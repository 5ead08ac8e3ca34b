/**
 * How the binary takes an image on stdin and checks a target when the ways
 * in are unusual, through the built binary (dist/zb-x64):
 * - a pipe the parent made non-blocking (O_NONBLOCK is shared with it, as
 *   Node's child_process and some supervisors hand pipes over): read to its
 *   end, not failed with EAGAIN before the writer has written;
 * - `- < FILE` where zb may not open FILE by path (a more privileged parent
 *   opened it: `runuser … < /root/img.zbi`, systemd's StandardInput=file:
 *   with User=): read through the descriptor it was given;
 * - `--resume` of a complete journal whose target became a FIFO: refused at
 *   once, not a read-only open waiting for a writer that no signal ends.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const BIN = resolve(import.meta.dir, "../../dist/zb-x64");
let dir = "";
let rootSha = "";
const zb = (...args: string[]) => {
  const p = Bun.spawnSync([BIN, ...args], { cwd: dir, timeout: 30_000, killSignal: "SIGKILL" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
};
const sha256 = (path: string) => new Bun.CryptoHasher("sha256").update(readFileSync(path)).digest("hex");

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  dir = mkdtempSync(join(tmpdir(), "zb-imgstdin-"));
  mkdirSync(join(dir, "trust"));
  const raw = new Uint8Array(700_000);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 7 + (i >> 9)) % 251 < 40 ? (i * 131) & 0xff : 0x41 + (i % 26);
  writeFileSync(join(dir, "rootfs.img"), raw);
  rootSha = sha256(join(dir, "rootfs.img"));
  expect(zb("key", "gen", "--alg", "ed25519", "-o", "ed").code).toBe(0);
  copyFileSync(join(dir, "ed.pub"), join(dir, "trust/ed.pub"));
  const made = zb("image", "create", "--compatible", "c", "--version", "1", "--serial", "1", "--rootfs", "rootfs.img", "--key", "ed", "--chunk-size", "65536", "-o", "a.zbi");
  expect(made.err).toBe("");
  expect(made.code).toBe(0);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test("stdin a non-blocking pipe whose writer starts late: installed whole (before: exit 5, EAGAIN)", () => {
  // python3 (listed in .ci/setup) makes the pipe, sets O_NONBLOCK on its read end, starts zb on it and
  // writes the image only after 0.5 s, so zb's first reads find the pipe empty.
  const driver = `
import os, subprocess, sys, time
r, w = os.pipe()
os.set_blocking(r, False)
p = subprocess.Popen(sys.argv[1:], stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
os.close(r)
time.sleep(0.5)
with open("a.zbi", "rb") as f:
    os.set_blocking(w, True)
    os.write(w, f.read())
os.close(w)
out, err = p.communicate(timeout=60)
sys.stdout.write(str(p.returncode) + "\\n" + out.decode() + err.decode())
`;
  const p = Bun.spawnSync(["/usr/bin/python3", "-c", driver, BIN, "image", "install", "-", "--trust", "trust", "--payload", "rootfs", "--to", "nb.img", "--progress=none"], { cwd: dir, timeout: 90_000 });
  const [code, ...said] = p.stdout.toString().split("\n");
  expect({ code, said: said.join("\n").replace(/ in [0-9.]+ s/, "") }).toEqual({ code: "0", said: "zb image install: rootfs → nb.img: 700000 bytes verified and written\n" });
  expect(sha256(join(dir, "nb.img"))).toBe(rootSha);
});

test("- < FILE that zb may not open by path (root's 0600 file, zb as nobody): verified through fd 0 (before: exit 5, /proc/self/fd/0 permission denied)", () => {
  // Everything but the image readable by nobody; the image only through the descriptor root's shell opened.
  // The binary too, copied here: the clone it was built in may sit under a folder nobody cannot enter (/root).
  chmodSync(dir, 0o755);
  copyFileSync(BIN, join(dir, "zb"));
  chmodSync(join(dir, "zb"), 0o755);
  copyFileSync(join(dir, "a.zbi"), join(dir, "private.zbi"));
  chmodSync(join(dir, "private.zbi"), 0o600);
  const p = Bun.spawnSync(["bash", "-c", `exec setpriv --reuid=65534 --regid=65534 --clear-groups ./zb image verify - --trust trust < private.zbi`], { cwd: dir, timeout: 30_000 });
  expect({ code: p.exitCode, err: p.stderr.toString() }).toEqual({ code: 0, err: "" });
  expect(p.stdout.toString()).toStartWith("zb image verify: stdin: OK: c 1 serial 1");
});

test("--resume of a complete journal whose target is now a FIFO: refused at once, the journal untouched (before: hung in open(2))", () => {
  expect(zb("image", "install", "a.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "fifo.img", "--journal", "fifo.j", "--progress=none").code).toBe(0);
  const journal = readFileSync(join(dir, "fifo.j"), "utf8");
  rmSync(join(dir, "fifo.img"));
  expect(Bun.spawnSync(["mkfifo", join(dir, "fifo.img")]).exitCode).toBe(0);
  const r = zb("image", "install", "a.zbi", "--trust", "trust", "--payload", "rootfs", "--to", "fifo.img", "--journal", "fifo.j", "--resume", "--progress=none");
  expect({ code: r.code, err: r.err.split("\n")[0] }).toEqual({ code: 5, err: "zb: cannot use fifo.img as an install target: not a regular file or block device" });
  expect(JSON.parse(readFileSync(join(dir, "fifo.j"), "utf8")).state).toBe(JSON.parse(journal).state);
});
