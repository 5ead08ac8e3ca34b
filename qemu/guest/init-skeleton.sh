#!/bin/busybox sh
# PID 1 of the QEMU walking-skeleton guest (packed as /init by
# qemu/initramfs.sh). It mounts the virtio disk that qemu/skeleton.sh made,
# runs the zb env commands against its redundant U-Boot env pair, and prints
#   ZB$ <command>          each command it runs
#   ZB| <line>             each line that command printed
#   ZB-SKELETON: <step> ok after each check that passed
#   ZB-SKELETON-OK         at the very end, after the disk is unmounted
#   ZB-SKELETON-FAIL: <step>: <why>   on the first check that did not pass
# then powers off. The host reads these markers from the serial console.
# Expected `zb env print` output comes from the disk (skeleton/expect-print.txt)
# so the scenario's variables live in one place, skeleton.sh.

# shellcheck source=qemu/guest/lib.sh
. /lib/zb-guest.sh
guest_early /boot
guest_applets

ENV=/boot/zb/zb.env
RED=/boot/zb/zb.env.redund
SNAP=/boot/skeleton/after-set1

fail() { echo "ZB-SKELETON-FAIL: $*"; power_off ""; }
ok() { echo "ZB-SKELETON: $*"; }

# run CMD…: echo_run, and fail the step on a non-zero exit.
run() { echo_run "$@" || fail "$STEP: '$*' exited $rc"; }
# expect TEXT: the last command's output must equal TEXT exactly.
expect() {
  [ "$OUT" = "$1" ] && return 0
  printf '%s\n' "$1" | sed 's/^/ZB-SKELETON-EXPECTED| /'
  fail "$STEP: output differs from the expected text above"
}
# changed A B: which of the two env copies differ from their saved versions.
changed() {
  c=""
  cmp -s "$ENV" "$1" || c="$c zb.env"
  cmp -s "$RED" "$2" || c="$c zb.env.redund"
  echo "${c# }"
}

echo "ZB-SKELETON: init started at $(up) s, kernel $(uname -r)"

STEP=modules
while read -r ko; do
  insmod "$ko" || fail "modules: insmod $ko failed"
done </etc/modules.order

STEP=mount
i=0
while [ ! -b /dev/vda ]; do # virtio-blk probes asynchronously
  i=$((i + 1))
  [ "$i" -le 100 ] || fail "mount: /dev/vda did not appear in 10 s"
  sleep 0.1
done
mount -t vfat /dev/vda /boot || fail "mount: mount -t vfat /dev/vda /boot failed"
{ [ -f "$ENV" ] && [ -f "$RED" ]; } || fail "mount: $ENV or $RED missing on the disk"
ok "mount ok ($(cd /boot/zb && echo *))"

STEP=print
run zb env print --boot /boot
expect "$(cat /boot/skeleton/expect-print.txt)"
ok "print ok"

# Each set must rewrite exactly one copy: the one that was not active. Two
# sets in a row therefore touch the two copies in turn.
STEP=set1
{ cp "$ENV" /tmp/env.0 && cp "$RED" /tmp/red.0; } || fail "set1: cannot snapshot the env copies"
run zb env set --boot /boot zb_slot b
w1=$(changed /tmp/env.0 /tmp/red.0)
case "$w1" in
  zb.env | zb.env.redund) ok "set1 ok (wrote $w1 only)" ;;
  *) fail "set1: expected exactly one copy rewritten, got '${w1:-none}'" ;;
esac
# Keep this state on the disk so the host can check the first write too.
{ mkdir -p "$SNAP" && cp "$ENV" "$RED" "$SNAP/"; } || fail "set1: cannot save $SNAP"

STEP=set2
{ cp "$ENV" /tmp/env.1 && cp "$RED" /tmp/red.1; } || fail "set2: cannot snapshot the env copies"
run zb env set --boot /boot zb_probe qemu-aarch64
w2=$(changed /tmp/env.1 /tmp/red.1)
case "$w2" in
  "$w1") fail "set2: rewrote $w1 again; the newest copy must never be overwritten" ;;
  zb.env | zb.env.redund) ok "set2 ok (wrote $w2 only)" ;;
  *) fail "set2: expected exactly one copy rewritten, got '${w2:-none}'" ;;
esac

STEP="get"
run zb env print --boot /boot -n zb_slot
expect "b"
run zb env print --boot /boot zb_probe zb_slot
expect "zb_probe=qemu-aarch64
zb_slot=b"
ok "get ok"

STEP=fw_printenv
run fw_printenv -c /etc/fw_env.config zb_slot
expect "zb_slot=b"
ok "fw_printenv ok"

STEP=umount
sync
umount /boot || fail "umount: umount /boot failed"
echo "ZB-SKELETON-OK after $(up) s of guest uptime"
poweroff -f
sleep 5
exit 1
