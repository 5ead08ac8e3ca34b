/**
 * Node built-ins that cost start-up when imported: a compiled zb that merely
 * imports node:crypto starts ~2.5 ms slower, node:net ~3.6 ms (measured with
 * hyperfine on hello-world binaries built like build.ts). Every zb run pays
 * an import — fw_printenv, zbunlock on each boot — while only the pkcs11
 * and soft HSM backends use node:crypto (the tpm2 session cryptography is
 * WebCrypto and Bun.CryptoHasher, lib/hsm/tpm2/crypto.ts) and only the
 * swtpm transport node:net, so they are required on first use.
 */
export const nodeCrypto = (): typeof import("node:crypto") => require("node:crypto");
export const nodeNet = (): typeof import("node:net") => require("node:net");
