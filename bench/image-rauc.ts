/**
 * Side by side: `zb image install` against RAUC (`rauc install`, Debian's
 * rauc 1.8) writing the same 1 GiB rootfs into the same file-backed slot.
 *
 *   node_modules/.bin/bun bench/image-rauc.ts [--runs N] [--zb PATH] [--size-mib N]
 *
 * Needs: apt-get install -y rauc squashfs-tools dbus openssl zstd (not
 * rauc-service: the service runs on a private session bus), root,
 * /dev/loop-control and squashfs in the kernel (RAUC loop-mounts the
 * bundle). When any of that is missing the script says exactly what and
 * exits 1 (the benchmark could not run).
 *
 * RAUC set-up, all inside the temp folder:
 *  - an openssl-made CA and a signing certificate (no extendedKeyUsage:
 *    RAUC checks the default S/MIME purpose);
 *  - a plain-format bundle: `rauc bundle` of {manifest.raucm, rootfs.img}
 *    with `--mksquashfs-args "-comp zstd -Xcompression-level 3 -b 1M"`, the
 *    closest squashfs gets to zb's zstd level 3 in 4 MiB chunks (squashfs
 *    blocks are at most 1 MiB). The verity format needs dm-verity
 *    (/dev/mapper/control), checked and reported;
 *  - system.conf: compatible "bench", bootloader=noop, two raw slots with
 *    bootnames A and B; A is the booted one (`rauc service
 *    --override-boot-slot=A`), so B — the shared target file — is written;
 *  - a private D-Bus: `dbus-daemon --session`, and `rauc service` on it
 *    (DBUS_STARTER_BUS_TYPE=session); `rauc install` is the client.
 * The target file is preallocated and overwritten in place by both tools
 * (RAUC opens the slot O_WRONLY without truncation, as zb does), page cache
 * warm for both inputs, `sync` + 1 s disk silence before every run.
 *
 * There is no target for this comparison; the ratio is reported.
 * Exit status 0 unless the benchmark could not run.
 */
import * as fs from "node:fs";
import { join } from "node:path";
import {
  buildRootfs, createZbi, die, extractRange, GiB, machine, makeKeys, mbps, MiB, mustRun, q, run, scribble, setBenchName, sha256File,
  table, timeAlternating, warm, workDir, zbPath, type Command, countOption
} from "./image-fixture.ts";

setBenchName("image-rauc bench");
const args = process.argv.slice(2);
const opt = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const RUNS = countOption(args, "--runs", 5, 3);
const SIZE = Number(opt("--size-mib") ?? 1024) * MiB;
const ZB = zbPath(opt("--zb"));

/** Why RAUC cannot run here, or null. */
function raucBlocker(): string | null {
  const missing = [
    ["rauc", "rauc"], ["mksquashfs", "squashfs-tools"], ["dbus-daemon", "dbus"], ["openssl", "openssl"], ["zstd", "zstd"],
  ].filter(([b]) => !Bun.which(b!, { PATH: `${process.env.PATH}:/usr/sbin:/sbin` }));
  if (missing.length) return `missing ${missing.map(([b, p]) => `${b} (apt-get install -y ${p})`).join(", ")}`;
  if (process.getuid?.() !== 0) return "RAUC must run as root (it loop-mounts the bundle)";
  if (!fs.existsSync("/dev/loop-control")) return "no /dev/loop-control: RAUC mounts the bundle's squashfs through a loop device, and this machine (container) has none";
  const fsList = fs.readFileSync("/proc/filesystems", "latin1");
  if (!/\bsquashfs\b/.test(fsList) && run(["modprobe", "squashfs"]).status !== 0) return "the kernel has no squashfs (not in /proc/filesystems, modprobe squashfs failed)";
  return null;
}

const blocker = raucBlocker();
if (blocker) {
  console.log(`RAUC could not be run on this machine: ${blocker}`);
  console.log(JSON.stringify({ bench: "image-rauc", date: new Date().toISOString(), machine: machine(), result: "NOT RUN", reason: blocker }));
  process.exit(1);
}

const children: Bun.Subprocess[] = [];
/** Still running (a zombie awaiting its reaping counts as ended)? */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, "latin1"));
  } catch {
    return false;
  }
}
/** SIGTERM the service and the bus (ours, by PID) and wait up to 5 s for each to exit. */
const stopChildren = () => {
  for (const c of children.reverse()) {
    try {
      c.kill("SIGTERM");
    } catch {
      /* gone */
    }
    for (let i = 0; i < 50 && running(c.pid); i++) Bun.sleepSync(100);
  }
};
/** A bundle RAUC left mounted (only if its service was killed mid-install). */
function unmountLeftovers(dir: string): void {
  for (const line of fs.readFileSync("/proc/mounts", "latin1").split("\n")) {
    const mnt = line.split(" ")[1];
    if (mnt?.startsWith(dir + "/")) run(["umount", mnt]);
  }
}
const work: { dir: string; cleanup(): void } = workDir("zb-bench-rauc-", 3.5 * SIZE + GiB, undefined, [
  () => stopChildren(),
  () => unmountLeftovers(work.dir),
]);

