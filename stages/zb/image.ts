/**
 * `zb image create|sign|info|verify|install`: signed images (docs/image-format.md).
 */
import { statSync } from "node:fs";
import { onlyThese, parseArgs, type ParsedArgs } from "../../lib/cli/args.ts";
import { isZbError, ZbError } from "../../lib/errors.ts";
import { createImage, DEFAULT_CHUNK, DEFAULT_LEVEL, resignImage } from "../../lib/image/create.ts";
import type { PayloadInput } from "../../lib/image/spool.ts";
import { install, type ProgressEvent } from "../../lib/image/install.ts";
import type { Encoding } from "../../lib/image/manifest.ts";
import { openImage, type Policy } from "../../lib/image/reader.ts";
import { keySigner, loadTrustDir, type Signer } from "../../lib/image/sign.ts";
import { DEFAULT_MIN_SPEED, DEFAULT_RETRIES, sourceFor, stoppable, type HttpOptions, type ImageSource, type RetryEvent } from "../../lib/image/source.ts";
import { verifyImage } from "../../lib/image/verify.ts";
import { HostSys } from "../../lib/sys/sys.ts";
import { err, out } from "../output.ts";
import { subcommand } from "../common.ts";
import { untilStopped } from "../interrupt.ts";
import { bar, jsonEvent, progressMode, type ProgressMode } from "../progress.ts";
import { readPrivateKey } from "./key.ts";

export const DEFAULT_TRUST = "/etc/zb/trust";

const POLICY = `  --trust DIR          public keys (*.pem, *.pub) to trust (default ${DEFAULT_TRUST})
  --required N         distinct trusted signatures needed (default 1)
  --compatible C       refuse images for another product
  --serial-floor N     refuse images whose serial is below N (anti-rollback)
  --timeout S          a URL source fails when the server sends nothing for S seconds (default 60)
  --min-speed B        ... or fewer than B bytes a second over those S seconds (a trickle;
                       default ${DEFAULT_MIN_SPEED}; 0: no limit); both are retried as a broken link is
  --retries N          a URL download that breaks off, or whose request fails as a link does
                       (refused, reset, a stall, HTTP 502/503/504), is asked for again from
                       where it stopped, up to N times in a row after waits of 1, 2, 4, 8,
                       16, then 30 s (default ${DEFAULT_RETRIES}; 0: fail at once)`;

const USAGE: Record<string, string> = {
  create: `zb image create --compatible C --version V --serial N [--rootfs IMG] [--boot DIR]
                --key K [--key K2 …] -o OUT.zbi [--encoding zstd|none] [--level L] [--chunk-size BYTES]
                [--progress=bar|json|none] [--json]
  Build and sign an image: the rootfs image file and/or the boot folder, each cut into
  chunks of ${DEFAULT_CHUNK} bytes (--chunk-size: a power of two from 64 KiB to 64 MiB),
  one zstd frame each (level ${DEFAULT_LEVEL}; --level 1…22).`,
  sign: `zb image sign IN.zbi|URL|- --key K [--key K2 …] -o OUT.zbi --trust DIR|--no-verify
                [--required N] [--compatible C] [--serial-floor N] [--json] [--timeout S] [--min-speed B] [--retries N]
  Add signatures; payload bytes are copied unchanged. OUT may be IN (re-signed in place);
  an existing OUT that is not an image is never replaced. The signatures the image has
  are checked first, as verify checks them, against the public keys in --trust DIR (no
  default here; --required, --compatible and --serial-floor as for verify): a new
  signature vouches for the manifest as it is, so one added to an image edited since it
  was signed would make the edit verify with the new key alone. --no-verify skips that
  check, for an image you know to be yours whose signers' public keys you do not have.`,
  info: `zb image info IMAGE|URL|- [--json] [--timeout S] [--min-speed B] [--retries N]
  The manifest and who signed it, without checking trust.`,
  verify: `zb image verify IMAGE|URL|- [--deep] [--progress=bar|json|none] [--json]
${POLICY}
  Check signatures, compatible, serial floor and every chunk's SHA-256; --deep also
  decompresses every chunk and checks the raw SHA-256. Exit status names the failure
  class (docs/exit-codes.md).`,
  install: `zb image install IMAGE|URL|- --payload NAME --to FILE|BLOCKDEV [--journal FILE] [--resume]
                [--read-back] [--progress=bar|json|none] [--json]
${POLICY}
  Verify everything before writing anything; then each chunk is checked before it is
  decompressed and written, and the whole payload at the end. A --to FILE that does not
  exist is created, never under /dev but /dev/shm (a missing device: exit 5).
  The journal (default TARGET.zb-journal for a file; required for a block device) says
  how far it got: --resume continues there (HTTP sources use Range; no journal: from
  the start). Only a journal in state "complete" means installed. --read-back then
  reads the payload back from the medium, past the page cache, and fails (exit 26)
  when the device did not keep it.`,
};

