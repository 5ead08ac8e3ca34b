#!/usr/bin/env bash
# Regenerate the signing-key golden vectors with openssl (offline, openssl only).
#
#   bash test/vectors/keys/gen.sh
#
# test/lib/image/keys.test.ts and sign.test.ts check lib/image/keys.ts (with
# der.ts and pem.ts) and lib/image/sign.ts against these files without
# running openssl; the live interop tests (which do run openssl) are in the
# same test files.
#
# What is written (into this directory; keys are random, so every run differs):
#   msg.bin                 the fixed message every signature covers
#   ed25519.key / .pub      openssl genpkey -algorithm ed25519; PKCS#8 / SPKI PEM
#   ed25519.sig             openssl pkeyutl -sign -rawin (64 raw bytes, RFC 8032)
#   p256.key / .pub         openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256
#   p256-low.sig            openssl dgst -sha256 -sign, DER, with s <= n/2
#   p256-high.sig           the same with s > n/2 (openssl signs either; zb accepts both)
#   p256-sec1.key           openssl ec: the same key as SEC1 "EC PRIVATE KEY"
#   p256-ecparam.key        openssl ecparam -genkey: "EC PARAMETERS" + "EC PRIVATE KEY"
#   p256-ecparam.pub        its public key
#   p256-compressed.pub     p256.pub with a compressed point (zb refuses it)
#   ed25519-enc.key         PKCS#8 encrypted ("ENCRYPTED PRIVATE KEY"; zb refuses it)
#   p256-legacy-enc.key     SEC1 with Proc-Type: 4,ENCRYPTED (zb refuses it)
#   ed448.pub p384.pub secp256k1.pub x25519.pub rsa.pub   other algorithms (zb refuses them)
#   ids.txt                 "<file> <sha256sum of openssl pkey -pubin -outform DER>" per .pub
#   VERSIONS                the openssl package and library versions
set -euo pipefail
export LC_ALL=C

for tool in openssl sha256sum dpkg-query; do
  command -v "$tool" >/dev/null || { echo "gen.sh: $tool not found" >&2; exit 1; }
done

OUT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$OUT"
rm -f ./*.key ./*.pub ./*.sig msg.bin ids.txt VERSIONS

# A manifest-like message; no trailing newline, so "the bytes" are unambiguous.
printf '{"compatible":"zb-golden","serial":1,"version":"1.0.0"}' >msg.bin

openssl genpkey -algorithm ed25519 -out ed25519.key
openssl pkey -in ed25519.key -pubout -out ed25519.pub
openssl pkeyutl -sign -rawin -inkey ed25519.key -in msg.bin -out ed25519.sig

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out p256.key
openssl pkey -in p256.key -pubout -out p256.pub
openssl ec -in p256.key -out p256-sec1.key 2>/dev/null
openssl ec -pubin -in p256.pub -pubout -conv_form compressed -out p256-compressed.pub 2>/dev/null

# ECDSA k is random in openssl 3.0: sign until we hold one low-S and one high-S
# signature. s is the second INTEGER of the DER ECDSA-Sig-Value; n/2 of P-256:
HALF=7FFFFFFF800000007FFFFFFFFFFFFFFFDE737D56D38BCF4279DCE5617E3192A8
for _ in $(seq 1 64); do
  [[ -f p256-low.sig && -f p256-high.sig ]] && break
  openssl dgst -sha256 -sign p256.key -out try.sig msg.bin
  s=$(openssl asn1parse -inform DER -in try.sig | awk -F: '/INTEGER/ {v=$NF} END {print v}')
  s=$(printf '%064s' "${s#"${s%%[!0]*}"}" | tr ' ' 0)
  if [[ "$s" > "$HALF" ]]; then mv try.sig p256-high.sig; else mv try.sig p256-low.sig; fi
done
rm -f try.sig
[[ -f p256-low.sig && -f p256-high.sig ]] || { echo "gen.sh: no low-S/high-S pair in 64 tries" >&2; exit 1; }
# openssl must accept its own vectors, or generation fails.
openssl pkeyutl -verify -pubin -inkey ed25519.pub -rawin -in msg.bin -sigfile ed25519.sig >/dev/null
for s in p256-low.sig p256-high.sig; do openssl dgst -sha256 -verify p256.pub -signature "$s" msg.bin >/dev/null; done

openssl ecparam -name prime256v1 -genkey -out p256-ecparam.key
openssl pkey -in p256-ecparam.key -pubout -out p256-ecparam.pub

openssl pkey -in ed25519.key -aes256 -passout pass:zb -out ed25519-enc.key
openssl ec -in p256.key -aes256 -passout pass:zb -out p256-legacy-enc.key 2>/dev/null

openssl genpkey -algorithm ed448 | openssl pkey -pubout -out ed448.pub
openssl genpkey -algorithm x25519 | openssl pkey -pubout -out x25519.pub
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 | openssl pkey -pubout -out p384.pub
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:secp256k1 | openssl pkey -pubout -out secp256k1.pub
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null | openssl pkey -pubout -out rsa.pub

for pub in ed25519.pub p256.pub p256-ecparam.pub; do
  echo "$pub $(openssl pkey -pubin -in "$pub" -outform DER | sha256sum | cut -d' ' -f1)"
done >ids.txt

{
  dpkg-query -W openssl
  openssl version
} >VERSIONS
echo "gen.sh: wrote $(find . -maxdepth 1 -type f | wc -l) files to $OUT"
