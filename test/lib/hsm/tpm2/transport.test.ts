/**
 * Transports: address parsing (rows), "absent" for missing devices,
 * refused connections and a listener that never completes the handshake, the device transport against swtpm behind a
 * character device (a raw pty, like /dev/tpm0), and the framing of swtpm's
 * TCP data socket found by experiment (raw TPM bytes; mssim framing also
 * accepted), pinned here.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { Tpm2Hsm } from "../../../../lib/hsm/tpm2/index.ts";
import { connect, formatAddress, parseAddress } from "../../../../lib/hsm/tpm2/transport.ts";
import { hex } from "../../../../lib/hsm/tpm2/wire.ts";
import { startFullBacklog } from "../../../peers/full-backlog.ts";
import { startSwtpm, startSwtpmDevice, type Swtpm, type SwtpmDevice } from "../../../peers/swtpm.ts";
import { tempDirs } from "../../../tempdirs.ts";

const tempDir = tempDirs("zb-tpm-transport-");

const GET_RANDOM_8 = new Uint8Array(Buffer.from("80010000000c0000017b0008", "hex"));

describe("parseAddress: spelling before → address after", () => {
  test.each([
    { before: "/dev/tpmrm0", after: { kind: "device", path: "/dev/tpmrm0" } },
    { before: "device:/dev/tpm0", after: { kind: "device", path: "/dev/tpm0" } },
    { before: "device", after: { kind: "device", path: "/dev/tpmrm0" } },
    { before: "swtpm:host=127.0.0.1,port=2321", after: { kind: "swtpm", host: "127.0.0.1", port: 2321 } },
    { before: "swtpm:port=4000", after: { kind: "swtpm", host: "localhost", port: 4000 } },
    { before: "swtpm", after: { kind: "swtpm", host: "localhost", port: 2321 } },
  ])("$before", ({ before, after }) => {
    const a = parseAddress(before);
    expect(a).toEqual(after as never);
    expect(parseAddress(formatAddress(a))).toEqual(a);
  });

  test.each([
    { before: "mssim:host=x", why: /unsupported TCTI "mssim"/ },
    { before: "swtpm:port=abc", why: /bad swtpm option "port=abc"/ },
    { before: "swtpm:port=70000", why: /bad swtpm option/ },
    { before: "swtpm:bogus=1", why: /bad swtpm option "bogus=1"/ },
    { before: "tpmrm0", why: /unsupported TCTI "tpmrm0"/ },
  ])("$before is refused (USAGE)", ({ before, why }) => {
    expect(() => parseAddress(before)).toThrow(why);
    expect(() => parseAddress(before)).toThrow(expect.objectContaining({ code: "USAGE" }) as never);
  });
});

describe("absent: what is missing before → HSM_ABSENT after", () => {
  test("a device node that does not exist", async () => {
    await expect(connect({ kind: "device", path: "/nonexistent/tpmrm0" })).rejects.toMatchObject({
      code: "HSM_ABSENT", message: "cannot open TPM /nonexistent/tpmrm0: no such device (no TPM driver loaded, or no TPM)",
    });
  });

  test("a stopped swtpm (connection refused)", async () => {
    const tpm = await startSwtpm();
    const port = tpm.port;
    await tpm.stop();
    await expect(connect({ kind: "swtpm", host: "127.0.0.1", port })).rejects.toMatchObject({
      code: "HSM_ABSENT", message: expect.stringContaining("the connection was refused (is swtpm running?)"),
    });
  });

  test("a listener that never completes the handshake (its accept queue full): absent after the 5 s connect limit, not ~130 s of SYN retries", async () => {
    const l = await startFullBacklog();
    let guard: ReturnType<typeof setTimeout> | undefined;
    try {
      const stillConnecting = new Promise<string>((r) => (guard = setTimeout(() => r("still connecting after 15 s"), 15_000)));
      const got = await Promise.race([
        connect({ kind: "swtpm", host: "127.0.0.1", port: l.port }).then(
          (t) => (t.close(), "connected"),
          (e: Error & { code: string }) => `${e.code}: ${e.message}`,
        ),
        stillConnecting,
      ]);
      expect(got).toBe(`HSM_ABSENT: cannot open TPM swtpm:host=127.0.0.1,port=${l.port}: no answer within 5 s`);
    } finally {
      clearTimeout(guard);
      l.stop();
    }
  }, 30_000);

});

describe("device paths that are not character devices: refused before anything is written", () => {
  const FILE_TEXT = "root:x:0:0:root:/root:/bin/bash\n";
  const rows: { name: string; make: (dir: string) => string; type: string }[] = [
    { name: "a regular file", make: (d) => (writeFileSync(join(d, "passwd"), FILE_TEXT), join(d, "passwd")), type: "a regular file" },
    { name: "a directory", make: (d) => (mkdirSync(join(d, "tpm")), join(d, "tpm")), type: "a directory" },
    { name: "a FIFO", make: (d) => (Bun.spawnSync(["mkfifo", join(d, "fifo")]), join(d, "fifo")), type: "a FIFO" },
  ];
  test.each(rows)("$name → CONFIG, the file unchanged; probe and unseal say why", async ({ make, type }) => {
    const path = make(tempDir());
    const message = `cannot use ${path} as a TPM: it is not a character device (${type})`;
    await expect(connect({ kind: "device", path })).rejects.toMatchObject({ code: "CONFIG", message });
    // The auditor's case: \`zb hsm probe --tpm /etc/passwd\` wrote a GetCapability command into the file.
    expect(await new Tpm2Hsm({ device: path }).probe()).toMatchObject({ present: false, detail: message });
    await expect(new Tpm2Hsm({ device: path }).seal(new Uint8Array(32))).rejects.toMatchObject({ code: "CONFIG", message });
    if (type === "a regular file") expect(readFileSync(path, "utf8")).toBe(FILE_TEXT);
  });

  test("/dev/null, a character device that is not a TPM: opened, then a clean HSM_FAILED", async () => {
    const t = await connect({ kind: "device", path: "/dev/null" });
    try {
      await expect(t.send(GET_RANDOM_8)).rejects.toMatchObject({ code: "HSM_FAILED", message: "cannot talk to TPM /dev/null: end of file before the whole response" });
    } finally {
      t.close();
    }
  });
});

describe("TCP: a response header with an impossible size fails at once, not after the 30 s timeout", () => {
  /** A loopback peer that answers any command with `reply` and then stays silent. */
  async function peer(reply: Uint8Array): Promise<{ port: number; close: () => void }> {
    const srv = net.createServer((s) => {
      s.on("error", () => undefined);
      s.once("data", () => s.write(reply));
    });
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    return { port: (srv.address() as net.AddressInfo).port, close: () => srv.close() };
  }

  const header = (size: number) => {
    const b = new Uint8Array(10);
    new DataView(b.buffer).setUint16(0, 0x8001);
    new DataView(b.buffer).setUint32(2, size);
    return b;
  };
  test.each([
    { name: "size 0x41414141 (garbage), header only", reply: header(0x41414141), why: "bad response size 1094795585" },
    { name: "size 0xffffffff, header only", reply: header(0xffffffff), why: "bad response size 4294967295" },
    { name: "size 4097 (over MAX_RESPONSE), header only", reply: header(4097), why: "bad response size 4097" },
    { name: "the 6 header bytes alone, size 0x41414141", reply: header(0x41414141).subarray(0, 6), why: "bad response size 1094795585" },
  ])("$name → HSM_FAILED for the size, not the 30 s silence", async ({ reply, why }) => {
    const p = await peer(reply);
    const t = await connect({ kind: "swtpm", host: "127.0.0.1", port: p.port });
    try {
      // The peer stays silent after these bytes: waiting for the rest would end in "no response within 30 s".
      const got = await t.send(GET_RANDOM_8).then(() => "resolved", (e: Error & { code: string }) => `${e.code}: ${e.message}`);
      expect(got).toBe(`HSM_FAILED: cannot talk to TPM swtpm:host=127.0.0.1,port=${p.port}: ${why}`);
    } finally {
      t.close();
      p.close();
    }
  });
});

