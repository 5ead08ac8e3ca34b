#!/usr/bin/env bash
# QEMU aarch64 walking skeleton, end to end:
#   1. fetch.sh + initramfs.sh: Debian arm64 kernel, busybox, glibc, dist/zb-arm64
#   2. a 16 MiB FAT disk holding the redundant U-Boot env pair zb/zb.env and
#      zb/zb.env.redund (0x4000 each, made by the real mkenvimage): copy 1 is
#      older (flag 1), copy 2 newer (flag 2), so the guest must pick copy 2
#   3. boot `qemu-system-aarch64 -M virt` (TCG, no network); the guest's /init
#      (qemu/guest/init-skeleton.sh) runs zb env print/set and fw_printenv and
#      prints ZB-SKELETON-OK only when every output matched
#   4. cross-check the disk on the host with the real fw_printenv, and check
#      the redundant-write rule byte for byte: each set rewrites only the
#      inactive copy, with flag = active flag + 1
# Prints a transcript of the guest's zb commands and the timings; on failure
# prints the console tail and exits non-zero.
#
# Usage: bash qemu/skeleton.sh   (env: ZB_QEMU_TIMEOUT seconds, default 300)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
WORK=qemu/.work
TIMEOUT=${ZB_QEMU_TIMEOUT:-300}
LOG=$WORK/console.log
IMG=$WORK/disk.img
D=$WORK/disk
T0=$(date +%s.%N)