const SPECS = {
  compatible: { value: true }, version: { value: true }, serial: { value: true }, rootfs: { value: true }, boot: { value: true },
  key: { value: true, multiple: true }, output: { short: "o", value: true }, encoding: { value: true }, level: { value: true },
  "chunk-size": { value: true }, trust: { value: true }, required: { value: true }, "serial-floor": { value: true },
  deep: {}, payload: { value: true }, to: { value: true }, journal: { value: true }, resume: {}, "read-back": {}, progress: { value: true },
  json: {}, help: { short: "h" }, timeout: { value: true }, "min-speed": { value: true }, retries: { value: true }, "no-verify": {},
};

const POLICY_OPTIONS = ["trust", "required", "compatible", "serial-floor"];
const SOURCE_OPTIONS = ["timeout", "min-speed", "retries"];
/** Which options each subcommand reads, and how many positional arguments. */
const TAKES = {
  create: [["compatible", "version", "serial", "rootfs", "boot", "key", "output", "encoding", "level", "chunk-size", "progress", "json"], 0],
  sign: [["key", "output", ...POLICY_OPTIONS, "no-verify", "json", ...SOURCE_OPTIONS], 1],
  info: [["json", ...SOURCE_OPTIONS], 1],
  verify: [[...POLICY_OPTIONS, "deep", "progress", "json", ...SOURCE_OPTIONS], 1],
  install: [[...POLICY_OPTIONS, "payload", "to", "journal", "resume", "read-back", "progress", "json", ...SOURCE_OPTIONS], 1],
} as const satisfies Record<string, readonly [readonly string[], number]>;

export async function imageMain(argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  const names = Object.keys(USAGE) as (keyof typeof USAGE)[];
  const sub = subcommand("image", first, names, `usage:\n${Object.values(USAGE).map((u) => "  " + u).join("\n\n")}\n`, names.join(", "));
  if (sub === null) return 0;
  const args = parseArgs(rest, SPECS, `zb image ${sub}`, { repeats: "refuse" });
  if (args.flags.has("help")) {
    out(`usage: ${USAGE[sub]}\n`);
    return 0;
  }
  const [options, positionals] = TAKES[sub as keyof typeof TAKES];
  onlyThese(args, [...options, "help"], positionals, `zb image ${sub}`);
  // A failure with --json or --progress=json also ends stdout as a JSON line: stages/run.ts.
  if (sub === "create") return await create(args);
  if (sub === "sign") return await sign(args);
  if (sub === "info") return await info(args);
  if (sub === "verify") return await verify(args);
  return await installCmd(args);
}

async function create(args: ParsedArgs): Promise<number> {
  const encoding = (args.values.get("encoding") ?? "zstd") as Encoding;
  if (encoding !== "zstd" && encoding !== "none") usage("create", "--encoding must be zstd or none");
  const payloads: PayloadInput[] = [];
  if (args.values.has("boot")) payloads.push({ name: "boot", kind: "boot", encoding, from: { dir: args.values.get("boot")! } });
  if (args.values.has("rootfs")) payloads.push({ name: "rootfs", kind: "rootfs", encoding, from: { file: args.values.get("rootfs")! } });
  if (payloads.length === 0) usage("create", "give --rootfs IMG and/or --boot DIR");
  return await withSigners(args, "create", (signers) => createWith(args, payloads, signers));
}

