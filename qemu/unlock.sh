#!/usr/bin/env bash
# QEMU aarch64 unlock scenarios: a LUKS2 root whose key is sealed to a TPM
# (swtpm, seen by the guest as `-device tpm-tis-device` through the
# qemu/tpm-module.sh build of tpm_tis.ko), unlocked by zbunlock in the
# initramfs.
#   1. guest parts: fetch.sh (kernel, busybox, glibc), tpm-module.sh
#      (tpm_tis.ko), and cryptsetup-bin:arm64 with its libraries (apt-get
#      download + dpkg-deb -x into qemu/.cache/cryptsetup/, once)
#   2. one initramfs (guest/init-unlock.sh as /init, dist/zb-arm64, cryptsetup,
#      the TPM, dm-crypt, AF_ALG, AES-XTS and ext4 modules, /etc/zb/hsm.conf)
#   3. provisioning on the host, against swtpm on 127.0.0.1:
#      `zb cred create --slot a --backend tpm2 --tpm swtpm:… --root root.img
#      --format` makes the LUKS2 container and the credentials cpio; a second
#      keyslot gets a plain key file for the baseline; the ext4 root (with a
#      random marker token) is encrypted into the container offline (see
#      "Filling the LUKS root" in qemu/README.md); `zb init` writes the env on
#      the FAT partition; an MBR disk gets both partitions
#   4. the scenarios, each on its own copy of the disk and of the TPM state:
#      zb         initramfs + credentials cpio, the enrolled TPM: zbunlock
#                 opens the root, the guest prints the marker
#      baseline   initramfs + /key.bin, `cryptsetup open --key-file`: the
#                 reference time
#      fresh-tpm  as zb, with a never-provisioned TPM: zbunlock must fail and
#                 take the failure path, which the host checks in the env with
#                 the real fw_printenv
# Prints the times from /init to the mounted root and the ratio
# zbunlock/baseline; on failure the console tail, and exits non-zero.
#
# Usage: bash qemu/unlock.sh [zb|baseline|fresh-tpm|all]   (default all;
#        env: ZB_QEMU_TIMEOUT seconds per boot, default 120)
#        bash qemu/unlock.sh bench [RUNS]   the benchmark: RUNS (default 5)
#        boots of zb and baseline, alternating so drift hits both alike;
#        medians and their ratio (this VM's single runs swing ±15 %)
#        env ZB_QEMU_ICOUNT=SHIFT (0-10; default unset): every boot runs on
#        QEMU's instruction-counted clock, one guest instruction = 2^SHIFT ns
#        of guest time, idle time in real time (-icount shift=SHIFT,sleep=on;
#        "Two clocks" in qemu/README.md)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
W=qemu/.work/unlock
ZB=dist/zb-x64
CS=qemu/.cache/cryptsetup
TIMEOUT=${ZB_QEMU_TIMEOUT:-120}
PART_START=2048 # sectors: the FAT starts at 1 MiB, as on Pi images
FAT_OFF=$((PART_START * 512))
FAT_MIB=64
ROOT_MIB=64 # the LUKS2 partition: header (16 MiB by default) + ext4
# The host-side zb must never reboot this machine.
export ZB_NO_REBOOT=1

die() { echo "cannot run the unlock scenarios: $*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

RUNS=0
case "${1:-all}" in
  zb | baseline | fresh-tpm) SCENARIOS=("$1") ;;
  all) SCENARIOS=(zb baseline fresh-tpm) ;;
  bench)
    RUNS=${2:-5}
    [[ $RUNS =~ ^[1-9][0-9]?$ ]] || die "bench RUNS must be 1-99, not '$RUNS'"
    SCENARIOS=()
    for ((i = 1; i <= RUNS; i++)); do SCENARIOS+=("zb-$i" "baseline-$i"); done
    ;;
  *) die "usage: bash qemu/unlock.sh [zb|baseline|fresh-tpm|all|bench [RUNS]]" ;;
esac
for tool in qemu-system-aarch64 swtpm swtpm_ioctl cryptsetup mke2fs sfdisk mkfs.vfat mcopy fw_printenv jq cpio ss sha256sum; do
  command -v "$tool" >/dev/null || die "'$tool' not found (install: apt-get install qemu-system-arm swtpm swtpm-tools cryptsetup-bin e2fsprogs fdisk dosfstools mtools libubootenv-tool jq cpio iproute2)"