try {
  console.log(`machine: ${machine()}; ${mustRun(["rauc", "--version"], "rauc --version").out.trim()}, ${mustRun(["mksquashfs", "-version"], "mksquashfs -version").out.split("\n")[0]!.trim()}`);
  console.log(`building a ${SIZE / MiB} MiB ext4 rootfs from system files …`);
  const rootfs = buildRootfs(work.dir, "rootfs", SIZE);
  console.log(`  ${(rootfs.filled / MiB).toFixed(0)} MiB of files (${rootfs.seconds.toFixed(1)} s)`);
  const rawSha = sha256File(rootfs.path);
  const keys = makeKeys(ZB, work.dir);
  const img = createZbi(ZB, rootfs.path, keys, join(work.dir, "rootfs.zbi"), "zstd");
  console.log(`  zb image: ${img.size} bytes (zstd level 3, 4 MiB chunks), made in ${img.seconds.toFixed(1)} s`);
  const frames = join(work.dir, "rootfs.frames.zst");
  extractRange(img.path, img.dataOffset, img.storedSize, frames);

  // ---- PKI
  const pki = join(work.dir, "pki");
  fs.mkdirSync(pki);
  const ca = join(pki, "ca.cert.pem");
  mustRun(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", join(pki, "ca.key.pem"), "-out", ca, "-subj", "/CN=zb-bench RAUC CA", "-days", "3650",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"], "openssl req (CA)");
  mustRun(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", join(pki, "signer.key.pem"), "-out", join(pki, "signer.csr"), "-subj", "/CN=zb-bench RAUC signer"], "openssl req (signer)");
  fs.writeFileSync(join(pki, "ext.cnf"), "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n");
  mustRun(["openssl", "x509", "-req", "-in", join(pki, "signer.csr"), "-CA", ca, "-CAkey", join(pki, "ca.key.pem"), "-CAcreateserial", "-days", "3650",
    "-extfile", join(pki, "ext.cnf"), "-out", join(pki, "signer.cert.pem")], "openssl x509 (signer)");

  // ---- bundle
  const content = join(work.dir, "bundle-content");
  fs.mkdirSync(content);
  fs.linkSync(rootfs.path, join(content, "rootfs.img"));
  fs.writeFileSync(join(content, "manifest.raucm"), "[update]\ncompatible=bench\nversion=1\n\n[bundle]\nformat=plain\n\n[image.rootfs]\nfilename=rootfs.img\n");
  const bundle = join(work.dir, "rootfs.raucb");
  const squashArgs = "-comp zstd -Xcompression-level 3 -b 1M";
  const b = mustRun(["rauc", "bundle", `--cert=${join(pki, "signer.cert.pem")}`, `--key=${join(pki, "signer.key.pem")}`, `--keyring=${ca}`, `--mksquashfs-args=${squashArgs}`, content, bundle], "rauc bundle");
  fs.rmSync(content, { recursive: true });
  const bundleSize = fs.statSync(bundle).size;
  console.log(`  $ rauc bundle --cert … --key … --mksquashfs-args="${squashArgs}" content rootfs.raucb   (plain format, ${bundleSize} bytes, ${b.seconds.toFixed(1)} s)`);
  const verityNote = fs.existsSync("/dev/mapper/control") ? "dm-verity present (verity format not timed here)" : "verity format not possible here: no /dev/mapper/control (device-mapper) in this VM/container";
  console.log(`  ${verityNote}`);

  // ---- system.conf, slots, D-Bus, service
  const target = join(work.dir, "slot-b.img");
  const slotA = join(work.dir, "slot-a.img");
  fs.writeFileSync(slotA, "");
  fs.truncateSync(slotA, SIZE);
  scribble(target, SIZE);
  fs.mkdirSync(join(work.dir, "mnt"));
  fs.mkdirSync(join(work.dir, "data"));
  const conf = join(work.dir, "system.conf");
  fs.writeFileSync(conf, [
    "[system]", "compatible=bench", "bootloader=noop", `mountprefix=${join(work.dir, "mnt")}`, `data-directory=${join(work.dir, "data")}`, "",
    "[keyring]", `path=${ca}`, "",
    "[slot.rootfs.0]", `device=${slotA}`, "type=raw", "bootname=A", "",
    "[slot.rootfs.1]", `device=${target}`, "type=raw", "bootname=B", "",
  ].join("\n"));
  const bus = Bun.spawn(["dbus-daemon", "--session", "--nofork", "--nopidfile", `--address=unix:path=${join(work.dir, "bus")}`, "--print-address=1"], { stdout: "pipe", stderr: "pipe" });
  children.push(bus);
  const reader = bus.stdout.getReader();
  const first = await Promise.race([reader.read(), Bun.sleep(5000).then(() => null)]);
  const address = first && !first.done ? new TextDecoder().decode(first.value).split("\n")[0]!.trim() : "";
  if (!address) die("dbus-daemon --session printed no address within 5 s");
  const env = { ...process.env, DBUS_SESSION_BUS_ADDRESS: address, DBUS_STARTER_BUS_TYPE: "session" };
  const serviceLog = join(work.dir, "rauc-service.log");
  const logFd = fs.openSync(serviceLog, "a");
  const svc = Bun.spawn(["rauc", "service", `--conf=${conf}`, "--override-boot-slot=A"], { env, stdout: logFd, stderr: logFd });
  children.push(svc);
  let up = false;
  for (let i = 0; i < 100 && !up; i++) {
    Bun.sleepSync(100);
    up = run(["rauc", "status", `--conf=${conf}`], { env }).status === 0;
  }
  if (!up) die(`rauc service did not come up on the private D-Bus within 10 s:\n${fs.readFileSync(serviceLog, "latin1").trim()}`);

  const commands: (Command & { short: string })[] = [
    { short: "zb", label: "zb image install", cmd: [ZB, "image", "install", img.path, "--payload", "rootfs", "--to", target, "--trust", keys.trust, "--progress=none"], prepare: () => fs.rmSync(`${target}.zb-journal`, { force: true }) },
    { short: "rauc", label: "rauc install (plain bundle)", cmd: ["env", `DBUS_SESSION_BUS_ADDRESS=${address}`, "DBUS_STARTER_BUS_TYPE=session", "rauc", "install", bundle] },
    { short: "zstd", label: "zstd -dc > file (reference)", cmd: ["bash", "-c", `zstd -qdc ${q(frames)} 1<> ${q(target)}`] },
  ];
  for (const c of commands) console.log(`  $ ${c.cmd[0] === "bash" ? c.cmd[2] : c.cmd.join(" ")}`);

  // ---- each must write the rootfs
  warm(img.path, bundle, frames);
  for (const c of commands) {
    scribble(target, SIZE);
    c.prepare?.();
    const r = mustRun(c.cmd, c.label);
    if (sha256File(target) !== rawSha) die(`${c.label} did not write the rootfs into ${target}:\n${r.out}${r.err}\n${fs.readFileSync(serviceLog, "latin1").split("\n").slice(-15).join("\n")}`);
  }

  const s = timeAlternating(commands, RUNS);
  const by = Object.fromEntries(commands.map((c, i) => [c.short, s[i]!]));
  const phases = raucPhases(fs.readFileSync(serviceLog, "latin1"));
  console.log(`\ninstall into a file-backed slot, page cache warm, in place: ${SIZE} bytes raw, ${RUNS} alternating runs each; MB/s of raw output`);
  console.log(table(commands.map((c) => ({ label: c.label, s: by[c.short]!, bytes: SIZE }))));
  console.log(`sizes: zb image ${img.size} bytes; RAUC bundle ${bundleSize} bytes (squashfs zstd 3, 1 MiB blocks)`);
  if (phases) console.log(`rauc service log, last install: ${phases}`);
  const ratio = by.rauc!.median / by.zb!.median;
  console.log(`speed zb / rauc (medians): ${ratio.toFixed(3)}x   (no target; > 1 means zb is faster)`);
  console.log(JSON.stringify({
    bench: "image-rauc", date: new Date().toISOString(), machine: machine(), rawBytes: SIZE, runs: RUNS, zbiBytes: img.size, bundleBytes: bundleSize,
    bundleFormat: "plain", mksquashfsArgs: squashArgs, verity: verityNote,
    medianS: Object.fromEntries(commands.map((c) => [c.short, +by[c.short]!.median.toFixed(4)])),
    MBps: Object.fromEntries(commands.map((c) => [c.short, +mbps(SIZE, by[c.short]!.median).toFixed(1)])),
    raucPhases: phases, ratioZbOverRauc: +ratio.toFixed(3), result: "RUN",
  }));
} finally {
  work.cleanup();
}