async function createWith(args: ParsedArgs, payloads: PayloadInput[], signers: Signer[]): Promise<number> {
  const need = (k: string) => args.values.get(k) ?? usage("create", `--${k} is required`);
  const mode = progressMode(args.values.get("progress"));
  const fields = { compatible: need("compatible"), version: need("version"), serial: number(need("serial"), "--serial") };
  const output = need("output");
  const b = mode === "bar" ? bar("create") : null;
  const m = await untilStopped(`create ${output}`, (signal) => createImage({
    ...fields, payloads, signers, keyFiles: keys(args, "create"), output, signal,
    ...(args.values.has("level") ? { level: number(args.values.get("level")!, "--level") } : {}),
    ...(args.values.has("chunk-size") ? { chunkSize: number(args.values.get("chunk-size")!, "--chunk-size") } : {}),
    progress: (e) => (mode === "json" ? jsonEvent({ type: "progress", payload: e.payload, rawBytes: e.rawBytes, rawTotal: e.rawTotal }) : b?.update(e.allBytes, e.allTotal)),
  }), { after: () => b?.finish() }); // a failure's message goes on a line of its own
  // With --progress=json the stream stays newline-delimited JSON to its end: the result is a JSON line too.
  if (args.flags.has("json") || mode === "json") out(JSON.stringify({ type: "result", ok: true, output, manifest: m }) + "\n");
  else out(`zb image create: ${output}: ${m.compatible} ${m.version} serial ${m.serial}, ${m.payloads.map((p) => `${p.name} ${p.raw.size} → ${p.stored.size} bytes`).join(", ")}\n`);
  return 0;
}

async function sign(args: ParsedArgs): Promise<number> {
  const input = args.positional[0] ?? usage("sign", "no input image given");
  const output = args.values.get("output") ?? usage("sign", "-o OUT is required");
  // No default trust folder here: a publisher's machine is no device, and whatever its
  // /etc/zb/trust holds says nothing about who signed this image. The caller names the keys.
  const given = POLICY_OPTIONS.filter((o) => args.values.has(o));
  if (args.flags.has("no-verify") && given.length > 0) usage("sign", `--no-verify checks nothing, so --${given[0]} has no use`);
  if (!args.flags.has("no-verify") && !args.values.has("trust")) {
    usage("sign", "give --trust DIR to check the signatures the image has before adding to them (or --no-verify to skip that check)");
  }
  const check = args.flags.has("no-verify") ? ({ unverified: true } as const) : { policy: policy(args) };
  return await withSigners(args, "sign", (signers) => signWith(args, input, output, signers, check));
}

async function signWith(args: ParsedArgs, input: string, output: string, signers: Signer[], check: { policy: Policy } | { unverified: true }): Promise<number> {
  const src = imageSource(input, source(args));
  // A stopped source fails the copy like a broken one: the writer removes its .OUT.zb-new, an older OUT stays.
  const sigs = await untilStopped(`sign ${output}`, (signal) => resignImage(stoppable(src, signal), signers, output, check, { keyFiles: keys(args, "sign") }));
  // "type"/"ok" as in create, verify and install: a script reads every image command's last line the same way.
  const json = () => JSON.stringify({ type: "result", ok: true, output, signatures: sigs.map((s) => ({ alg: s.alg, keyId: s.keyId })) }) + "\n";
  out(args.flags.has("json") ? json() : `zb image sign: ${output}: ${count(sigs.length, "signature")}\n`);
  return 0;
}

async function info(args: ParsedArgs): Promise<number> {
  const input = args.positional[0] ?? usage("info", "no image given");
  const src = imageSource(input, source(args));
  // Only the header is read, but from a stdin or a server that may be slow to send it.
  const img = await untilStopped(`read the image header from ${src.name}`, async (signal) => openImage(await stoppable(src, signal).open(0), { unverified: true }));
  img.close();
  const { manifest: m, signatures } = img.header;
  if (args.flags.has("json")) {
    out(JSON.stringify({ manifest: m, signatures: signatures.map((s) => ({ alg: s.alg, keyId: s.keyId })) }, null, 2) + "\n");
    return 0;
  }
  const lines = [
    `compatible: ${m.compatible}`, `version:    ${m.version}`, `serial:     ${m.serial}`, `created:    ${m.created}`, `chunk size: ${m.chunkSize}`,
    ...m.payloads.map((p) => `payload:    ${p.name} (${p.kind}, ${p.encoding}): ${p.raw.size} bytes raw, ${p.stored.size} stored, ${count(p.chunks.length, "chunk")}, raw sha256 ${p.raw.sha256}`),
    ...signatures.map((s) => `signature:  ${s.alg} ${s.keyId}`),
  ];
  out(lines.join("\n") + "\n");
  return 0;
}