describe("against real swtpm", () => {
  let tcp: Swtpm;
  let dev: SwtpmDevice;
  beforeAll(async () => {
    tcp = await startSwtpm();
    dev = await startSwtpmDevice();
  });
  afterAll(async () => {
    await tcp?.stop();
    await dev?.stop();
  });

  test.each(["tcp", "device"] as const)("%s transport: GetRandom(8) → a 20-byte success response, twice on one connection", async (kind) => {
    const t = await connect(kind === "tcp" ? parseAddress(tcp.address) : { kind: "device", path: dev.path });
    try {
      const a = await t.send(GET_RANDOM_8);
      const b = await t.send(GET_RANDOM_8);
      expect(hex(a.subarray(0, 10))).toBe("80010000001400000000");
      expect(a.length).toBe(20);
      expect(hex(a)).not.toBe(hex(b));
    } finally {
      t.close();
    }
    t.close(); // idempotent
  });

  /** Send bytes on a fresh socket and collect what comes back within 300 ms. */
  function exchange(bytes: Uint8Array): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: "127.0.0.1", port: tcp.port });
      const chunks: Buffer[] = [];
      s.on("data", (d: Buffer) => chunks.push(d));
      s.on("error", reject);
      s.on("connect", () => s.write(bytes));
      setTimeout(() => {
        s.destroy();
        resolve(new Uint8Array(Buffer.concat(chunks)));
      }, 300);
    });
  }

  test.each([
    { name: "raw command → raw response", before: GET_RANDOM_8, head: "80010000001400000000", length: 20 },
    {
      name: "mssim TPM_SEND_COMMAND(8), locality, size, command → size, response, 4-byte ack",
      before: new Uint8Array([...Buffer.from("00000008000000000c", "hex"), ...GET_RANDOM_8]),
      head: "0000001480010000001400000000", length: 4 + 20 + 4,
    },
  ])("swtpm data socket framing: $name", async ({ before, head, length }) => {
    const after = await exchange(before);
    expect(hex(after).startsWith(head)).toBe(true);
    expect(after.length).toBe(length);
  });
});
