#!/bin/busybox sh
# PID 1 of the boot-flow guest (qemu/bootflow.sh packs it as /init of every
# slot's initramfs). It plays the initramfs and then a tiny "userspace":
#   1. mount the boot partition (/dev/vda1, FAT) at /boot;
#   2. run `zbunlock --boot /boot`: exit 0 means boot on; when zbunlock
#      decides to reboot it calls reboot(2) itself and never returns;
#   3. in "userspace", run the actions the host wrote to /boot/scenario/steps
#      for this boot, keyed by slot, kind and visit:
#          a normal 1: status; arm-try b
#          b try 1: mark-good; status; poweroff
#      slot = zb.slot= on the kernel cmdline, kind = "try" when the cmdline
#      carries kernel_status=trying (the firmware booted tryboot.txt) and
#      "normal" otherwise, visit = how many times this slot and kind reached
#      userspace so far, counting this one (kept in /boot/scenario/visits).
#      Actions: status, status-json, env, mark-good, arm-try SLOT, reboot,
#      poweroff.
# Console markers for the host:
#   ZB-BOOTFLOW: <what>           progress
#   ZB$ <cmd> / ZB| <line> / ZB# exit N in S s   each command, as in the skeleton
#   ZB-BOOTFLOW-FAIL: <why>       then the guest powers off
#   ZB-BOOTFLOW-DONE              just before a scripted poweroff
# Commands that may reboot (zbunlock, zb reboot) write straight to the
# console: output captured in a pipe would be lost when the kernel restarts.

# shellcheck source=qemu/guest/lib.sh
. /lib/zb-guest.sh
guest_early /boot
guest_applets

STEPS=/boot/scenario/steps
VISITS=/boot/scenario/visits

fail() { echo "ZB-BOOTFLOW-FAIL: $*"; power_off; }
run() { echo_run "$@"; }
# direct CMD…: like run, for commands that may reboot: output unprefixed.
direct() {
  echo "ZB\$ $*"
  t0=$(up)
  "$@"
  rc=$?
  echo "ZB# exit $rc in $(since "$t0") s"
  return "$rc"
}

SLOT=""
KIND=normal
read -r CMDLINE </proc/cmdline
# shellcheck disable=SC2086 # the cmdline is a list of words
for arg in $CMDLINE; do
  case "$arg" in
    zb.slot=*) SLOT=${arg#zb.slot=} ;;
    kernel_status=trying) KIND=try ;;
  esac
done
echo "ZB-BOOTFLOW: init at $(up) s: slot=${SLOT:-?} kind=$KIND kernel $(uname -r)"
[ -n "$SLOT" ] || fail "no zb.slot= on the kernel cmdline: $CMDLINE"

while read -r ko; do
  insmod "$ko" || fail "insmod $ko failed"
done </etc/modules.order
i=0
while [ ! -b /dev/vda1 ]; do # virtio-blk and its partition scan are asynchronous
  i=$((i + 1))
  [ "$i" -le 100 ] || fail "/dev/vda1 did not appear in 10 s"
  sleep 0.1
done
mount -t vfat /dev/vda1 /boot || fail "mount -t vfat /dev/vda1 /boot failed"

# What zbunlock is about to do, without doing it (informational).
# Without the JIT, as initramfs-hooks/scripts/local-top/zb starts it: a
# reboot with "0 tryboot" (row N1) then goes through `zb reboot --raw`.
run env BUN_JSC_useJIT=0 zbunlock --boot /boot --dry-run
direct env BUN_JSC_useJIT=0 zbunlock --boot /boot || fail "zbunlock exited $rc"

# --- userspace ------------------------------------------------------------
[ -f "$STEPS" ] || fail "$STEPS is missing"
seen=$(grep -c "^$SLOT $KIND\$" "$VISITS" 2>/dev/null)
VISIT=$((${seen:-0} + 1))
echo "$SLOT $KIND" >>"$VISITS" || fail "cannot write $VISITS"
sync
echo "ZB-BOOTFLOW: userspace at $(up) s: slot=$SLOT kind=$KIND visit=$VISIT"

ACTIONS=""
while IFS= read -r line; do
  case "$line" in
    "$SLOT $KIND $VISIT:"*) ACTIONS=${line#*:} ;;
  esac
done <"$STEPS"
[ -n "$ACTIONS" ] || fail "$STEPS has no line for '$SLOT $KIND $VISIT:'"

# Split on ';' into positional parameters (no globbing of the words).
set -f
IFS=';'
# shellcheck disable=SC2086 # splitting on ';' is the point
set -- $ACTIONS
unset IFS
set +f
for action in "$@"; do
  # shellcheck disable=SC2086 # "arm-try b" → verb and argument
  set -- $action
  case "$1" in
    status) run zb status --boot /boot || fail "zb status exited $rc" ;;
    status-json) run zb status --boot /boot --json || fail "zb status --json exited $rc" ;;
    env) run zb env print --boot /boot || fail "zb env print exited $rc" ;;
    mark-good) run zb mark-good --boot /boot || fail "zb mark-good exited $rc" ;;
    arm-try)
      sync
      direct zb reboot --try "$2" --boot /boot
      fail "zb reboot --try $2 returned (exit $rc) instead of rebooting"
      ;;
    reboot)
      sync
      direct zb reboot --boot /boot
      fail "zb reboot returned (exit $rc) instead of rebooting"
      ;;
    poweroff)
      power_off "ZB-BOOTFLOW-DONE at $(up) s"
      ;;
    *) fail "unknown action '$action' in $STEPS" ;;
  esac
done
fail "the steps for '$SLOT $KIND $VISIT' end without poweroff or reboot"