done
# The guest's clock: the host's real time, with QEMU's default TCG (one host
# thread per vCPU), or instruction-counted (one host thread runs both vCPUs in turn).
CLOCK=()
CLOCK_NAME="wall clock (QEMU's default multi-threaded TCG)"
if [[ -n ${ZB_QEMU_ICOUNT:-} ]]; then
  [[ $ZB_QEMU_ICOUNT =~ ^([0-9]|10)$ ]] || die "ZB_QEMU_ICOUNT must be a shift of 0-10 (ns per guest instruction = 2^SHIFT), not '$ZB_QEMU_ICOUNT'"
  CLOCK=(-icount "shift=$ZB_QEMU_ICOUNT,sleep=on")
  CLOCK_NAME="instruction-counted clock ($((1000 >> ZB_QEMU_ICOUNT)) million guest instructions per second; -icount shift=$ZB_QEMU_ICOUNT,sleep=on)"
fi
[[ -x $ZB && -f dist/zb-arm64 ]] || die "$ZB or dist/zb-arm64 is missing (run: node_modules/.bin/bun build.ts)"

# --- cleanup: every swtpm and QEMU we start, and the secrets' temp dir -------
PIDS=()
SECRETS=$(mktemp -d "${TMPDIR:-/tmp}/zb-unlock.XXXXXX")
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$SECRETS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# stop PID: end one process we started and forget it, so that cleanup never
# signals a process ID that may have been reused since.
stop() {
  local i
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  for i in "${!PIDS[@]}"; do [[ ${PIDS[$i]} != "$1" ]] || unset 'PIDS[i]'; done
}

# --- guest parts: cryptsetup-bin:arm64 and the libraries it needs ------------
# The package list follows `apt-cache depends` of cryptsetup-bin,
# libcryptsetup12 and libdevmapper1.02.1 (libc6 comes from fetch.sh);
# initramfs.sh then copies only the sonames readelf says are NEEDED and fails
# if one is missing, so a change in Debian shows up as a clear error here.
CS_PKGS=(cryptsetup-bin libcryptsetup12 libdevmapper1.02.1 libssl3 libargon2-1 libjson-c5
  libuuid1 libblkid1 libpopt0 libudev1 libselinux1 libpcre2-8-0)
