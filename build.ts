/**
 * Compile the one multi-call binary for both targets:
 *   dist/zb-x64    (bun-linux-x64)
 *   dist/zb-arm64  (bun-linux-arm64, for the Pi and the QEMU guest)
 *
 * Bun fetches the arm64 runtime it embeds from the npm registry
 * (@oven/bun-linux-aarch64, same version as the pinned `bun` package), so no
 * download script is involved.
 *
 * Usage: bun build.ts [--target x64|arm64] [--no-bytecode]
 */
import { mkdirSync } from "node:fs";

const TARGETS = { x64: "bun-linux-x64", arm64: "bun-linux-arm64" } as const;
type Target = keyof typeof TARGETS;

const args = process.argv.slice(2);
const only = args.includes("--target") ? (args[args.indexOf("--target") + 1] as Target) : undefined;
if (only !== undefined && !(only in TARGETS)) {
  console.error(`cannot build: unknown target ${JSON.stringify(only)} (expected x64 or arm64)`);
  process.exit(2);
}
// Bytecode caches the parsed program in the binary; it cuts start-up time,
// which matters for zbunlock on every boot. It works for both targets with
// Bun 1.4 (checked by test/stages/binary.test.ts, which runs the result).
const bytecode = !args.includes("--no-bytecode");

mkdirSync("dist", { recursive: true });
for (const t of only ? [only] : (Object.keys(TARGETS) as Target[])) {
  const outfile = `dist/zb-${t}`;
  const started = performance.now();
  const result = await Bun.build({
    entrypoints: ["stages/main.ts"],
    minify: true,
    bytecode,
    sourcemap: "none",
    compile: {
      target: TARGETS[t],
      outfile,
      // A compiled Bun binary would otherwise read bunfig.toml, .env,
      // tsconfig.json and package.json from the working directory at start:
      // a bunfig `preload` there would run foreign code inside zbunlock, and
      // the lookups cost start-up time.
      autoloadBunfig: false,
      autoloadDotenv: false,
      autoloadTsconfig: false,
      autoloadPackageJson: false,
    },
  });
  if (!result.success) {
    for (const log of result.logs) console.error(log);
    console.error(`cannot build ${outfile}: the bundler reported errors`);
    process.exit(1);
  }
  console.log(`built ${outfile} (${TARGETS[t]}${bytecode ? ", bytecode" : ""}) in ${Math.round(performance.now() - started)} ms`);
}
