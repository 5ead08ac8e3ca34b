/**
 * Capture the TPM 2.0 golden vectors from a real swtpm.
 *
 *   node_modules/.bin/bun test/vectors/tpm2/gen.ts
 *
 * Starts swtpm (test/peers/swtpm.ts: TCP on 127.0.0.1, a free port pair, a
 * temp state directory, stopped at the end), sends each command below as raw
 * bytes on the data socket (no zb code frames or parses them, so the vectors
 * are independent of lib/hsm/tpm2/wire.ts, which they check), reads the
 * response up to the size its header states, and writes one JSON file per
 * command into this directory with the command, the response and
 * `swtpm --version`.
 *
 * TPM2_GetRandom answers with random bytes, so a re-run writes a different
 * response: the file records what this swtpm returned once. It pins how a
 * real TPM frames a response (tag, size, rc, TPM2B_DIGEST), not the bytes;
 * test/lib/hsm/tpm2/wire.test.ts derives the expected fields from the file's
 * own bytes at the fixed offsets of Part 1 §18.8, so a re-capture needs no
 * test change. The script refuses a response that is not a success of the
 * expected length, rather than store a vector of a failure.
 */
import { writeFileSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { startSwtpm } from "../../peers/swtpm.ts";

/** TPM2_GetRandom(bytesRequested = 8): TPM_ST_NO_SESSIONS, size 12, TPM_CC_GetRandom 0x17b (Part 3 §16.1). */
const GET_RANDOM_8 = "8001" + "0000000c" + "0000017b" + "0008";

/** One raw command on a fresh connection; resolves with the whole response. */
function exchange(port: number, command: Uint8Array): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: "127.0.0.1", port });
    let got = Buffer.alloc(0);
    s.once("connect", () => s.write(command));
    s.on("data", (d: Buffer) => {
      got = Buffer.concat([got, d]);
      // The header's size field (bytes 2..6) counts the whole response.
      if (got.length >= 6 && got.length >= got.readUInt32BE(2)) {
        s.destroy();
        resolve(new Uint8Array(got));
      }
    });
    s.once("error", reject);
    s.once("close", () => reject(new Error(`swtpm closed the connection after ${got.length} bytes`)));
  });
}

const version = Bun.spawnSync(["swtpm", "--version"]).stdout.toString().trim();
const tpm = await startSwtpm();
try {
  const command = Buffer.from(GET_RANDOM_8, "hex");
  const response = Buffer.from(await exchange(tpm.port, command));
  // 10-byte header + TPM2B_DIGEST of 8 bytes; rc (bytes 6..10) 0.
  if (response.length !== 20 || response.readUInt32BE(6) !== 0 || response.readUInt16BE(10) !== 8) {
    throw new Error(`GetRandom(8): unexpected response ${response.toString("hex")}`);
  }
  const file = join(import.meta.dir, "getrandom-swtpm.json");
  const vector = {
    what: "TPM2_GetRandom(8) sent raw to swtpm's TCP data socket, and its response (random: one capture)",
    tool: version,
    generator: "test/vectors/tpm2/gen.ts",
    command: command.toString("hex"),
    response: response.toString("hex"),
  };
  writeFileSync(file, JSON.stringify(vector, null, 2) + "\n");
  console.log(`wrote ${file}`);
} finally {
  await tpm.stop();
}