/** Durations between the service's log lines of the last install. */
function raucPhases(log: string): string | null {
  const lines = log.split("\n").filter((l) => /^rauc-Message: \d\d:\d\d:\d\d\.\d{3}:/.test(l));
  const start = lines.map((l, i) => (/installing .*: started/.test(l) ? i : -1)).filter((i) => i >= 0).pop();
  if (start === undefined) return null;
  const t = (l: string) => {
    const [h, m, sec] = l.slice(14, 26).split(":").map(Number);
    return h! * 3600 + m! * 60 + sec!;
  };
  const last = lines.slice(start);
  const at = (re: RegExp) => last.find((l) => re.test(l));
  const marks: [string, RegExp][] = [
    ["started", /: started/], ["verify signature (hashes the whole bundle)", /Verified .*signature/], ["loop-mount squashfs", /Configured loop device|Mounting bundle/],
    ["copy image to slot (squashfs read + write + fsync)", /Marking target slot .* as bootable/], ["finished", /: finished/],
  ];
  const parts: string[] = [];
  let prev: number | null = null;
  for (const [name, re] of marks) {
    const l = at(re);
    if (!l) continue;
    if (prev !== null) parts.push(`${name} ${((t(l) - prev) * 1000).toFixed(0)} ms`);
    prev = t(l);
  }
  return parts.join(", ");
}