die() { echo "cannot run the skeleton: $*" >&2; exit 1; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
tail_log() {
  echo "---- last 40 lines of the guest console ($LOG) ----" >&2
  tr -d '\r' <"$LOG" | tail -n 40 >&2 || true
  echo "---- end of console ----" >&2
}
fail() { echo "ZB-SKELETON host check FAILED: $*" >&2; tail_log; exit 1; }

for tool in qemu-system-aarch64 mkenvimage fw_printenv mkfs.vfat mmd mcopy timeout; do
  command -v "$tool" >/dev/null || die "'$tool' not found (install: apt-get install qemu-system-arm u-boot-tools libubootenv-tool dosfstools mtools coreutils)"
done

# initramfs.sh runs fetch.sh first (a no-op once qemu/.cache/ is complete).
bash qemu/initramfs.sh
# shellcheck source=/dev/null
. "$WORK/guest.env"
T_BUILT=$(date +%s.%N)

# --- the disk -------------------------------------------------------------
rm -rf "$D" "$IMG" "$WORK/out"
mkdir -p "$D/orig" "$D/skeleton" "$WORK/out/set1" "$WORK/out/final"
# Copy 1: an older state (a trial boot of slot a in progress).
cat >"$D/old.txt" <<'EOF'
kernel_status=try
zb_boot_count_a=2
zb_boot_count_b=1
zb_boot_limit=3
zb_gen=1
zb_mode=run
zb_slot=a
zb_try_slot=b
EOF
# Copy 2: the newer state the guest must read (slot a committed).
cat >"$D/new.txt" <<'EOF'
zb_boot_count_a=0
zb_boot_count_b=0
zb_boot_limit=3
zb_gen=2
zb_mode=run
zb_slot=a
zb_version_a=2026.11.1
EOF
mkenvimage -r -s 0x4000 -o "$D/orig/zb.env" "$D/old.txt"
mkenvimage -r -s 0x4000 -o "$D/orig/zb.env.redund" "$D/new.txt"
# mkenvimage -r writes flag 1; the CRC covers the data only, so bumping the
# flag byte (offset 4) of copy 2 makes it the active one and keeps it valid.
printf '\002' | dd of="$D/orig/zb.env.redund" bs=1 seek=4 conv=notrunc status=none
LC_ALL=C sort "$D/new.txt" >"$D/skeleton/expect-print.txt"

mkfs.vfat -C -n ZBBOOT "$IMG" 16384 >/dev/null
mmd -i "$IMG" ::/zb ::/skeleton
mcopy -i "$IMG" "$D/orig/zb.env" "$D/orig/zb.env.redund" ::/zb/
mcopy -i "$IMG" "$D/skeleton/expect-print.txt" ::/skeleton/

# Host tools that read a pair of env files.
cfg() { printf '%s 0x0 0x4000\n' "$1/zb.env" "$1/zb.env.redund" >"$1/fw_env.config"; echo "$1/fw_env.config"; }
host_get() { fw_printenv -c "$(cfg "$1")" "$2" 2>&1 || true; }
flag() { od -An -tu1 -j4 -N1 "$1" | tr -d ' '; }
# Sanity: the real fw_printenv must also see copy 2 as the active one.
[[ "$(host_get "$D/orig" zb_gen)" == "zb_gen=2" ]] || die "host fw_printenv does not pick the newer copy of the disk's env"

# --- boot -----------------------------------------------------------------
# TCG: the guest is aarch64. -cpu max runs Bun's arm64 code; pauth-impdef
# makes pointer authentication cheap to emulate. -nic none: no network at all.
QEMU=(qemu-system-aarch64 -M virt -cpu "max,pauth-impdef=on" -smp 2 -m 1024
  -nodefaults -nic none -display none -monitor none -no-reboot
  -serial "file:$LOG"
  -kernel "$KERNEL" -initrd "$INITRD"
  -append "console=ttyAMA0 panic=-1"
  -drive "file=$IMG,format=raw,if=none,id=d0" -device "virtio-blk-device,drive=d0")
: >"$LOG"
echo "skeleton: booting $(basename "$KERNEL") with $(basename "$INITRD") (timeout ${TIMEOUT} s)"
T_BOOT=$(date +%s.%N)
timeout -k 5 "$TIMEOUT" "${QEMU[@]}" &
QPID=$!
T_MARK=""
# Poll the console for the marker (to time it) until QEMU exits; the guest
# powers itself off, and timeout(1) kills QEMU if it never does.
while kill -0 "$QPID" 2>/dev/null; do
  if [[ -z "$T_MARK" ]] && grep -q 'ZB-SKELETON-OK' "$LOG"; then T_MARK=$(date +%s.%N); fi
  sleep 0.5
done
QRC=0
wait "$QPID" || QRC=$?
T_END=$(date +%s.%N)
if [[ -z "$T_MARK" ]] && grep -q "ZB-SKELETON-OK" "$LOG"; then T_MARK=$T_END; fi # printed just before exit

echo "---- guest transcript ----"
tr -d '\r' <"$LOG" | grep -E '^(ZB\$|ZB\||ZB#|ZB-SKELETON)' || true
echo "---- end of transcript ----"
[[ $QRC -ne 124 && $QRC -ne 137 ]] || fail "the guest did not power off within ${TIMEOUT} s (QEMU killed)"
[[ $QRC -eq 0 ]] || fail "qemu-system-aarch64 exited $QRC"
if grep -q 'ZB-SKELETON-FAIL' "$LOG"; then fail "$(tr -d '\r' <"$LOG" | grep -m1 'ZB-SKELETON-FAIL')"; fi
[[ -n "$T_MARK" ]] || fail "the guest never printed ZB-SKELETON-OK"

# --- cross-check the disk on the host -------------------------------------
mcopy -n -i "$IMG" ::/zb/zb.env ::/zb/zb.env.redund "$WORK/out/final/" || fail "cannot read zb/zb.env* back from $IMG"
mcopy -n -i "$IMG" ::/skeleton/after-set1/zb.env ::/skeleton/after-set1/zb.env.redund "$WORK/out/set1/" \
  || fail "cannot read the guest's after-set1 snapshot from $IMG"
O=$D/orig S=$WORK/out/set1 F=$WORK/out/final
for f in "$S/zb.env" "$S/zb.env.redund" "$F/zb.env" "$F/zb.env.redund"; do
  [[ $(stat -c %s "$f") -eq 16384 ]] || fail "$f is $(stat -c %s "$f") bytes, not 0x4000"
done
# Set 1 (zb_slot b): copy 2 (flag 2) was active, so only copy 1 is rewritten,
# with flag 3; copy 2 stays byte-identical.
cmp -s "$O/zb.env.redund" "$S/zb.env.redund" || fail "set 1 modified the active copy zb.env.redund"
[[ $(flag "$S/zb.env") -eq 3 ]] || fail "set 1: zb.env flag is $(flag "$S/zb.env"), expected 3 (active 2 + 1)"
[[ "$(host_get "$S" zb_slot)" == "zb_slot=b" ]] || fail "after set 1 host fw_printenv says '$(host_get "$S" zb_slot)', expected zb_slot=b"
[[ "$(host_get "$S" zb_gen)" == "zb_gen=2" ]] || fail "set 1 was not based on the newer copy (zb_gen '$(host_get "$S" zb_gen)')"
# Set 2 (zb_probe): now copy 1 (flag 3) is active; only copy 2 is rewritten, flag 4.
cmp -s "$S/zb.env" "$F/zb.env" || fail "set 2 modified the active copy zb.env"
[[ $(flag "$F/zb.env.redund") -eq 4 ]] || fail "set 2: zb.env.redund flag is $(flag "$F/zb.env.redund"), expected 4 (active 3 + 1)"
for want in zb_slot=b zb_probe=qemu-aarch64 zb_gen=2 zb_version_a=2026.11.1; do
  got=$(host_get "$F" "${want%%=*}")
  [[ "$got" == "$want" ]] || fail "host fw_printenv on the final disk says '$got', expected $want"
done
echo "skeleton: host fw_printenv agrees: zb_slot=b zb_probe=qemu-aarch64; each set rewrote only the inactive copy (flags 1,2 -> 3,2 -> 3,4)"

echo "skeleton: timings: build $(secs "$T0" "$T_BUILT") s, boot-to-marker $(secs "$T_BOOT" "$T_MARK") s, QEMU total $(secs "$T_BOOT" "$T_END") s, all $(secs "$T0" "$T_END") s"
echo "ZB-SKELETON-OK"
