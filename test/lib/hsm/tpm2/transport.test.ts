/**
 * Transports: address parsing (rows), "absent" for missing devices and
 * refused connections, the device transport against swtpm behind a
 * character device (a raw pty, like /dev/tpm0), and the framing of swtpm's
 * TCP data socket found by experiment (raw TPM bytes; mssim framing also
 * accepted), pinned here.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as net from "node:net";
import { connect, formatAddress, parseAddress } from "../../../../lib/hsm/tpm2/transport.ts";
import { hex } from "../../../../lib/hsm/tpm2/wire.ts";
import { startSwtpm, startSwtpmDevice, type Swtpm, type SwtpmDevice } from "../../../peers/swtpm.ts";

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

  test("a path that is not a TPM device (a directory) is a failure, not absence", async () => {
    await expect(connect({ kind: "device", path: "/" })).rejects.toMatchObject({ code: "HSM_FAILED" });
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