fetch_cryptsetup() {
  if [[ -f $CS/cryptsetup.env && -x $CS/root/sbin/cryptsetup ]]; then
    echo "unlock: cached cryptsetup-bin:arm64 $(sed -n 's/^CRYPTSETUP_VERSION=//p' "$CS/cryptsetup.env")"
    return 0
  fi
  rm -rf "$CS"
  mkdir -p "$CS/debs" "$CS/root"
  (cd "$CS/debs" && apt-get download -q -o APT::Sandbox::User=root "${CS_PKGS[@]/%/:arm64}") >/dev/null \
    || die "apt-get download ${CS_PKGS[*]} (arm64) failed (try: apt-get update)"
  local f
  for f in "$CS"/debs/*.deb; do dpkg-deb -x "$f" "$CS/root" || die "cannot unpack $f"; done
  [[ -x $CS/root/sbin/cryptsetup ]] || die "cryptsetup-bin:arm64 has no /sbin/cryptsetup"
  f=$(find "$CS/debs" -name 'cryptsetup-bin_*.deb' | head -n1)
  echo "CRYPTSETUP_VERSION=$(dpkg-deb -f "$f" Version)" >"$CS/cryptsetup.env" # last: the cache is complete
  rm -rf "$CS/debs"
  echo "unlock: fetched cryptsetup-bin:arm64 $(sed -n 's/^CRYPTSETUP_VERSION=//p' "$CS/cryptsetup.env")"
}

# --- the initramfs, shared by all runs ---------------------------------------
# Modules as NAME:CONFIG (initramfs.sh skips =y and adds =m with their
# dependencies): the TPM TIS core (tpm_tis.ko itself is out of tree),
# dm-crypt, AF_ALG for cryptsetup's keyslot decryption, XTS on the ARMv8
# crypto extensions (QEMU's -cpu max has them), SHA-512 for the LUKS2
# digest and ext4 with the crc32c its metadata checksums need.
GUEST_MODULES="tpm_tis_core:TCG_TIS_CORE dm-mod:BLK_DEV_DM dm-crypt:DM_CRYPT af_alg:CRYPTO_USER_API
  algif_skcipher:CRYPTO_USER_API_SKCIPHER ecb:CRYPTO_ECB xts:CRYPTO_XTS aes-ce-blk:CRYPTO_AES_ARM64_CE_BLK
  sha512_generic:CRYPTO_SHA512 crc32c_generic:CRYPTO_CRC32C ext4:EXT4_FS"
build_initramfs() {
  local tree=$W/initramfs-extra
  rm -rf "$tree"
  mkdir -p "$tree/etc/zb"
  # The guest's HSM: the kernel's resource manager in front of tpm_tis.
  printf 'backend=tpm2\ntpm2.device=/dev/tpmrm0\n' >"$tree/etc/zb/hsm.conf"
  ZB_QEMU_EXTRA_MODULES="$GUEST_MODULES" ZB_QEMU_EXTRA_KO=qemu/.cache/tpm/tpm_tis.ko \
    ZB_QEMU_EXTRA_BINS="$CS/root/sbin/cryptsetup:/sbin/cryptsetup" \
    ZB_QEMU_EXTRA_LIBDIRS="$CS/root/lib/aarch64-linux-gnu $CS/root/usr/lib/aarch64-linux-gnu" \
    ZB_QEMU_EXTRA_TREE=$tree bash qemu/initramfs.sh qemu/guest/init-unlock.sh "$W" \
    || die "qemu/initramfs.sh failed"
}

# cpio_of DIR OUT: an uncompressed newc archive of DIR's contents.
cpio_of() { (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) >"$2"; }
# append_initrd BASE EXTRA OUT: the kernel unpacks concatenated archives; it
# skips zero padding between them, and a newc header must start 4-aligned.
append_initrd() {
  local size
  size=$(stat -c %s "$1")
  { cat "$1"; head -c $(((4 - size % 4) % 4)) /dev/zero; cat "$2"; } >"$3"
}

# --- swtpm -----------------------------------------------------------------
# free_port: a port P with P and P+1 (swtpm's control channel) free on loopback.
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 40000))
    [[ -z "$(ss -Hltn "( sport = :$p or sport = :$((p + 1)) )")" ]] && { echo "$p"; return 0; }
  done
  return 1
}
# tpm_tcp_start DIR: swtpm on DIR's state, data on 127.0.0.1:TPM_PORT, control
# on TPM_PORT+1, started up (TPM2_Startup(CLEAR)) as firmware would. Retries
# with another port if the chosen one was taken meanwhile.
tpm_tcp_start() {
  for _ in 1 2 3; do
    TPM_PORT=$(free_port) || die "no free pair of TCP ports on 127.0.0.1"
    swtpm socket --tpm2 --tpmstate "dir=$1" --flags not-need-init,startup-clear \
      --server "type=tcp,port=$TPM_PORT,bindaddr=127.0.0.1" --ctrl "type=tcp,port=$((TPM_PORT + 1)),bindaddr=127.0.0.1" \
      --log "file=$1.log,level=1" &
    TPM_PID=$!
    PIDS+=("$TPM_PID")
    for _ in $(seq 1 50); do
      kill -0 "$TPM_PID" 2>/dev/null || break
      swtpm_ioctl --tcp "127.0.0.1:$((TPM_PORT + 1))" -g >/dev/null 2>&1 && return 0
      sleep 0.1
    done
    stop "$TPM_PID"
  done
  die "swtpm did not start on 127.0.0.1 (log: $1.log)"
}
# tpm_tcp_stop: shut swtpm down through its control channel (it saves its
# state and exits), or kill it.
tpm_tcp_stop() {
  if swtpm_ioctl --tcp "127.0.0.1:$((TPM_PORT + 1))" -s >/dev/null 2>&1; then
    for _ in $(seq 1 50); do kill -0 "$TPM_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  stop "$TPM_PID"
}

# --- provisioning --------------------------------------------------------------
# luks_json IMG FILTER: a field of the LUKS2 JSON metadata.
luks_json() { cryptsetup luksDump --dump-json-metadata "$1" | jq -r "$2"; }

# enrol: the credentials for slot a, sealed to the TPM in $W/tpm-enrolled,
# and root.img formatted by zb. Then a second keyslot for the baseline key.
enrol() {
  local tpm=swtpm:host=127.0.0.1,port=$TPM_PORT sealed kdf
  # shellcheck disable=SC2153 # INITRD comes from guest.env
  cp "$INITRD" "$W/initrd-zb.img"
  # -o keeps a copy of the archive for the checks; --initramfs appends it to
  # the slot's initramfs the way an install does.
  # --lock-pcr 15: zbunlock extends PCR 15 after unlocking, so the guest's
  # later `zb hsm unseal` must be refused (checked in run_zb).
  echo "unlock: \$ $ZB cred create --slot a --backend tpm2 --tpm $tpm --pcrs 0,7 --lock-pcr 15 --root $W/root.img --format -o $W/cred.cpio --initramfs $W/initrd-zb.img"
  "$ZB" cred create --slot a --backend tpm2 --tpm "$tpm" --pcrs 0,7 --lock-pcr 15 --root "$W/root.img" --format \
    -o "$W/cred.cpio" --initramfs "$W/initrd-zb.img" 2>&1 | sed 's/^/unlock: | /'
  [[ ${PIPESTATUS[0]} -eq 0 ]] || die "$ZB cred create failed"
  "$ZB" cred show "$W/initrd-zb.img" >/dev/null || die "$ZB cred show finds no credentials at the end of $W/initrd-zb.img"
  mkdir -p "$W/cred"
  (cd "$W/cred" && cpio -idm --quiet <../cred.cpio) || die "$W/cred.cpio is not a cpio archive"
  sealed=$(find "$W/cred" -name root.sealed | head -n1)
  [[ -n "$sealed" ]] || die "$W/cred.cpio has no root.sealed"
  echo "unlock: credentials: $(cd "$W/cred" && find . -type f | sort | tr '\n' ' ')"
  # The baseline's keyslot costs what zb's does: the same KDF and parameters.
  kdf=$(luks_json "$W/root.img" '.keyslots."0".kdf | if .type == "pbkdf2" then
    "--pbkdf pbkdf2 --hash \(.hash) --pbkdf-force-iterations \(.iterations)" else
    "--pbkdf \(.type) --pbkdf-force-iterations \(.time) --pbkdf-memory \(.memory) --pbkdf-parallel \(.cpus)" end')
  head -c 32 /dev/urandom >"$W/keys/base.key"
  # zb's key goes from the TPM to cryptsetup through a pipe, never a file.
  # shellcheck disable=SC2086 # $kdf is a list of options
  "$ZB" hsm unseal "$sealed" --tpm "$tpm" -o - \
    | cryptsetup luksAddKey --batch-mode $kdf --key-file=- --new-keyfile="$W/keys/base.key" "$W/root.img" \
    || die "cannot add the baseline keyslot: zb hsm unseal | cryptsetup luksAddKey failed"
}

# fill_root: encrypt an ext4 image holding /etc/zb-marker into root.img's
# data segment, offline. cryptsetup cannot open a file here (no
# device-mapper), but `reencrypt --encrypt` works in user space: with a
# detached header, the volume key of zb's container and the same segment
# parameters it turns the plaintext image into exactly the ciphertext
# dm-crypt will read. A round trip through `reencrypt --decrypt` checks it.
fill_root() {
  local off sector cipher vkbits size sum
  [[ $(luks_json "$W/root.img" '.segments."0" | has("integrity")') == false ]] || die "zb's LUKS2 segment has integrity; cannot fill it offline"
  off=$(luks_json "$W/root.img" '.segments."0".offset')
  sector=$(luks_json "$W/root.img" '.segments."0".sector_size')
  cipher=$(luks_json "$W/root.img" '.segments."0".encryption')
  cryptsetup luksDump --batch-mode --dump-volume-key --volume-key-file "$SECRETS/vk" \
    --key-file "$W/keys/base.key" "$W/root.img" >/dev/null || die "cannot read the volume key back"
  vkbits=$(($(stat -c %s "$SECRETS/vk") * 8))
  size=$(($(stat -c %s "$W/root.img") - off))
  mkdir -p "$W/rootfs/etc"
  printf '%s\n' "$TOKEN" >"$W/rootfs/etc/zb-marker"
  rm -f "$SECRETS/root.ext4"
  truncate -s "$size" "$SECRETS/root.ext4"
  mke2fs -q -F -t ext4 -b 4096 -L zbroot -d "$W/rootfs" "$SECRETS/root.ext4" $((size / 4096)) || die "mke2fs failed"
  sum=$(sha256sum <"$SECRETS/root.ext4")
  truncate -s 16M "$SECRETS/hdr"
  cryptsetup reencrypt --encrypt --batch-mode --type luks2 --header "$SECRETS/hdr" \
    --volume-key-file "$SECRETS/vk" --key-size "$vkbits" --cipher "$cipher" --sector-size "$sector" \
    --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file "$W/keys/base.key" "$SECRETS/root.ext4" \
    || die "cryptsetup reencrypt --encrypt of the ext4 image failed"
  dd if="$SECRETS/root.ext4" of="$W/root.img" bs=1M seek=$((off / 1048576)) conv=notrunc,fsync status=none
  # Round trip: decrypt what is now in root.img and compare with the plaintext.
  dd if="$W/root.img" of="$SECRETS/check" bs=1M skip=$((off / 1048576)) status=none
  cryptsetup reencrypt --decrypt --batch-mode --force-offline-reencrypt --header "$SECRETS/hdr" \
    --key-file "$W/keys/base.key" "$SECRETS/check" >/dev/null || die "the round-trip decryption failed"
  [[ "$(sha256sum <"$SECRETS/check")" == "$sum" ]] || die "the encrypted root does not decrypt to the ext4 image"
  rm -f "$SECRETS/vk" "$SECRETS/hdr" "$SECRETS/check" "$SECRETS/root.ext4"
  echo "unlock: root.img: LUKS2 $cipher, ${sector}-byte sectors," \
    "data at $((off / 1048576)) MiB, ext4 of $((size / 1048576)) MiB with /etc/zb-marker; round trip ok"
}

# make_disk: the boot partition (env by `zb init`) and the LUKS2 root on one
# MBR disk, without loop devices.
make_disk() {
  local st=$W/stage root_start=$((PART_START + FAT_MIB * 2048))
  mkdir -p "$st/zb"
  printf 'arm_64bit=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n' >"$st/zb/config.txt"
  echo "console=ttyAMA0 panic=-1 rdinit=/init zb.boot=/dev/vda1" >"$st/zb/cmdline.txt"
  "$ZB" init --boot "$st" --slot a --valid a 2>&1 | sed 's/^/unlock: | /'
  [[ ${PIPESTATUS[0]} -eq 0 && -f $st/slot-a/cmdline.txt ]] || die "$ZB init --boot $st failed"
  # An enclave kernel and device tree, so a slot that cannot be unlocked for good goes to
  # recovery (row U2) rather than stopping (U4, no enclave). QEMU boots -kernel with its own
  # device tree and never loads them.
  mkdir -p "$st/zboot" && printf 'placeholder: the harness boots -kernel\n' >"$st/zboot/vmlinuz"
  printf 'placeholder: QEMU virt makes its own device tree\n' >"$st/zboot/virt.dtb"
  truncate -s $((1 + FAT_MIB + ROOT_MIB))M "$W/disk.img"
  printf 'label: dos\nlabel-id: 0x2b0a0002\nstart=%s, size=%s, type=c, bootable\nstart=%s, type=83\n' \
    "$PART_START" $((FAT_MIB * 2048)) "$root_start" | sfdisk -q "$W/disk.img" || die "sfdisk failed"
  mkfs.vfat -F 32 -n ZBBOOT --offset "$PART_START" "$W/disk.img" $((FAT_MIB * 1024)) >/dev/null 2>&1 || die "mkfs.vfat failed"
  mcopy -s -i "$W/disk.img@@$FAT_OFF" "$st"/* ::/ || die "mcopy into the boot partition failed"
  dd if="$W/root.img" of="$W/disk.img" bs=512 seek="$root_start" conv=notrunc,sparse status=none
}

provision() {
  local t0
  t0=$(now)
  rm -rf "$W"
  mkdir -p "$W/tpm-enrolled" "$W/keys"
  build_initramfs
  # shellcheck source=/dev/null
  . "$W/guest.env"
  T_PACK=$(secs "$t0" "$(now)")
  t0=$(now)
  TOKEN=zb-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  truncate -s "${ROOT_MIB}M" "$W/root.img"
  tpm_tcp_start "$W/tpm-enrolled"
  enrol
  tpm_tcp_stop
  fill_root
  make_disk
  # The baseline's initramfs: the same one with the plain key file appended.
  mkdir -p "$SECRETS/keytree"
  install -m 400 "$W/keys/base.key" "$SECRETS/keytree/key.bin"
  cpio_of "$SECRETS/keytree" "$W/key.cpio"
  rm -rf "$SECRETS/keytree"
  append_initrd "$INITRD" "$W/key.cpio" "$W/initrd-baseline.img"
  T_PROV=$(secs "$t0" "$(now)")
  echo "unlock: provisioned in $T_PROV s (initramfs $T_PACK s); marker token $TOKEN"
}

# --- one boot ------------------------------------------------------------------
# boot NAME MODE TPMDIR INITRD: boot a copy of the disk with swtpm on TPMDIR
# behind tpm-tis-device; the console goes to $W/NAME/console.log.
boot() {
  local mode=$2 tpm=$3 initrd=$4 d=$W/$1 sock tpid qpid rc=0
  mkdir -p "$d"
  cp --sparse=always "$W/disk.img" "$d/disk.img"
  sock=$d/swtpm.sock
  # QEMU's emulator backend sends CMD_INIT itself and the kernel driver sends
  # TPM2_Startup, so no --flags startup-* here.
  swtpm socket --tpm2 --tpmstate "dir=$tpm" --ctrl "type=unixio,path=$sock" --log "file=$d/swtpm.log,level=1" &
  tpid=$!
  PIDS+=("$tpid")
  for _ in $(seq 1 50); do [[ -S $sock ]] && break; sleep 0.1; done
  [[ -S $sock ]] || die "swtpm did not create $sock (log: $d/swtpm.log)"
  : >"$d/console.log"
  timeout -k 5 "$TIMEOUT" qemu-system-aarch64 -M virt -cpu "max,pauth-impdef=on" -smp 2 -m 1024 "${CLOCK[@]}" \
    -nodefaults -nic none -display none -monitor none -no-reboot -serial "file:$d/console.log" \
    -kernel "$KERNEL" -initrd "$initrd" -append "$(cat "$W/stage/slot-a/cmdline.txt") zbtest.mode=$mode" \
    -drive "file=$d/disk.img,format=raw,if=none,id=d0" -device virtio-blk-device,drive=d0 \
    -chardev "socket,id=chrtpm,path=$sock" -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis-device,tpmdev=tpm0 &
  qpid=$!
  PIDS+=("$qpid")
  wait "$qpid" || rc=$?
  QEMU_RC=$rc
  stop "$qpid"
  stop "$tpid"
  # Read the env pair back from the boot partition, for the checks.
  mkdir -p "$d/boot"
  mcopy -s -n -i "$d/disk.img@@$FAT_OFF" '::/*' "$d/boot/" || die "cannot copy the boot partition back from $d/disk.img"
  printf '%s 0x0 0x4000\n' "$d/boot/zb/zb.env" "$d/boot/zb/zb.env.redund" >"$d/fw_env.config"
}

# --- checks ----------------------------------------------------------------------
CHECK_PREFIX=unlock
# shellcheck source=qemu/checks.sh
. qemu/checks.sh
con() { tr -d '\r' <"$W/$1/console.log"; }
# stamp NAME T: the guest's ZB-T-T uptime, or empty.
stamp() { con "$1" | sed -n "s/^ZB-T-$2 \([0-9.]*\)\$/\1/p" | head -n1; }
host_env() { fw_printenv -c "$W/$1/fw_env.config" -n "$2" 2>/dev/null || true; }
# Phases from the stamps: init→modules, →devices, →unlocked, →root mounted.
timing() {
  local a b c d e
  a=$(stamp "$1" INIT) b=$(stamp "$1" MODS) c=$(stamp "$1" DEV) d=$(stamp "$1" UNLOCK) e=$(stamp "$1" ROOT)
  [[ -n $a && -n $e ]] || { echo "unlock: $1: no timing (the root was not mounted)"; return 0; }
  echo "unlock: $1: /init at $a s; /init -> root mounted $(secs "$a" "$e") s" \
    "(modules $(secs "$a" "$b"), disks $(secs "$b" "$c"), unlock $(secs "$c" "$d"), mount $(secs "$d" "$e"))"
}

# transcript NAME: the guest's markers; the stamped lines of zbunlock or
# cryptsetup as "+S s" after the disks appeared (when the unlock began).
transcript() {
  con "$1" | grep -E '^(ZB\||ZB-UNLOCK|ZB-DIAG)' | awk -v n="$1" -v d="$(stamp "$1" DEV)" '
    /^ZB\| [0-9.]+ / && d != "" { t = $2; $1 = ""; $2 = ""; sub(/^  /, ""); printf "unlock: %s guest: +%.2f s %s\n", n, t - d, $0; next }
    { print "unlock: " n " guest: " $0 }' || true
}

# unlocked NAME: the guest opened the root and printed the marker token.
unlocked() {
  local n=$1
  check "QEMU exited 0 after the guest powered off ($QEMU_RC)" test "$QEMU_RC" -eq 0
  check "no ZB-UNLOCK-FAIL" not grep -q '^ZB-UNLOCK-FAIL' <(con "$n")
  is "the marker read from the unlocked root" "$(con "$n" | sed -n 's/^ZB-UNLOCK-MARKER //p')" "$TOKEN"
  check "the guest stamped /init and the mounted root" test -n "$(stamp "$n" INIT)" -a -n "$(stamp "$n" ROOT)"
}
# shellcheck disable=SC2317 # called through check

# run_zb [NAME], run_baseline [NAME]: one boot each, on a fresh copy of the
# enrolled TPM state (NAME: zb-3 etc. in the bench).
run_zb() {
  local n=${1:-zb}
  rm -rf "$W/tpm-$n"
  cp -a "$W/tpm-enrolled" "$W/tpm-$n"
  boot "$n" zb "$W/tpm-$n" "$W/initrd-zb.img"
  unlocked "$n"
  check "the kernel found the TPM (tpm_tis 2.0 TPM)" grep -q 'tpm_tis .*2\.0 TPM' <(con "$n")
  check "the zbunlock started before the modules did the unlock (zb_prestart, zb_unlock)" \
    grep -q '^ZB| [0-9.]* zbunlock: started early, going on after' <(con "$n")
  # zbunlock's boot transition (N9) counted the boot on the FAT partition.
  is "env after the boot: zb_boot_count_a" "$(host_env "$n" zb_boot_count_a)" "1"
  is "env after the boot: zb_mode" "$(host_env "$n" zb_mode)" "run"
  is "env after the boot: zb_slot" "$(host_env "$n" zb_slot)" "a"
  check "zbunlock locked the keys (PCR 15 extended)" grep -q 'locked: PCR 15 extended' <(con "$n")
  is "zbunlock unmounted the boot partition it had mounted (/run/zb/boot)" "$(con "$n" | sed -n 's/^ZB-BOOT-MOUNTED //p')" "no"
  check "after zbunlock the key cannot be unsealed again (zb hsm unseal exit 20, denied)" \
    grep -q '^ZB-DIAG .* s: zb hsm unseal /zb/credentials/root.sealed -o - (exit 20)' <(con "$n")
}
run_baseline() {
  local n=${1:-baseline}
  rm -rf "$W/tpm-$n"
  cp -a "$W/tpm-enrolled" "$W/tpm-$n"
  boot "$n" baseline "$W/tpm-$n" "$W/initrd-baseline.img"
  unlocked "$n"
}
run_fresh_tpm() {
  local rc log
  mkdir -p "$W/tpm-fresh" # an empty state dir: swtpm manufactures a new TPM
  boot fresh-tpm zb "$W/tpm-fresh" "$W/initrd-zb.img"
  check "QEMU exited 0 after the guest powered off ($QEMU_RC)" test "$QEMU_RC" -eq 0
  check "the kernel found the TPM (tpm_tis 2.0 TPM)" grep -q 'tpm_tis .*2\.0 TPM' <(con fresh-tpm)
  rc=$(con fresh-tpm | sed -n 's/^ZB-UNLOCK-FAIL \([0-9]*\) zb unlock$/\1/p' | head -n1)
  is "zbunlock failed and asked for a reboot (exit 12, REBOOT_PENDING with --no-reboot)" "$rc" "12"
  check "no marker: the root stayed locked" not grep -q '^ZB-UNLOCK-MARKER' <(con fresh-tpm)
  check "no /dev/mapper/zb-root stamp" test -z "$(stamp fresh-tpm UNLOCK)"
  # A boot that ends without the unlock locks the keys all the same: the
  # shell initramfs-tools' panic may leave must not unseal them.
  check "zbunlock locked the keys after the failure (PCR 15 extended)" grep -q 'zbunlock: locked: PCR 15 extended' <(con fresh-tpm)
  # The failure path, as the real fw_printenv reads the env zbunlock wrote:
  # slot a was the only valid slot, so the unlock failure enters recovery.
  is "env after the boot: zb_mode" "$(host_env fresh-tpm zb_mode)" "recover"
  is "env after the boot: zb_valid_a" "$(host_env fresh-tpm zb_valid_a)" "0"
  log=$(host_env fresh-tpm zb_log)
  check "env zb_log records the unlock failure ('$log')" grep -q 'cannot unlock slot a' <<<"$log"
}

# --- main ------------------------------------------------------------------------
T0=$(now)
bash qemu/fetch.sh
bash qemu/tpm-module.sh
fetch_cryptsetup
provision
rc=0
for s in "${SCENARIOS[@]}"; do
  echo "===== unlock scenario $s ====="
  FAILED=""
  t=$(now)
  case "$s" in
    zb | zb-*) run_zb "$s" ;;
    baseline | baseline-*) run_baseline "$s" ;;
    fresh-tpm) run_fresh_tpm ;;
  esac
  echo "unlock: $s: QEMU $(secs "$t" "$(now)") s"
  timing "$s"
  transcript "$s"
  if [[ -n $FAILED ]]; then
    echo "unlock: $s FAILED:${FAILED#;}" >&2
    console_tail "$W/$s/console.log"
    rc=1
  else
    echo "ZB-UNLOCK-OK $s"
  fi
done
# window NAME: /init -> root mounted, seconds (empty when the root was not mounted).
window() {
  local a e
  a=$(stamp "$1" INIT 2>/dev/null) e=$(stamp "$1" ROOT 2>/dev/null)
  [[ -n $a && -n $e ]] && secs "$a" "$e"
}
# phase NAME FROM TO: seconds between two stamps (empty when one is missing).
phase() {
  local a e
  a=$(stamp "$1" "$2" 2>/dev/null) e=$(stamp "$1" "$3" 2>/dev/null)
  [[ -n $a && -n $e ]] && secs "$a" "$e"
}
# ratio Z B: Z / B to two places.
ratio() { awk -v z="$1" -v b="$2" 'BEGIN { printf "%.2f", z / b }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
if ((RUNS > 0)); then
  zs=() bs=()
  for ((i = 1; i <= RUNS; i++)); do
    zs+=("$(window "zb-$i" || true)") bs+=("$(window "baseline-$i" || true)")
  done
  echo "unlock: bench clock: $CLOCK_NAME"
  echo "unlock: bench, /init -> root mounted, $RUNS alternating boots each: zbunlock ${zs[*]} s; cryptsetup --key-file ${bs[*]} s"
  zm=$(printf '%s\n' "${zs[@]}" | { grep . || true; } | median) bm=$(printf '%s\n' "${bs[@]}" | { grep . || true; } | median)
  if [[ -n $zm && -n $bm ]]; then
    echo "unlock: bench medians: zbunlock $zm s, cryptsetup --key-file $bm s," \
      "ratio $(ratio "$zm" "$bm") (target <= 1.25)"
  fi
  # The phases, for reading a noisy run: the module loading (where the early
  # zbunlock's start competes for the vCPUs) and the unlock (disks present ->
  # mapping open), which single boots show steadier than the whole window.
  for p in "modules INIT MODS" "unlock DEV UNLOCK"; do
    read -r label from to <<<"$p"
    # One value per line: phase prints none of its own (before 2026-12-07 the values ran
    # together and awk read the first boot's as the "median").
    zp=$(for ((i = 1; i <= RUNS; i++)); do { phase "zb-$i" "$from" "$to" && echo; } || true; done | { grep . || true; } | median)
    bp=$(for ((i = 1; i <= RUNS; i++)); do { phase "baseline-$i" "$from" "$to" && echo; } || true; done | { grep . || true; } | median)
    [[ -n $zp && -n $bp ]] && echo "unlock: bench $label phase medians: zbunlock $zp s, cryptsetup --key-file $bp s"
  done
fi
# The benchmark: the same kernel, modules and disk; only the unlock differs.
z=$(window zb || true) b=$(window baseline || true)
if [[ -n $z && -n $b ]]; then
  echo "unlock: /init -> root mounted: zbunlock $z s, cryptsetup --key-file $b s, ratio $(ratio "$z" "$b") (target <= 1.25)"
fi
echo "unlock: total $(secs "$T0" "$(now)") s"
exit "$rc"
