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

/bin/busybox mkdir -p /proc /sys /dev /tmp /boot
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s
export PATH=/usr/bin:/usr/sbin:/bin:/sbin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys

STEPS=/boot/scenario/steps
VISITS=/boot/scenario/visits

up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.2f", b - a }'; }

# Power off cleanly: sync first, because reboot(2) and poweroff -f do not.
off() {
  sync
  umount /boot 2>/dev/null
  sync
  poweroff -f
  sleep 5 # not reached; if it were, exiting PID 1 panics and panic=-1 with
  exit 1  # QEMU's -no-reboot still ends the run
}
fail() { echo "ZB-BOOTFLOW-FAIL: $*"; off; }

# run CMD…: echo it, then its output prefixed, then its exit status.
run() {
  echo "ZB\$ $*"
  t0=$(up)
  OUT=$("$@" 2>&1)
  rc=$?
  [ -n "$OUT" ] && printf '%s\n' "$OUT" | sed 's/^/ZB| /'
  echo "ZB# exit $rc in $(since "$t0") s"
  return "$rc"
}
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
run zbunlock --boot /boot --dry-run
direct zbunlock --boot /boot || fail "zbunlock exited $rc"

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
      echo "ZB-BOOTFLOW-DONE at $(up) s"
      off
      ;;
    *) fail "unknown action '$action' in $STEPS" ;;
  esac
done
fail "the steps for '$SLOT $KIND $VISIT' end without poweroff or reboot"