async function verify(args: ParsedArgs): Promise<number> {
  const input = args.positional[0] ?? usage("verify", "no image given");
  const mode = progressMode(args.values.get("progress"));
  const b = mode === "bar" ? bar("verify") : null;
  const src = imageSource(input, source(args, mode));
  // src.name: a URL without its credentials or query.
  const r = await untilStopped(`verify ${src.name}`, (signal) => verifyImage(stoppable(src, signal), policy(args), {
    deep: args.flags.has("deep"),
    progress: (done, total) => (mode === "json" ? jsonEvent({ type: "progress", storedBytes: done, storedTotal: total }) : b?.update(done, total)),
  }), { after: () => b?.finish() });
  if (args.flags.has("json") || mode === "json") out(JSON.stringify({ type: "result", ok: true, ...r }) + "\n");
  else out(`zb image verify: ${src.name}: OK: ${r.compatible} ${r.version} serial ${r.serial}, signed by ${r.signedBy.join(", ")}; ${r.payloads.map((p) => `${p.name} ${count(p.chunks, "chunk")}`).join(", ")}${args.flags.has("deep") ? " (deep)" : ""}\n`);
  return 0;
}

async function installCmd(args: ParsedArgs): Promise<number> {
  const input = args.positional[0] ?? usage("install", "no image given");
  const payload = args.values.get("payload") ?? usage("install", "--payload NAME is required");
  const target = args.values.get("to") ?? usage("install", "--to FILE|BLOCKDEV is required");
  const sys = new HostSys();
  const isDevice = sys.stat(target)?.kind === "block";
  const journal = args.values.get("journal") ?? (isDevice ? usage("install", "--journal FILE is required for a block device") : `${target}.zb-journal`);
  const mode = progressMode(args.values.get("progress"));
  const b = mode === "bar" ? bar(`install ${payload}`) : null;
  let back: ReturnType<typeof bar> | null = null;
  const onProgress = (e: ProgressEvent) => {
    if (mode === "json") jsonEvent(e);
    else if (b && e.type === "progress") b.update(e.rawBytes, e.rawTotal);
    else if (b && e.type === "read-back") {
      if (!back) b.finish();
      (back ??= bar(`read back ${payload}`)).update(e.rawBytes, e.rawTotal);
    }
  };
  const readBack = args.flags.has("read-back");
  if (args.flags.has("resume") && !sys.stat(journal)) err(`zb image install: no journal at ${journal}: installing from the start\n`);
  const src = imageSource(input, source(args, mode));
  let journaled = false;
  const r = await untilStopped(
    `install ${payload}`,
    (signal) => install(sys, stoppable(src, signal), policy(args), { payload, target, journal, resume: args.flags.has("resume"), readBack, progress: onProgress, signal, onJournal: () => (journaled = true), onFreshStart: (why) => err(`zb image install: ${why}: installing from the start\n`) }),
    { after: () => (back ?? b)?.finish() },
  ).catch((e: unknown) => {
    // The journal keeps what was made durable: the same command with --resume continues from there.
    // Stopped before this run wrote it (while the header was read), there is nothing to continue:
    // a journal there is an older run's, perhaps of another image, which --resume would refuse.
    if (isZbError(e, "INTERRUPTED", "TERMINATED", "HANGUP") && journaled) {
      throw new ZbError(e.code, e.message, { cause: e, hint: "run the same command with --resume to continue where it stopped" });
    }
    throw e;
  });
  if (args.flags.has("json") || mode === "json") out(JSON.stringify({ type: "result", ok: true, ...r }) + "\n");
  else out(`zb image install: ${payload} → ${target}: ${r.alreadyInstalled ? "already installed" : `${r.rawSize} bytes verified and written${r.readBack ? " and read back" : ""} in ${r.seconds.toFixed(1)} s${r.resumedFrom ? ` (resumed at chunk ${r.resumedFrom})` : ""}`}\n`);
  if (r.readBack === "cached") err(`zb image install: warning: ${target} was read back through the page cache (its file system refuses O_DIRECT and posix_fadvise failed)\n`);
  return 0;
}

function policy(args: ParsedArgs): Policy {
  const p: Policy = { trust: loadTrustDir(new HostSys(), args.values.get("trust") ?? DEFAULT_TRUST) };
  if (args.values.has("required")) {
    p.required = number(args.values.get("required")!, "--required");
    if (p.required < 1) throw new ZbError("USAGE", "cannot use --required 0: at least one trusted signature is always required");
  }
  if (args.values.has("compatible")) p.compatible = args.values.get("compatible")!;
  if (args.values.has("serial-floor")) p.serialFloor = number(args.values.get("serial-floor")!, "--serial-floor");
  return p;
}

/**
 * Source options: the HTTP idle limit (--timeout SECONDS), the low-speed
 * limit over the same span (--min-speed BYTES a second) and the
 * reconnections (--retries N), each announced as a warning on stderr, or as
 * a `retry` event with --progress=json.
 */
function source(args: ParsedArgs, mode: ProgressMode = "none"): HttpOptions {
  const o: HttpOptions = { retries: DEFAULT_RETRIES };
  const t = args.values.get("timeout");
  if (t !== undefined) {
    const n = number(t, "--timeout");
    if (n < 1) throw new ZbError("USAGE", "cannot use --timeout 0: give at least 1 second");
    if (n > 2147483) throw new ZbError("USAGE", `cannot use --timeout ${n}: the longest idle time is 2147483 s (24.8 days)`);
    o.idleSeconds = n;
  }
  const speed = args.values.get("min-speed");
  if (speed !== undefined) o.minSpeed = number(speed, "--min-speed");
  const r = args.values.get("retries");
  if (r !== undefined) {
    o.retries = number(r, "--retries");
    if (o.retries > 100) throw new ZbError("USAGE", `cannot use --retries ${o.retries}: at most 100 (each waits up to 30 s)`);
  }
  o.onRetry = (e: RetryEvent) => {
    if (mode === "json") jsonEvent(e);
    // A bar is mid-line: the warning goes on a line of its own, and the bar redraws after it.
    else err(`${mode === "bar" ? "\n" : ""}zb: warning: the download of ${e.url} broke off at byte ${e.at} (${e.why}); asking again in ${e.waitS} s (retry ${e.attempt} of ${e.of})\n`);
  };
  return o;
}

/**
 * Run `fn` with a signer per --key; every private key read is wiped when it
 * ends, also when a later key file fails to read.
 * @throws {ZbError} USAGE without --key; IO, KEY_INVALID for a key file; whatever `fn` throws
 */
async function withSigners(args: ParsedArgs, sub: "create" | "sign", fn: (signers: Signer[]) => Promise<number>): Promise<number> {
  const signers: Signer[] = [];
  try {
    for (const k of keys(args, sub)) signers.push(keySigner(readPrivateKey(k)));
    return await fn(signers);
  } finally {
    for (const s of signers) s.close?.();
  }
}

function keys(args: ParsedArgs, sub: "create" | "sign"): string[] {
  const k = [...new Set(args.multi.get("key") ?? [])];
  if (k.length === 0) usage(sub, "give at least one --key FILE (an image is always signed)");
  return k;
}

/**
 * sourceFor, with a folder refused by name: read as a file, it fails only
 * once read, as "cannot read the image: is a directory", without the path.
 * @throws {ZbError} IO for a folder; USAGE as sourceFor
 */
function imageSource(spec: string, opts: HttpOptions): ImageSource {
  if (spec !== "-" && !/^https?:\/\//i.test(spec) && isFolder(spec)) {
    throw new ZbError("IO", `cannot read image ${spec}: it is a directory`, { hint: "give the image file (.zbi), a URL, or - for stdin" });
  }
  return sourceFor(spec, opts);
}

/** Anything else (missing, unreadable) is left to the source to report as it does. */
function isFolder(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** "1 chunk", "2 chunks". */
const count = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;

function number(text: string, what: string): number {
  if (!/^\d{1,15}$/.test(text)) throw new ZbError("USAGE", `cannot use ${what} ${JSON.stringify(text)}: expected a whole number`);
  return Number(text);
}

function usage(sub: string, why: string): never {
  throw new ZbError("USAGE", `cannot run zb image ${sub}: ${why}`, { hint: `see \`zb image ${sub} --help\`` });
}
